"""``PeriodLedger``: a period's energy as a step integral of power samples.

Each sample holds until the next (gateway/ems/ledger.py); a positive net
export counts as exported energy, a negative one as imported; the energy the
allocated loads used counts at most the allocated power; ``close`` integrates
up to the period's end and hands back the next period's ledger.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.ems.ledger import PeriodLedger

PROPS = settings(max_examples=200, deadline=None)


def test_constant_export_for_a_quarter_hour() -> None:
    ledger = PeriodLedger(start_s=0.0)
    ledger.sample(0.0, 2.0, 0.0, 0.0)
    ledger.close(900.0)
    assert ledger.export_kwh == pytest.approx(0.5)
    assert ledger.import_kwh == 0.0


def test_import_is_counted_positive() -> None:
    ledger = PeriodLedger(start_s=0.0)
    ledger.sample(0.0, -4.0, 0.0, 0.0)
    ledger.close(1800.0)
    assert ledger.import_kwh == pytest.approx(2.0)
    assert ledger.export_kwh == 0.0


def test_each_sample_holds_until_the_next() -> None:
    ledger = PeriodLedger(start_s=0.0)
    ledger.sample(0.0, 3.6, 0.0, 0.0)
    ledger.sample(100.0, -3.6, 0.0, 0.0)  # 3.6 kW for 100 s = 0.1 kWh out
    ledger.sample(400.0, 0.0, 0.0, 0.0)  # 3.6 kW for 300 s = 0.3 kWh in
    ledger.close(900.0)
    assert ledger.export_kwh == pytest.approx(0.1)
    assert ledger.import_kwh == pytest.approx(0.3)


def test_nothing_is_counted_before_the_first_net_sample() -> None:
    ledger = PeriodLedger(start_s=0.0)
    ledger.sample(600.0, 1.0, 0.0, 0.0)
    ledger.close(900.0)
    assert ledger.export_kwh == pytest.approx(300 / 3600)


def test_used_energy_is_capped_by_the_allocated_power() -> None:
    ledger = PeriodLedger(start_s=0.0)
    ledger.sample(0.0, 0.0, used_kw=3.0, alloc_kw=2.0)
    ledger.sample(450.0, 0.0, used_kw=1.0, alloc_kw=2.0)
    ledger.close(900.0)
    assert ledger.allocated_kwh == pytest.approx(0.5)
    assert ledger.used_kwh == pytest.approx(2.0 * 0.125 + 1.0 * 0.125)


def test_negative_used_or_allocated_power_counts_as_zero() -> None:
    ledger = PeriodLedger(start_s=0.0)
    ledger.sample(0.0, None, used_kw=-1.0, alloc_kw=-2.0)
    ledger.close(3600.0)
    assert ledger.used_kwh == 0.0
    assert ledger.allocated_kwh == 0.0


def test_a_sample_earlier_than_the_last_never_integrates_backwards() -> None:
    ledger = PeriodLedger(start_s=0.0)
    ledger.sample(0.0, 1.0, 0.0, 0.0)
    ledger.sample(360.0, 1.0, 0.0, 0.0)
    ledger.sample(100.0, 1.0, 0.0, 0.0)  # a late sample: no negative step
    ledger.close(720.0)
    assert ledger.export_kwh == pytest.approx(0.2)


def test_close_carries_net_and_used_power_but_not_the_allocation() -> None:
    first = PeriodLedger(start_s=0.0)
    first.sample(0.0, -1.8, used_kw=1.0, alloc_kw=1.0)
    second = first.close(900.0)
    assert second.start_s == 900.0
    assert (second.import_kwh, second.export_kwh, second.used_kwh, second.allocated_kwh) == (
        0.0, 0.0, 0.0, 0.0,
    )
    second.close(1800.0)
    assert second.import_kwh == pytest.approx(0.45)  # the net power held across the boundary
    assert second.allocated_kwh == 0.0  # a new period's allocation is not assumed
    assert second.used_kwh == 0.0
    assert first.used_kwh == pytest.approx(0.25)


samples = st.lists(
    st.tuples(
        st.floats(min_value=0.0, max_value=600.0),  # time step to this sample
        st.none() | st.floats(min_value=-20.0, max_value=20.0),
        st.floats(min_value=-1.0, max_value=10.0),
        st.floats(min_value=-1.0, max_value=10.0),
    ),
    max_size=30,
)


def reference(start_s: float, rows: list[tuple[float, float | None, float, float]],
              end_s: float) -> tuple[float, float, float, float]:
    """Our own step integral: (import, export, allocated, used) in kWh."""
    times = []
    t = start_s
    for dt, *_ in rows:
        t += dt
        times.append(t)
    bounds = [*times, end_s]
    imp = exp = alloc = used = 0.0
    # Sample i's values hold over [t_i, t_{i+1}); nothing before the first sample.
    for i, (_, net, u, a) in enumerate(rows):
        dt_h = (bounds[i + 1] - bounds[i]) / 3600.0
        if net is not None:
            if net >= 0:
                exp += net * dt_h
            else:
                imp += -net * dt_h
        alloc += max(a, 0.0) * dt_h
        used += min(max(u, 0.0), max(a, 0.0)) * dt_h
    return imp, exp, alloc, used


@PROPS
@given(samples, st.floats(min_value=0.0, max_value=600.0))
def test_matches_a_plain_step_integral(
    rows: list[tuple[float, float | None, float, float]], tail_s: float
) -> None:
    ledger = PeriodLedger(start_s=100.0)
    t = 100.0
    for dt, net, used, alloc in rows:
        t += dt
        ledger.sample(t, net, used, alloc)
    ledger.close(t + tail_s)
    imp, exp, alloc_kwh, used_kwh = reference(100.0, rows, t + tail_s)
    assert ledger.import_kwh == pytest.approx(imp, abs=1e-9)
    assert ledger.export_kwh == pytest.approx(exp, abs=1e-9)
    assert ledger.allocated_kwh == pytest.approx(alloc_kwh, abs=1e-9)
    assert ledger.used_kwh == pytest.approx(used_kwh, abs=1e-9)
    assert ledger.import_kwh >= 0 and ledger.export_kwh >= 0
    assert ledger.used_kwh <= ledger.allocated_kwh + 1e-9


@PROPS
@given(samples, st.floats(min_value=0.0, max_value=1.0))
def test_closing_a_period_splits_the_net_energy_without_losing_any(
    rows: list[tuple[float, float | None, float, float]], where: float
) -> None:
    whole = PeriodLedger(start_s=0.0)
    first = PeriodLedger(start_s=0.0)
    end_s = sum(dt for dt, *_ in rows) + 60.0
    boundary = where * end_s
    current = first
    closed: list[PeriodLedger] = []
    t = 0.0
    for dt, net, used, alloc in rows:
        t += dt
        if not closed and t >= boundary:
            closed.append(current)
            current = current.close(boundary)
        whole.sample(t, net, used, alloc)
        current.sample(t, net, used, alloc)
    if not closed:
        closed.append(current)
        current = current.close(boundary)
    whole.close(end_s)
    current.close(end_s)
    parts = [*closed, current]
    assert sum(p.import_kwh for p in parts) == pytest.approx(whole.import_kwh, abs=1e-9)
    assert sum(p.export_kwh for p in parts) == pytest.approx(whole.export_kwh, abs=1e-9)
    assert all(p.used_kwh <= p.allocated_kwh + 1e-9 for p in parts)

"""The strategy-comparison metrics on hand-computed examples."""

from __future__ import annotations

import math

import pytest

from central.core.cycle import LoadOffer
from central.core.metrics import (
    CycleRecord,
    c_metric,
    daily_kwh,
    distances_to_ideal,
    dominates,
    ideal_point,
    jain_index,
    jain_over_days,
    nadir_point,
    normalised_distance,
    pareto_front,
    percentile,
    relay_starts,
    summarize_run,
    usable_kw,
    usable_loads,
    weakly_dominates,
)

WATER_HEATER = LoadOffer("wh", 2.5, 2.5, "water_heater")
HEAT_PUMP = LoadOffer("hp", 1.0, 2.0, "heat_pump")
EV = LoadOffer("ev", 1.4, 7.4, "ev_charger")


# Usable power ------------------------------------------------------------------


def test_whole_loads_take_the_largest_subset_sum_that_fits() -> None:
    loads = [WATER_HEATER, HEAT_PUMP, EV]
    # max_kw: 2.5, 2.0, 7.4. With 5 kW: {wh, hp} = 4.5 is the best fit.
    assert usable_kw(5.0, loads) == pytest.approx(4.5)
    assert dict(usable_loads(5.0, loads)) == {"wh": 2.5, "hp": 2.0}
    # 2.4 kW: only the heat pump (2.0) fits; the water heater needs 2.5.
    assert usable_kw(2.4, loads) == pytest.approx(2.0)
    # 1.9 kW: nothing runs (the heat pump runs at 2.0 on a relay).
    assert usable_kw(1.9, loads) == 0.0
    # 12 kW: everything, 11.9.
    assert usable_kw(12.0, loads) == pytest.approx(11.9)


def test_modulating_loads_use_anything_between_their_minimums_and_the_allocation() -> None:
    loads = [WATER_HEATER, HEAT_PUMP, EV]
    # 1.9 kW: the heat pump (min 1.0) or the EV (min 1.4) can run; all 1.9 is used.
    assert usable_kw(1.9, loads, modulating=True) == pytest.approx(1.9)
    # 0.9 kW: below every minimum.
    assert usable_kw(0.9, loads, modulating=True) == 0.0
    # 5 kW: the EV alone takes it all (one load beats two at equal power).
    assert dict(usable_loads(5.0, loads, modulating=True)) == {"ev": pytest.approx(5.0)}
    # 20 kW: everything at its maximum, 11.9.
    assert usable_kw(20.0, loads, modulating=True) == pytest.approx(11.9)


def test_nothing_is_usable_without_loads_or_allocation() -> None:
    assert usable_kw(3.0, []) == 0.0
    assert usable_kw(0.0, [WATER_HEATER]) == 0.0
    assert usable_kw(3.0, [LoadOffer("x", 0.0, 0.0)]) == 0.0


# Statistics --------------------------------------------------------------------


def test_jain_index_hand_values() -> None:
    assert jain_index([1.0, 1.0, 1.0, 1.0]) == 1.0
    # One of four gets everything: 1/n.
    assert jain_index([4.0, 0.0, 0.0, 0.0]) == pytest.approx(0.25)
    # (1 + 3)^2 / (2 * (1 + 9)) = 16 / 20.
    assert jain_index([1.0, 3.0]) == pytest.approx(0.8)
    assert jain_index([0.0, 0.0]) == 1.0
    assert jain_index([]) is None


def test_jain_over_days_sums_each_site_first() -> None:
    # Day 1 a gets 2, day 2 b gets 2: unfair each day, fair over the two days.
    days = [{"a": 2.0, "b": 0.0}, {"a": 0.0, "b": 2.0}]
    assert jain_index(days[0].values()) == pytest.approx(0.5)
    assert jain_over_days(days) == pytest.approx(1.0)
    # A site missing on a day counts 0 that day: totals a=3, c=1 -> 16 / (2 * 10).
    assert jain_over_days([{"a": 3.0}, {"c": 1.0}]) == pytest.approx(0.8)


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 21)]  # 1..20
    assert percentile(values, 95.0) == 19.0  # ceil(0.95 * 20) = 19th value
    assert percentile(values, 100.0) == 20.0
    assert percentile([7.0], 95.0) == 7.0
    assert percentile([], 95.0) is None
    with pytest.raises(ValueError):
        percentile(values, 0.0)


def test_relay_starts_count_what_was_off_before() -> None:
    assert relay_starts({"a", "b"}, {"b", "c", "d"}) == 2
    assert relay_starts(set(), {"a"}) == 1
    assert relay_starts({"a"}, set()) == 0


# One run -----------------------------------------------------------------------


def _record(
    day: int, surplus: float, alloc: dict[str, float], usable: float, **kw: object
) -> CycleRecord:
    fields: dict[str, object] = {
        "day": day,
        "surplus_kw": surplus,
        "allocated_kw": math.fsum(alloc.values()),
        "usable_kw": usable,
        "usable_modulating_kw": usable,
        "decision_delays_s": (),
        "load_starts": 0,
        "site_starts": 0,
        "alloc_kw_by_site": alloc,
        "offering_sites": frozenset(alloc),
    }
    fields.update(kw)
    return CycleRecord(**fields)  # type: ignore[arg-type]


def test_summarize_run_by_hand() -> None:
    cycles = [
        # S = 10, 8 allocated, 6 usable; delays 1 and 3 s; 2 loads started.
        _record(0, 10.0, {"a": 5.0, "b": 3.0}, 6.0, decision_delays_s=(1.0, 3.0), load_starts=2),
        # No surplus: counted in injection (0) but not in shares.
        _record(0, -4.0, {}, 0.0),
        # Day 1: S = 4, b gets all 4, all usable; a offered and got nothing.
        _record(1, 4.0, {"a": 0.0, "b": 4.0}, 4.0, decision_delays_s=(2.0,), load_starts=1),
    ]
    m = summarize_run(cycles, comfort_miss_kwh=1.5)
    assert (m.cycles, m.cycles_with_surplus, m.days) == (3, 2, 2)
    assert m.share_allocated == pytest.approx((0.8 + 1.0) / 2)
    assert m.energy_share_allocated == pytest.approx(12.0 / 14.0)
    assert m.share_usable == pytest.approx((0.6 + 1.0) / 2)
    assert m.energy_share_usable == pytest.approx(10.0 / 14.0)
    # Injection without: 10 + 0 + 4 kW; with: 4 + 0 + 0 kW; a quarter hour each.
    assert m.injection_without_kwh == pytest.approx(3.5)
    assert m.injection_with_kwh == pytest.approx(1.0)
    assert m.injection_avoided_kwh == pytest.approx(2.5)
    assert (m.injection_peak_without_kw, m.injection_peak_kw) == (10.0, 4.0)
    # Day 0: a 1.25 kWh, b 0.75 -> (2)^2 / (2 * (1.5625 + 0.5625)) = 4 / 4.25.
    # Day 1: a 0, b 1 -> 0.5. Over both days: a 1.25, b 1.75 -> 9 / (2 * 4.625).
    assert daily_kwh(cycles)[1] == {"a": 0.0, "b": 1.0}
    assert m.jain_daily == pytest.approx((4.0 / 4.25 + 0.5) / 2)
    assert m.jain_all_days == pytest.approx(9.0 / 9.25)
    assert m.alloc_delay_mean_s == pytest.approx(2.0)
    assert m.alloc_delay_p95_s == 3.0
    assert m.load_starts == 3
    assert m.load_starts_per_day == 1.5
    assert m.comfort_miss_kwh == 1.5
    assert m.to_dict()["load_starts_per_day"] == 1.5


# Several objectives ------------------------------------------------------------------


def test_dominance() -> None:
    assert dominates([1.0, 2.0], [1.0, 3.0])
    assert not dominates([1.0, 2.0], [1.0, 2.0])
    assert weakly_dominates([1.0, 2.0], [1.0, 2.0])
    assert not dominates([1.0, 4.0], [2.0, 3.0])


def test_pareto_front_ideal_nadir_and_distance() -> None:
    points = {
        "a": [0.0, 4.0],
        "b": [2.0, 2.0],
        "c": [4.0, 0.0],
        "d": [3.0, 3.0],  # dominated by b
    }
    assert pareto_front(points) == ["a", "b", "c"]
    front = [points[n] for n in pareto_front(points)]
    assert ideal_point(front) == [0.0, 0.0]
    assert nadir_point(front) == [4.0, 4.0]
    # b: (2/4, 2/4) -> sqrt(0.5); d: (3/4, 3/4) -> sqrt(1.125); a: (0, 1) -> 1.
    distances = distances_to_ideal(points)
    assert distances["b"] == pytest.approx(math.sqrt(0.5))
    assert distances["d"] == pytest.approx(math.sqrt(1.125))
    assert distances["a"] == pytest.approx(1.0)


def test_distance_on_an_objective_where_ideal_and_nadir_agree() -> None:
    assert normalised_distance([1.0, 5.0], [1.0, 5.0], [3.0, 5.0]) == 0.0
    assert normalised_distance([1.0, 6.0], [1.0, 5.0], [3.0, 5.0]) == 1.0


def test_c_metric_by_hand() -> None:
    a = [[1.0, 3.0], [3.0, 1.0]]
    b = [[2.0, 4.0], [0.5, 5.0], [3.0, 1.0]]
    # b[0] dominated by a[0]; b[1] by nobody; b[2] weakly by a[1]: 2 of 3.
    assert c_metric(a, b) == pytest.approx(2.0 / 3.0)
    # a[1] weakly dominated by b[2]; a[0] by nobody: 1 of 2.
    assert c_metric(b, a) == pytest.approx(0.5)
    assert c_metric(a, []) is None

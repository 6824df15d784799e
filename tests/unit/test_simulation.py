"""The simulator: reference cases, the summer-day model, its summary and the CLI.

Everything runs in memory with simulated time; the CLI tests capture stdout.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from central.core import Cycle, CycleContext, Decision, Grant, Offer, StrategyState, get_strategy
from ems.simulation import REFERENCE_CASES, SiteInput, SummerDayModel, run_case, run_cycle
from ems.simulation.cases import CASE_ALL_SERVED, CASE_EXHAUSTED, CASE_NO_SURPLUS
from ems.simulation.driver import drive
from ems.simulation.summer_day import (
    CycleOutcome,
    draw_cycle,
    run_draw,
    run_summer_day,
    size_class,
    summarize,
    surplus_class,
)

FIFO = get_strategy("fifo")


# Reference cases -------------------------------------------------------------


def test_case_0_no_surplus_sends_no_request() -> None:
    result = run_case(CASE_NO_SURPLUS, FIFO)
    assert [s.net_load_kw for s in CASE_NO_SURPLUS.sites] == [-5, 5, -9, 2, 0]
    assert result.surplus_kw == -7.0
    assert result.allocated_kw == 0.0
    assert result.share_used is None
    assert result.injected_kw == 0.0
    assert result.close_reason == "no_surplus"
    assert all(row.alloc_kw is None and row.rank is None for row in result.rows)
    assert {row.status for row in result.rows} == {"not asked"}


def test_case_1_surplus_fully_allocated_last_replier_partly_served() -> None:
    result = run_case(CASE_EXHAUSTED, FIFO)
    assert result.surplus_kw == 30.0
    assert result.allocated_kw == 30.0
    assert result.share_used == 1.0
    assert result.injected_kw == 0.0
    assert result.close_reason == "exhausted"
    served = [row for row in result.rows if row.alloc_kw is not None]
    last = max(served, key=lambda row: row.rank or 0)
    assert last.alloc_kw is not None and 0 < last.alloc_kw < last.flex_kw
    assert last.status == "partly served"
    # Everyone before the last replier got all it offered.
    assert all(row.alloc_kw == row.flex_kw for row in served if row is not last)
    # Replies after the close are cancelled: no decision, no rank.
    later = [row for row in result.rows if row.delay_s > last.delay_s]
    assert later and all(row.alloc_kw is None and row.status == "cancelled" for row in later)


def test_case_2_all_served_rest_injected() -> None:
    result = run_case(CASE_ALL_SERVED, FIFO)
    assert result.surplus_kw == 67.0
    assert round(result.allocated_kw, 2) == 50.48
    assert result.allocated_kw == pytest.approx(50.48, abs=1e-9)
    assert result.share_used is not None
    assert round(100 * result.share_used, 2) == 75.34
    assert round(result.injected_kw, 2) == 16.52
    assert result.close_reason == "all_replied"
    assert all(row.alloc_kw == row.flex_kw for row in result.rows)
    assert [row.rank for row in result.rows] == list(range(1, len(result.rows) + 1))


def test_cases_follow_the_summer_day_model() -> None:
    model = SummerDayModel()
    for case in REFERENCE_CASES:
        assert len({s.site for s in case.sites}) == len(case.sites)
        for s in case.sites:
            assert float(s.net_load_kw).is_integer()
            # Case 0's net loads are the study's own, and -9 kW lies outside -5..10.
            if case is not CASE_NO_SURPLUS:
                assert model.min_net_load_kw <= s.net_load_kw <= model.max_net_load_kw
            assert 0.0 <= s.flex_kw <= model.max_flex_kw
            assert round(s.flex_kw, 2) == s.flex_kw
            assert s.net_load_kw <= 0 or s.flex_kw == 0.0
            assert model.min_delay_s <= s.delay_s <= model.max_delay_s


def test_case_rows_are_in_arrival_order_with_ranks() -> None:
    result = run_case(CASE_EXHAUSTED, FIFO)
    delays = [row.delay_s for row in result.rows]
    assert delays == sorted(delays)
    ranks = [row.rank for row in result.rows if row.rank is not None]
    assert ranks == list(range(1, len(ranks) + 1))


# The driver --------------------------------------------------------------------


sites_strategy = st.lists(
    st.tuples(
        st.integers(-5, 10),
        st.floats(0, 5, allow_nan=False).map(lambda f: round(f, 2)),
        st.floats(0.5, 12, allow_nan=False),
    ),
    min_size=0,
    max_size=25,
)


@settings(max_examples=200, deadline=None)
@given(rows=sites_strategy, timeout_s=st.floats(0.5, 15, allow_nan=False))
def test_fifo_cycle_invariants(rows: list[tuple[int, float, float]], timeout_s: float) -> None:
    sites = [SiteInput(f"site-{i:02d}", nl, fl, d) for i, (nl, fl, d) in enumerate(rows)]
    cycle, _ = run_cycle("c", sites, FIFO, reply_timeout_s=timeout_s)
    surplus_kw = sum(s.net_load_kw for s in sites)
    in_time = sorted((s for s in sites if s.delay_s < timeout_s), key=lambda s: s.delay_s)
    assert cycle.closed
    assert 0.0 <= cycle.allocated_kw <= max(surplus_kw, 0.0) + 1e-9
    assert cycle.allocated_kw <= sum(s.flex_kw for s in in_time) + 1e-9
    by_site = {s.site: s for s in sites}
    for d in cycle.decisions:
        assert 0.0 <= d.alloc_kw <= by_site[d.site].flex_kw
        assert d.elapsed_s < timeout_s
    assert [d.rank for d in cycle.decisions] == list(range(1, len(cycle.decisions) + 1))
    assert [d.elapsed_s for d in cycle.decisions] == sorted(d.elapsed_s for d in cycle.decisions)
    if surplus_kw > 0:
        # FIFO with every in-time reply seen: min(S, what arrived in time).
        expected = min(surplus_kw, math.fsum(s.flex_kw for s in in_time))
        assert cycle.allocated_kw == pytest.approx(expected, abs=1e-9)
    else:
        assert cycle.close_reason == "no_surplus" and not cycle.decisions


class _GrantAtSession:
    """A test strategy that decides nothing on arrival and grants at a timer."""

    def __init__(self, at_s: float) -> None:
        self.at_s: float | None = at_s
        self.fired_at: list[float] = []

    def on_offer(self, offer: Offer, rank: int, remaining_kw: float) -> float | None:
        return None

    def wakeup_s(self) -> float | None:
        return self.at_s

    def on_timer(
        self, elapsed_s: float, pending: Sequence[Offer], remaining_kw: float
    ) -> Sequence[Grant]:
        self.fired_at.append(elapsed_s)
        self.at_s = None
        return [Grant(o.site, min(o.flex_kw, remaining_kw)) for o in pending]

    def on_close(self, pending: Sequence[Offer], remaining_kw: float) -> Sequence[Grant]:
        return ()

    def settle(self, decisions: Sequence[Decision]) -> StrategyState:
        return {"granted": len([d for d in decisions if d.alloc_kw > 0])}


class _GrantAt:
    name = "grant-at"

    def __init__(self, at_s: float) -> None:
        self.session = _GrantAtSession(at_s)

    def begin(self, context: CycleContext, state: StrategyState) -> _GrantAtSession:
        return self.session


def test_drive_fires_timers_between_replies_and_closes_at_deadline() -> None:
    strategy = _GrantAt(3.0)
    sites = [
        SiteInput("a", -1, 2.0, 1.0),
        SiteInput("b", 12, 0.0, 2.5),
        SiteInput("c", -1, 4.0, 2.0),
        SiteInput("d", -2, 1.0, 4.0),
    ]
    cycle, state = run_cycle("c1", sites, strategy, reply_timeout_s=6.0)
    # The timer at 3 s fires after the replies at 1, 2 and 2.5 s and before the one at 4 s.
    assert strategy.session.fired_at == [3.0]
    granted = {d.site: d.alloc_kw for d in cycle.decisions}
    assert granted == {"a": 2.0, "c": 4.0, "b": 0.0, "d": 0.0}
    assert [d.rank for d in sorted(cycle.decisions, key=lambda d: d.site)] == [1, 3, 2, 4]
    assert cycle.close_reason == "all_replied"
    assert state == {"granted": 2}


def test_drive_runs_an_unfinished_cycle_to_its_deadline() -> None:
    cycle, _ = Cycle.open("c", 4.0, ["a", "b"], FIFO, deadline_s=5.0)
    drive(cycle, [Offer("a", "c", 0.0, 1.0), Offer("b", "c", 2.0, 9.0)])
    assert cycle.close_reason == "deadline"
    assert cycle.allocated_kw == 0.0
    # The late reply from b is dropped, as the coordinator cancels it.
    assert [d.site for d in cycle.decisions] == ["a"]


# The summer day ------------------------------------------------------------------


def _run(cycles: int, seed: int, **kwargs: float) -> list[CycleOutcome]:
    return list(run_summer_day(cycles, seed, FIFO, **kwargs))


def test_summer_day_is_deterministic_by_seed() -> None:
    first = _run(300, 7)
    assert first == _run(300, 7)
    assert first != _run(300, 8)
    assert [o.cycle for o in first] == list(range(1, 301))


def test_draws_follow_the_model() -> None:
    model = SummerDayModel()
    members = model.member_ids()
    rng = random.Random(3)
    counts = set()
    for _ in range(2000):
        draw = draw_cycle(rng, model, members)
        n = len(draw.sites)
        counts.add(n)
        assert 5 <= n <= 30 and len(set(draw.sites)) == n
        assert len(draw.net_loads_kw) == len(draw.flex_kw) == len(draw.delays_s) == n
        for nl, fl, d in zip(draw.net_loads_kw, draw.flex_kw, draw.delays_s, strict=True):
            assert isinstance(nl, int) and -5 <= nl <= 10
            if nl > 0:
                assert fl == 0.0
            else:
                assert 0.0 <= fl <= 5.0 and round(fl, 2) == fl
            assert d >= 1.0 and d <= 10.0
    assert counts == set(range(5, 31))


def test_summer_day_cycle_invariants() -> None:
    for seed in (1, 2, 3):
        for o in _run(2000, seed):
            assert 0.0 <= o.allocated_kw <= max(o.surplus_kw, 0.0) + 1e-9
            assert o.allocated_kw <= o.offered_kw + 1e-9
            # Every delay (1..10 s) beats the 15 s deadline, so FIFO gives min(S, offers).
            if o.surplus_kw > 0:
                assert o.allocated_kw == pytest.approx(min(o.surplus_kw, o.offered_kw), abs=1e-9)
                assert o.close_reason in {"exhausted", "all_replied"}
                assert o.injected_without_kw == o.surplus_kw
            else:
                assert o.close_reason == "no_surplus" and o.allocated_kw == 0.0
                assert o.injected_without_kw == o.injected_with_kw == 0.0
            assert o.injected_with_kw == pytest.approx(max(o.surplus_kw - o.allocated_kw, 0.0))


def test_a_short_reply_timeout_drops_late_replies() -> None:
    model = SummerDayModel()
    rng = random.Random(11)
    members = model.member_ids()
    for cycle_id in range(1, 300):
        draw = draw_cycle(rng, model, members)
        outcome, _ = run_draw(cycle_id, draw, FIFO, {}, reply_timeout_s=4.0)
        in_time_kw = sum(f for f, d in zip(draw.flex_kw, draw.delays_s, strict=True) if d < 4.0)
        assert outcome.allocated_kw <= in_time_kw + 1e-9
        if outcome.surplus_kw > 0:
            expected = min(outcome.surplus_kw, in_time_kw)
            assert outcome.allocated_kw == pytest.approx(expected, abs=1e-9)
            assert outcome.close_reason in {"exhausted", "deadline"}


def test_mid_size_run_matches_the_study() -> None:
    summary = summarize(run_summer_day(20_000, 1, FIFO))
    assert summary.cycles == 20_000
    assert summary.mean_share is not None
    assert abs(summary.mean_share - 0.44) <= 0.015
    assert summary.by_surplus["<30"].mean_share == pytest.approx(0.66, abs=0.03)
    assert summary.by_surplus["90-110"].mean_share == pytest.approx(0.185, abs=0.03)
    # Counting no-surplus cycles as zero would give less than the study's 0.44.
    assert summary.mean_share_all_cycles is not None
    assert summary.mean_share_all_cycles < summary.mean_share
    assert sum(s.cycles for s in summary.by_size.values()) == summary.cycles
    assert sum(s.cycles for s in summary.by_surplus.values()) == summary.cycles_with_surplus
    assert summary.injected_with_kwh < summary.injected_without_kwh
    assert summary.peak_injected_with_kw <= summary.peak_injected_without_kw


def test_summary_by_hand() -> None:
    outcomes = [
        CycleOutcome(1, 6, 20.0, 25.0, 20.0, "exhausted"),
        CycleOutcome(2, 12, 100.0, 20.0, 20.0, "all_replied"),
        CycleOutcome(3, 25, -4.0, 9.0, 0.0, "no_surplus"),
    ]
    summary = summarize(outcomes)
    assert summary.mean_share == pytest.approx(0.6)
    assert summary.mean_share_all_cycles == pytest.approx(0.4)
    assert summary.energy_share == pytest.approx(40 / 120)
    assert summary.injected_without_kwh == pytest.approx(120 * 0.25)
    assert summary.injected_with_kwh == pytest.approx(80 * 0.25)
    assert summary.peak_injected_without_kw == 100.0
    assert summary.peak_injected_with_kw == 80.0
    assert summary.by_size["<10"].mean_share == 1.0
    assert summary.by_size["20-30"].mean_share is None
    assert summary.by_surplus["90-110"].mean_share == pytest.approx(0.2)
    assert summary.close_reasons == {"exhausted": 1, "all_replied": 1, "no_surplus": 1}


@pytest.mark.parametrize(
    ("surplus_kw", "label"),
    [
        (-1.0, None),
        (0.0, None),
        (0.5, "<30"),
        (29.99, "<30"),
        (30.0, "30-60"),
        (89.0, "60-90"),
        (90.0, "90-110"),
        (110.0, "90-110"),
        (110.5, ">110"),
    ],
)
def test_surplus_classes(surplus_kw: float, label: str | None) -> None:
    assert surplus_class(surplus_kw) == label


@pytest.mark.parametrize(
    ("sites", "label"),
    [(5, "<10"), (9, "<10"), (10, "10-20"), (19, "10-20"), (20, "20-30"), (30, "20-30")],
)
def test_size_classes(sites: int, label: str) -> None:
    assert size_class(sites) == label


def test_figures_plot_the_cycles() -> None:
    from ems.simulation import plots

    outcomes = _run(40, 1)
    with_surplus = [o for o in outcomes if o.share_used is not None]
    fig17 = plots.share_per_cycle(outcomes, 0.4)
    assert len(fig17.axes[0].patches) == 40
    fig18 = plots.share_vs_sites(outcomes)
    assert len(fig18.axes[0].collections[0].get_offsets()) == len(with_surplus)
    fig19 = plots.share_vs_surplus(outcomes)
    assert len(fig19.axes[0].collections[0].get_offsets()) == len(with_surplus)
    fig20 = plots.injection_per_cycle(outcomes)
    without, with_ = fig20.axes[0].lines
    assert list(without.get_ydata()) == [o.injected_without_kw for o in outcomes]
    assert list(with_.get_ydata()) == [o.injected_with_kw for o in outcomes]


# The CLI ---------------------------------------------------------------------------


def _main(argv: list[str]) -> int:
    from ems.cli import main

    return main(argv)


def test_cli_cases_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert _main(["simulate", "cases", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["strategy"] == "fifo"
    cases = data["cases"]
    assert [c["case"] for c in cases] == [0, 1, 2]
    assert [c["close_reason"] for c in cases] == ["no_surplus", "exhausted", "all_replied"]
    assert cases[0]["surplus_kw"] == -7.0 and cases[0]["allocated_kw"] == 0.0
    assert cases[1]["allocated_kw"] == 30.0 and cases[1]["share_used"] == 1.0
    assert round(cases[2]["allocated_kw"], 2) == 50.48
    assert round(100 * cases[2]["share_used"], 2) == 75.34
    row = cases[1]["sites"][0]
    assert set(row) == {"site", "net_load_kw", "flex_kw", "delay_s", "alloc_kw", "rank", "status"}


def test_cli_cases_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert _main(["simulate", "cases"]) == 0
    out = capsys.readouterr().out
    for text in (
        "Case 0",
        "Case 1",
        "Case 2",
        "-7.00 kW",
        "30.00 kW",
        "50.48 kW",
        "75.34 %",
        "partly served",
        "no_surplus",
        "exhausted",
        "all_replied",
    ):
        assert text in out


def test_cli_summer_day_json(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["simulate", "summer-day", "--cycles", "40", "--seed", "1", "--json"]
    assert _main(argv) == 0
    first = capsys.readouterr().out
    data = json.loads(first)
    assert data["params"] == {"cycles": 40, "seed": 1, "strategy": "fifo", "reply_timeout_s": 15.0}
    summary = data["summary"]
    assert 0.0 <= summary["mean_share"] <= 1.0
    for key in ("by_size", "by_surplus", "injection", "close_reasons", "cycles_with_surplus"):
        assert key in summary
    assert set(summary["by_size"]) == {"<10", "10-20", "20-30"}
    assert {"<30", "90-110"} <= set(summary["by_surplus"])
    assert set(summary["injection"]) >= {
        "without_kwh",
        "with_kwh",
        "peak_without_kw",
        "peak_with_kw",
    }
    assert [c["cycle"] for c in data["cycles"]] == list(range(1, 41))
    expected = summarize(run_summer_day(40, 1, FIFO))
    assert summary["mean_share"] == pytest.approx(expected.mean_share)
    assert _main(argv) == 0
    assert capsys.readouterr().out == first


def test_cli_summer_day_long_runs_print_only_the_summary(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert _main(["simulate", "summer-day", "--cycles", "300", "--json"]) == 0
    assert "cycles" not in json.loads(capsys.readouterr().out)
    assert _main(["simulate", "summer-day", "--cycles", "300", "--json", "--table"]) == 0
    assert len(json.loads(capsys.readouterr().out)["cycles"]) == 300
    assert _main(["simulate", "summer-day", "--cycles", "300"]) == 0
    captured = capsys.readouterr()
    assert "mean share of the surplus used" in captured.out
    assert "injected w/o kW" not in captured.out
    assert "300 cycles simulated" in captured.err


def test_cli_rejects_unknown_strategy_and_bad_numbers(
    capsys: pytest.CaptureFixture[str],
) -> None:
    for argv in (
        ["simulate", "summer-day", "--strategy", "nope"],
        ["simulate", "summer-day", "--cycles", "0"],
        ["simulate", "summer-day", "--reply-timeout", "0"],
    ):
        with pytest.raises(SystemExit) as exc:
            _main(argv)
        assert exc.value.code == 2
    assert "invalid choice" in capsys.readouterr().err

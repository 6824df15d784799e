"""Exact examples for each allocation strategy beyond FIFO (central/core/strategies/).

The contract every strategy keeps (caps, ranks, close reasons) is checked in
tests/contract/test_strategies_contract.py; here each strategy's own rule is
pinned on small instances worked out by hand, and the optimum is checked
against brute force.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from central.core import Cycle, Offer, Strategy, StrategyState, get_strategy
from central.core.cycle import LoadOffer
from central.core.dayahead import plan_day
from central.core.strategies.fair_rotation import FairRotation
from central.core.strategies.milp import Milp, OptimumSession
from central.core.strategies.optimum import Problem, SolverError, allocate_optimum
from central.core.strategies.rules import fill_in_order

CYCLE = "2026-06-21T12:15:00Z"


def offer(
    site: str,
    flex_kw: float,
    at_s: float,
    min_kw: float | None = None,
    *,
    until_s: float | None = None,
    energy_kwh: float | None = None,
    priority: int | None = None,
) -> Offer:
    loads: tuple[LoadOffer, ...] = ()
    if min_kw is not None or until_s is not None or priority is not None:
        loads = (
            LoadOffer(
                f"{site}-l",
                min_kw or 0.0,
                flex_kw,
                until_s=until_s,
                energy_kwh=energy_kwh,
                priority=priority,
            ),
        )
    return Offer(site, CYCLE, flex_kw, at_s, loads)


def run(
    strategy: Strategy | str,
    surplus_kw: float,
    offers: Sequence[Offer],
    sites: Sequence[str] | None = None,
    *,
    state: StrategyState | None = None,
    deadline_s: float = 30.0,
) -> tuple[Cycle, dict[str, float], StrategyState]:
    """Feed ``offers`` in order, ticking the cycle's wake-ups as time passes; close at deadline."""
    strat = get_strategy(strategy) if isinstance(strategy, str) else strategy
    names = list(sites) if sites is not None else [o.site for o in offers]
    cycle, _ = Cycle.open(CYCLE, surplus_kw, names, strat, state, deadline_s=deadline_s)
    for o in offers:
        wake = cycle.next_wakeup_s()
        if wake is not None and wake <= o.elapsed_s:
            cycle.tick(wake)
        cycle.offer(o)
    cycle.tick(deadline_s)
    assert cycle.closed
    return cycle, {d.site: d.alloc_kw for d in cycle.decisions}, cycle.settle(state)


# fifo_min_power -------------------------------------------------------------------


def test_fifo_min_power_skips_a_site_whose_minimum_does_not_fit() -> None:
    offers = [offer("a", 4.0, 1.0, 1.0), offer("b", 3.0, 2.0, 2.0), offer("c", 2.0, 3.0)]
    _, alloc, _ = run("fifo_min_power", 5.0, offers)
    # a takes 4; 1 kW left is below b's 2 kW minimum: b gets 0; c (no loads) takes the 1.
    assert alloc == {"a": 4.0, "b": 0.0, "c": 1.0}
    _, fifo, _ = run("fifo", 5.0, offers)
    assert fifo == {"a": 4.0, "b": 1.0}  # exhausted: c's reply comes after close


def test_fifo_min_power_takes_the_smallest_minimum_among_a_sites_loads() -> None:
    loads = (LoadOffer("heater", 3.0, 3.0), LoadOffer("ev", 1.4, 3.7))
    _, alloc, _ = run("fifo_min_power", 2.0, [Offer("a", CYCLE, 6.7, 1.0, loads)])
    assert alloc == {"a": 2.0}


def test_fifo_min_power_without_loads_is_fifo() -> None:
    offers = [offer("a", 3.0, 1.0), offer("b", 4.0, 2.0), offer("c", 5.0, 3.0)]
    assert run("fifo_min_power", 8.5, offers)[1] == run("fifo", 8.5, offers)[1]


# proportional and equal -----------------------------------------------------------


def test_proportional_waits_for_all_replies_then_scales_every_offer_alike() -> None:
    cycle, _ = Cycle.open(CYCLE, 6.0, ["a", "b", "c"], get_strategy("proportional"), deadline_s=30)
    assert cycle.offer(offer("a", 2.0, 1.0)).decisions == []
    assert cycle.offer(offer("b", 4.0, 2.0)).decisions == []
    step = cycle.offer(offer("c", 6.0, 3.0))
    assert step.closed == "all_replied"
    assert [(d.site, d.alloc_kw, d.rank) for d in step.decisions] == [
        ("a", 1.0, 1),
        ("b", 2.0, 2),
        ("c", 3.0, 3),
    ]


def test_proportional_decides_the_repliers_at_the_deadline() -> None:
    cycle, alloc, _ = run(
        "proportional", 3.0, [offer("a", 2.0, 1.0), offer("b", 4.0, 2.0)], sites=["a", "b", "c"]
    )
    assert cycle.close_reason == "deadline"
    assert alloc == pytest.approx({"a": 1.0, "b": 2.0})


def test_proportional_gives_everyone_its_offer_when_the_offers_fit() -> None:
    _, alloc, _ = run("proportional", 10.0, [offer("a", 2.0, 1.0), offer("b", 4.0, 2.0)])
    assert alloc == {"a": 2.0, "b": 4.0}


def test_equal_shares_are_capped_and_the_remainder_water_filled() -> None:
    offers = [offer("a", 5.0, 1.0), offer("b", 1.0, 2.0), offer("c", 6.0, 3.0)]
    _, alloc, _ = run("equal", 9.0, offers)
    # 3 each would exceed b's 1 kW: b gets 1, the 8 left split 4 / 4.
    assert alloc == pytest.approx({"a": 4.0, "b": 1.0, "c": 4.0})
    _, alloc, _ = run("equal", 9.0, [offer("a", 2.0, 1.0), offer("b", 2.5, 2.0)])
    assert alloc == {"a": 2.0, "b": 2.5}


# deadline -------------------------------------------------------------------------


def test_deadline_serves_the_least_slack_first_after_the_window_then_fifo() -> None:
    offers = [
        offer("a", 4.0, 1.0),  # no deadline: last
        offer("b", 4.0, 2.0, until_s=3600.0, energy_kwh=2.0),  # must start by 1800 s
        offer("c", 3.0, 3.0, until_s=1000.0),  # must be done by 1000 s
        offer("d", 5.0, 6.0),  # after the window: first come, first served
    ]
    strategy = get_strategy("deadline")
    cycle, _ = Cycle.open(CYCLE, 12.0, "abcd", strategy, deadline_s=30.0)
    assert cycle.next_wakeup_s() == 5.0
    for o in offers[:3]:
        assert cycle.offer(o).decisions == []
    step = cycle.tick(5.0)
    assert [(d.site, d.alloc_kw, d.rank) for d in step.decisions] == [
        ("c", 3.0, 3),
        ("b", 4.0, 2),
        ("a", 4.0, 1),
    ]
    assert cycle.next_wakeup_s() == 30.0
    step = cycle.offer(offers[3])
    assert [(d.site, d.alloc_kw, d.rank) for d in step.decisions] == [("d", 1.0, 4)]
    assert step.closed == "exhausted"


def test_deadline_puts_an_urgent_load_before_a_faster_replier_when_power_is_short() -> None:
    offers = [offer("fast", 3.0, 0.5), offer("ev", 3.0, 2.0, 1.4, until_s=1800.0, energy_kwh=5)]
    _, alloc, _ = run("deadline", 3.0, offers)
    assert alloc == {"ev": 3.0, "fast": 0.0}
    assert run("fifo", 3.0, offers)[1] == {"fast": 3.0}  # exhausted before ev replied


def test_deadline_window_is_a_constructor_parameter() -> None:
    assert get_strategy("deadline", window_s=2.0).begin  # type: ignore[truthy-function]
    with pytest.raises(ValueError, match="window_s"):
        get_strategy("deadline", window_s=-1.0)
    with pytest.raises(TypeError):
        get_strategy("deadline", nope=1)


# fair_rotation --------------------------------------------------------------------


def test_fair_rotation_rotates_the_surplus_across_cycles_through_its_ledger() -> None:
    offers = [offer("a", 3.0, 1.0), offer("b", 3.0, 2.0)]  # a is always the faster
    state: StrategyState = {}
    winners = []
    for _ in range(4):
        _, alloc, state = run("fair_rotation", 3.0, offers, state=state)
        winners.append(max(alloc, key=lambda s: alloc[s]))
    assert winners == ["a", "b", "a", "b"]
    assert set(state["ledger_kwh"]) == {"a", "b"}
    fifo_winners = {max(a, key=lambda s: a[s]) for a in (run("fifo", 3.0, offers)[1],)}
    assert fifo_winners == {"a"}


def test_fair_rotation_ledger_decays_and_adds_the_cycles_energy() -> None:
    strategy = FairRotation(half_life_cycles=1.0, period_h=0.25)
    start: StrategyState = {"ledger_kwh": {"a": 2.0, "gone": 0.0015}, "other": 1}
    _, alloc, state = run(strategy, 4.0, [offer("a", 4.0, 1.0)], state=start)
    assert alloc == {"a": 4.0}
    # a: 2.0 halved + 4 kW x 0.25 h; "gone" decays under 1 Wh and is dropped.
    assert state == {"ledger_kwh": {"a": 2.0}, "other": 1}


def test_fair_rotation_serves_the_lowest_ledger_first_in_the_window() -> None:
    state: StrategyState = {"ledger_kwh": {"a": 5.0, "b": 1.0}}
    offers = [offer("a", 3.0, 1.0), offer("b", 3.0, 2.0), offer("c", 3.0, 3.0)]
    _, alloc, _ = run("fair_rotation", 6.0, offers, state=state)
    assert alloc == {"c": 3.0, "b": 3.0, "a": 0.0}


# milp -----------------------------------------------------------------------------

STRANDING = [offer("a", 6.0, 1.0, 6.0), offer("b", 5.0, 2.0, 5.0), offer("c", 5.0, 3.0, 5.0)]
"""Three loads that only run whole: FIFO gives a 6 kW and strands 4 of the 10 kW."""


def test_milp_beats_fifo_where_fifo_strands_power() -> None:
    _, fifo, _ = run("fifo_min_power", 10.0, STRANDING)
    assert fifo == {"a": 6.0, "b": 0.0, "c": 0.0}
    _, plain_fifo, _ = run("fifo", 10.0, STRANDING)
    assert plain_fifo == {"a": 6.0, "b": 4.0}  # b's 4 kW cannot run its 5 kW load
    cycle, alloc, state = run("milp", 10.0, STRANDING)
    assert alloc == pytest.approx({"a": 0.0, "b": 5.0, "c": 5.0}, abs=1e-6)
    assert cycle.close_reason == "all_replied"
    assert state["last_method"] == "solver"
    assert state["fallbacks"] == 0 and state["last_fallback_reason"] is None


def test_milp_weights_by_priority_when_asked() -> None:
    offers = [
        offer("a", 6.0, 1.0, 6.0, priority=10),
        offer("b", 5.0, 2.0, 5.0),
        offer("c", 5.0, 3.0, 5.0),
    ]
    _, alloc, _ = run(Milp(priority_weight=0.1), 10.0, offers)
    # a: 6 x 2.0 = 12 beats b + c: 10 x 1.0.
    assert alloc == pytest.approx({"a": 6.0, "b": 0.0, "c": 0.0}, abs=1e-6)


def test_milp_falls_back_to_fifo_min_power_on_a_tiny_time_limit() -> None:
    _, alloc, state = run(Milp(time_limit_s=1e-9), 10.0, STRANDING)
    assert alloc == {"a": 6.0, "b": 0.0, "c": 0.0}
    assert state["last_method"] == "fallback"
    assert state["last_fallback_reason"] == "status:Time limit reached"
    assert state["fallbacks"] == 1


def test_milp_falls_back_on_a_solver_failure_and_counts_it_across_cycles() -> None:
    def broken(problem: Problem, time_limit_s: float) -> list[float]:
        raise RuntimeError("solver crashed")

    strategy = Milp(solve=broken)
    session = strategy.begin(
        Cycle.open(CYCLE, 10.0, "abc", strategy, deadline_s=30.0)[0].context, {}
    )
    assert isinstance(session, OptimumSession)
    grants = session.on_close(STRANDING, 10.0)
    assert session.fallback_used
    assert session.fallback_reason == "error:RuntimeError: solver crashed"
    assert [tuple(g) for g in grants] == [("a", 6.0), ("b", 0.0), ("c", 0.0)]
    state: StrategyState = {}
    for _ in range(2):
        _, alloc, state = run(strategy, 10.0, STRANDING, state=state)
        assert alloc == {"a": 6.0, "b": 0.0, "c": 0.0}
    assert state["fallbacks"] == 2


@pytest.mark.parametrize(
    "answer",
    [[0.0, 5.0], [0.0, 5.0, 5.0, 1.0], [0.0, 2.0, 5.0], [6.0, 5.0, 5.0], [float("nan")] * 3],
)
def test_milp_distrusts_a_solution_that_breaks_the_model(answer: list[float]) -> None:
    outcome = allocate_optimum(STRANDING, 10.0, solve=lambda p, t: answer)
    assert outcome.fallback_used and outcome.fallback_reason == "invalid_solution"
    assert outcome.grants == fill_in_order(STRANDING, 10.0)


def test_milp_reports_a_non_optimal_status_as_a_fallback() -> None:
    def infeasible(problem: Problem, time_limit_s: float) -> list[float]:
        raise SolverError("status:Infeasible")

    outcome = allocate_optimum(STRANDING, 10.0, solve=infeasible)
    assert (outcome.method, outcome.fallback_reason) == ("fallback", "status:Infeasible")


def test_milp_skips_the_solver_when_the_answer_is_known() -> None:
    def never(problem: Problem, time_limit_s: float) -> list[float]:
        raise AssertionError("the solver should not run")

    assert allocate_optimum(STRANDING, 20.0, solve=never).method == "all_fit"
    no_minimums = [offer("a", 6.0, 1.0), offer("b", 5.0, 2.0)]
    assert allocate_optimum(no_minimums, 8.0, solve=never).method == "fifo_optimal"


def brute_force_kw(mins: Sequence[float], maxs: Sequence[float], cap: float) -> float:
    """max sum x over x_i in {0} U [min_i, max_i], sum x <= cap, by enumerating who runs."""
    best = 0.0
    for chosen in itertools.product((False, True), repeat=len(mins)):
        lo = sum(m for m, c in zip(mins, chosen, strict=True) if c)
        hi = sum(m for m, c in zip(maxs, chosen, strict=True) if c)
        if lo <= cap:
            best = max(best, min(hi, cap))
    return best


@settings(max_examples=40, deadline=None)
@given(
    sites=st.lists(st.tuples(st.integers(1, 1100), st.integers(0, 100)), min_size=1, max_size=7),
    cap_share=st.integers(10, 90),
)
def test_milp_matches_brute_force_and_never_does_worse_than_fifo(
    sites: list[tuple[int, int]], cap_share: int
) -> None:
    flex = [f / 100 for f, _ in sites]
    mins = [f * m / 100 for f, m in zip(flex, (m for _, m in sites), strict=True)]
    offers = [
        offer(f"s{i}", f, float(i), m) for i, (f, m) in enumerate(zip(flex, mins, strict=True))
    ]
    cap = sum(flex) * cap_share / 100
    outcome = allocate_optimum(offers, cap)
    assert not outcome.fallback_used
    total = sum(g.alloc_kw for g in outcome.grants)
    assert total <= cap + 1e-9
    for g, m, f in zip(outcome.grants, mins, flex, strict=True):
        assert g.alloc_kw == 0.0 or m - 1e-9 <= g.alloc_kw <= f + 1e-9
    assert total >= sum(g.alloc_kw for g in fill_in_order(offers, cap)) - 1e-6
    assert total == pytest.approx(brute_force_kw(mins, flex, cap), abs=1e-5)


# window ---------------------------------------------------------------------------


def test_window_solves_the_collected_replies_then_serves_later_ones_first_come() -> None:
    late = offer("d", 3.0, 7.0)
    cycle, alloc, state = run("window", 12.0, [*STRANDING, late])
    # In the window: a (6) with b or c (5) = 11 of 12; d, later, takes the last 1 kW.
    assert alloc["a"] == pytest.approx(6.0)
    assert sorted([alloc["b"], alloc["c"]]) == pytest.approx([0.0, 5.0])
    assert alloc["d"] == pytest.approx(1.0)
    assert cycle.close_reason == "exhausted"
    assert state["last_method"] == "solver"


def test_window_falls_back_like_milp() -> None:
    _, alloc, state = run(get_strategy("window", time_limit_s=1e-9), 10.0, STRANDING)
    assert alloc == {"a": 6.0, "b": 0.0, "c": 0.0}
    assert state["last_method"] == "fallback" and state["fallbacks"] == 1


# day-ahead plan (model 1) ---------------------------------------------------------


def greedy_quarter_kw(surplus: float, pmax: Sequence[float]) -> float:
    """Per quarter hour, the LP separates: fill sites in any order up to S(h)."""
    left, used = max(surplus, 0.0), 0.0
    for p in pmax:
        take = min(p, left)
        used += take
        left -= take
    return used


def test_plan_day_matches_the_per_quarter_greedy_fill() -> None:
    surplus = [((h * 7) % 23) - 5.0 for h in range(96)]  # some quarters without surplus
    pmax = [[1.0 + (u + h) % 4 for h in range(96)] for u in range(4)]
    x = plan_day(surplus, pmax)
    assert len(x) == 4 and all(len(row) == 96 for row in x)
    for h in range(96):
        column = [x[u][h] for u in range(4)]
        assert all(-1e-9 <= xv <= pmax[u][h] + 1e-9 for u, xv in enumerate(column))
        assert sum(column) <= max(surplus[h], 0.0) + 1e-7
        assert sum(column) == pytest.approx(
            greedy_quarter_kw(surplus[h], [pmax[u][h] for u in range(4)]), abs=1e-7
        )


def test_plan_day_accepts_one_pmax_per_site() -> None:
    x = plan_day([10.0] * 96, [3.0, 4.0])
    assert [sum(row) for row in x] == pytest.approx([3.0 * 96, 4.0 * 96])
    with pytest.raises(ValueError, match="site 0"):
        plan_day([1.0] * 96, [[1.0] * 95])

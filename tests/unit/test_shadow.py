"""Shadow scoring (central/core/shadow.py): pure, deterministic, each strategy on its own state.

The "live" runs here drive the core as the coordinator does: replies in bursts
(``offer_many``), timers fired when due between bursts. Shadow runs replay the
accepted replies one by one; the executed strategy's own shadow must decide
exactly what the live cycle decided.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from central.core import STRATEGIES, Cycle, Offer, get_strategy
from central.core.cycle import Decision, LoadOffer
from central.core.shadow import (
    ShadowInputs,
    ShadowRecord,
    TimedDecision,
    run_shadow,
    score,
)
from central.core.strategies.optimum import Problem, SolverError
from central.core.strategy import Strategy, StrategyState

CYCLE = "2026-06-21T12:15:00Z"
DEADLINE_S = 10.0


def community(seed: int, sites: int = 12, silent: int = 2) -> ShadowInputs:
    """Replies with whole and modulating loads, spread over the deadline; a few sites silent."""
    rng = random.Random(seed)
    offers = []
    for i in range(sites - silent):
        max_kw = round(rng.uniform(0.5, 4.0), 2)
        min_kw = max_kw if rng.random() < 0.5 else round(max_kw * rng.uniform(0.2, 0.8), 2)
        flex = 0.0 if rng.random() < 0.15 else max_kw
        loads = (LoadOffer(f"s{i}-l", min_kw, max_kw, until_s=rng.choice([None, 3600.0])),)
        offers.append(Offer(f"s{i}", CYCLE, flex, round(rng.uniform(0.0, 9.0), 3), loads))
    offers.sort(key=lambda o: o.elapsed_s)
    surplus = round(0.6 * math.fsum(o.flex_kw for o in offers), 2)
    names = frozenset(f"s{i}" for i in range(sites))
    return ShadowInputs(CYCLE, surplus, names, DEADLINE_S, tuple(offers))


def live_run(
    inputs: ShadowInputs, strategy: Strategy, state: StrategyState, burst: int = 3
) -> tuple[Cycle, StrategyState]:
    """The coordinator's way: bursts of replies drained from its queue, where a timer's
    tick event sits between the replies that came before it and those after."""
    cycle, _ = Cycle.open(inputs.cycle, inputs.surplus_kw, inputs.sites, strategy, state,
                          deadline_s=inputs.deadline_s)
    replies = list(inputs.replies)
    while replies and not cycle.closed:
        wake = cycle.next_wakeup_s()
        if wake is not None and wake < inputs.deadline_s and wake <= replies[0].elapsed_s:
            cycle.tick(wake)
            continue
        chunk = replies[:burst]
        if wake is not None:
            chunk = [o for o in chunk if o.elapsed_s < wake]
        replies = replies[len(chunk):]
        cycle.offer_many(chunk)
    while not cycle.closed:
        wake = cycle.next_wakeup_s()
        cycle.tick(wake if wake is not None else inputs.deadline_s)
    return cycle, cycle.settle(state)


@pytest.mark.parametrize("name", sorted(STRATEGIES))
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_executed_strategy_s_own_shadow_equals_the_live_cycle(name: str, seed: int) -> None:
    inputs = community(seed)
    live, live_state = live_run(inputs, get_strategy(name), {})
    shadow = run_shadow(inputs, name, get_strategy(name), {})
    assert [(d.decision.site, d.decision.alloc_kw, d.decision.rank) for d in shadow.decisions] \
        == [(d.site, d.alloc_kw, d.rank) for d in live.decisions]
    assert shadow.score.allocated_kw == pytest.approx(live.allocated_kw, abs=1e-9)
    assert shadow.state == live_state
    # The live decisions scored the same way give the same figures.
    live_timed = [TimedDecision(d, t.decided_s) for d, t in
                  zip(live.decisions, shadow.decisions, strict=True)]
    assert score(inputs, live_timed, fallback=shadow.score.fallback) == shadow.score


def test_fifo_shadow_times_are_the_arrivals() -> None:
    inputs = community(4)
    shadow = run_shadow(inputs, "fifo", get_strategy("fifo"), {})
    assert all(t.decided_s == t.decision.elapsed_s for t in shadow.decisions)
    served = [t.decided_s for t in shadow.decisions if t.decision.alloc_kw > 0]
    assert shadow.score.elapsed_s == pytest.approx(sum(served) / len(served))


def test_a_windowed_strategy_decides_the_collected_replies_at_its_window() -> None:
    inputs = ShadowInputs(CYCLE, 7.0, frozenset({"a", "b", "c"}), DEADLINE_S, (
        Offer("a", CYCLE, 3.0, 1.0), Offer("b", CYCLE, 3.0, 2.0), Offer("c", CYCLE, 3.0, 7.0),
    ))
    out = run_shadow(inputs, "deadline", get_strategy("deadline", window_s=5.0), {})
    times = {t.decision.site: t.decided_s for t in out.decisions}
    assert times == {"a": 5.0, "b": 5.0, "c": 7.0}
    assert out.close_reason == "exhausted"


@settings(max_examples=40, deadline=None)
@given(
    flex=st.lists(st.floats(0.0, 8.0, allow_nan=False), min_size=1, max_size=15),
    surplus=st.floats(0.1, 60.0, allow_nan=False),
    name=st.sampled_from(sorted(set(STRATEGIES) - {"milp", "window"})),
)
def test_shadow_runs_are_deterministic_and_keep_the_contract(
    flex: list[float], surplus: float, name: str
) -> None:
    offers = tuple(Offer(f"s{i}", CYCLE, kw, i * 0.5) for i, kw in enumerate(flex))
    inputs = ShadowInputs(CYCLE, surplus, frozenset(o.site for o in offers), DEADLINE_S, offers)
    first = run_shadow(inputs, name, get_strategy(name), {})
    again = run_shadow(inputs, name, get_strategy(name), {})
    assert first == again
    s = first.score
    assert s.allocated_kw <= surplus + 1e-9
    assert s.share is not None and 0.0 <= s.share <= 1.0 + 1e-9
    assert s.usable_kw == pytest.approx(s.allocated_kw)  # no loads listed: all usable
    assert s.sites_served == sum(1 for t in first.decisions if t.decision.alloc_kw > 0)
    if s.jain is not None:
        assert 0.0 < s.jain <= 1.0 + 1e-12


def test_fair_rotation_shadow_state_is_its_own() -> None:
    a_first = ShadowInputs(CYCLE, 3.0, frozenset({"a", "b"}), DEADLINE_S, (
        Offer("a", CYCLE, 3.0, 1.0), Offer("b", CYCLE, 3.0, 2.0),
    ))
    executed_state: dict[str, object] = {"ledger_kwh": {"b": 5.0}}
    shadow_state: StrategyState = {}
    strategy = get_strategy("fair_rotation")
    out = run_shadow(a_first, "fair_rotation", strategy, shadow_state)
    assert shadow_state == {} and executed_state == {"ledger_kwh": {"b": 5.0}}
    assert out.state == {"ledger_kwh": {"a": 0.75}}  # a came first and got it all
    # The next cycle b replies first again... the shadow ledger puts b ahead now.
    second = ShadowInputs("next", 3.0, frozenset({"a", "b"}), DEADLINE_S, (
        Offer("a", "next", 3.0, 1.0), Offer("b", "next", 3.0, 2.0),
    ))
    out2 = run_shadow(second, "fair_rotation", strategy, out.state)
    got = {t.decision.site: t.decision.alloc_kw for t in out2.decisions}
    assert got == {"a": 0.0, "b": 3.0}
    # With the executed strategy's ledger (b owed nothing) a would have gone first.
    other = run_shadow(second, "fair_rotation", strategy, executed_state)
    assert {t.decision.site: t.decision.alloc_kw for t in other.decisions} == {"a": 3.0, "b": 0.0}


def _failing_solver(problem: Problem, time_limit_s: float) -> list[float]:
    raise SolverError("status:Time limit reached")


def test_a_solver_fallback_is_flagged() -> None:
    # Whole loads 3, 3, 4 on 7 kW: FIFO strands 1 kW, so the solver is asked.
    offers = tuple(
        Offer(s, CYCLE, kw, i, (LoadOffer(f"{s}-l", kw, kw),))
        for i, (s, kw) in enumerate([("a", 3.0), ("b", 3.0), ("c", 4.0)])
    )
    inputs = ShadowInputs(CYCLE, 7.0, frozenset({"a", "b", "c"}), DEADLINE_S, offers)
    good = run_shadow(inputs, "milp", get_strategy("milp"), {})
    assert not good.score.fallback and good.score.allocated_kw == pytest.approx(7.0)
    bad = run_shadow(inputs, "milp", get_strategy("milp", solve=_failing_solver), {})
    assert bad.score.fallback and bad.score.allocated_kw == pytest.approx(6.0)
    assert bad.state["fallbacks"] == 1


def test_score_figures() -> None:
    offers = (
        Offer("a", CYCLE, 3.0, 1.0, (LoadOffer("a1", 2.0, 2.0), LoadOffer("a2", 1.5, 1.5))),
        Offer("b", CYCLE, 2.0, 2.0),  # no loads listed: counts as usable
        Offer("c", CYCLE, 0.0, 3.0),  # offered nothing: not in Jain's index
        Offer("d", CYCLE, 1.0, 4.0),
    )
    inputs = ShadowInputs(CYCLE, 5.0, frozenset("abcd"), DEADLINE_S, offers)
    decisions: Sequence[TimedDecision] = [
        TimedDecision(Decision("a", 3.0, 1, 3.0, 1.0), 1.0),
        TimedDecision(Decision("b", 2.0, 2, 2.0, 2.0), 2.0),
        TimedDecision(Decision("c", 0.0, 3, 0.0, 3.0), 3.0),
        TimedDecision(Decision("d", 0.0, 4, 1.0, 4.0), 4.0),
    ]
    s = score(inputs, decisions)
    assert s.allocated_kw == 5.0 and s.share == 1.0
    assert s.usable_kw == pytest.approx(2.0 + 2.0)  # a: only the 2 kW load fits in 3 kW
    assert s.usable_share == pytest.approx(0.8)
    assert s.sites_served == 2
    assert s.jain == pytest.approx(25.0 / (3 * 13.0))  # (3+2+0)^2 / (3 (9+4+0))
    assert s.elapsed_s == pytest.approx(1.5)
    assert not s.fallback
    none = score(ShadowInputs(CYCLE, 0.0, frozenset(), DEADLINE_S, ()), [])
    assert none.share is None and none.jain is None and none.elapsed_s is None


def test_records_carry_scores_and_failures() -> None:
    inputs = community(5)
    out = run_shadow(inputs, "equal", get_strategy("equal"), {})
    row = ShadowRecord.scored(CYCLE, "equal", out.score, 0.01)
    assert row.status == "ok" and row.share == out.score.share and row.error is None
    assert row.usable_share == pytest.approx(out.score.usable_share)
    failed = ShadowRecord.failed(CYCLE, "x", 4.0, "error", "ValueError: no")
    assert failed.allocated_kw is None and failed.usable_share is None and not failed.fallback

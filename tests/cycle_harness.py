"""Random cycle scenarios, a driver and the cycle's contract, shared by the tests.

``tests/unit/test_cycle_properties.py`` (FIFO's exact outcome, strategies that
lie) and ``tests/contract/test_strategies_contract.py`` (every registered
strategy) drive the same scenarios through :class:`central.core.Cycle` and hold
the result to the same contract (PROTOCOL.md "One cycle"): never more than S in
total, never more than a site's offer, each site once, rank = arrival order,
nothing after close, stale ids never decided, a consistent close reason.

Imported as a plain module: pytest puts ``tests/`` (the conftest's folder) on
``sys.path``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pytest
from hypothesis import strategies as st

from central.core import EPSILON_KW, Cycle, Offer, Step, Strategy, StrategyState, get_strategy
from central.core.cycle import LoadOffer

CURRENT = "2026-06-21T12:15:00Z"
OLD = "2026-06-21T12:00:00Z"
TOL_KW = 1e-9
CLOSE_REASONS = {"no_surplus", "exhausted", "all_replied", "deadline"}


@dataclass(frozen=True)
class Tick:
    elapsed_s: float


Event = Offer | Tick


@dataclass(frozen=True)
class Scenario:
    surplus_kw: float
    sites: tuple[str, ...]
    deadline_s: float
    events: tuple[Event, ...]
    seed: int = 0


def _event(
    raw: tuple[int, int, bool, int, int, int], sites: tuple[str, ...], deadline_s: float
) -> Event:
    kind, site_index, stale, flex_raw, time_raw, load_raw = raw
    # time_raw in 0..1100: about one event in eleven comes at or after the deadline.
    elapsed_s = deadline_s * time_raw / 1000
    if kind == 0:
        return Tick(elapsed_s)
    site = sites[site_index] if site_index < len(sites) else "intruder"
    # 0.01 kW steps as in the study; negative raw values are sub-epsilon dust.
    flex_kw = flex_raw / 100 if flex_raw >= 0 else -flex_raw * 3e-10
    # With loads, half the replies list one load with a minimum power (some above the
    # offer) and a deadline, so the strategies that read loads (minimums, urgency, the
    # optimum) are held to the contract too.
    loads: tuple[LoadOffer, ...] = ()
    if load_raw > 0:
        until_s = 60.0 * load_raw if load_raw % 2 else None
        loads = (LoadOffer("l", flex_kw * load_raw / 10, flex_kw, until_s=until_s),)
    return Offer(site, OLD if stale else CURRENT, flex_kw, elapsed_s, loads)


@st.composite
def scenarios(
    draw: st.DrawFn, max_sites: int = 12, max_events: int = 30, *, loads: bool = False
) -> Scenario:
    """Random surplus, sites and events (ticks, stale, duplicate and unknown replies).

    ``loads=True`` adds per-load minimums and deadlines to half the replies and a
    random seed, for the strategies that read them.
    """
    # Integers are drawn and scaled: far cheaper to generate than nested floats.
    sites = tuple(f"s{i}" for i in range(draw(st.integers(0, max_sites))))
    pick = draw(st.integers(0, 9))
    if pick == 0:  # no surplus (S <= 0)
        surplus_kw = draw(st.integers(-2000, 0)) / 100
    elif pick == 1:  # edges: at and just above the epsilon, a non-decimal value
        surplus_kw = draw(st.sampled_from([EPSILON_KW, 2 * EPSILON_KW, 1 / 3, 30.0]))
    else:  # mostly small surpluses, where replies can exhaust it
        surplus_kw = draw(st.integers(1, 3000 if pick < 6 else 15000)) / 100
    deadline_s = draw(st.sampled_from([0.5, 10.0, 30.0, 60.0]))
    count = draw(st.integers(0, max_events))  # hypothesis' own lists average ~5 items
    load_raws = st.integers(-10, 12).map(lambda r: max(r, 0)) if loads else st.just(0)
    raws = draw(
        st.lists(
            st.tuples(
                st.integers(0, 5),  # 0: a tick, else a reply
                st.integers(0, len(sites)),  # len(sites): a site never asked
                st.integers(0, 5).map(lambda r: r == 0),  # one in six is stale
                st.integers(-5, 1200),
                st.integers(0, 1100),
                load_raws,
            ),
            min_size=count,
            max_size=count,
        )
    )
    seed = draw(st.integers(0, 2**32 - 1)) if loads else 0
    events = tuple(_event(raw, sites, deadline_s) for raw in raws)
    return Scenario(surplus_kw, sites, deadline_s, events, seed)


@dataclass
class Run:
    scenario: Scenario
    cycle: Cycle
    opened: Step
    steps: list[tuple[Event, Step]] = field(default_factory=list)
    final: Step | None = None


def drive(
    scenario: Scenario, strategy: Strategy | str, state: StrategyState | None = None
) -> Run:
    """Feed the scenario one call at a time, then tick the deadline."""
    cycle, opened = Cycle.open(
        CURRENT,
        scenario.surplus_kw,
        scenario.sites,
        get_strategy(strategy) if isinstance(strategy, str) else strategy,
        state,
        deadline_s=scenario.deadline_s,
        seed=scenario.seed,
    )
    run = Run(scenario, cycle, opened)
    wake = cycle.next_wakeup_s()
    if not cycle.closed:
        assert wake is not None and 0 <= wake <= scenario.deadline_s
    for event in scenario.events:
        if isinstance(event, Tick):
            run.steps.append((event, cycle.tick(event.elapsed_s)))
        else:
            run.steps.append((event, cycle.offer(event)))
    run.final = cycle.tick(scenario.deadline_s)
    return run


def check_contract(run: Run, *, fifo: bool = False) -> None:
    """The cycle's contract, whatever the strategy (plus FIFO's exact outcome)."""
    sc = run.scenario
    cycle = run.cycle
    cap_kw = max(sc.surplus_kw, 0.0)
    sites = set(sc.sites)
    assert run.final is not None
    steps = [run.opened, *(step for _, step in run.steps), run.final]

    # Every decision is reported exactly once, in the step that took it.
    assert [d for step in steps for d in step.decisions] == cycle.decisions

    # Exactly one step reports the close, and it matches the cycle.
    closing = [i for i, step in enumerate(steps) if step.closed is not None]
    assert len(closing) == 1, [s.closed for s in steps]
    close_at = closing[0]
    reason = steps[close_at].closed
    assert cycle.closed and reason == cycle.close_reason
    assert reason in CLOSE_REASONS
    for step in steps[close_at + 1 :]:
        assert step.decisions == [] and step.closed is None

    # Replay the arrival sequence and check each reply's fate.
    accepted: list[Offer] = []
    accepted_at: dict[str, int] = {}
    closed_before = close_at == 0
    for index, (event, step) in enumerate(run.steps, start=1):
        if isinstance(event, Tick):
            if not closed_before and event.elapsed_s >= sc.deadline_s:
                assert step.closed == "deadline"
            assert step.ignored == []
        else:
            if closed_before:
                expected = "closed"
            elif event.cycle != CURRENT:
                expected = "stale"
            elif event.site in accepted_at:
                expected = "duplicate"
            elif event.site not in sites:
                expected = "not_requested"
            elif event.elapsed_s >= sc.deadline_s:
                expected = "closed"
                assert step.closed == "deadline"
            else:
                expected = None
            if expected is None:
                assert step.ignored == []
                accepted.append(event)
                accepted_at[event.site] = index
            else:
                assert [(i.offer, i.reason) for i in step.ignored] == [(event, expected)]
                if step.closed is None:
                    # (A reply that closes the cycle lets pending replies be decided.)
                    assert step.decisions == []
        closed_before = closed_before or step.closed is not None
    assert cycle.replies == len(accepted)

    # Each accepted reply is decided exactly once, with its arrival rank.
    by_site = {o.site: o for o in accepted}
    rank_of = {o.site: i + 1 for i, o in enumerate(accepted)}
    decided = [d.site for d in cycle.decisions]
    assert len(decided) == len(set(decided)), "a site decided twice"
    assert set(decided) == set(by_site), "every accepted reply is decided by close"
    assert sorted(d.rank for d in cycle.decisions) == list(range(1, len(accepted) + 1))
    for d in cycle.decisions:
        offer = by_site[d.site]  # never a stale, unknown or duplicate reply
        assert offer.cycle == CURRENT and d.site in sites
        assert d.rank == rank_of[d.site]
        assert (d.flex_kw, d.elapsed_s) == (offer.flex_kw, offer.elapsed_s)
        assert 0.0 <= d.alloc_kw <= offer.flex_kw and math.isfinite(d.alloc_kw)
    # A decision never comes before its reply arrived.
    for i, step in enumerate(steps[1:-1], start=1):
        for d in step.decisions:
            assert accepted_at[d.site] <= i, "decided before its reply arrived"

    # Never more than the surplus.
    total_kw = sum(d.alloc_kw for d in cycle.decisions)
    assert total_kw <= cap_kw + TOL_KW
    assert cycle.allocated_kw == pytest.approx(total_kw, abs=TOL_KW)
    assert cycle.remaining_kw == pytest.approx(cap_kw - total_kw, abs=TOL_KW)
    assert cycle.remaining_kw >= -TOL_KW

    # The close reason is consistent with what happened.
    if not sc.surplus_kw > EPSILON_KW:
        assert reason == "no_surplus" and close_at == 0
        assert cycle.decisions == [] and accepted == []
    else:
        assert reason != "no_surplus"
    if reason == "exhausted":
        assert cycle.remaining_kw <= EPSILON_KW
    if reason == "all_replied":
        assert set(by_site) == sites
    if reason == "deadline":
        assert set(by_site) != sites
    assert cycle.next_wakeup_s() is None

    if fifo and reason != "no_surplus":
        offered_kw = sum(o.flex_kw for o in accepted)
        assert total_kw == pytest.approx(min(cap_kw, offered_kw), abs=TOL_KW + 1e-12 * cap_kw)
        # Exhausted exactly when the remainder is dust.
        assert (reason == "exhausted") == (cycle.remaining_kw <= EPSILON_KW)
        # FIFO decides each reply in the step it arrives.
        for event, step in run.steps:
            if isinstance(event, Offer) and not step.ignored:
                assert [d.site for d in step.decisions] == [event.site]

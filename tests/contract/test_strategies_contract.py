"""Every registered strategy, held to the cycle's contract (STYLE.md, tests/contract).

Parametrised over ``central.core.STRATEGIES``: a strategy added to the registry
is covered here without editing this file. Whatever a strategy decides, a
cycle run with it never hands out more than the surplus or more than a site
offered, decides each replying site exactly once with its arrival rank,
decides nothing after close or for a stale reply, closes for a reason that
fits, is deterministic given its inputs and seed, and carries its state from
one cycle to the next.

(The drive-and-check helpers mirror tests/unit/test_cycle_properties.py, which
adds FIFO's exact outcome; each test file stands alone under rootdir discovery.)
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from central.core import (
    EPSILON_KW,
    STRATEGIES,
    Cycle,
    Offer,
    Step,
    StrategyState,
    get_strategy,
)
from central.core.cycle import LoadOffer

NAMES = sorted(STRATEGIES)
CURRENT = "2026-06-21T12:15:00Z"
OLD = "2026-06-21T12:00:00Z"
TOL_KW = 1e-9
CONTRACT = settings(max_examples=120, deadline=None)


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
    elapsed_s = deadline_s * time_raw / 1000  # about one in eleven at or past the deadline
    if kind == 0:
        return Tick(elapsed_s)
    site = sites[site_index] if site_index < len(sites) else "intruder"
    flex_kw = flex_raw / 100 if flex_raw >= 0 else -flex_raw * 3e-10
    # Half the replies list one load with a minimum power (some above the offer) and a
    # deadline, so the strategies that read loads (minimums, urgency, the optimum) are held
    # to the contract too.
    loads: tuple[LoadOffer, ...] = ()
    if load_raw > 0:
        until_s = 60.0 * load_raw if load_raw % 2 else None
        loads = (LoadOffer("l", flex_kw * load_raw / 10, flex_kw, until_s=until_s),)
    return Offer(site, OLD if stale else CURRENT, flex_kw, elapsed_s, loads)


@st.composite
def scenarios(draw: st.DrawFn, max_sites: int = 12, max_events: int = 30) -> Scenario:
    sites = tuple(f"s{i}" for i in range(draw(st.integers(0, max_sites))))
    pick = draw(st.integers(0, 9))
    if pick == 0:
        surplus_kw = draw(st.integers(-2000, 0)) / 100
    elif pick == 1:
        surplus_kw = draw(st.sampled_from([EPSILON_KW, 2 * EPSILON_KW, 1 / 3, 30.0]))
    else:
        surplus_kw = draw(st.integers(1, 3000 if pick < 6 else 15000)) / 100
    deadline_s = draw(st.sampled_from([0.5, 10.0, 30.0, 60.0]))
    count = draw(st.integers(0, max_events))
    raws = draw(
        st.lists(
            st.tuples(
                st.integers(0, 5),
                st.integers(0, len(sites)),
                st.integers(0, 5).map(lambda r: r == 0),
                st.integers(-5, 1200),
                st.integers(0, 1100),
                st.integers(-10, 12).map(lambda r: max(r, 0)),
            ),
            min_size=count,
            max_size=count,
        )
    )
    seed = draw(st.integers(0, 2**32 - 1))
    events = tuple(_event(raw, sites, deadline_s) for raw in raws)
    return Scenario(surplus_kw, sites, deadline_s, events, seed)


@dataclass
class Run:
    scenario: Scenario
    cycle: Cycle
    opened: Step
    steps: list[tuple[Event, Step]] = field(default_factory=list)
    final: Step | None = None


def drive(scenario: Scenario, name: str, state: StrategyState | None = None) -> Run:
    cycle, opened = Cycle.open(
        CURRENT,
        scenario.surplus_kw,
        scenario.sites,
        get_strategy(name),
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


def check_contract(run: Run) -> None:
    sc = run.scenario
    cycle = run.cycle
    cap_kw = max(sc.surplus_kw, 0.0)
    sites = set(sc.sites)
    assert run.final is not None
    steps = [run.opened, *(step for _, step in run.steps), run.final]

    assert [d for step in steps for d in step.decisions] == cycle.decisions
    closing = [i for i, step in enumerate(steps) if step.closed is not None]
    assert len(closing) == 1
    close_at = closing[0]
    reason = steps[close_at].closed
    assert reason == cycle.close_reason
    assert reason in {"no_surplus", "exhausted", "all_replied", "deadline"}
    for step in steps[close_at + 1 :]:
        assert step.decisions == [] and step.closed is None

    accepted: list[Offer] = []
    accepted_at: dict[str, int] = {}
    closed_before = close_at == 0
    for index, (event, step) in enumerate(run.steps, start=1):
        if isinstance(event, Offer):
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
            else:
                expected = None
            if expected is None:
                assert step.ignored == []
                accepted.append(event)
                accepted_at[event.site] = index
            else:
                assert [(i.offer, i.reason) for i in step.ignored] == [(event, expected)]
                if step.closed is None:
                    assert step.decisions == []
        elif not closed_before and event.elapsed_s >= sc.deadline_s:
            assert step.closed == "deadline"
        closed_before = closed_before or step.closed is not None
    assert cycle.replies == len(accepted)

    by_site = {o.site: o for o in accepted}
    rank_of = {o.site: i + 1 for i, o in enumerate(accepted)}
    decided = [d.site for d in cycle.decisions]
    assert len(decided) == len(set(decided)), "a site decided twice"
    assert set(decided) == set(by_site), "every accepted reply is decided by close"
    for d in cycle.decisions:
        offer = by_site[d.site]
        assert offer.cycle == CURRENT
        assert d.rank == rank_of[d.site]
        assert (d.flex_kw, d.elapsed_s) == (offer.flex_kw, offer.elapsed_s)
        assert 0.0 <= d.alloc_kw <= offer.flex_kw and math.isfinite(d.alloc_kw)
    for i, step in enumerate(steps[1:-1], start=1):
        for d in step.decisions:
            assert accepted_at[d.site] <= i, "decided before its reply arrived"

    total_kw = sum(d.alloc_kw for d in cycle.decisions)
    assert total_kw <= cap_kw + TOL_KW
    assert cycle.allocated_kw == pytest.approx(total_kw, abs=TOL_KW)
    assert cycle.remaining_kw == pytest.approx(cap_kw - total_kw, abs=TOL_KW)

    if not sc.surplus_kw > EPSILON_KW:
        assert reason == "no_surplus" and cycle.decisions == [] and accepted == []
    else:
        assert reason != "no_surplus"
    if reason == "exhausted":
        assert cycle.remaining_kw <= EPSILON_KW
    if reason == "all_replied":
        assert set(by_site) == sites
    if reason == "deadline":
        assert set(by_site) != sites


# Registry ---------------------------------------------------------------------


def test_the_registry_is_not_empty_and_has_fifo() -> None:
    assert "fifo" in STRATEGIES


@pytest.mark.parametrize("name", NAMES)
def test_registered_strategy_carries_its_name(name: str) -> None:
    strategy = get_strategy(name)
    assert strategy.name == name
    assert callable(strategy.begin)


def test_unknown_strategy_raises_key_error_naming_the_known_ones() -> None:
    with pytest.raises(KeyError) as info:
        get_strategy("nope")
    message = str(info.value)
    assert "nope" in message
    for name in NAMES:
        assert name in message


# The contract, on random inputs --------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
@CONTRACT
@given(scenario=scenarios())
def test_strategy_keeps_the_cycle_contract(name: str, scenario: Scenario) -> None:
    check_contract(drive(scenario, name))


@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=60, deadline=None)
@given(scenario=scenarios())
def test_strategy_is_deterministic_given_inputs_state_and_seed(
    name: str, scenario: Scenario
) -> None:
    first = drive(scenario, name)
    second = drive(scenario, name)
    assert first.cycle.decisions == second.cycle.decisions
    assert first.cycle.close_reason == second.cycle.close_reason
    assert [s.ignored for _, s in first.steps] == [s.ignored for _, s in second.steps]


@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=20, deadline=None)
@given(cycles=st.lists(scenarios(max_sites=6, max_events=12), min_size=2, max_size=5))
def test_strategy_state_carries_from_cycle_to_cycle(name: str, cycles: list[Scenario]) -> None:
    state: StrategyState = {}
    for scenario in cycles:
        run = drive(scenario, name, state)
        check_contract(run)
        state = run.cycle.settle(state)
        assert isinstance(state, Mapping)


@pytest.mark.parametrize("name", NAMES)
def test_everyone_offering_nothing_gets_zero_and_closes_all_replied(name: str) -> None:
    sites = ("a", "b", "c")
    cycle, _ = Cycle.open(CURRENT, 20.0, sites, get_strategy(name), deadline_s=30.0)
    step = cycle.offer_many([Offer(s, CURRENT, 0.0, float(i)) for i, s in enumerate(sites)])
    assert step.closed == "all_replied"
    assert sorted((d.site, d.alloc_kw, d.rank) for d in cycle.decisions) == [
        ("a", 0.0, 1),
        ("b", 0.0, 2),
        ("c", 0.0, 3),
    ]


@pytest.mark.parametrize("name", NAMES)
def test_a_lone_site_offering_more_than_the_surplus_gets_at_most_the_surplus(name: str) -> None:
    cycle, _ = Cycle.open(CURRENT, 7.5, ("a",), get_strategy(name), deadline_s=30.0)
    cycle.offer(Offer("a", CURRENT, 12.0, 1.0))
    cycle.tick(30.0)
    assert cycle.closed
    (decision,) = cycle.decisions
    assert 0.0 <= decision.alloc_kw <= 7.5
    assert decision.rank == 1


@pytest.mark.parametrize("name", NAMES)
def test_no_surplus_closes_whatever_the_strategy(name: str) -> None:
    cycle, step = Cycle.open(CURRENT, -7.0, ("a", "b"), get_strategy(name), deadline_s=30.0)
    assert step.closed == "no_surplus" and cycle.decisions == []

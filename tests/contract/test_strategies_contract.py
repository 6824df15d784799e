"""Every registered strategy, held to the cycle's contract (STYLE.md, tests/contract).

Parametrised over ``central.core.STRATEGIES``: a strategy added to the registry
is covered here without editing this file. Whatever a strategy decides, a
cycle run with it never hands out more than the surplus or more than a site
offered, decides each replying site exactly once with its arrival rank,
decides nothing after close or for a stale reply, closes for a reason that
fits, is deterministic given its inputs and seed, and carries its state from
one cycle to the next.

(The scenarios, the driver and the contract live in tests/cycle_harness.py, shared
with tests/unit/test_cycle_properties.py; here half the replies carry loads.)
"""

from __future__ import annotations

from collections.abc import Mapping

import pytest
from cycle_harness import CURRENT, Scenario, check_contract, drive
from cycle_harness import scenarios as harness_scenarios
from hypothesis import given, settings
from hypothesis import strategies as st

from central.core import STRATEGIES, Cycle, Offer, StrategyState, get_strategy

NAMES = sorted(STRATEGIES)
CONTRACT = settings(max_examples=120, deadline=None)


def scenarios(max_sites: int = 12, max_events: int = 30) -> st.SearchStrategy[Scenario]:
    return harness_scenarios(max_sites, max_events, loads=True)


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

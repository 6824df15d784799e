"""One allocation cycle, exact examples (PROTOCOL.md "One cycle (FIFO)", DOMAIN.md cases)."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from central.core import (
    EPSILON_KW,
    Cycle,
    CycleContext,
    Decision,
    Grant,
    Ignored,
    Offer,
    Session,
    StrategyState,
    get_strategy,
)

C = "2026-06-21T12:15:00Z"
DEADLINE_S = 30.0
SITES = ("a", "b", "c", "d", "e")


def open_fifo(
    surplus_kw: float, sites: Sequence[str] = SITES, deadline_s: float = DEADLINE_S
) -> Cycle:
    cycle, step = Cycle.open(C, surplus_kw, sites, get_strategy("fifo"), deadline_s=deadline_s)
    assert step.decisions == [] and step.ignored == []
    return cycle


# No surplus -----------------------------------------------------------------


def test_reference_case_0_no_surplus_closes_without_request() -> None:
    # DOMAIN.md case (0): net loads [-5, 5, -9, 2, 0] give S = -7 kW.
    surplus_kw = sum([-5.0, 5.0, -9.0, 2.0, 0.0])
    assert surplus_kw == -7.0
    cycle, step = Cycle.open(C, surplus_kw, SITES, get_strategy("fifo"), deadline_s=DEADLINE_S)
    assert step.closed == "no_surplus"
    assert step.decisions == []
    assert cycle.closed and cycle.close_reason == "no_surplus"
    assert cycle.decisions == []
    assert cycle.allocated_kw == 0.0
    assert cycle.remaining_kw == 0.0
    assert cycle.context.surplus_kw == -7.0
    assert cycle.next_wakeup_s() is None


@pytest.mark.parametrize("surplus_kw", [0.0, -0.0, EPSILON_KW, EPSILON_KW / 2, -1e9, float("nan")])
def test_no_surplus_at_or_below_epsilon(surplus_kw: float) -> None:
    cycle, step = Cycle.open(C, surplus_kw, SITES, get_strategy("fifo"), deadline_s=DEADLINE_S)
    assert step.closed == "no_surplus"
    later = cycle.offer(Offer("a", C, 5.0, 1.0))
    assert later.decisions == []
    assert later.ignored == [Ignored(Offer("a", C, 5.0, 1.0), "closed")]


def test_no_surplus_does_not_even_begin_a_strategy_session() -> None:
    class Exploding:
        name = "exploding"

        def begin(self, context: CycleContext, state: StrategyState) -> Session:
            raise AssertionError("no session without a surplus")

    cycle, step = Cycle.open(C, 0.0, SITES, Exploding(), deadline_s=DEADLINE_S)
    assert step.closed == "no_surplus"
    assert cycle.settle({"kept": 1}) == {"kept": 1}


# Reference case 1: 30 kW, fully allocated -------------------------------------


def test_reference_case_1_last_replier_partly_served_and_closed_exhausted() -> None:
    cycle = open_fifo(30.0)
    s1 = cycle.offer(Offer("c", C, 12.0, 3.0))
    assert s1.decisions == [Decision("c", 12.0, 1, 12.0, 3.0)]
    assert s1.closed is None
    s2 = cycle.offer(Offer("a", C, 10.0, 12.0))
    assert s2.decisions == [Decision("a", 10.0, 2, 10.0, 12.0)]
    assert cycle.remaining_kw == pytest.approx(8.0)
    s3 = cycle.offer(Offer("e", C, 15.0, 24.0))
    assert s3.decisions == [Decision("e", 8.0, 3, 15.0, 24.0)]
    assert s3.closed == "exhausted"
    assert cycle.close_reason == "exhausted"
    assert cycle.allocated_kw == pytest.approx(30.0)
    assert cycle.remaining_kw == pytest.approx(0.0)
    assert cycle.replies == 3
    # The rest get nothing (the study's "cancel the rest").
    late = cycle.offer(Offer("b", C, 5.0, 25.0))
    assert late.decisions == [] and late.ignored[0].reason == "closed"
    assert [d.site for d in cycle.decisions] == ["c", "a", "e"]


def test_an_offer_exactly_equal_to_the_remainder_exhausts() -> None:
    cycle = open_fifo(10.0)
    cycle.offer(Offer("a", C, 4.0, 1.0))
    step = cycle.offer(Offer("b", C, 6.0, 2.0))
    assert step.decisions == [Decision("b", 6.0, 2, 6.0, 2.0)]
    assert step.closed == "exhausted"
    assert cycle.remaining_kw == 0.0


# Reference case 2: everyone served ----------------------------------------------


def test_reference_case_2_all_replied_and_fully_served() -> None:
    # DOMAIN.md case (2): 50.48 kW allocated, 75.34 % of the surplus.
    offers = [("a", 12.5), ("b", 9.98), ("c", 15.0), ("d", 4.0), ("e", 9.0)]
    cycle = open_fifo(67.0)
    decisions = []
    closed = []
    for i, (site, kw) in enumerate(offers):
        step = cycle.offer(Offer(site, C, kw, float(i + 1)))
        decisions += step.decisions
        closed.append(step.closed)
    assert closed == [None, None, None, None, "all_replied"]
    assert [(d.site, d.alloc_kw, d.rank) for d in decisions] == [
        (site, kw, i + 1) for i, (site, kw) in enumerate(offers)
    ]
    assert cycle.allocated_kw == pytest.approx(50.48)
    assert cycle.allocated_kw / 67.0 == pytest.approx(0.7534, abs=1e-4)
    assert cycle.remaining_kw == pytest.approx(67.0 - 50.48)


def test_offer_many_is_the_same_as_one_by_one() -> None:
    offers = [Offer("a", C, 12.0, 1.0), Offer("b", C, 10.0, 2.0), Offer("c", C, 15.0, 3.0)]
    one = open_fifo(30.0)
    steps = [one.offer(o) for o in offers]
    many = open_fifo(30.0)
    burst = many.offer_many(offers)
    assert burst.decisions == [d for s in steps for d in s.decisions]
    assert burst.closed == "exhausted"
    assert one.decisions == many.decisions


# Deadline ------------------------------------------------------------------------


def test_tick_before_the_deadline_does_nothing_and_at_the_deadline_closes() -> None:
    cycle = open_fifo(30.0, ("a", "b", "c"))
    cycle.offer(Offer("a", C, 5.0, 2.0))
    early = cycle.tick(DEADLINE_S - 0.001)
    assert early.decisions == [] and early.closed is None and not cycle.closed
    at = cycle.tick(DEADLINE_S)
    assert at.closed == "deadline"
    assert cycle.close_reason == "deadline"
    assert cycle.allocated_kw == 5.0
    assert cycle.remaining_kw == 25.0
    # Ticking again or later changes nothing.
    again = cycle.tick(DEADLINE_S + 100)
    assert again.closed is None and again.decisions == []
    assert cycle.close_reason == "deadline"


def test_tick_past_the_deadline_closes_with_no_reply() -> None:
    cycle = open_fifo(30.0)
    step = cycle.tick(DEADLINE_S * 10)
    assert step.closed == "deadline"
    assert cycle.decisions == [] and cycle.replies == 0


@pytest.mark.parametrize("elapsed_s", [DEADLINE_S, DEADLINE_S + 0.5, 1e9])
def test_an_offer_at_or_after_the_deadline_closes_and_is_ignored(elapsed_s: float) -> None:
    cycle = open_fifo(30.0, ("a", "b", "c"))
    cycle.offer(Offer("a", C, 5.0, 1.0))
    late = Offer("b", C, 5.0, elapsed_s)
    step = cycle.offer(late)
    assert step.closed == "deadline"
    assert step.decisions == []
    assert step.ignored == [Ignored(late, "closed")]
    assert cycle.replies == 1
    assert [d.site for d in cycle.decisions] == ["a"]


def test_next_wakeup_is_the_deadline_for_fifo_and_none_once_closed() -> None:
    cycle = open_fifo(30.0, deadline_s=12.5)
    assert cycle.next_wakeup_s() == 12.5
    cycle.offer(Offer("a", C, 1.0, 1.0))
    assert cycle.next_wakeup_s() == 12.5
    cycle.tick(12.5)
    assert cycle.next_wakeup_s() is None


@pytest.mark.parametrize("deadline_s", [0.0, -1.0, float("nan")])
def test_open_refuses_a_non_positive_deadline(deadline_s: float) -> None:
    with pytest.raises(ValueError, match="deadline"):
        Cycle.open(C, 10.0, SITES, get_strategy("fifo"), deadline_s=deadline_s)


# Ignored replies ----------------------------------------------------------------------


def test_stale_cycle_ids_are_ignored_and_take_no_rank() -> None:
    cycle = open_fifo(30.0)
    stale = Offer("a", "2026-06-21T12:00:00Z", 10.0, 1.0)
    step = cycle.offer(stale)
    assert step.ignored == [Ignored(stale, "stale")]
    assert step.decisions == [] and cycle.replies == 0
    # The same site may still answer the open cycle, and gets rank 1.
    fresh = cycle.offer(Offer("a", C, 10.0, 2.0))
    assert fresh.decisions == [Decision("a", 10.0, 1, 10.0, 2.0)]


def test_duplicates_are_ignored_and_the_first_answer_holds() -> None:
    cycle = open_fifo(30.0)
    cycle.offer(Offer("a", C, 4.0, 1.0))
    again = Offer("a", C, 20.0, 2.0)
    step = cycle.offer(again)
    assert step.ignored == [Ignored(again, "duplicate")]
    assert step.decisions == []
    assert cycle.decisions == [Decision("a", 4.0, 1, 4.0, 1.0)]
    assert cycle.replies == 1


def test_a_site_not_online_at_request_is_not_requested() -> None:
    cycle = open_fifo(30.0, ("a", "b"))
    intruder = Offer("z", C, 5.0, 1.0)
    step = cycle.offer(intruder)
    assert step.ignored == [Ignored(intruder, "not_requested")]
    assert step.decisions == [] and cycle.replies == 0
    assert cycle.offer(Offer("a", C, 1.0, 2.0)).decisions[0].rank == 1


def test_after_close_everything_is_ignored_as_closed() -> None:
    cycle = open_fifo(5.0, ("a", "b", "c"))
    assert cycle.offer(Offer("a", C, 5.0, 1.0)).closed == "exhausted"
    offers = [
        Offer("b", C, 5.0, 2.0),
        Offer("a", C, 5.0, 3.0),  # would be a duplicate
        Offer("z", C, 5.0, 4.0),  # would be not_requested
        Offer("c", "old", 5.0, 5.0),  # would be stale
        Offer("c", C, 5.0, 1e6),  # would hit the deadline
    ]
    step = cycle.offer_many(offers)
    assert step.decisions == [] and step.closed is None
    assert step.ignored == [Ignored(o, "closed") for o in offers]
    assert cycle.tick(1e6).closed is None
    assert cycle.close().closed is None
    assert cycle.close_reason == "exhausted"
    assert len(cycle.decisions) == 1


def test_reasons_are_checked_in_order_stale_before_duplicate() -> None:
    cycle = open_fifo(30.0)
    cycle.offer(Offer("a", C, 1.0, 1.0))
    assert cycle.offer(Offer("a", "old", 1.0, 2.0)).ignored[0].reason == "stale"
    assert cycle.offer(Offer("a", C, 1.0, 3.0)).ignored[0].reason == "duplicate"


# Zero flex, empty community, explicit close ------------------------------------


def test_a_flex_of_zero_still_gets_a_decision_of_zero_with_its_rank() -> None:
    cycle = open_fifo(30.0, ("a", "b"))
    cycle.offer(Offer("a", C, 3.0, 1.0))
    step = cycle.offer(Offer("b", C, 0.0, 2.0))
    assert step.decisions == [Decision("b", 0.0, 2, 0.0, 2.0)]
    assert step.closed == "all_replied"
    assert cycle.allocated_kw == 3.0


def test_an_empty_site_set_closes_at_once_all_replied() -> None:
    cycle, step = Cycle.open(C, 30.0, (), get_strategy("fifo"), deadline_s=DEADLINE_S)
    assert step.closed == "all_replied"
    assert cycle.close_reason == "all_replied"
    assert cycle.decisions == [] and cycle.allocated_kw == 0.0
    assert cycle.next_wakeup_s() is None


def test_explicit_close_uses_the_given_reason() -> None:
    cycle = open_fifo(30.0)
    cycle.offer(Offer("a", C, 2.0, 1.0))
    step = cycle.close()
    assert step.closed == "deadline"
    assert cycle.close_reason == "deadline"
    assert cycle.offer(Offer("b", C, 2.0, 2.0)).ignored[0].reason == "closed"


def test_cycle_exposes_its_context() -> None:
    cycle, _ = Cycle.open(
        C, 12.0, ["a", "b", "a"], get_strategy("fifo"), deadline_s=DEADLINE_S, seed=7
    )
    assert cycle.cycle == C
    assert cycle.context == CycleContext(C, 12.0, frozenset({"a", "b"}), DEADLINE_S, 7)


def test_fifo_settle_hands_back_the_state_it_was_given() -> None:
    state = {"ledger": {"a": 1.0}}
    cycle, _ = Cycle.open(C, 10.0, SITES, get_strategy("fifo"), state, deadline_s=DEADLINE_S)
    cycle.offer(Offer("a", C, 10.0, 1.0))
    assert cycle.settle(state) == state


# A strategy that decides later: the cycle still enforces the contract ---------------


class GrantAtClose:
    """on_offer defers; on_close grants every pending site its full flex, in arrival order."""

    name = "grant_at_close"

    def begin(self, context: CycleContext, state: StrategyState) -> Session:
        return _GrantAtCloseSession()


class _GrantAtCloseSession:
    def on_offer(self, offer: Offer, rank: int, remaining_kw: float) -> float | None:
        return None

    def wakeup_s(self) -> float | None:
        return None

    def on_timer(
        self, elapsed_s: float, pending: Sequence[Offer], remaining_kw: float
    ) -> Sequence[Grant]:
        return ()

    def on_close(self, pending: Sequence[Offer], remaining_kw: float) -> Sequence[Grant]:
        return [Grant(o.site, o.flex_kw) for o in pending]

    def settle(self, decisions: Sequence[Decision]) -> StrategyState:
        return {"decided": len(decisions)}


def test_deferred_strategy_is_clamped_to_the_remainder_at_close() -> None:
    cycle, _ = Cycle.open(C, 10.0, ("a", "b", "c"), GrantAtClose(), deadline_s=DEADLINE_S)
    assert cycle.offer(Offer("a", C, 6.0, 1.0)).decisions == []
    assert cycle.offer(Offer("b", C, 6.0, 2.0)).decisions == []
    step = cycle.offer(Offer("c", C, 6.0, 3.0))
    assert step.closed == "all_replied"
    assert step.decisions == [
        Decision("a", 6.0, 1, 6.0, 1.0),
        Decision("b", 4.0, 2, 6.0, 2.0),
        Decision("c", 0.0, 3, 6.0, 3.0),
    ]
    assert cycle.allocated_kw == pytest.approx(10.0)
    assert cycle.settle() == {"decided": 3}


def test_deferred_strategy_decides_pending_offers_at_the_deadline() -> None:
    cycle, _ = Cycle.open(C, 10.0, ("a", "b", "c"), GrantAtClose(), deadline_s=DEADLINE_S)
    cycle.offer(Offer("b", C, 3.0, 1.0))
    step = cycle.tick(DEADLINE_S)
    assert step.closed == "deadline"
    assert step.decisions == [Decision("b", 3.0, 1, 3.0, 1.0)]


def test_what_a_strategy_leaves_undecided_gets_zero_at_close() -> None:
    class Silent(GrantAtClose):
        def begin(self, context: CycleContext, state: StrategyState) -> Session:
            session = _GrantAtCloseSession()
            session.on_close = lambda pending, remaining_kw: ()  # type: ignore[method-assign]
            return session

    cycle, _ = Cycle.open(C, 10.0, ("a", "b"), Silent(), deadline_s=DEADLINE_S)
    cycle.offer(Offer("b", C, 3.0, 1.0))
    step = cycle.offer(Offer("a", C, 2.0, 2.0))
    assert step.closed == "all_replied"
    assert step.decisions == [Decision("b", 0.0, 1, 3.0, 1.0), Decision("a", 0.0, 2, 2.0, 2.0)]


# Offers the protocol layer would refuse (negative or NaN flex) -----------------------
# decode() never produces them, but the simulator and the benchmarks build Offers
# directly, and the cycle promises 0 <= alloc <= min(flex, remaining) whatever it is fed.


class _Greedy:
    """Asks for all that remains, whatever the site offered."""

    name = "greedy"

    def begin(self, context: CycleContext, state: StrategyState) -> Session:
        return self

    def on_offer(self, offer: Offer, rank: int, remaining_kw: float) -> float | None:
        return remaining_kw

    def wakeup_s(self) -> float | None:
        return None

    def on_timer(
        self, elapsed_s: float, pending: Sequence[Offer], remaining_kw: float
    ) -> Sequence[Grant]:
        return ()

    def on_close(self, pending: Sequence[Offer], remaining_kw: float) -> Sequence[Grant]:
        return ()

    def settle(self, decisions: Sequence[Decision]) -> StrategyState:
        return {}


def test_a_negative_offer_gets_zero_and_never_inflates_the_surplus() -> None:
    cycle, _ = Cycle.open(C, 10.0, ("a", "b"), _Greedy(), deadline_s=DEADLINE_S)
    first = cycle.offer(Offer("a", C, -5.0, 1.0))
    assert first.decisions[0].alloc_kw == 0.0
    cycle.offer(Offer("b", C, 15.0, 2.0))
    assert all(d.alloc_kw >= 0.0 for d in cycle.decisions)
    assert sum(d.alloc_kw for d in cycle.decisions) <= 10.0


def test_a_nan_offer_gets_nothing() -> None:
    cycle = open_fifo(10.0, ("a", "b"))
    step = cycle.offer(Offer("a", C, float("nan"), 1.0))
    assert all(d.alloc_kw == 0.0 for d in step.decisions)
    assert cycle.remaining_kw == 10.0

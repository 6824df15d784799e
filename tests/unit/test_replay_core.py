"""The pure replay of recorded cycles (``central.core.replay``): no broker, no records."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from central.core import Cycle, Decision, get_strategy
from central.core.cycle import LoadOffer
from central.core.replay import (
    RECORDED,
    SILENT_PREFIX,
    RecordedCycle,
    RecordedReplayer,
    RecordedReply,
    compare,
    recorded_run,
    replay,
)


def _cycle(cycle: str, surplus_kw: float, replies: list[RecordedReply], *,
           decisions: tuple[Decision, ...] = (), sites: int | None = None,
           strategy: str = "fifo", deadline_s: float = 60.0) -> RecordedCycle:
    return RecordedCycle(cycle, strategy, surplus_kw,
                         sites if sites is not None else len(replies), deadline_s,
                         tuple(replies), decisions)


def _wh(site: str, kw: float) -> tuple[LoadOffer, ...]:
    return (LoadOffer(f"{site}/wh", kw, kw, "water_heater"),)


def test_silent_sites_keep_the_cycle_open_until_its_deadline() -> None:
    # Three sites asked, one replied: live, the cycle waited for the other two.
    day = [_cycle("c1", 5.0, [RecordedReply("x", 2.0, 3.0, "accepted", _wh("x", 3.0))],
                  sites=3, deadline_s=30.0)]
    assert day[0].asked(day[0].offers()) == {"x", f"{SILENT_PREFIX}0)", f"{SILENT_PREFIX}1)"}
    fifo = replay(day, get_strategy("fifo"))
    assert fifo.cycles[0].close_reason == "deadline"
    assert fifo.cycles[0].decided_at_s == {"x": 2.0}
    prop = replay(day, get_strategy("proportional"))
    # Proportional waits for everyone: it decides at the deadline.
    assert prop.cycles[0].decided_at_s == {"x": 30.0}
    assert [(d.site, d.alloc_kw) for d in prop.cycles[0].decisions] == [("x", 3.0)]


def test_stale_and_unrequested_replies_are_not_replayed() -> None:
    day = [_cycle("c1", 4.0, [
        RecordedReply("x", 0.5, 2.0, "stale"),
        RecordedReply("y", 1.0, 2.0, "not_requested"),
        RecordedReply("z", 1.5, 2.0, "accepted"),
        RecordedReply("z", 1.6, 2.0, "duplicate"),
    ], sites=1)]
    run = replay(day, get_strategy("fifo"))
    assert [(d.site, d.alloc_kw, d.rank) for d in run.cycles[0].decisions] == [("z", 2.0, 1)]
    assert run.cycles[0].close_reason == "all_replied"


def test_fair_rotation_carries_its_ledger_from_the_given_state() -> None:
    replies = [RecordedReply("x", 0.1, 2.0, "accepted", _wh("x", 2.0)),
               RecordedReply("y", 0.2, 2.0, "accepted", _wh("y", 2.0))]
    day = [_cycle(f"c{i}", 2.0, replies) for i in range(3)]
    empty = replay(day, get_strategy("fair_rotation"))
    # Equal ledgers: the earlier reply first; then the one served least.
    assert [c.decisions[0].site if c.decisions[0].alloc_kw else c.decisions[1].site
            for c in empty.cycles] == ["x", "y", "x"]
    assert set(empty.state["ledger_kwh"]) == {"x", "y"}
    saved = replay(day, get_strategy("fair_rotation"), {"ledger_kwh": {"x": 5.0}})
    served = [next(d.site for d in c.decisions if d.alloc_kw > 0) for c in saved.cycles]
    assert served == ["y", "y", "y"]  # x's saved 5 kWh outweigh 0.5 kWh a cycle


def test_loads_set_the_usable_share_and_unknown_loads_count_as_usable() -> None:
    known = RecordedReply("x", 1.0, 3.0, "accepted",
                          (LoadOffer("x/hp", 2.0, 3.0, "heat_pump"),))
    unknown = RecordedReply("y", 2.0, 3.0, "accepted", None)
    run = replay([_cycle("c1", 4.0, [known, unknown])], get_strategy("fifo"))
    # x gets 3 (its heat pump runs at 3), y gets 1 (loads unknown: counted usable).
    m = run.metrics
    assert m.share_allocated == pytest.approx(1.0)
    assert m.share_usable == pytest.approx(1.0)
    assert run.allocations_without_loads == 1
    # With the same 1 kW, a known 2 kW minimum would have run nothing.
    known_y = unknown._replace(loads=(LoadOffer("y/hp", 2.0, 3.0, "heat_pump"),))
    run = replay([_cycle("c1", 4.0, [known, known_y])], get_strategy("fifo"))
    assert run.metrics.share_usable == pytest.approx(0.75)
    assert run.metrics.share_usable_modulating == pytest.approx(0.75)
    assert run.allocations_without_loads == 0


def test_the_recorded_run_keeps_stored_decisions_timed_by_their_strategy() -> None:
    replies = [RecordedReply("x", 1.0, 2.0, "accepted", _wh("x", 2.0)),
               RecordedReply("y", 2.0, 2.0, "accepted", _wh("y", 2.0))]
    # Recorded under fair_rotation: decided together when its 5 s window ended (a
    # third site asked never replied, so the cycle was still open then).
    stored = (Decision("y", 2.0, 2, 2.0, 2.0), Decision("x", 1.0, 1, 2.0, 1.0))
    day = [_cycle("c1", 3.0, replies, decisions=stored, strategy="fair_rotation",
                  sites=3, deadline_s=60.0)]
    timed = recorded_run(day, lambda name: get_strategy(name), get_strategy("fifo"))
    assert [(d.site, d.alloc_kw) for d in timed.cycles[0].decisions] == [("x", 1.0), ("y", 2.0)]
    assert timed.cycles[0].decided_at_s == {"x": 5.0, "y": 5.0}
    assert timed.metrics.alloc_delay_mean_s == pytest.approx(5.0)
    # A strategy no longer known: timed as first come, first served (on arrival).
    untimed = recorded_run(day, lambda name: None, get_strategy("fifo"))
    assert untimed.cycles[0].decided_at_s == {"x": 1.0, "y": 2.0}
    assert untimed.cycles[0].decisions == timed.cycles[0].decisions


def test_a_decision_without_its_reply_is_replayed_at_its_rank() -> None:
    # A cycle rebuilt after a crash: a decision whose reply row is missing.
    replies = [RecordedReply("y", 2.0, 2.0, "accepted")]
    stored = (Decision("x", 2.0, 1, 2.0, 1.0), Decision("y", 1.0, 2, 2.0, 2.0))
    day = [_cycle("c1", 3.0, replies, decisions=stored, sites=2)]
    assert [o.site for o in day[0].offers()] == ["x", "y"]
    run = replay(day, get_strategy("fifo"))
    assert list(run.cycles[0].decisions) == list(stored)


def test_compare_puts_the_recorded_run_and_the_replays_side_by_side() -> None:
    replies = [RecordedReply("x", 1.0, 3.0, "accepted", _wh("x", 3.0)),
               RecordedReply("y", 2.0, 2.0, "accepted",
                             (LoadOffer("y/hp", 1.5, 2.0, "heat_pump"),)),
               RecordedReply("z", 3.0, 2.5, "accepted", _wh("z", 2.5))]
    stored = (Decision("x", 3.0, 1, 3.0, 1.0), Decision("y", 1.0, 2, 2.0, 2.0))
    day = [_cycle("c1", 4.0, replies, decisions=stored)]
    recorded = RecordedReplayer(lambda name: None, get_strategy("fifo"))
    recorded.step(day[0])
    runs = [replay(day, get_strategy(n)) for n in ("fifo", "milp", "proportional")]
    cmp = compare(recorded.run, runs)
    assert cmp.changed == {"fifo": 0, "milp": 3, "proportional": 3}
    assert cmp.diff("fifo", "share_usable") == 0.0
    assert cmp.value(RECORDED, "share_usable") == pytest.approx(0.75)
    assert cmp.diff("milp", "share_usable") == pytest.approx(2.5 / 4 - 0.75)
    assert cmp.value("proportional", "share_usable") == 0.0
    # Each is best somewhere: FIFO on usable share and delay, milp between, proportional
    # on fairness and relay starts (it runs nothing at all).
    assert set(cmp.front) == {RECORDED, "fifo", "milp", "proportional"}
    assert cmp.distance["fifo"] == cmp.distance[RECORDED]
    assert cmp.distance["milp"] > cmp.distance["fifo"]


offer_lists = st.lists(
    st.tuples(st.floats(0.0, 8.0, allow_nan=False), st.floats(0.0, 20.0, allow_nan=False)),
    min_size=0, max_size=12,
)


@settings(max_examples=100, deadline=None)
@given(surplus=st.floats(-5.0, 40.0, allow_nan=False), draws=offer_lists,
       silent=st.integers(0, 3), burst=st.integers(1, 5))
def test_fifo_replay_of_a_fifo_recording_is_the_identity(
    surplus: float, draws: list[tuple[float, float]], silent: int, burst: int
) -> None:
    """Live, replies reach the core in bursts (``offer_many``); the replay feeds them one
    by one. Both must decide the same, whatever the surplus, offers and timing."""
    from central.core import Offer

    deadline_s = 15.0
    arrivals = sorted(draws, key=lambda d: d[1])
    sites = [f"s{i}" for i in range(len(arrivals))]
    offers = [Offer(s, "c", flex, at) for s, (flex, at) in zip(sites, arrivals, strict=True)]
    live, _ = Cycle.open("c", surplus, [*sites, *(f"q{i}" for i in range(silent))],
                         get_strategy("fifo"), deadline_s=deadline_s)
    outcomes: dict[int, str] = {}
    for start in range(0, len(offers), burst):
        chunk = offers[start:start + burst]
        step = live.offer_many(chunk)
        ignored = {id(i.offer): i.reason for i in step.ignored}
        for o in chunk:
            outcomes[id(o)] = ignored.get(id(o), "accepted")
    if not live.closed:
        live.tick(deadline_s)
    replies = [RecordedReply(o.site, o.elapsed_s, o.flex_kw, outcomes[id(o)]) for o in offers]
    recorded = _cycle("c", surplus, replies, decisions=tuple(live.decisions),
                      sites=len(sites) + silent, deadline_s=deadline_s)
    run = replay([recorded], get_strategy("fifo"))
    assert list(run.cycles[0].decisions) == live.decisions
    assert run.cycles[0].close_reason == live.close_reason


def test_relay_starts_tell_apart_loads_of_the_same_name_in_two_homes() -> None:
    same = (LoadOffer("water-heater", 2.0, 2.0, "water_heater"),)
    replies = [RecordedReply("x", 1.0, 2.0, "accepted", same),
               RecordedReply("y", 2.0, 2.0, "accepted", same)]
    run = replay([_cycle("c1", 4.0, replies), _cycle("c2", 4.0, replies),
                  _cycle("c3", 2.0, replies)], get_strategy("fifo"))
    # Both start, both run on, then only x runs: two starts in all.
    assert [r.load_starts for r in run.records] == [2, 0, 0]
    assert run.metrics.site_starts == 2

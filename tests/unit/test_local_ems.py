"""``LocalEms`` by example (gateway/ems/controller.py, guard.py).

The local EMS is pure: the clock (``now_s``, and the wall time where a
deadline needs it) and every input are passed in; commands come out. These
examples follow the behaviour the product promises:

- flex: what the home can absorb for the period, per load with its min and
  max kW; nothing for a load already running, shed, manual, inside its
  minimum off time, at its start limit, unresponsive or satisfied;
- allocation: whole loads that fit (priority, then the nearest deadline),
  kept on for the whole period, off at its end unless allocated again;
  modulating loads (continuous, or in steps as a wallbox) at the set point
  that uses the most of it, changed without a new start;
- the wear guard holds even against the coordinator; only manual off and
  shedding may stop a load inside its minimum on time;
- a start is checked against the measured power step;
- local self-consumption on the home's own export; autonomy until
  ``valid_until``; precedence manual > shed > allocation > local.
"""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta

import pytest

from gateway.ems import Command, LoadSpec, LocalEms
from gateway.ems.controller import LOCAL_MARGIN_KW, SETTLE_S, AllocationResult

T0 = datetime(2026, 6, 21, 10, 0, tzinfo=UTC)
PERIOD_S = 900.0


def at(now_s: float) -> datetime:
    return T0 + timedelta(seconds=now_s)


def spec(load_id: str, kw: float = 1.0, **kw_args: object) -> LoadSpec:
    return LoadSpec(load_id, nominal_kw=kw, min_kw=kw, max_kw=kw, **kw_args)  # type: ignore[arg-type]


def make(*specs: LoadSpec, **options: object) -> LocalEms:
    """An EMS whose loads are all reported available and off at t=0."""
    ems = LocalEms(specs, **options)  # type: ignore[arg-type]
    for s in specs:
        assert ems.observe(s.id, 0.0, available=True, on=False) == []
    ems.drain_events()
    return ems


def on(load: str, reason: str) -> Command:
    return Command(load, True, reason)  # type: ignore[arg-type]


def off(load: str, reason: str) -> Command:
    return Command(load, False, reason)  # type: ignore[arg-type]


def offered(ems: LocalEms, now_s: float, period_start_s: float | None = None) -> list[str]:
    return [i.id for i in ems.flex(now_s, at(now_s), period_start_s).loads]


def allocate(ems: LocalEms, cycle: str, kw: float, now_s: float,
             valid_until_s: float | None = None, epoch: int = 1) -> AllocationResult:
    until = valid_until_s if valid_until_s is not None else now_s + PERIOD_S
    return ems.accept_allocation(cycle, kw, epoch, until, now_s, at(now_s))


def state(ems: LocalEms) -> dict[str, tuple[bool, str]]:
    return {v.id: (v.on, v.reason) for v in ems.views(0.0)}


# Flex -----------------------------------------------------------------------------------------


def test_flex_lists_every_idle_load_with_its_limits() -> None:
    ev = LoadSpec("ev", kind="ev_charger", nominal_kw=2.3, min_kw=1.4, max_kw=3.7, priority=3,
                  capacity_kwh=40.0, soc=0.3, departure=time(7, 30), modulation="continuous")
    ems = make(spec("wh", 2.2, kind="water_heater"), ev)
    offer = ems.flex(10.0, at(10.0), PERIOD_S)
    assert offer.flex_kw == pytest.approx(2.2 + 3.7)  # a modulating load up to its max
    by_id = {i.id: i for i in offer.loads}
    assert (by_id["wh"].kind, by_id["wh"].min_kw, by_id["wh"].max_kw) == ("water_heater", 2.2, 2.2)
    assert (by_id["ev"].min_kw, by_id["ev"].max_kw, by_id["ev"].priority) == (1.4, 3.7, 3)
    assert by_id["ev"].until == datetime(2026, 6, 22, 7, 30, tzinfo=UTC)  # the next departure
    assert by_id["ev"].energy_kwh == pytest.approx((0.8 - 0.3) * 40.0)


def test_flex_is_zero_but_still_an_answer_when_nothing_can_absorb() -> None:
    ems = LocalEms([spec("wh")])  # never reported available
    offer = ems.flex(0.0, at(0.0), PERIOD_S)
    assert (offer.flex_kw, offer.loads) == (0.0, ())


def test_flex_is_capped_at_the_site_maximum() -> None:
    ems = make(spec("a", 3.0), spec("b", 3.0), max_flex_kw=5.0)
    offer = ems.flex(0.0, at(0.0), PERIOD_S)
    assert offer.flex_kw == 5.0
    assert len(offer.loads) == 2


@pytest.mark.parametrize(
    "why",
    ["running_locally", "shed", "force_on", "force_off", "unavailable", "inside_min_off",
     "start_limit", "satisfied_energy", "ev_full"],
)
def test_flex_offers_nothing_for_a_load_that_cannot_take_extra_power(why: str) -> None:
    extra: dict[str, object] = {}
    if why == "satisfied_energy":
        extra["energy_need_kwh"] = 0.0
    if why == "ev_full":
        extra.update(capacity_kwh=40.0, soc=0.8)
    if why == "inside_min_off":
        extra["min_off_s"] = 600.0
    if why == "start_limit":
        extra["max_starts_per_hour"] = 1
    ems = make(spec("x", 1.0, **extra), spec("other", 1.0, shed_level=None))
    now = 100.0
    if why == "running_locally":
        assert on("x", "local") in ems.tick(10.0, 5.0)
    elif why == "shed":
        ems.set_grid_level(2, 10.0)
    elif why in ("force_on", "force_off"):
        ems.set_mode("x", why, 10.0)  # type: ignore[arg-type]
    elif why == "unavailable":
        ems.observe("x", 10.0, available=False)
    elif why in ("inside_min_off", "start_limit"):
        ems.set_mode("x", "force_on", 10.0)
        assert ems.set_mode("x", "auto", 20.0) == [off("x", "idle")]
    assert "x" not in offered(ems, now, now + PERIOD_S)
    assert "other" in offered(ems, now, now + PERIOD_S) or why == "running_locally"


def test_a_load_is_offered_again_once_its_minimum_off_time_is_over() -> None:
    ems = make(spec("x", min_off_s=600.0))
    ems.set_mode("x", "force_on", 0.0)
    ems.set_mode("x", "auto", 10.0)  # stopped at 10 s
    assert offered(ems, 609.0) == []
    assert offered(ems, 610.0) == ["x"]


def test_starts_per_hour_count_over_a_sliding_hour() -> None:
    ems = make(spec("x", max_starts_per_hour=2))
    for start in (0.0, 100.0):
        ems.set_mode("x", "force_on", start)
        ems.set_mode("x", "auto", start + 10.0)
    assert offered(ems, 3599.0) == []
    assert offered(ems, 3600.0) == ["x"]  # the first start left the hour


# Allocation -----------------------------------------------------------------------------------


def test_an_allocation_switches_on_whole_loads_that_fit() -> None:
    ems = make(spec("wh", 2.2), spec("hp", 1.5), spec("ev", 3.0))
    result = allocate(ems, "c1", 4.0, 5.0)
    assert result.accepted and result.why == "applied"
    assert set(result.loads) == {"wh", "hp"}  # 3.7 kW is the best fit under 4.0
    assert result.used_kw == pytest.approx(3.7)
    assert sorted(result.commands, key=lambda c: c.load) == [on("hp", "allocation"),
                                                             on("wh", "allocation")]
    assert state(ems)["ev"] == (False, "idle")


def test_an_allocation_below_every_minimum_switches_nothing_on() -> None:
    ems = make(LoadSpec("hp", nominal_kw=1.2, min_kw=0.8, max_kw=1.5))
    result = allocate(ems, "c1", 0.7, 5.0)
    assert result.accepted
    assert (result.loads, result.used_kw, result.commands) == ((), 0.0, ())


def test_a_load_runs_at_its_running_power_never_at_a_partial_share() -> None:
    hp = LoadSpec("hp", nominal_kw=1.2, min_kw=0.8, max_kw=1.5)
    ems = make(hp)
    assert allocate(ems, "c1", 1.1, 5.0).loads == ()  # 1.1 kW would be below its 1.2 kW
    assert allocate(ems, "c2", 1.2, 6.0).used_kw == pytest.approx(hp.run_kw) == 1.2


def test_priority_first_then_the_nearest_deadline() -> None:
    ems = make(
        spec("wh", 2.0, priority=0),
        spec("ev_late", 2.0, priority=1, departure=time(18, 0)),
        spec("ev_soon", 2.0, priority=1, departure=time(11, 0)),
    )
    assert allocate(ems, "c1", 2.0, 5.0).loads == ("ev_soon",)


def test_an_allocation_holds_for_the_whole_period_then_stops() -> None:
    ems = make(spec("wh"))
    allocate(ems, "c1", 1.0, 0.0, valid_until_s=PERIOD_S)
    for t in (60.0, 450.0, 899.0):
        assert ems.tick(t, -3.0) == []
    assert ems.tick(PERIOD_S, -3.0) == [off("wh", "idle")]


def test_one_allocation_per_cycle() -> None:
    ems = make(spec("a"), spec("b"))
    assert allocate(ems, "c1", 1.0, 0.0).accepted
    dup = allocate(ems, "c1", 2.0, 1.0)
    assert (dup.accepted, dup.why, dup.commands) == (False, "duplicate", ())
    assert sum(v.on for v in ems.views(1.0)) == 1


def test_an_older_epoch_is_refused_and_a_newer_one_fences_the_old() -> None:
    ems = make(spec("a"), spec("b"))
    assert allocate(ems, "c1", 1.0, 0.0, epoch=3).accepted
    old = allocate(ems, "c2", 1.0, 1.0, epoch=2)
    assert (old.accepted, old.why) == (False, "old_epoch")
    assert allocate(ems, "c3", 1.0, 2.0, epoch=4).accepted
    assert allocate(ems, "c4", 1.0, 3.0, epoch=3).why == "old_epoch"
    assert ems.highest_epoch == 4


def test_an_expired_allocation_is_refused_and_does_not_raise_the_epoch() -> None:
    ems = make(spec("a"))
    expired = allocate(ems, "c1", 1.0, 100.0, valid_until_s=100.0, epoch=9)
    assert (expired.accepted, expired.why) == (False, "expired")
    assert ems.highest_epoch == 0
    assert state(ems)["a"] == (False, "idle")
    assert allocate(ems, "c1", 1.0, 101.0, epoch=1).accepted  # the cycle was not used up


def test_refusals_are_reported_as_events() -> None:
    ems = make(spec("a"))
    allocate(ems, "c1", 1.0, 0.0)
    allocate(ems, "c1", 1.0, 1.0)
    names = [name for name, _ in ems.drain_events()]
    assert names == ["allocation_applied", "allocation_refused"]


def test_a_cycle_is_never_applied_twice_however_many_cycles_later() -> None:
    ems = make(spec("a"))
    assert allocate(ems, "c-first", 1.0, 0.0, valid_until_s=100_000.0).accepted
    for i in range(40):
        allocate(ems, f"c{i}", 0.0, 1.0)
    replay = allocate(ems, "c-first", 1.0, 2.0, valid_until_s=100_000.0)
    assert (replay.accepted, replay.why) == (False, "duplicate")


def test_a_replayed_alloc_after_its_period_is_refused_as_expired() -> None:
    ems = make(spec("a"))
    assert allocate(ems, "c1", 1.0, 0.0, valid_until_s=PERIOD_S).accepted
    replay = allocate(ems, "c1", 1.0, PERIOD_S + 5.0, valid_until_s=PERIOD_S)
    assert (replay.accepted, replay.why) == (False, "expired")


def test_a_cycle_is_never_applied_twice_even_with_a_later_valid_until() -> None:
    ems = make(spec("a"))
    assert allocate(ems, "c1", 1.0, 0.0, valid_until_s=100.0).accepted
    assert not allocate(ems, "c1", 1.0, 200.0, valid_until_s=1000.0).accepted


def test_a_load_offered_to_continue_stays_on_without_a_new_start_when_allocated_again() -> None:
    ems = make(spec("wh"))
    allocate(ems, "c1", 1.0, 0.0, valid_until_s=PERIOD_S)
    assert offered(ems, 899.0, PERIOD_S) == ["wh"]  # running, but its allocation ends
    assert ems.tick(PERIOD_S + 1.0, -2.0) == []  # held while the coordinator decides
    result = allocate(ems, "c2", 1.0, PERIOD_S + 2.0, valid_until_s=2 * PERIOD_S)
    assert result.loads == ("wh",) and result.commands == ()
    assert ems.tick(2 * PERIOD_S - 1.0, -2.0) == []
    assert ems.rt["wh"].starts == [0.0]
    assert ems.tick(2 * PERIOD_S, -2.0) == [off("wh", "idle")]


def test_a_load_offered_to_continue_but_not_allocated_stops() -> None:
    ems = make(spec("wh"))
    allocate(ems, "c1", 1.0, 0.0, valid_until_s=PERIOD_S)
    offered(ems, 899.0, PERIOD_S)
    ems.tick(PERIOD_S + 1.0, -2.0)
    result = allocate(ems, "c2", 0.5, PERIOD_S + 2.0, valid_until_s=2 * PERIOD_S)
    assert result.loads == ()
    assert result.commands == (off("wh", "idle"),)


def test_a_closed_cycle_releases_loads_held_to_continue() -> None:
    ems = make(spec("wh"))
    allocate(ems, "c1", 1.0, 0.0, valid_until_s=PERIOD_S)
    offered(ems, 899.0, PERIOD_S)
    assert ems.tick(PERIOD_S + 1.0, -2.0) == []
    assert ems.cycle_closed(PERIOD_S + 3.0) == [off("wh", "idle")]


def test_a_silent_coordinator_releases_loads_held_to_continue_after_the_grace() -> None:
    ems = make(spec("wh"), continue_grace_s=60.0)
    allocate(ems, "c1", 1.0, 0.0, valid_until_s=PERIOD_S)
    offered(ems, 899.0, PERIOD_S)
    assert ems.tick(PERIOD_S + 50.0, -2.0) == []
    assert ems.tick(899.0 + 60.0, -2.0) == [off("wh", "idle")]


def test_a_running_load_whose_allocation_does_not_end_is_not_offered_again() -> None:
    ems = make(spec("wh"))
    allocate(ems, "c1", 1.0, 0.0, valid_until_s=2 * PERIOD_S)
    assert offered(ems, 10.0, PERIOD_S) == []


def test_a_running_load_measured_drawing_nothing_is_not_offered_to_continue() -> None:
    ems = make(spec("wh", 2.0, kind="water_heater"))
    allocate(ems, "c1", 2.0, 0.0, valid_until_s=PERIOD_S)
    ems.observe("wh", 3.0, power_kw=2.0)
    ems.tick(20.0, -1.0)  # the response check passes
    ems.observe("wh", 500.0, power_kw=0.0)  # its thermostat is satisfied
    assert offered(ems, 899.0, PERIOD_S) == []


# The wear guard, even against the coordinator --------------------------------------------------


def test_the_coordinator_cannot_start_a_load_inside_its_minimum_off_time() -> None:
    ems = make(spec("hp", min_off_s=600.0), spec("wh"))
    ems.set_mode("hp", "force_on", 0.0)
    ems.set_mode("hp", "auto", 10.0)  # hp stopped at 10 s
    result = allocate(ems, "c1", 1.0, 100.0)
    assert result.loads == ("wh",)
    assert state(ems)["hp"] == (False, "idle")


def test_the_coordinator_cannot_exceed_the_starts_per_hour() -> None:
    ems = make(spec("hp", max_starts_per_hour=1))
    assert allocate(ems, "c1", 1.0, 0.0, valid_until_s=100.0).loads == ("hp",)
    ems.tick(100.0, None)
    assert state(ems)["hp"] == (False, "idle")
    assert allocate(ems, "c2", 1.0, 200.0).loads == ()
    assert allocate(ems, "c3", 1.0, 3600.0).loads == ("hp",)


def test_a_load_stays_on_past_its_allocation_until_its_minimum_on_time() -> None:
    ems = make(spec("hp", min_on_s=1200.0))
    allocate(ems, "c1", 1.0, 0.0, valid_until_s=PERIOD_S)
    assert ems.tick(PERIOD_S, -1.0) == []
    assert state(ems)["hp"][0] is True
    assert ems.tick(1199.0, -1.0) == []
    assert ems.tick(1200.0, -1.0) == [off("hp", "idle")]


@pytest.mark.parametrize("how", ["force_off", "shed"])
def test_manual_off_and_shedding_may_cut_inside_the_minimum_on_time(how: str) -> None:
    ems = make(spec("hp", min_on_s=1200.0))
    allocate(ems, "c1", 1.0, 0.0)
    if how == "shed":
        assert ems.set_grid_level(2, 30.0) == [off("hp", "shed")]
    else:
        assert ems.set_mode("hp", "force_off", 30.0) == [off("hp", "manual")]


def test_manual_on_waits_for_the_minimum_off_time() -> None:
    ems = make(spec("hp", min_off_s=600.0))
    ems.set_mode("hp", "force_on", 0.0)
    ems.set_mode("hp", "force_off", 10.0)
    assert ems.set_mode("hp", "force_on", 20.0) == []
    assert ems.tick(609.0, None) == []
    assert ems.tick(610.0, None) == [on("hp", "manual")]


# The response check ---------------------------------------------------------------------------


def test_a_load_that_does_not_draw_after_its_start_is_reported_and_not_offered() -> None:
    ems = make(spec("wh", 2.0), response_check_s=10.0, unresponsive_hold_s=3600.0)
    ems.observe("wh", 0.0, power_kw=0.0)
    allocate(ems, "c1", 2.0, 0.0, valid_until_s=100.0)
    ems.tick(9.0, None)
    assert not [e for e, _ in ems.drain_events() if e == "load_unresponsive"]
    ems.tick(10.0, None)
    events = [(e, f) for e, f in ems.drain_events() if e == "load_unresponsive"]
    assert events and events[0][1]["load"] == "wh"
    assert ems.views(10.0)[0].unresponsive
    ems.tick(100.0, None)  # the allocation ends
    assert offered(ems, 200.0) == []
    assert allocate(ems, "c2", 2.0, 300.0).loads == ()
    ems.tick(300.0, 5.0)
    assert state(ems)["wh"] == (False, "idle")  # nor used for self-consumption
    ems.tick(10.0 + 3600.0, None)
    assert offered(ems, 3611.0) == ["wh"]


def test_a_load_that_draws_its_power_passes_the_check() -> None:
    ems = make(spec("wh", 2.0), response_check_s=10.0)
    ems.observe("wh", 0.0, power_kw=0.0)
    allocate(ems, "c1", 2.0, 0.0)
    ems.observe("wh", 2.0, power_kw=1.9)
    ems.tick(10.0, None)
    assert "load_unresponsive" not in [e for e, _ in ems.drain_events()]
    assert not ems.views(10.0)[0].unresponsive


def test_a_channel_without_a_meter_is_not_checked() -> None:
    ems = make(spec("wh", 2.0), response_check_s=10.0)  # measured_kw never reported
    allocate(ems, "c1", 2.0, 0.0)
    ems.tick(10.0, None)
    assert "load_unresponsive" not in [e for e, _ in ems.drain_events()]


# Local self-consumption and autonomy --------------------------------------------------------


def test_the_home_runs_its_own_loads_on_its_own_export() -> None:
    ems = make(spec("wh", 2.0), spec("hp", 1.0))
    # 2.05 kW out, less the safety margin: 1.95 kW, too little for wh (2 kW).
    assert 2.05 - LOCAL_MARGIN_KW < 2.0
    assert ems.tick(10.0, 2.05) == [on("hp", "local")]
    assert ems.tick(20.0, 1.05) == []  # hp now absorbs 1 kW of it: nothing more fits
    assert ems.tick(30.0, 2.2) == [on("wh", "local")]  # 2.2 + 1.0 - margin fits both


def test_no_export_no_local_start_and_local_loads_stop_when_it_goes() -> None:
    ems = make(spec("wh", 2.0))
    assert ems.tick(10.0, -1.0) == []
    assert ems.tick(20.0, None) == []
    assert ems.tick(30.0, 3.0) == [on("wh", "local")]
    assert ems.tick(40.0, 1.5) == []  # still 1.5 kW out with wh running: keep it
    assert ems.tick(50.0, -1.0) == [off("wh", "idle")]


def test_local_self_consumption_can_be_disabled() -> None:
    ems = make(spec("wh"), local_self_consumption=False)
    assert ems.tick(10.0, 10.0) == []


def test_after_valid_until_the_home_falls_back_to_local_self_consumption() -> None:
    ems = make(spec("wh", 2.0), spec("hp", 1.0))
    allocate(ems, "c1", 2.0, 0.0, valid_until_s=PERIOD_S)
    assert ems.tick(600.0, 0.5) == []
    assert state(ems) == {"wh": (True, "allocation"), "hp": (False, "idle")}
    # Its period over, wh stops; the home's own 2.5 kW export runs hp meanwhile ...
    assert sorted(ems.tick(PERIOD_S, 2.5), key=lambda c: c.load) == [
        on("hp", "local"), off("wh", "idle"),
    ]
    # ... and wh too once the export without it shows there is room.
    assert ems.tick(PERIOD_S + 10.0, 3.5) == [on("wh", "local")]


def test_an_allocation_overrides_local_logic() -> None:
    ems = make(spec("wh", 2.0), spec("hp", 1.0))
    assert ems.tick(10.0, 1.5) == [on("hp", "local")]
    result = allocate(ems, "c1", 2.0, 20.0)
    assert result.loads == ("wh",)
    assert state(ems) == {"wh": (True, "allocation"), "hp": (True, "local")}


def test_local_logic_never_counts_a_manually_held_load_as_surplus() -> None:
    ems = make(spec("a", 1.0), spec("b", 1.0))
    assert ems.tick(10.0, 1.2) == [on("a", "local")]
    ems.set_mode("a", "force_on", 20.0)  # the resident now wants it on regardless
    # 0.2 kW out with a running: b (1 kW) would make the home import 0.8 kW.
    assert ems.tick(30.0, 0.2) == []


def test_local_logic_never_counts_an_unresponsive_load_as_surplus() -> None:
    ems = make(spec("a", 1.0), spec("b", 2.0), response_check_s=10.0)
    ems.observe("a", 0.0, power_kw=0.0)
    assert ems.tick(10.0, 1.2) == [on("a", "local")]
    # a draws nothing (its check fails): the export is still 1.2 kW, too little for b.
    commands = ems.tick(25.0, 1.2)
    assert on("b", "local") not in commands


# Precedence: manual > shed > allocation > local ---------------------------------------------


def test_manual_on_beats_shedding() -> None:
    ems = make(spec("wh", shed_level=2))
    assert ems.set_mode("wh", "force_on", 0.0) == [on("wh", "manual")]
    assert ems.set_grid_level(3, 10.0) == []
    assert state(ems)["wh"] == (True, "manual")


def test_shedding_beats_an_allocation_and_lifts_back_to_it() -> None:
    ems = make(spec("wh", shed_level=2), spec("hp", shed_level=3), spec("fan", shed_level=None))
    allocate(ems, "c1", 3.0, 0.0)
    assert ems.set_grid_level(2, 10.0) == [off("wh", "shed")]
    assert "wh" not in offered(ems, 20.0)
    assert "wh" not in allocate(ems, "c2", 3.0, 30.0).loads  # shed: not a candidate
    assert ems.set_grid_level(1, 40.0) == [on("wh", "allocation")]  # c1 still holds
    assert ems.set_grid_level(3, 50.0) == [off("wh", "shed"), off("hp", "shed")]
    assert state(ems)["fan"] == (True, "allocation")


def test_shedding_never_starts_and_stops_local_loads() -> None:
    ems = make(spec("wh", shed_level=1))
    ems.set_grid_level(1, 0.0)
    assert ems.tick(10.0, 5.0) == []
    ems.set_grid_level(0, 20.0)
    assert ems.tick(30.0, 5.0) == [on("wh", "local")]


def test_manual_off_beats_an_allocation_and_auto_gives_control_back() -> None:
    ems = make(spec("wh"))
    allocate(ems, "c1", 1.0, 0.0)
    assert ems.set_mode("wh", "force_off", 10.0) == [off("wh", "manual")]
    assert ems.set_mode("wh", "auto", 20.0) == [on("wh", "allocation")]


def test_a_switch_at_the_device_is_the_residents_choice() -> None:
    ems = make(spec("wh"))
    assert ems.observe("wh", 100.0, on=True) == []
    assert ems.rt["wh"].mode == "force_on"
    assert state(ems)["wh"] == (True, "manual")
    assert [e for e, _ in ems.drain_events()] == ["load_switched_at_device"]
    assert allocate(ems, "c1", 1.0, 110.0).loads == ()


def test_a_report_right_after_our_command_is_the_device_catching_up() -> None:
    ems = make(spec("wh"))
    allocate(ems, "c1", 1.0, 0.0)
    ems.observe("wh", SETTLE_S - 1.0, on=True)
    assert [v.mode for v in ems.views(5.0)] == ["auto"]
    ems.observe("wh", 10.0 + SETTLE_S, on=False)  # later: the resident pulled the plug's button
    assert [v.mode for v in ems.views(20.0)] == ["force_off"]


def test_a_failed_command_leaves_the_load_as_it_was() -> None:
    ems = make(spec("wh"))
    allocate(ems, "c1", 1.0, 0.0)
    ems.command_failed("wh", True, 1.0, "timeout")
    assert state(ems)["wh"][0] is False
    assert ems.rt["wh"].starts == []  # the start never happened
    assert [e for e, _ in ems.drain_events()][-1] == "command_failed"


def test_a_failed_stop_is_retried_once_the_load_has_been_on_long_enough() -> None:
    ems = make(spec("hp", min_on_s=600.0))
    allocate(ems, "c1", 1.0, 0.0, valid_until_s=PERIOD_S)
    assert ems.tick(PERIOD_S, None) == [off("hp", "idle")]  # on for 900 s >= 600 s
    ems.command_failed("hp", False, PERIOD_S + 1.0, "timeout")
    assert ems.tick(PERIOD_S + 2.0, None) == [off("hp", "idle")]


def test_a_failed_start_is_retried_without_waiting_the_minimum_off_time() -> None:
    ems = make(spec("hp", min_off_s=600.0))
    assert allocate(ems, "c1", 1.0, 700.0).commands == (on("hp", "allocation"),)
    ems.command_failed("hp", True, 701.0, "timeout")
    assert ems.rt["hp"].starts == []
    assert ems.tick(702.0, None) == [on("hp", "allocation")]


def test_a_load_held_to_continue_is_not_restarted_without_an_allocation() -> None:
    ems = make(spec("wh"))
    allocate(ems, "c1", 1.0, 0.0, valid_until_s=PERIOD_S)
    offered(ems, 895.0, PERIOD_S)
    ems.tick(PERIOD_S + 1.0, None)
    ems.observe("wh", PERIOD_S + 5.0, on=False)  # the resident switches it off at the plug
    assert ems.set_mode("wh", "auto", PERIOD_S + 10.0) == []


# What the device says first is how things are ---------------------------------------------


def test_the_first_report_is_the_state_not_the_residents_switch() -> None:
    ems = LocalEms([spec("hp", min_on_s=300.0)])
    assert ems.observe("hp", 0.0, available=True, on=True) == []  # held from now on
    assert ems.rt["hp"].mode == "auto"
    assert ems.rt["hp"].starts == []  # not a start the guard saw
    assert "load_switched_at_device" not in [e for e, _ in ems.drain_events()]
    assert ems.tick(299.0, None) == []
    assert ems.tick(300.0, None) == [off("hp", "idle")]


def test_a_device_back_after_an_outage_reports_how_things_are() -> None:
    ems = make(spec("wh"))
    allocate(ems, "c1", 1.0, 0.0)
    assert ems.observe("wh", 10.0, available=False) == []
    # It rebooted with its relay off: not the resident's doing, and the allocation holds.
    assert ems.observe("wh", 100.0, available=True, on=False) == [on("wh", "allocation")]
    assert ems.rt["wh"].mode == "auto"


# A load wired so that the relay only cuts it --------------------------------------------------


def test_a_cut_wired_load_is_on_when_idle_and_offers_no_flexibility() -> None:
    ems = LocalEms([spec("wh", normally_on=True, shed_level=2), spec("hp", shed_level=None)])
    assert ems.observe("wh", 0.0, available=True, on=False) == [on("wh", "idle")]
    ems.observe("hp", 0.0, available=True, on=False)
    assert offered(ems, 10.0, PERIOD_S) == ["hp"]
    assert allocate(ems, "c1", 5.0, 20.0).loads == ("hp",)
    assert ems.tick(30.0, 5.0) == []  # local logic leaves it alone too
    assert ems.set_grid_level(2, 40.0) == [off("wh", "shed")]
    assert ems.set_grid_level(0, 50.0) == [on("wh", "idle")]
    assert ems.set_mode("wh", "force_off", 60.0) == [off("wh", "manual")]


# Modulating loads ------------------------------------------------------------------------------

WALLBOX = tuple(round(a * 0.23, 2) for a in range(6, 17))  # 6-16 A, one phase, 230 V


def heat_pump(**kw_args: object) -> LoadSpec:
    """An inverter heat pump: anything from 1.0 to 2.0 kW, 1.5 kW nominal."""
    return LoadSpec("hp", kind="heat_pump", nominal_kw=1.5, min_kw=1.0, max_kw=2.0,
                    modulation="continuous", **kw_args)  # type: ignore[arg-type]


def wallbox(**kw_args: object) -> LoadSpec:
    return LoadSpec("ev", kind="ev_charger", nominal_kw=WALLBOX[-1], min_kw=WALLBOX[0],
                    max_kw=WALLBOX[-1], modulation="steps", steps_kw=WALLBOX,
                    **kw_args)  # type: ignore[arg-type]


def test_a_whole_load_offers_only_its_running_power() -> None:
    # A relay cannot run a 1.0-2.0 kW heat pump at 1.2 kW: it offers what it draws when on.
    ems = make(LoadSpec("hp", nominal_kw=1.5, min_kw=1.0, max_kw=2.0))
    (info,) = ems.flex(0.0, at(0.0), PERIOD_S).loads
    assert (info.min_kw, info.max_kw) == (1.5, 1.5)


def test_a_modulating_load_offers_its_range_and_runs_at_the_allocation() -> None:
    ems = make(heat_pump())
    offer = ems.flex(0.0, at(0.0), PERIOD_S)
    assert offer.flex_kw == 2.0 and (offer.loads[0].min_kw, offer.loads[0].max_kw) == (1.0, 2.0)
    result = allocate(ems, "c1", 1.3, 5.0)
    assert (result.loads, result.setpoints_kw, result.used_kw) == (("hp",), (1.3,), 1.3)
    assert result.commands == (Command("hp", True, "allocation", 1.3),)
    assert [v.power_kw for v in ems.views(5.0)] == [1.3]  # no meter yet: its set point


def test_a_wallbox_runs_at_its_largest_step_within_the_allocation() -> None:
    ems = make(wallbox())
    result = allocate(ems, "c1", 3.0, 5.0)
    assert result.setpoints_kw == (2.99,)  # 13 A, not 3.0 kW
    assert result.commands == (Command("ev", True, "allocation", 2.99),)
    assert allocate(make(wallbox()), "c1", 1.3, 5.0).loads == ()  # below 6 A: nothing


def test_whole_and_modulating_loads_share_an_allocation() -> None:
    ems = make(spec("wh", 2.2, kind="water_heater"), heat_pump())
    result = allocate(ems, "c1", 4.0, 5.0)
    assert dict(zip(result.loads, result.setpoints_kw, strict=True)) == pytest.approx(
        {"wh": 2.2, "hp": 1.8})
    assert sorted(result.commands, key=lambda c: c.load) == [
        Command("hp", True, "allocation", pytest.approx(1.8)),  # type: ignore[arg-type]
        on("wh", "allocation"),  # a whole load takes no set point
    ]


def test_allow_import_lets_an_allocation_run_a_load_a_little_above_it() -> None:
    assert allocate(make(spec("wh", 2.2)), "c1", 2.0, 5.0).loads == ()
    ems = make(spec("wh", 2.2), allow_import_kw=0.3)
    assert allocate(ems, "c1", 2.0, 5.0).loads == ("wh",)
    ems = make(heat_pump(), allow_import_kw=0.3)
    assert allocate(ems, "c1", 1.5, 5.0).setpoints_kw == (1.8,)


def test_a_new_allocation_changes_a_running_loads_set_point_without_a_start() -> None:
    ems = make(heat_pump(max_starts_per_hour=1, min_on_s=0.0))
    allocate(ems, "c1", 2.0, 0.0, valid_until_s=PERIOD_S)
    ems.observe("hp", 1.0, on=True, power_kw=2.0)
    assert [i.id for i in ems.flex(PERIOD_S - 5.0, at(PERIOD_S - 5.0), PERIOD_S).loads] == ["hp"]
    result = allocate(ems, "c2", 1.2, PERIOD_S - 2.0, valid_until_s=2 * PERIOD_S)
    assert result.commands == (Command("hp", True, "allocation", 1.2, switch=False),)
    assert ems.rt["hp"].starts == [0.0]  # a set point change is no start


def test_a_failed_set_point_change_is_sent_again() -> None:
    ems = make(heat_pump())
    allocate(ems, "c1", 2.0, 0.0, valid_until_s=PERIOD_S)
    ems.observe("hp", 1.0, on=True, power_kw=2.0)
    ems.flex(PERIOD_S - 5.0, at(PERIOD_S - 5.0), PERIOD_S)
    (change,) = allocate(ems, "c2", 1.2, PERIOD_S - 2.0, valid_until_s=2 * PERIOD_S).commands
    ems.command_failed("hp", True, PERIOD_S - 1.0, "timeout", switch=False)
    assert ems.rt["hp"].on and ems.rt["hp"].setpoint_kw == 2.0  # still running at 2.0
    assert ems.tick(PERIOD_S, None) == [change]


def test_a_failed_start_forgets_the_set_point() -> None:
    ems = make(heat_pump())
    allocate(ems, "c1", 1.2, 0.0)
    ems.command_failed("hp", True, 1.0, "timeout")
    assert not ems.rt["hp"].on and ems.rt["hp"].setpoint_kw is None


def test_local_self_consumption_follows_the_export_within_a_margin() -> None:
    ems = make(heat_pump(min_on_s=0.0))
    # 1.6 kW exported: the heat pump at 1.5 (the margin kept).
    assert ems.tick(10.0, 1.6) == [Command("hp", True, "local", pytest.approx(1.5))]  # type: ignore[arg-type]
    ems.observe("hp", 11.0, power_kw=1.5)
    # The export rises a little (it runs at 1.5 and 0.15 kW still goes out): within the
    # margin, kept.
    assert ems.tick(20.0, 0.15) == []
    # It rises more: the set point follows, with no new start.
    (raise_,) = ems.tick(30.0, 0.4)
    assert (raise_.switch, raise_.setpoint_kw) == (False, pytest.approx(1.8))
    # It falls: the set point follows at once (never above the home's own export).
    ems.observe("hp", 31.0, power_kw=1.8)
    (lower,) = ems.tick(40.0, -0.3)
    assert (lower.switch, lower.setpoint_kw) == (False, pytest.approx(1.4))
    assert len(ems.rt["hp"].starts) == 1


def test_forced_on_a_modulating_load_runs_at_its_nominal_power() -> None:
    ems = make(wallbox())
    # Nominal 3.68 kW (16 A) is a step: it runs there.
    assert ems.set_mode("ev", "force_on", 1.0) == [Command("ev", True, "manual", 3.68)]

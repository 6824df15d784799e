"""``LocalEms`` under random sequences of inputs (hypothesis, stateful).

A ``RuleBasedStateMachine`` drives one EMS with 1-4 random loads through
random interleavings of device reports (availability, on/off, power),
manual modes, grid levels, flex requests, allocations (random cycles,
epochs and ``valid_until``: duplicates, old epochs, expired ones; and whole
regular cycles: a request at a period boundary, then the alloc), ticks with
a random net export, closed cycles and failed commands, while time moves
forward by random steps. Some loads are cut-wired (on when idle); some
modulate (continuous between min and max, or in steps, as a wallbox), and
some EMSs may draw a little import on an allocation (``allow_import_kw``). The
machine keeps its own record of what the device did (every returned
``Command`` and every on/off change a report shows) and checks, after every
step:

1. allocation: the loads running on the last accepted allocation, at their
   set points, fit its kW (+ ``allow_import_kw``); any other load running
   with reason "allocation" is still covered (an earlier allocation not yet
   at its ``valid_until``), held by its minimum on time, or held to continue
   while the coordinator decides;
2. a whole load commanded on runs at its running power; a modulating one at
   a set point it can take (within [min_kw, max_kw], one of its steps), never
   below its minimum; a set point change goes only to a running load;
3. the wear guard: no start inside min_off_s of the last stop, never more
   than max_starts_per_hour starts in a sliding hour, no stop inside
   min_on_s except for manual or shed; a set point change is no start;
4. precedence: force_off is never commanded on, force_on never off, a shed
   auto load never on; and where the guard allows, those states are reached;
5. flex offers no running (other than continuing), shed, manual,
   unavailable, unresponsive or satisfied load, none inside its min off time
   or at its start limit, every load that could start, each with the powers
   it can really run at (a whole load: min = max = its running power), and
   flex_kw is the sum of their largest powers capped at the site maximum;
6. at most one accepted allocation per cycle; never an older epoch or an
   expired ``valid_until``;
7. nothing raises.

A cycle's ``valid_until`` is drawn once per cycle (it is its period's end),
so replays repeat it (a replay with another ``valid_until`` has its own example).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, time, timedelta

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from gateway.ems import Command, LoadSpec, LoadView, LocalEms
from gateway.ems.controller import LOCAL_MARGIN_KW, SETTLE_S, AllocationResult
from gateway.ems.guard import HOUR_S

T0 = datetime(2026, 6, 21, 10, 0, tzinfo=UTC)
TOL_KW = 1e-6
CYCLES = [f"2026-06-21T1{h}:00:00Z" for h in range(6)]


def at(now_s: float) -> datetime:
    return T0 + timedelta(seconds=now_s)


@st.composite
def load_specs(draw: st.DrawFn, index: int) -> LoadSpec:
    lo = draw(st.sampled_from([0.3, 0.5, 1.0, 1.5, 2.0, 3.0]))
    hi = lo + draw(st.sampled_from([0.0, 0.0, 0.5, 1.0]))
    nominal = draw(st.sampled_from([lo, hi, (lo + hi) / 2, lo / 2, hi * 2]))
    # Wired energised = cut: on when idle, only ever cut (shed, manual); a relay board's
    # channel, so it never modulates.
    normally_on = draw(st.sampled_from([False] * 7 + [True]))
    modulation = "none" if normally_on else draw(
        st.sampled_from(["none", "none", "continuous", "steps"])
    )
    steps: tuple[float, ...] = ()
    if modulation == "continuous" and hi <= lo:
        hi = lo + 1.0
    elif modulation == "steps":
        # A wallbox's whole amps (0.23 kW a step on one phase) from lo, or a few stages.
        step = draw(st.sampled_from([0.23, 0.5]))
        count = draw(st.integers(1, 8))
        steps = tuple(round(lo + k * step, 6) for k in range(count))
        hi = steps[-1]
    return LoadSpec(
        f"l{index}",
        kind=draw(st.sampled_from(["water_heater", "heat_pump", "ev_charger", "generic"])),
        nominal_kw=nominal,
        min_kw=lo,
        max_kw=hi,
        min_on_s=draw(st.sampled_from([0.0, 60.0, 300.0, 900.0])),
        min_off_s=draw(st.sampled_from([0.0, 60.0, 300.0, 900.0])),
        max_starts_per_hour=draw(st.integers(1, 6)),
        shed_level=draw(st.sampled_from([None, 1, 2, 3])),
        priority=draw(st.integers(0, 2)),
        departure=draw(st.none() | st.sampled_from([time(7, 30), time(12, 0), time(18, 0)])),
        energy_need_kwh=draw(st.sampled_from([None, None, None, 0.0, 5.0])),
        normally_on=normally_on,
        modulation=modulation,  # type: ignore[arg-type]
        steps_kw=steps,
    )


def can_run_at(spec: LoadSpec, kw: float) -> bool:
    """Whether ``kw`` is a power the load can run at (never below its minimum)."""
    if spec.modulation == "continuous":
        return spec.min_kw - TOL_KW <= kw <= spec.max_kw + TOL_KW
    if spec.modulation == "steps":
        return any(abs(kw - s) <= TOL_KW for s in spec.steps_kw)
    return False


# Mostly short steps (several per period), sometimes long ones (past guards and hours).
steps = st.sampled_from(
    [0.0, 0.0, 1.0, 4.0, 5.0, 10.0, 30.0, 60.0, 60.0, 120.0, 300.0, 600.0, 900.0, 3600.0]
) | st.floats(min_value=0.0, max_value=200.0)


@dataclass
class Alloc:
    cycle: str
    kw: float
    valid_until_s: float
    accepted_at_s: float
    loads: frozenset[str]


@dataclass
class Device:
    """What the machine knows of one load's device, from commands and reports."""

    on: bool = False
    reported: bool = False  # the device has told its on/off state at least once
    available: bool = False
    mode: str = "auto"
    measured_kw: float | None = None
    changes: list[tuple[float, bool]] = field(default_factory=list)  # (at, on)
    starts: list[float] = field(default_factory=list)
    commanded_at_s: float = float("-inf")
    pending: Command | None = None  # the last command, while nothing changed since
    check_due_s: float | None = None
    setpoint_kw: float | None = None  # the power last set (modulating loads)
    setpoint_before: float | None = None  # before the pending set point change
    # The power the EMS last decided: a failed change leaves the device at its
    # former power until the next reconciliation sends it again.
    decided_kw: float | None = None


class LocalEmsMachine(RuleBasedStateMachine):
    @initialize(data=st.data())
    def setup(self, data: st.DataObject) -> None:
        n = data.draw(st.integers(1, 4), label="loads")
        self.specs = {s.id: s for s in (data.draw(load_specs(i)) for i in range(n))}
        self.response_check_s = data.draw(st.sampled_from([5.0, 10.0]))
        self.grace_s = data.draw(st.sampled_from([60.0, 120.0]))
        self.local = data.draw(st.sampled_from([True, True, True, False]),
                               label="local_self_consumption")
        self.max_flex_kw = data.draw(st.sampled_from([2.0, 50.0]))
        self.allow_import_kw = data.draw(st.sampled_from([0.0, 0.0, 0.5]), label="allow_import")
        self.ems = LocalEms(
            list(self.specs.values()),
            response_check_s=self.response_check_s,
            unresponsive_hold_s=data.draw(st.sampled_from([300.0, 3600.0])),
            local_self_consumption=self.local,
            max_flex_kw=self.max_flex_kw,
            continue_grace_s=self.grace_s,
            allow_import_kw=self.allow_import_kw,
        )
        self.now = 0.0
        self.dev = {ld: Device() for ld in self.specs}
        self.grid_level = 0
        self.allocs: list[Alloc] = []
        self.owner: dict[str, Alloc] = {}
        self.applied: set[str] = set()
        # A cycle's valid_until is its period's end: fixed per cycle, random here, so
        # some allocs arrive long after it (expired) and replays repeat it.
        self.valid_until_of = {
            c: data.draw(st.sampled_from([300.0, 900.0, 1800.0]) | st.floats(0.0, 6000.0),
                         label=f"valid_until of {c}")
            for c in CYCLES
        }
        self.highest_epoch = 0
        self.continuing: dict[str, float] = {}  # loads offered to continue, until
        self.local_set: set[str] = set()
        self.reconciled_at = 0.0
        self.reconciled = False
        self.period_index = 0
        # Most loads start out reported available (and off), as a gateway sees them at boot.
        for load in self.specs:
            if data.draw(st.integers(0, 4), label=f"{load} unavailable at boot") > 0:
                self.dev[load].available = True
                self.dev[load].reported = True
                self.apply(self.ems.observe(load, 0.0, available=True, on=False))

    # Helpers ------------------------------------------------------------------------------
    def advance(self, dt: float) -> None:
        self.now += dt
        self.reconciled = False

    def shed(self, load: str) -> bool:
        level = self.specs[load].shed_level
        return level is not None and self.grid_level >= level

    def may_start(self, load: str, now: float) -> bool:
        """The wear guard from our own record of the device."""
        d, spec = self.dev[load], self.specs[load]
        if d.changes and not d.changes[-1][1] and now - d.changes[-1][0] < spec.min_off_s:
            return False
        return len([t for t in d.starts if now - t < HOUR_S]) < spec.max_starts_per_hour

    def last_on_s(self, load: str) -> float | None:
        d = self.dev[load]
        return d.changes[-1][0] if d.changes and d.changes[-1][1] else None

    def views(self) -> dict[str, LoadView]:
        return {v.id: v for v in self.ems.views(self.now)}

    def drawn_kw(self, load: str) -> float:
        """What a load that is on draws by our record: its set point, or its running power."""
        spec, d = self.specs[load], self.dev[load]
        if spec.modulates and d.setpoint_kw is not None:
            return d.setpoint_kw
        return spec.run_kw

    def apply(self, commands: list[Command] | tuple[Command, ...]) -> None:
        """Check each command against the record and the rules, then record it."""
        now = self.now
        seen = set()
        for c in commands:
            assert c.load in self.specs and c.load not in seen, c
            seen.add(c.load)
            d, spec = self.dev[c.load], self.specs[c.load]
            assert d.available, f"command to an unavailable load: {c}"
            # (2) set points: only modulating loads, only at a power they can take.
            if spec.modulates and c.on:
                assert c.setpoint_kw is not None and can_run_at(spec, c.setpoint_kw), c
            else:
                assert c.setpoint_kw is None, c
            if not c.switch:
                # A new power for a running load: no switch, no start, nothing for the guard.
                assert c.on and d.on and spec.modulates, c
                assert c.setpoint_kw != d.setpoint_kw, f"redundant set point: {c}"
                if d.mode == "force_on":
                    assert c.reason == "manual", c
                elif c.reason == "allocation":
                    assert c.load in self.owner, f"set on no allocation: {c}"
                else:
                    assert c.reason == "local" and d.mode == "auto" and not self.shed(c.load), c
                d.setpoint_before, d.setpoint_kw = d.setpoint_kw, c.setpoint_kw
                d.decided_kw = c.setpoint_kw
                d.commanded_at_s = now
                d.pending = c
                continue
            assert c.on != d.on, f"redundant command: {c}"
            # (4) precedence: manual > shed > allocation > local.
            if d.mode == "force_on":
                assert c.on and c.reason == "manual", c
            elif d.mode == "force_off":
                assert not c.on and c.reason == "manual", c
            elif self.shed(c.load):
                assert not c.on and c.reason == "shed", c
            elif spec.normally_on:
                assert c.on and c.reason == "idle", c  # idle means on; only ever cut
            elif c.on:
                assert c.reason in ("allocation", "local"), c
            else:
                assert c.reason == "idle", c
            # (3) the wear guard.
            if c.on:
                if d.changes:
                    last_at, last_on = d.changes[-1]
                    assert not last_on
                    assert now - last_at >= spec.min_off_s, f"start inside min_off_s: {c}"
                recent = [t for t in d.starts if now - t < HOUR_S]
                assert len(recent) + 1 <= spec.max_starts_per_hour, f"start limit: {c}"
                # (2) a whole load runs at its running power, within its limits.
                if not spec.modulates:
                    assert spec.min_kw - TOL_KW <= spec.run_kw <= spec.max_kw + TOL_KW
                if c.reason == "allocation":
                    a = self.owner.get(c.load)
                    assert a is not None, f"started on no allocation: {c}"
                    assert now < a.valid_until_s, f"started on an expired allocation: {c}"
            elif c.reason not in ("manual", "shed"):
                started = self.last_on_s(c.load)
                assert started is not None
                assert now - started >= spec.min_on_s, f"stop inside min_on_s: {c}"
            d.on = c.on
            d.changes.append((now, c.on))
            if c.on:
                d.starts.append(now)
                if c.setpoint_kw is not None:
                    d.setpoint_before, d.setpoint_kw = d.setpoint_kw, c.setpoint_kw
                    d.decided_kw = c.setpoint_kw
            d.check_due_s = now + self.response_check_s if c.on else None
            d.commanded_at_s = now
            d.pending = c
        self.reconciled_at = now
        self.reconciled = True

    # Rules ------------------------------------------------------------------------------------
    @rule(
        dt=steps,
        data=st.data(),
        available=st.sampled_from([None, None, None, True, True, False]),
        on=st.sampled_from([None, None, None, None, None, True, False]),
        power_kw=st.none() | st.sampled_from([0.0, 0.01]) | st.floats(0.0, 5.0),
    )
    def observe(self, dt: float, data: st.DataObject, available: bool | None,
                on: bool | None, power_kw: float | None) -> None:
        self.advance(dt)
        load = data.draw(st.sampled_from(sorted(self.specs)), label="load")
        d = self.dev[load]
        came_back = available is True and not d.available
        if available is not None:
            d.available = available
        if power_kw is not None:
            d.measured_kw = power_kw
        if on is not None and (not d.reported or came_back):
            # The first report, or the device back after an outage: how things are,
            # not a switch anybody made (no start counted, the guard counts from now);
            # unless we have just commanded it: that report may predate the command.
            d.reported = True
            if on != d.on and self.now - d.commanded_at_s >= SETTLE_S:
                d.on = on
                d.changes.append((self.now, on))
                d.check_due_s = None
                d.pending = None
        elif on is not None and on != d.on:
            if self.now - d.commanded_at_s >= SETTLE_S:
                d.mode = "force_on" if on else "force_off"  # the resident's hand
            d.on = on
            d.changes.append((self.now, on))
            if on:
                d.starts.append(self.now)
            d.pending = None
        self.apply(self.ems.observe(load, self.now, available=available, on=on,
                                    power_kw=power_kw))

    @rule(dt=st.sampled_from([0.0, 1.0, 2.0, 5.0, 20.0]), data=st.data(),
          drawing=st.booleans())
    def meter(self, dt: float, data: st.DataObject, drawing: bool) -> None:
        """The plug's power: the running power, or nothing (satisfied, or not responding)."""
        self.advance(dt)
        load = data.draw(st.sampled_from(sorted(self.specs)), label="load")
        d = self.dev[load]
        d.measured_kw = self.drawn_kw(load) if d.on and drawing else 0.0
        self.apply(self.ems.observe(load, self.now, power_kw=d.measured_kw))

    @rule(dt=steps, data=st.data(),
          mode=st.sampled_from(["auto", "auto", "force_on", "force_off"]))
    def set_mode(self, dt: float, data: st.DataObject, mode: str) -> None:
        self.advance(dt)
        load = data.draw(st.sampled_from(sorted(self.specs)), label="load")
        self.dev[load].mode = mode
        self.apply(self.ems.set_mode(load, mode, self.now))  # type: ignore[arg-type]

    @rule(dt=steps, level=st.integers(0, 3))
    def set_grid_level(self, dt: float, level: int) -> None:
        self.advance(dt)
        self.grid_level = level
        self.apply(self.ems.set_grid_level(level, self.now))

    @rule(dt=steps, ahead_s=st.none() | st.sampled_from([0.0, 5.0, 60.0, 900.0]))
    def flex(self, dt: float, ahead_s: float | None) -> None:
        self.advance(dt)
        self.check_flex(None if ahead_s is None else self.now + ahead_s)

    def check_flex(self, period_start: float | None) -> None:
        offer = self.ems.flex(self.now, at(self.now), period_start)
        views = self.views()
        ids = [i.id for i in offer.loads]
        assert len(set(ids)) == len(ids)
        # (5) nothing offered that cannot take extra power for the period.
        for info in offer.loads:
            spec, d, view = self.specs[info.id], self.dev[info.id], views[info.id]
            # What it can really run at: a whole load only its running power.
            if spec.modulates:
                assert info.min_kw == (spec.steps_kw[0] if spec.steps_kw else spec.min_kw), info
                assert info.max_kw == (spec.steps_kw[-1] if spec.steps_kw else spec.max_kw), info
            else:
                assert info.min_kw == info.max_kw == spec.run_kw, info
            assert info.kind == spec.kind
            assert d.available and d.mode == "auto", info
            assert not spec.normally_on, info
            assert not self.shed(info.id), info
            assert not view.unresponsive, info
            assert spec.energy_need_kwh != 0.0, info
            if d.on:
                # Only a running allocation may be offered, to continue into the period.
                assert view.reason == "allocation" and period_start is not None, info
                assert info.id in self.owner, info
                satisfied = d.measured_kw is not None and d.measured_kw < spec.idle_below_kw
                assert not (satisfied and d.check_due_s is None), f"satisfied: {info}"
            else:
                assert self.may_start(info.id, self.now), f"offered inside the guard: {info}"
        # ... and every idle load that could start is offered.
        for load, d in self.dev.items():
            if (
                not d.on and d.available and d.mode == "auto" and not self.shed(load)
                and not self.specs[load].normally_on
                and not views[load].unresponsive
                and self.specs[load].energy_need_kwh != 0.0
                and self.may_start(load, self.now)
            ):
                assert load in ids, f"{load} could start but is not offered"
        total = sum(info.max_kw for info in offer.loads)
        assert offer.flex_kw == min(round(total, 6), self.max_flex_kw)
        for i in ids:
            if self.dev[i].on:
                self.continuing[i] = self.now + self.grace_s

    @rule(
        dt=steps,
        cycle=st.sampled_from(CYCLES),
        kw=st.sampled_from([0.0, 0.3, 1.0, 2.5, 4.0]) | st.floats(0.0, 9.0),
        epoch_shift=st.sampled_from([0, 0, 0, 0, 1, -1]),
    )
    def accept_allocation(self, dt: float, cycle: str, kw: float, epoch_shift: int) -> None:
        self.advance(dt)
        self.check_accept(cycle, kw, max(0, self.highest_epoch + epoch_shift),
                          self.valid_until_of[cycle])

    @rule(
        dt=st.sampled_from([0.0, 60.0, 300.0, 600.0, 900.0]),
        lead_s=st.sampled_from([0.0, 1.0, 3.0]),
        reply_s=st.sampled_from([0.0, 2.0, 10.0]),
        kw=st.none() | st.sampled_from([0.5, 1.0, 2.0, 3.0, 5.0]) | st.floats(0.0, 9.0),
    )
    def coordinator_cycle(self, dt: float, lead_s: float, reply_s: float,
                          kw: float | None) -> None:
        """A regular cycle: the request at a period boundary, then this site's alloc (or none)."""
        self.advance(dt)
        self.period_index += 1
        period_start = self.now + lead_s
        self.check_flex(period_start)
        if kw is None:
            return
        self.advance(reply_s)
        self.check_accept(f"p{self.period_index}", kw, self.highest_epoch, period_start + 900.0)

    def check_accept(self, cycle: str, kw: float, epoch: int, valid_until: float) -> None:
        before = self.ems.views(self.now)
        # Candidates by our own record (the decision must be among them).
        eligible = set()
        views = self.views()
        for load, d in self.dev.items():
            if not d.available or d.mode != "auto" or self.shed(load):
                continue
            if self.specs[load].normally_on:
                continue
            if views[load].unresponsive or self.specs[load].energy_need_kwh == 0.0:
                continue
            if (d.on and views[load].reason == "allocation") or (
                not d.on and self.may_start(load, self.now)
            ):
                eligible.add(load)
        result: AllocationResult = self.ems.accept_allocation(
            cycle, kw, epoch, valid_until, self.now, at(self.now)
        )
        # (6) one per cycle, never an older epoch, never expired.
        refusals = set()
        if epoch < self.highest_epoch:
            refusals.add("old_epoch")
        if valid_until <= self.now:
            refusals.add("expired")
        if cycle in self.applied:
            refusals.add("duplicate")
        if refusals:
            assert not result.accepted and result.why in refusals, (result, refusals)
            assert result.commands == () and result.loads == ()
            assert self.ems.views(self.now) == before
            return
        assert result.accepted, result
        self.highest_epoch = max(self.highest_epoch, epoch)
        self.applied.add(cycle)
        chosen = set(result.loads)
        assert len(chosen) == len(result.loads) == len(result.setpoints_kw)
        assert chosen <= eligible, (chosen, eligible)
        for ld, setpoint in zip(result.loads, result.setpoints_kw, strict=True):
            spec = self.specs[ld]
            if spec.modulates:
                assert can_run_at(spec, setpoint), (ld, setpoint)
            else:
                assert abs(setpoint - spec.run_kw) <= TOL_KW, (ld, setpoint)
        used = sum(result.setpoints_kw)
        assert abs(result.used_kw - used) <= TOL_KW
        # (1) never more than the allocation, plus the import it may take.
        assert used <= kw + self.allow_import_kw + TOL_KW, f"allocation overrun: {used} > {kw}"
        started = {c.load for c in result.commands if c.on and c.reason == "allocation"}
        assert {ld for ld in chosen if not self.dev[ld].on} <= started
        alloc = Alloc(cycle, kw, valid_until, self.now, frozenset(chosen))
        self.allocs.append(alloc)
        for ld in chosen:
            self.owner[ld] = alloc
        for ld, setpoint in zip(result.loads, result.setpoints_kw, strict=True):
            if self.specs[ld].modulates:
                self.dev[ld].decided_kw = setpoint  # sent below, unless it runs at it already
        self.continuing.clear()
        self.apply(result.commands)

    @rule(
        dt=steps,
        net_kw=st.none() | st.sampled_from([0.0, 1.0, 2.5, 5.0]) | st.floats(-5.0, 8.0),
    )
    def tick(self, dt: float, net_kw: float | None) -> None:
        self.advance(dt)
        before = self.views()
        before_kw = {ld: self.drawn_kw(ld) for ld in self.specs}
        self.continuing = {ld: u for ld, u in self.continuing.items() if self.now < u}
        for d in self.dev.values():
            if d.check_due_s is not None and self.now >= d.check_due_s:
                d.check_due_s = None
        commands = self.ems.tick(self.now, net_kw)
        self.apply(commands)
        after = self.views()  # response checks done in this tick included

        def local_before(load: str) -> bool:
            v = before[load]
            return v.on and v.reason == "local"

        def candidate(load: str) -> bool:
            d = self.dev[load]
            return (d.available and d.mode == "auto" and not self.shed(load)
                    and not after[load].unresponsive)

        reclaimable = sum(before_kw[ld] for ld in self.specs
                          if local_before(ld) and candidate(ld))
        # Loads started on local power, and running ones given a new set point.
        local_started = sum(self.drawn_kw(c.load) for c in commands
                            if c.on and c.reason == "local")
        if net_kw is None or not self.local:
            assert local_started == 0
        elif local_started > 0:
            # Local self-consumption runs on the home's own export only.
            assert local_started <= net_kw - LOCAL_MARGIN_KW + reclaimable + TOL_KW, (
                local_started, net_kw, reclaimable,
            )
        self.local_set = {v.id for v in self.ems.views(self.now)
                          if v.on and v.reason == "local"}

    @rule(dt=steps)
    def cycle_closed(self, dt: float) -> None:
        self.advance(dt)
        self.continuing.clear()
        self.apply(self.ems.cycle_closed(self.now))

    @precondition(lambda self: any(d.pending is not None for d in self.dev.values()))
    @rule(dt=st.sampled_from([0.0, 1.0, 3.0]), data=st.data())
    def command_failed(self, dt: float, data: st.DataObject) -> None:
        self.advance(dt)
        load = data.draw(st.sampled_from(sorted(ld for ld, d in self.dev.items()
                                                if d.pending is not None)), label="load")
        d = self.dev[load]
        assert d.pending is not None
        on = d.pending.on
        if not d.pending.switch:
            # The device kept its former power: the load runs on at it.
            self.ems.command_failed(load, on, self.now, "timeout", switch=False)
            d.setpoint_kw = d.setpoint_before
            d.pending = None
            return
        self.ems.command_failed(load, on, self.now, "timeout")
        # The device kept its state: undo our record of the switch.
        d.setpoint_kw = None  # unknown now: the next start sets it again
        d.on = not on
        d.changes.pop()
        if on:
            d.starts.pop()
        d.check_due_s = None
        d.pending = None

    # Invariants ---------------------------------------------------------------------------
    @invariant()
    def the_ems_agrees_with_the_device_record(self) -> None:
        for v in self.ems.views(self.now):
            d = self.dev[v.id]
            assert (v.on, v.available, v.mode) == (d.on, d.available, d.mode), (v, d)
            assert v.power_kw >= 0.0
            if d.on and self.specs[v.id].modulates:
                assert self.ems.rt[v.id].setpoint_kw == d.setpoint_kw, (v, d)

    @invariant()
    def loads_on_allocation_are_covered(self) -> None:
        # (1) judged at the last reconciliation, where states were decided.
        t = self.reconciled_at
        last = self.allocs[-1] if self.allocs else None
        on_last_kw = 0.0
        for v in self.ems.views(self.now):
            if not (v.on and v.reason == "allocation"):
                continue
            a = self.owner.get(v.id)
            assert a is not None, f"{v.id} runs on allocation but none chose it"
            if a is last:
                decided = self.dev[v.id].decided_kw
                on_last_kw += decided if self.specs[v.id].modulates and decided else (
                    self.drawn_kw(v.id))
                continue
            started = self.last_on_s(v.id)
            held_by_guard = started is not None and t - started < self.specs[v.id].min_on_s
            unreachable = not v.available  # nothing can be commanded to it
            assert (t < a.valid_until_s or held_by_guard or unreachable
                    or v.id in self.continuing), (
                f"{v.id} runs on an allocation that ended at {a.valid_until_s} (now {t})"
            )
        if last is not None:
            assert on_last_kw <= last.kw + self.allow_import_kw + TOL_KW, (on_last_kw, last)

    @invariant()
    def manual_and_shed_states_are_reached_where_the_guard_allows(self) -> None:
        if not self.reconciled:
            return
        views = self.views()
        for load, d in self.dev.items():
            v = views[load]
            if d.mode == "force_off":
                assert not d.on or not d.available, f"{load} forced off but on"
                if not d.on:
                    assert v.reason == "manual"
            elif d.mode == "force_on":
                if d.on:
                    assert v.reason == "manual"
                elif d.available:
                    assert not self.may_start(load, self.now), f"{load} forced on but off"
            elif self.shed(load):
                assert not d.on or not d.available, f"{load} shed but on"
            elif self.specs[load].normally_on and not d.on and d.available:
                assert not self.may_start(load, self.now), f"{load} normally on but off"


LocalEmsMachine.TestCase.settings = settings(
    max_examples=150, stateful_step_count=50, deadline=None
)
TestLocalEms = LocalEmsMachine.TestCase

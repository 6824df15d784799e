"""``LocalEms``: the home's decisions, by precedence, under the wear guard.

Each load's desired state follows one precedence (PROTOCOL.md, "Grid level"):
the resident's manual command > shedding > the coordinator's allocation >
local self-consumption > idle. ``_reconcile`` turns desired states into relay
commands, only where the wear guard allows (``gateway/ems/guard.py``), and
records them. Nothing here reads a clock or talks to a device: the service
passes ``now_s`` (monotonic-consistent seconds) and the wall time where a
deadline needs it, and executes the returned ``Command``s.

A modulating load (``LoadSpec.modulation``) also gets a set point: an
allocation of A kW runs the loads and set points of ``plan.choose_loads``
within A (+ ``allow_import_kw``), the largest achievable power; the local
logic follows the home's export the same way. A set point change on a
running load is a command too (``switch=False``): it is no start, so the
wear guard does not count it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from gateway.ems.guard import WearGuard
from gateway.ems.loads import LoadRuntime, LoadSpec, Mode, Reason
from gateway.ems.plan import candidate_of, choose_loads

LOCAL_MARGIN_KW = 0.1
# Set points closer than this are the same (float dust, not a new command).
SETPOINT_TOL_KW = 1e-6
# A report contradicting our own command this soon after it is the device
# catching up, not the resident pressing its button.
SETTLE_S = 5.0


@dataclass(frozen=True, slots=True)
class Command:
    """Switch ``load`` on or off, and why; for a modulating load, the power to run at.

    ``switch`` False: the load stays as it is (on) and only ``setpoint_kw`` changes.
    The service sets the power before it switches on, so a load starts at its set point.
    """

    load: str
    on: bool
    reason: Reason
    setpoint_kw: float | None = None
    switch: bool = True


@dataclass(frozen=True, slots=True)
class LoadFlexInfo:
    """One load behind a flex reply (the ``loads`` items of PROTOCOL.md)."""

    id: str
    kind: str
    min_kw: float
    max_kw: float
    priority: int | None = None
    until: datetime | None = None
    energy_kwh: float | None = None


@dataclass(frozen=True, slots=True)
class FlexOffer:
    """What the home can absorb for the next period."""

    flex_kw: float
    loads: tuple[LoadFlexInfo, ...]


@dataclass(frozen=True, slots=True)
class LoadView:
    """A load's state for publishing (``load/{l}/state``, Home Assistant)."""

    id: str
    on: bool
    reason: Reason
    mode: Mode
    available: bool
    power_kw: float
    unresponsive: bool


@dataclass(frozen=True, slots=True)
class AllocationResult:
    """What became of an ``alloc``: applied (with the loads chosen) or refused, and why."""

    accepted: bool
    why: str
    loads: tuple[str, ...] = ()
    used_kw: float = 0.0
    commands: tuple[Command, ...] = ()
    setpoints_kw: tuple[float, ...] = ()
    """The power each of ``loads`` runs at (whole loads: their running power)."""


class LocalEms:
    """The local EMS of one home."""

    def __init__(
        self,
        specs: Sequence[LoadSpec],
        *,
        response_check_s: float = 10.0,
        response_tolerance: float = 0.5,
        unresponsive_hold_s: float = 3600.0,
        local_self_consumption: bool = True,
        max_flex_kw: float = 50.0,
        continue_grace_s: float = 120.0,
        max_import_kw: float | None = None,
        settle_s: float = SETTLE_S,
        allow_import_kw: float = 0.0,
    ) -> None:
        self.specs = {s.id: s for s in specs}
        self.rt = {s.id: LoadRuntime() for s in specs}
        self.response_check_s = response_check_s
        self.response_tolerance = response_tolerance
        self.unresponsive_hold_s = unresponsive_hold_s
        self.local_self_consumption = local_self_consumption
        self.max_flex_kw = max_flex_kw
        self.continue_grace_s = continue_grace_s
        self.settle_s = settle_s
        self._continuing: dict[str, float] = {}
        self.grid_level = 0
        self.grid_windows: list[tuple[float, float, int]] = []
        self.max_import_kw = max_import_kw
        # An allocation of A kW may run loads up to A + this (drawn from the grid).
        self.allow_import_kw = max(allow_import_kw, 0.0)
        self._preheat: dict[str, float] = {}  # load -> set point
        self.highest_epoch = 0
        # Applied cycles until their allocation expires (an expired one is refused anyway).
        self._applied: dict[Any, float] = {}
        self._local_on: dict[str, float] = {}  # load -> set point
        self._alloc_kw: dict[str, float] = {}  # load -> set point of its allocation
        self._commanded_at: dict[str, float] = {}
        # Guard bookkeeping before each command, to undo it if the command fails.
        self._before: dict[str, tuple[float | None, int]] = {}
        self._setpoint_before: dict[str, float | None] = {}
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.allocation: AllocationResult | None = None

    # Inputs from devices ---------------------------------------------------------
    def observe(
        self,
        load: str,
        now_s: float,
        *,
        available: bool | None = None,
        on: bool | None = None,
        power_kw: float | None = None,
        energy_kwh: float | None = None,
    ) -> list[Command]:
        """A device reported on a load's channel; returns the commands this implies."""
        rt = self.rt[load]
        came_back = False
        if available is not None and available != rt.available:
            rt.available = available
            came_back = available
            self._event("load_available" if available else "load_unavailable", load)
        if power_kw is not None:
            rt.measured_kw = power_kw
        if energy_kwh is not None:
            rt.energy_kwh = energy_kwh
        settling = now_s - self._commanded_at.get(load, float("-inf")) < self.settle_s
        if on is not None and (not rt.reported or came_back):
            # The first report (start-up, or the device back after an outage) is
            # how things are, not somebody's command: take it as the state. Unless
            # we have just commanded the load: the report may predate the command
            # (a status asked for at start-up), and the command's own report follows.
            rt.reported = True
            if on != rt.on and not settling:
                rt.on = on
                rt.last_change_s = now_s  # unknown since when: the guard counts from now
                rt.check_at_s = None
        elif on is not None and on != rt.on:
            if not settling:
                # Someone switched it at the device (its button, its own app):
                # the resident's choice wins until they give control back.
                rt.mode = "force_on" if on else "force_off"
                self._event("load_switched_at_device", load, on=on)
            rt.on = on
            rt.last_change_s = now_s
            if on:
                rt.starts.append(now_s)
        return self._reconcile(now_s)

    def command_failed(
        self, load: str, on: bool, now_s: float, error: str, *, switch: bool = True
    ) -> None:
        """A command could not be executed: the device kept its state, and the wear
        guard must not count a switch that never happened. A failed set point change
        (``switch=False``) leaves the load on at its former set point."""
        rt = self.rt[load]
        if not switch:
            rt.setpoint_kw = self._setpoint_before.pop(load, rt.setpoint_kw)
            self._event("command_failed", load, on=on, setpoint=True, error=error)
            return
        # Whatever the device's set point is now, the next start sends one again.
        rt.setpoint_kw = None
        before = self._before.pop(load, None)
        if rt.on == on:
            rt.on = not on
            if before is not None:
                rt.last_change_s, starts = before
                del rt.starts[starts:]
            elif on and rt.starts:
                rt.starts.pop()
        rt.check_at_s = None
        self._event("command_failed", load, on=on, error=error)

    # Inputs from the resident and the grid ----------------------------------------
    def set_mode(self, load: str, mode: Mode, now_s: float) -> list[Command]:
        """Manual control from Home Assistant: force on, force off, or back to auto."""
        self.rt[load].mode = mode
        return self._reconcile(now_s)

    def set_grid_level(self, level: int, now_s: float) -> list[Command]:
        """The grid level now (0-3); loads whose shed level it reaches are cut."""
        self.grid_level = level
        return self._reconcile(now_s)

    def set_grid_outlook(
        self, level: int, windows: Sequence[tuple[float, float, int]], now_s: float
    ) -> list[Command]:
        """The level now and the stress windows ahead (start_s, end_s, level).

        Loads that store energy and have ``preheat_hours`` run ahead of a window
        that will cut them (anticipation), when the home can afford it.
        """
        self.grid_level = level
        self.grid_windows = [(float(a), float(b), int(c)) for a, b, c in windows]
        return self._reconcile(now_s)

    # The coordinator ---------------------------------------------------------------
    def flex(self, now_s: float, now: datetime, period_start_s: float | None = None) -> FlexOffer:
        """What the home can absorb for the period starting at ``period_start_s``."""
        infos = []
        total = 0.0
        for spec, rt in self._offerable(now_s, period_start_s):
            if rt.on:
                # Offered to continue: hold it on until this cycle's alloc says.
                self._continuing[spec.id] = now_s + self.continue_grace_s
            until = spec.next_departure(now)
            # What it can really run at: a whole load its running power only (a share
            # between its min_kw and max_kw would run nothing), a modulating one its
            # range (docs/protocol.md, "flex").
            infos.append(
                LoadFlexInfo(
                    spec.id, spec.kind, spec.least_kw, spec.most_kw, spec.priority, until,
                    spec.energy_need(),
                )
            )
            total += spec.most_kw
        return FlexOffer(min(round(total, 6), self.max_flex_kw), tuple(infos))

    def accept_allocation(
        self,
        cycle: Any,
        alloc_kw: float,
        epoch: int,
        valid_until_s: float,
        now_s: float,
        now: datetime,
    ) -> AllocationResult:
        """Apply an ``alloc`` (at most one per cycle, never from an older epoch or expired)."""
        if epoch < self.highest_epoch:
            return self._refuse("old_epoch", cycle)
        if valid_until_s <= now_s:
            return self._refuse("expired", cycle)
        # Forget a cycle a day after its allocation expired (96 a day at most):
        # never soon enough for the same cycle to come back with another expiry.
        for old in [c for c, until in self._applied.items() if until + 86_400.0 <= now_s]:
            del self._applied[old]
        if cycle in self._applied:
            return self._refuse("duplicate", cycle)
        self.highest_epoch = max(self.highest_epoch, epoch)
        self._applied[cycle] = valid_until_s
        candidates = []
        for spec, _rt in self._offerable(now_s, valid_until_s):
            until = spec.next_departure(now)
            candidates.append(
                candidate_of(spec, (until - now).total_seconds() if until is not None else None)
            )
        chosen = choose_loads(candidates, alloc_kw + self.allow_import_kw)
        chosen_ids = {c.id for c in chosen}
        for load in self._continuing:
            if load not in chosen_ids and self.rt[load].allocated_until_s is not None:
                self.rt[load].allocated_until_s = min(self.rt[load].allocated_until_s or now_s,
                                                      now_s)
        self._continuing.clear()
        for c in chosen:
            self.rt[c.id].allocated_until_s = valid_until_s
            self._alloc_kw[c.id] = c.kw
            self._local_on.pop(c.id, None)
        commands = self._reconcile(now_s)
        result = AllocationResult(
            True, "applied", tuple(c.id for c in chosen),
            round(sum(c.kw for c in chosen), 6), tuple(commands),
            tuple(round(c.kw, 6) for c in chosen),
        )
        self.allocation = result
        self._event("allocation_applied", None, cycle=str(cycle), alloc_kw=alloc_kw,
                    loads=list(result.loads), setpoints_kw=list(result.setpoints_kw),
                    used_kw=result.used_kw)
        return result

    def cycle_closed(self, now_s: float) -> list[Command]:
        """The cycle is over: loads offered to continue and not allocated may stop."""
        self._continuing.clear()
        return self._reconcile(now_s)

    # Time ------------------------------------------------------------------------------
    def tick(self, now_s: float, net_export_kw: float | None) -> list[Command]:
        """Periodic work: allocation expiry, response checks, local self-consumption."""
        for load in [ld for ld, until in self._continuing.items() if now_s >= until]:
            del self._continuing[load]
        for load, rt in self.rt.items():
            if (
                rt.allocated_until_s is not None
                and now_s >= rt.allocated_until_s
                and load not in self._continuing
            ):
                rt.allocated_until_s = None
                self._alloc_kw.pop(load, None)
            if rt.check_at_s is not None and now_s >= rt.check_at_s:
                rt.check_at_s = None
                self._check_response(load, rt, now_s)
            if rt.unresponsive_until_s is not None and now_s >= rt.unresponsive_until_s:
                rt.unresponsive_until_s = None
        self._plan_local(now_s, net_export_kw)
        self._plan_preheat(now_s, net_export_kw)
        return self._reconcile(now_s)

    # Views -----------------------------------------------------------------------------
    def views(self, now_s: float) -> list[LoadView]:
        out = []
        for load, rt in self.rt.items():
            spec = self.specs[load]
            power = rt.measured_kw if rt.measured_kw is not None else (
                self._commanded_kw(spec, rt) if rt.on else 0.0
            )
            out.append(
                LoadView(load, rt.on, rt.reason, rt.mode, rt.available, max(power, 0.0),
                         rt.unresponsive_until_s is not None and now_s < rt.unresponsive_until_s)
            )
        return out

    def drain_events(self) -> list[tuple[str, dict[str, Any]]]:
        events, self.events = self.events, []
        return events

    # Internals ---------------------------------------------------------------------------
    def _may_take_power(self, spec: LoadSpec, rt: LoadRuntime, now_s: float) -> bool:
        """Whether the EMS may run this load on extra power at all (allocation or
        local surplus): automatic, reachable, not shed, not cut-wired, responsive,
        and still wanting energy."""
        if not rt.available or rt.mode != "auto" or spec.normally_on:
            return False
        if spec.shed_level is not None and self.grid_level >= spec.shed_level:
            return False
        if rt.unresponsive_until_s is not None and now_s < rt.unresponsive_until_s:
            return False
        need = spec.energy_need()
        return need is None or need > 0

    def _offerable(
        self, now_s: float, period_start_s: float | None
    ) -> list[tuple[LoadSpec, LoadRuntime]]:
        """Loads that could run on extra power for the coming period."""
        out = []
        for load, spec in self.specs.items():
            rt = self.rt[load]
            if not self._may_take_power(spec, rt, now_s):
                continue
            if rt.on:
                # Running already: only an allocation ending with this period may
                # continue into the next (no new start, no wear); anything else
                # (local, manual) already draws its power.
                ends = rt.allocated_until_s
                continuing = (
                    rt.reason == "allocation"
                    and ends is not None
                    and period_start_s is not None
                    and ends <= period_start_s + 1.0
                )
                if not continuing:
                    continue
                if (
                    rt.measured_kw is not None
                    and rt.measured_kw < spec.idle_below_kw
                    and rt.check_at_s is None
                ):
                    continue  # on but drawing nothing: satisfied, no flexibility left
            elif not WearGuard.may_start(spec, rt, now_s):
                continue
            out.append((spec, rt))
        return out

    def _commanded_kw(self, spec: LoadSpec, rt: LoadRuntime) -> float:
        """What a load that is on should draw: its set point, or its running power."""
        if spec.modulates and rt.setpoint_kw is not None:
            return rt.setpoint_kw
        return spec.run_kw

    def _desired(
        self, spec: LoadSpec, rt: LoadRuntime, now_s: float
    ) -> tuple[bool, Reason, float | None]:
        """On or off, why, and (modulating loads) at what power."""
        if rt.mode == "force_on":
            return True, "manual", spec.default_setpoint_kw
        if rt.mode == "force_off":
            return False, "manual", None
        if spec.shed_level is not None and self.grid_level >= spec.shed_level:
            return False, "shed", None
        if rt.allocated_until_s is not None and (
            now_s < rt.allocated_until_s or (spec.id in self._continuing and rt.on)
        ):
            # Continuing into a new cycle with no new set point yet: keep the one it has.
            kw = self._alloc_kw.get(spec.id, rt.setpoint_kw)
            return True, "allocation", kw if kw is not None else spec.default_setpoint_kw
        if spec.id in self._local_on:
            return True, "local", self._local_on[spec.id]
        if spec.id in self._preheat:
            return True, "local", self._preheat[spec.id]
        return spec.normally_on, "idle", None

    def _reconcile(self, now_s: float) -> list[Command]:
        commands = []
        for load, spec in self.specs.items():
            rt = self.rt[load]
            want, reason, kw = self._desired(spec, rt, now_s)
            setpoint = kw if spec.modulates and want else None
            if want == rt.on:
                rt.reason = reason
                if (
                    setpoint is not None
                    and rt.available
                    and (rt.setpoint_kw is None or abs(setpoint - rt.setpoint_kw) > SETPOINT_TOL_KW)
                ):
                    # Running already: a new power, no start (the guard does not count it).
                    self._setpoint_before[load] = rt.setpoint_kw
                    rt.setpoint_kw = setpoint
                    self._commanded_at[load] = now_s
                    commands.append(Command(load, True, reason, setpoint, switch=False))
                continue
            if not rt.available:
                continue
            if want:
                if not WearGuard.may_start(spec, rt, now_s):
                    continue
                self._before[load] = (rt.last_change_s, len(rt.starts))
                rt.starts.append(now_s)
                rt.check_at_s = now_s + self.response_check_s
            else:
                if reason not in ("manual", "shed") and not WearGuard.may_stop(spec, rt, now_s):
                    continue
                self._before[load] = (rt.last_change_s, len(rt.starts))
                rt.check_at_s = None
            rt.on = want
            rt.last_change_s = now_s
            rt.reason = reason
            rt.setpoint_kw = setpoint if want else rt.setpoint_kw
            self._commanded_at[load] = now_s
            commands.append(Command(load, want, reason, setpoint))
        return commands

    def _check_response(self, load: str, rt: LoadRuntime, now_s: float) -> None:
        spec = self.specs[load]
        if not rt.on or rt.measured_kw is None:
            return  # no meter on this channel: nothing to check against
        if rt.measured_kw < self.response_tolerance * spec.min_kw:
            rt.unresponsive_until_s = now_s + self.unresponsive_hold_s
            self._event("load_unresponsive", load, measured_kw=rt.measured_kw,
                        expected_kw=self._commanded_kw(spec, rt))

    def _plan_local(self, now_s: float, net_export_kw: float | None) -> None:
        if not self.local_self_consumption or net_export_kw is None:
            self._local_on.clear()
            return
        # Power the local logic itself runs and may take back: only loads still
        # on for that reason (not one the resident has since forced on).
        running = 0.0
        for ld in self._local_on:
            rt = self.rt[ld]
            if not (rt.on and rt.reason == "local" and rt.mode == "auto" and rt.available):
                continue
            if rt.unresponsive_until_s is not None and now_s < rt.unresponsive_until_s:
                continue  # it draws nothing: no power to take back
            run_kw = self._commanded_kw(self.specs[ld], rt)
            running += min(rt.measured_kw, run_kw) if rt.measured_kw is not None else run_kw
        budget = net_export_kw + running - LOCAL_MARGIN_KW
        candidates = []
        for load, spec in self.specs.items():
            rt = self.rt[load]
            if not self._may_take_power(spec, rt, now_s):
                continue
            if rt.allocated_until_s is not None and now_s < rt.allocated_until_s:
                continue
            if rt.on and load not in self._local_on:
                continue
            if not rt.on and not WearGuard.may_start(spec, rt, now_s):
                continue
            candidates.append(candidate_of(spec))
        planned = {run.id: run.kw for run in choose_loads(candidates, budget)}
        for load, kw in planned.items():
            # A modulating load follows the export, but not every small rise of
            # it: within the margin it keeps its set point (never above the budget,
            # which the old set point is below).
            old = self._local_on.get(load)
            if old is not None and old <= kw < old + LOCAL_MARGIN_KW:
                planned[load] = old
        self._local_on = planned

    def _plan_preheat(self, now_s: float, net_export_kw: float | None) -> None:
        """Run storing loads ahead of a stress window that will cut them.

        Within ``preheat_hours`` before a window reaching its shed level, a
        water heater, an EV or a battery that still wants energy runs (reason
        ``local``), if the home's import stays within ``max_import_kw`` (its
        contract), so comfort holds through the window.
        """
        chosen: dict[str, float] = {}
        import_kw = -net_export_kw if net_export_kw is not None else 0.0
        # What already runs for anticipation is part of today's import.
        headroom = None
        if self.max_import_kw is not None:
            running = sum(kw for ld, kw in self._preheat.items() if self.rt[ld].on)
            headroom = self.max_import_kw - (import_kw - running)
        for load, spec in sorted(self.specs.items(), key=lambda kv: -kv[1].priority):
            rt = self.rt[load]
            if (
                spec.preheat_hours <= 0
                or not spec.stores_energy
                or spec.shed_level is None
                or spec.normally_on
            ):
                continue
            if not rt.available or rt.mode != "auto":
                continue
            if self.grid_level >= spec.shed_level:
                continue  # already in the window: shed wins
            if rt.unresponsive_until_s is not None and now_s < rt.unresponsive_until_s:
                continue  # full (a satisfied tank draws nothing)
            need = spec.energy_need()
            if need is not None and need <= 0:
                continue
            ahead = spec.preheat_hours * 3600.0
            if not any(
                level >= spec.shed_level and now_s < start <= now_s + ahead
                for start, _end, level in self.grid_windows
            ):
                continue
            if not rt.on and not WearGuard.may_start(spec, rt, now_s):
                continue
            # Its nominal power; a modulating load less if the contract's headroom says so.
            kw: float | None = spec.default_setpoint_kw
            if headroom is not None:
                kw = spec.setpoint_at_most(min(spec.default_setpoint_kw, headroom))
                if kw is None:
                    continue
                headroom -= kw
            assert kw is not None
            chosen[load] = kw
        started = sorted(set(chosen) - set(self._preheat))
        if started:
            self._event("preheat", None, loads=started)
        self._preheat = chosen

    def _refuse(self, why: str, cycle: Any) -> AllocationResult:
        self._event("allocation_refused", None, cycle=str(cycle), why=why)
        return AllocationResult(False, why)

    def _event(self, name: str, load: str | None, **fields: Any) -> None:
        if load is not None:
            fields["load"] = load
        self.events.append((name, fields))

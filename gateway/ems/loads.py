"""What the EMS knows of each flexible load: its limits (spec) and its state (runtime).

A load is switched whole (``modulation = "none"``: a relay, a water heater at
full power), or modulates: ``"continuous"`` (any power in ``[min_kw, max_kw]``,
an inverter heat pump) or ``"steps"`` (one of ``steps_kw``, e.g. a wallbox
taking 6-32 A in 1 A steps). What it can draw is ``setpoints``: the powers the
gateway may command, from which the flex it offers and its plans follow.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, time, timedelta
from itertools import pairwise
from typing import Literal

Mode = Literal["auto", "force_on", "force_off"]
Modulation = Literal["none", "continuous", "steps"]
Reason = Literal["allocation", "shed", "local", "manual", "idle"]


@dataclass(frozen=True, slots=True)
class LoadSpec:
    """A load's fixed limits, from the gateway's configuration."""

    id: str
    kind: str = "generic"
    nominal_kw: float = 1.0
    min_kw: float = 1.0
    max_kw: float = 1.0
    min_on_s: float = 0.0
    min_off_s: float = 0.0
    max_starts_per_hour: int = 6
    shed_level: int | None = 2
    priority: int = 0
    idle_below_kw: float = 0.05
    capacity_kwh: float | None = None
    soc: float | None = None
    soc_min: float = 0.2
    soc_max: float = 0.8
    departure: time | None = None
    energy_need_kwh: float | None = None
    preheat_hours: float = 0.0
    # Wired so that the relay only cuts it (energised = cut, as the prototype
    # did): left alone it runs on its own thermostat, so its idle state is on
    # and it offers no flexibility; it is only ever cut (shed, manual).
    normally_on: bool = False
    modulation: Modulation = "none"
    # "steps": the powers it accepts, ascending (kW).
    steps_kw: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if self.modulation == "steps":
            steps = self.steps_kw
            if not steps or steps[0] <= 0 or any(b <= a for a, b in pairwise(steps)):
                raise ValueError(f"load {self.id}: steps_kw must be positive and ascending")
        elif self.modulation == "continuous" and not 0 < self.min_kw <= self.max_kw:
            raise ValueError(f"load {self.id}: a continuous load needs 0 < min_kw <= max_kw")

    @property
    def modulates(self) -> bool:
        """Whether the gateway sets its power (else it switches it whole)."""
        return self.modulation != "none"

    @property
    def least_kw(self) -> float:
        """The smallest power it can run at (a whole load: its running power)."""
        if self.modulation == "continuous":
            return self.min_kw
        if self.modulation == "steps":
            return self.steps_kw[0]
        return self.run_kw

    @property
    def most_kw(self) -> float:
        """The largest power it can run at (a whole load: its running power)."""
        if self.modulation == "continuous":
            return self.max_kw
        if self.modulation == "steps":
            return self.steps_kw[-1]
        return self.run_kw

    def setpoint_at_most(self, power_kw: float, tolerance_kw: float = 1e-6) -> float | None:
        """The largest power it can run at within ``power_kw``; None below its least."""
        if power_kw + tolerance_kw < self.least_kw:
            return None
        if self.modulation == "continuous":
            return min(max(power_kw, self.min_kw), self.max_kw)
        if self.modulation == "steps":
            return max(s for s in self.steps_kw if s <= power_kw + tolerance_kw)
        return self.run_kw

    @property
    def default_setpoint_kw(self) -> float:
        """What it runs at when nothing limits it (manual on, anticipation): its nominal
        power, or the largest step below it."""
        return self.setpoint_at_most(self.run_kw) or self.least_kw

    @property
    def stores_energy(self) -> bool:
        """Whether running it early keeps comfort later (a tank, a battery, a car)."""
        return self.kind in ("water_heater", "ev_charger", "battery")

    @property
    def run_kw(self) -> float:
        """Its nominal power within its limits: what a whole load draws when on."""
        return min(max(self.nominal_kw, self.min_kw), self.max_kw)

    def energy_need(self) -> float | None:
        """kWh still wanted: for an EV, (target SOC - SOC) x capacity (DOMAIN.md)."""
        if self.capacity_kwh is not None and self.soc is not None:
            return max(0.0, (self.soc_max - max(self.soc, 0.0)) * self.capacity_kwh)
        return self.energy_need_kwh

    def next_departure(self, now: datetime) -> datetime | None:
        """The next time this load must be done by (today's or tomorrow's departure)."""
        if self.departure is None:
            return None
        at = now.replace(
            hour=self.departure.hour, minute=self.departure.minute, second=0, microsecond=0
        )
        return at if at > now else at + timedelta(days=1)


@dataclass(slots=True)
class LoadRuntime:
    """What the EMS knows and decided about one load right now."""

    on: bool = False  # the appliance's state as last reported (or commanded)
    reported: bool = False  # the device has told us its state at least once
    available: bool = False
    measured_kw: float | None = None
    last_change_s: float | None = None  # when it last switched on or off
    starts: list[float] = field(default_factory=list)  # start times within the last hour
    mode: Mode = "auto"
    reason: Reason = "idle"
    allocated_until_s: float | None = None  # allocation hold (valid_until)
    check_at_s: float | None = None  # when to verify the power step after a start
    unresponsive_until_s: float | None = None
    energy_kwh: float | None = None
    setpoint_kw: float | None = None  # the power last commanded (modulating loads)

"""What the EMS knows of each flexible load: its limits (spec) and its state (runtime)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, time, timedelta
from typing import Literal

Mode = Literal["auto", "force_on", "force_off"]
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

    @property
    def stores_energy(self) -> bool:
        """Whether running it early keeps comfort later (a tank, a battery, a car)."""
        return self.kind in ("water_heater", "ev_charger", "battery")

    @property
    def run_kw(self) -> float:
        """The power it draws when its relay is on (an on/off relay: nominal, within limits)."""
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

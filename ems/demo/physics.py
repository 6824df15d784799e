"""The physical side of a simulated home: tanks, batteries, the grid connection (pure).

``HomeModel.advance(at, drawn_kw)`` moves the simulated day on: each
appliance's energy need grows (hot water drawn, heat lost) and shrinks by
the power it drew, and its thermostat (or charger) decides whether it still
takes power. ``grid_import_kw`` is what the home's meter measures: household
consumption minus PV plus what the appliances draw. The I/O around it
(``ems.demo.home``) reads the drawn power from the simulated devices and
applies the thermostats to them.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

from ems.demo.plan import ApplianceSpec, HomeSpec
from ems.demo.profiles import HEAT_PUMP_LOSS_KW, hot_water_kw, hour_of, household_kw, pv_kw

SATISFIED_KWH = 0.05
"""Below this need the thermostat (or the charger) stops the appliance."""
RESTART_KWH = 0.5
"""A satisfied thermostat lets the appliance heat again once this much heat is missing."""


@dataclass(slots=True)
class Appliance:
    """An appliance's changing state: the energy it still needs, whether it takes power."""

    spec: ApplianceSpec
    need_kwh: float
    satisfied: bool = False

    def present(self, at: datetime) -> bool:
        """False once an EV has left (its departure hour has passed)."""
        return self.spec.departure_h is None or hour_of(at) < self.spec.departure_h

    def draw_kw(self, switched_on: bool) -> float:
        """The power it draws when its switch is ``switched_on`` (appliances without a meter)."""
        return self.spec.nominal_kw if switched_on and not self.satisfied else 0.0

    def advance(self, at: datetime, hours: float, drawn_kw: float) -> bool:
        """Move on by ``hours`` drawing ``drawn_kw``; True when ``satisfied`` changed."""
        loss_kw = {"water_heater": hot_water_kw(at), "heat_pump": HEAT_PUMP_LOSS_KW}.get(
            self.spec.kind, 0.0)
        need = self.need_kwh + (loss_kw - drawn_kw) * hours
        self.need_kwh = min(self.spec.capacity_kwh, max(0.0, need))
        before = self.satisfied
        if not self.present(at):
            self.satisfied = True  # the car is gone: the charger draws nothing
        elif self.need_kwh <= SATISFIED_KWH:
            self.satisfied = True
        elif self.need_kwh >= RESTART_KWH:
            self.satisfied = False
        return self.satisfied != before


@dataclass
class HomeModel:
    """One home's household, PV roof and appliances."""

    spec: HomeSpec
    rng: random.Random = field(init=False)
    appliances: dict[str, Appliance] = field(init=False)
    clouds: float = 1.0
    noise_kw: float = 0.0
    pv_kw: float = 0.0
    household_kw: float = 0.0
    _at: datetime | None = None

    def __post_init__(self) -> None:
        self.rng = random.Random(self.spec.seed)
        self.appliances = {
            a.id: Appliance(a, a.need_kwh, satisfied=a.need_kwh <= SATISFIED_KWH)
            for a in self.spec.appliances
        }

    def advance(self, at: datetime, drawn_kw: Mapping[str, float]) -> list[Appliance]:
        """Move the home to ``at``; ``drawn_kw`` by appliance held since the last call.

        Returns the appliances whose thermostat changed (to apply to their switch).
        """
        start, self._at = self._at, at
        changed = []
        hours = (at - start).total_seconds() / 3600 if start is not None else 0.0
        for appliance in self.appliances.values():
            if appliance.advance(at, max(hours, 0.0), drawn_kw.get(appliance.spec.id, 0.0)):
                changed.append(appliance)
        # Passing clouds and household noise change slowly: redraw a little each step.
        self.clouds = min(1.0, max(0.8, self.clouds + self.rng.gauss(0.0, 0.02)))
        self.noise_kw = min(0.8, max(-0.3, 0.9 * self.noise_kw + self.rng.gauss(0.0, 0.05)))
        self.pv_kw = pv_kw(self.spec.pv_kwp, at, self.clouds)
        self.household_kw = household_kw(self.spec.base_kw, self.spec.peak_kw, at, self.noise_kw)
        return changed

    def grid_import_kw(self, drawn_kw: Mapping[str, float]) -> float:
        """What the grid meter measures (> 0 import): household - PV + appliances."""
        return self.household_kw - self.pv_kw + sum(drawn_kw.values())

"""The simulated day of ``ems demo``: sun, household consumption, hot water drawn (pure).

Hours are UTC. The sun arc peaks at 12:00 UTC, about solar noon in France, so
the community exports around midday and draws in the evening.
"""

from __future__ import annotations

import math
from datetime import datetime

SUNRISE_H = 5.0
SUNSET_H = 19.0
"""A June day in France, in UTC."""
PV_DERATE = 0.8
"""Inverter, temperature and soiling losses: a 6 kWp roof gives about 4.8 kW at noon."""


def hour_of(at: datetime) -> float:
    """The hour of the day of ``at`` as a float (14.5 = 14:30)."""
    return at.hour + at.minute / 60 + at.second / 3600


def sun_factor(at: datetime) -> float:
    """0 at night, 1 at 12:00 UTC: a sine arc from sunrise to sunset, sharpened."""
    h = hour_of(at)
    if h <= SUNRISE_H or h >= SUNSET_H:
        return 0.0
    arc = math.sin(math.pi * (h - SUNRISE_H) / (SUNSET_H - SUNRISE_H))
    return float(arc**1.5)


def pv_kw(pv_kwp: float, at: datetime, clouds: float = 1.0) -> float:
    """PV production at ``at``; ``clouds`` (about 0.8-1) stands for passing clouds."""
    return pv_kwp * PV_DERATE * sun_factor(at) * clouds


def _bump(h: float, centre_h: float, width_h: float) -> float:
    return math.exp(-(((h - centre_h) / width_h) ** 2))


def household_kw(base_kw: float, peak_kw: float, at: datetime, noise_kw: float = 0.0) -> float:
    """Consumption without the flexible loads: breakfast, lunch and evening peaks."""
    h = hour_of(at)
    shape = 0.6 * _bump(h, 7.5, 1.0) + 0.5 * _bump(h, 12.5, 0.8) + 1.0 * _bump(h, 19.5, 1.5)
    return max(0.1, base_kw + peak_kw * shape + noise_kw)


def hot_water_kw(at: datetime) -> float:
    """Heat drawn from a water heater's tank (kWh per hour): showers morning and evening."""
    h = hour_of(at)
    return 0.1 + 1.5 * _bump(h, 7.5, 1.0) + 1.0 * _bump(h, 20.5, 1.5)


HEAT_PUMP_LOSS_KW = 0.3
"""Heat a hot-water or pool heat pump's store loses (kWh of electricity per hour)."""

"""The simulator: simulated gateways and simulated time around the real core.

No broker and no clock: each cycle is opened with ``central.core.Cycle.open``
and fed the simulated replies in arrival order, so the simulator and the live
coordinator cannot disagree about an allocation. ``cases`` holds the study's
three reference cases, ``summer_day`` its random summer day, ``plots`` the
figures.
"""

from ems.simulation.cases import REFERENCE_CASES, CaseResult, ReferenceCase, run_case, run_cases
from ems.simulation.driver import SiteInput, drive, run_cycle
from ems.simulation.summer_day import (
    CycleOutcome,
    Summary,
    SummerDayModel,
    run_summer_day,
    summarize,
)

__all__ = [
    "REFERENCE_CASES",
    "CaseResult",
    "CycleOutcome",
    "ReferenceCase",
    "SiteInput",
    "Summary",
    "SummerDayModel",
    "drive",
    "run_case",
    "run_cases",
    "run_cycle",
    "run_summer_day",
    "summarize",
]

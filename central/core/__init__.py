"""The pure allocation core: no I/O, no clock, no globals.

Time, inputs, state and seeds come in as arguments; decisions and their
reasons come out. The live coordinator, the simulator and the benchmarks all
drive this same code.
"""

from central.core.cycle import (
    EPSILON_KW,
    Cycle,
    CycleContext,
    Decision,
    Ignored,
    Offer,
    Step,
)
from central.core.sites import SiteBook
from central.core.strategy import (
    STRATEGIES,
    Grant,
    Session,
    Strategy,
    StrategyState,
    get_strategy,
)

__all__ = [
    "EPSILON_KW",
    "STRATEGIES",
    "Cycle",
    "CycleContext",
    "Decision",
    "Grant",
    "Ignored",
    "Offer",
    "Session",
    "SiteBook",
    "Step",
    "Strategy",
    "StrategyState",
    "get_strategy",
]

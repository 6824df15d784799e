"""Collect for a window, solve the optimum on what came, then first come, first served.

Replies are collected for ``window_s`` seconds (default 5 s); the optimum
with semi-continuous loads (``milp``'s model, same fallback) splits the
surplus among them; replies after the window are served at once with the
``fifo_min_power`` rule. This keeps FIFO's speed for late replies while the
fast majority gets the optimal split. Fallbacks are exposed and recorded as
by ``milp``.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from central.core.strategies.milp import OptimumSession, check_time_limit_s
from central.core.strategies.optimum import DEFAULT_TIME_LIMIT_S, Solver, solve_with_highs
from central.core.strategies.rules import check_window_s
from central.core.strategy import Session, StrategyState

if TYPE_CHECKING:
    from central.core.cycle import CycleContext

DEFAULT_WINDOW_S = 5.0


class Window:
    """The ``window`` strategy."""

    name = "window"

    def __init__(
        self,
        window_s: float = DEFAULT_WINDOW_S,
        time_limit_s: float = DEFAULT_TIME_LIMIT_S,
        priority_weight: float = 0.0,
        solve: Solver = solve_with_highs,
    ) -> None:
        self.window_s = check_window_s(window_s)
        self.time_limit_s = check_time_limit_s(time_limit_s)
        if not 0.0 <= priority_weight < math.inf:
            raise ValueError(f"priority_weight must be >= 0, got {priority_weight!r}")
        self.priority_weight = float(priority_weight)
        self.solve = solve

    def begin(self, context: CycleContext, state: StrategyState) -> Session:
        return OptimumSession(
            self.window_s, state, self.time_limit_s, self.priority_weight, self.solve
        )

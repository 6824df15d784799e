"""The optimum with semi-continuous loads, solved by HiGHS, with a fallback.

All replies are collected (pending) and decided together when the cycle
closes (every site replied, or the deadline). The split maximises the power
used (optionally weighted by load priority) with each site at 0 or between
its smallest load minimum and its offer: see ``optimum.allocate_optimum``.

A solver time-out, failure or bad answer falls back to ``fifo_min_power``'s
rule on the same offers; the session exposes ``fallback_used`` and
``fallback_reason``, and ``settle`` records them in the state
(``last_method``, ``last_fallback_reason``, ``fallbacks`` counted over
cycles) so the coordinator can log and record them.

Blocking: the solve runs inside ``on_close``, which the cycle calls
synchronously; it is bounded by ``time_limit_s``. The live coordinator should
run the closing call off the event loop (``asyncio.to_thread``) for large N.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

from central.core.strategies.optimum import (
    DEFAULT_TIME_LIMIT_S,
    Outcome,
    Solver,
    allocate_optimum,
    solve_with_highs,
)
from central.core.strategies.rules import WindowedSession
from central.core.strategy import Grant, Session, StrategyState

if TYPE_CHECKING:
    from central.core.cycle import CycleContext, Decision, Offer


def record_outcome(state: StrategyState, outcome: Outcome | None) -> StrategyState:
    """``state`` with the cycle's method and fallback recorded (JSON values only)."""
    fallbacks = state.get("fallbacks", 0)
    count = fallbacks if isinstance(fallbacks, int) else 0
    if outcome is None:
        return {**state, "last_method": None, "last_fallback_reason": None, "fallbacks": count}
    return {
        **state,
        "last_method": outcome.method,
        "last_fallback_reason": outcome.fallback_reason,
        "fallbacks": count + (1 if outcome.fallback_used else 0),
    }


def check_time_limit_s(time_limit_s: float) -> float:
    """A solver time limit: a finite number > 0, or ``ValueError`` saying so."""
    if not 0.0 < time_limit_s < math.inf:
        raise ValueError(f"time_limit_s must be a finite number > 0, got {time_limit_s!r}")
    return float(time_limit_s)


class OptimumSession(WindowedSession):
    """Solves the collected replies once (window or close); FIFO with minimums after."""

    def __init__(
        self,
        window_s: float | None,
        state: StrategyState,
        time_limit_s: float,
        priority_weight: float,
        solve: Solver,
    ) -> None:
        super().__init__(window_s, state)
        self._time_limit_s = time_limit_s
        self._priority_weight = priority_weight
        self._solve = solve
        self.outcome: Outcome | None = None

    @property
    def fallback_used(self) -> bool:
        return self.outcome is not None and self.outcome.fallback_used

    @property
    def fallback_reason(self) -> str | None:
        return self.outcome.fallback_reason if self.outcome is not None else None

    def decide(self, pending: Sequence[Offer], remaining_kw: float) -> list[Grant]:
        self.outcome = allocate_optimum(
            pending,
            remaining_kw,
            time_limit_s=self._time_limit_s,
            priority_weight=self._priority_weight,
            solve=self._solve,
        )
        return self.outcome.grants

    def settle(self, decisions: Sequence[Decision]) -> StrategyState:
        return record_outcome(self._state, self.outcome)


class Milp:
    """The ``milp`` strategy: decide at close with the optimum."""

    name = "milp"

    def __init__(
        self,
        time_limit_s: float = DEFAULT_TIME_LIMIT_S,
        priority_weight: float = 0.0,
        solve: Solver = solve_with_highs,
    ) -> None:
        self.time_limit_s = check_time_limit_s(time_limit_s)
        if not 0.0 <= priority_weight < math.inf:
            raise ValueError(f"priority_weight must be >= 0, got {priority_weight!r}")
        self.priority_weight = float(priority_weight)
        self.solve = solve

    def begin(self, context: CycleContext, state: StrategyState) -> Session:
        return OptimumSession(None, state, self.time_limit_s, self.priority_weight, self.solve)

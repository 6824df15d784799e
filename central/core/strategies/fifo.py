"""First come, first served: the study's model 2 (DOMAIN.md).

Each reply, in arrival order, gets ``min(flex_kw, remaining)`` at once; the
first replier gets all it can absorb within the surplus, and so on until the
surplus is gone or everyone has answered.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from central.core.strategy import Grant, Session, StrategyState

if TYPE_CHECKING:
    from central.core.cycle import CycleContext, Decision, Offer


class FifoSession:
    """Stateless: every decision is taken when the reply arrives."""

    __slots__ = ("_state",)

    def __init__(self, state: StrategyState) -> None:
        self._state = state

    def on_offer(self, offer: Offer, rank: int, remaining_kw: float) -> float:
        flex = offer.flex_kw
        return flex if flex < remaining_kw else remaining_kw

    def wakeup_s(self) -> float | None:
        return None

    def on_timer(
        self, elapsed_s: float, pending: Sequence[Offer], remaining_kw: float
    ) -> Sequence[Grant]:
        return ()

    def on_close(self, pending: Sequence[Offer], remaining_kw: float) -> Sequence[Grant]:
        return ()

    def settle(self, decisions: Sequence[Decision]) -> StrategyState:
        return self._state


class Fifo:
    """The ``fifo`` strategy."""

    name = "fifo"

    def begin(self, context: CycleContext, state: StrategyState) -> Session:
        return FifoSession(state)

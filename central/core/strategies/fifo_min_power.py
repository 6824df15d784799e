"""First come, first served with minimum powers (DOMAIN.md: "why whole allocations").

As ``fifo``, each reply in arrival order gets ``min(flex_kw, remaining)`` at
once, except that a site whose share would fall below the smallest ``min_kw``
among its offered loads gets 0 and the surplus goes on to the next reply. A
site that lists no loads has minimum 0, so it is served exactly as by ``fifo``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from central.core.strategies.fifo import FifoSession
from central.core.strategies.rules import min_power_kw
from central.core.strategy import Session, StrategyState

if TYPE_CHECKING:
    from central.core.cycle import CycleContext, Offer


class FifoMinPowerSession(FifoSession):
    """Stateless: every decision is taken when the reply arrives (only the rule differs)."""

    __slots__ = ()

    def on_offer(self, offer: Offer, rank: int, remaining_kw: float) -> float:
        return min_power_kw(offer, remaining_kw)


class FifoMinPower:
    """The ``fifo_min_power`` strategy."""

    name = "fifo_min_power"

    def begin(self, context: CycleContext, state: StrategyState) -> Session:
        return FifoMinPowerSession(state)

"""Shares proportional to the flexibility offered (the study's alternative to FIFO).

All replies are collected (pending) and decided together when the cycle
closes, because every reply has arrived or the deadline has come: each
site gets ``flex_i * min(1, S / sum(flex))``. Minimum powers are not
respected (as in the study's comparison); ``fifo_min_power`` and ``milp`` do.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from central.core.strategies.rules import WindowedSession, usable_kw
from central.core.strategy import Grant, Session, StrategyState

if TYPE_CHECKING:
    from central.core.cycle import CycleContext, Offer


def proportional_shares(offers: Sequence[Offer], remaining_kw: float) -> list[Grant]:
    """Each offer scaled by the same factor so that the total fits the surplus."""
    flex = [usable_kw(o.flex_kw) for o in offers]
    total = sum(flex)
    left = usable_kw(remaining_kw)
    factor = 1.0 if total <= left else left / total
    return [Grant(o.site, f * factor) for o, f in zip(offers, flex, strict=True)]


class ProportionalSession(WindowedSession):
    """Decides every reply at close."""

    def decide(self, pending: Sequence[Offer], remaining_kw: float) -> list[Grant]:
        return proportional_shares(pending, remaining_kw)


class Proportional:
    """The ``proportional`` strategy."""

    name = "proportional"

    def begin(self, context: CycleContext, state: StrategyState) -> Session:
        return ProportionalSession(None, state)

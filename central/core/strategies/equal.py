"""Equal shares, capped at each site's offer, the rest redistributed (water-filling).

The study's other alternative to FIFO. All replies are collected (pending)
and decided together at close: the surplus is split equally; a site that
offered less than its share gets its offer and the difference is split
equally among the others, and so on. Minimum powers are not respected.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from central.core.strategies.rules import WindowedSession, usable_kw
from central.core.strategy import Grant, Session, StrategyState

if TYPE_CHECKING:
    from central.core.cycle import CycleContext, Offer


def equal_shares(offers: Sequence[Offer], remaining_kw: float) -> list[Grant]:
    """Water-filling: the largest common level L with sum(min(flex_i, L)) <= S."""
    flex = [usable_kw(o.flex_kw) for o in offers]
    give = [0.0] * len(offers)
    left = usable_kw(remaining_kw)
    count = len(offers)
    # Smallest offers first: each takes min(its offer, an equal share of what is left).
    for i in sorted(range(len(offers)), key=lambda i: flex[i]):
        share = left / count
        give[i] = flex[i] if flex[i] < share else share
        left -= give[i]
        count -= 1
    return [Grant(o.site, kw) for o, kw in zip(offers, give, strict=True)]


class EqualSession(WindowedSession):
    """Decides every reply at close."""

    def decide(self, pending: Sequence[Offer], remaining_kw: float) -> list[Grant]:
        return equal_shares(pending, remaining_kw)


class Equal:
    """The ``equal`` strategy."""

    name = "equal"

    def begin(self, context: CycleContext, state: StrategyState) -> Session:
        return EqualSession(None, state)

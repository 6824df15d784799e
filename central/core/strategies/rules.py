"""Rules shared by the strategies: what a reply can use, and how to fill in order.

The study's reason for whole allocations (DOMAIN.md): a load has a minimum
power to run, so a share below the smallest ``min_kw`` a site offered is
useless to it. Every strategy here that respects minimums goes through
``min_power_kw``; strategies that decide after a collection window share
``WindowedSession``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from central.core.strategy import Grant, StrategyState

if TYPE_CHECKING:
    from central.core.cycle import Decision, Offer

TOL_KW = 1e-9
"""Float dust: a cap this close below a minimum still counts as reaching it."""


def usable_kw(kw: float) -> float:
    """``kw`` if it is a positive finite number, else 0 (NaN, negative, inf)."""
    return kw if 0.0 < kw < math.inf else 0.0


def site_min_kw(offer: Offer) -> float:
    """The smallest ``min_kw`` among the offer's loads; 0 when it lists none."""
    mins = [load.min_kw for load in offer.loads if 0.0 <= load.min_kw < math.inf]
    return min(mins) if mins else 0.0


def site_priority(offer: Offer) -> int:
    """The highest load priority in the offer (higher goes first, as on the gateway); 0 if none."""
    priorities = [load.priority for load in offer.loads if load.priority is not None]
    return max(priorities) if priorities else 0


def min_power_kw(offer: Offer, remaining_kw: float) -> float:
    """First come, first served, but never a share below the site's smallest minimum.

    The site gets ``min(flex, remaining)`` if that reaches its smallest
    ``min_kw``, else 0 (the share would strand power on a load that cannot run).
    """
    cap = min(usable_kw(offer.flex_kw), usable_kw(remaining_kw))
    if cap <= 0.0 or cap + TOL_KW < site_min_kw(offer):
        return 0.0
    return cap


def fill_in_order(offers: Iterable[Offer], remaining_kw: float) -> list[Grant]:
    """``min_power_kw`` applied to ``offers`` in the given order, the surplus shrinking."""
    grants: list[Grant] = []
    left = usable_kw(remaining_kw)
    for offer in offers:
        kw = min_power_kw(offer, left)
        left -= kw
        grants.append(Grant(offer.site, kw))
    return grants


def check_window_s(window_s: float) -> float:
    """A collection window: finite and not negative, or ``ValueError`` saying so."""
    if not 0.0 <= window_s < math.inf:
        raise ValueError(f"window_s must be a finite number >= 0, got {window_s!r}")
    return float(window_s)


class WindowedSession:
    """Collect replies for ``window_s`` seconds, decide them together, then FIFO.

    Replies that arrive while the window is open stay pending; when the cycle
    wakes the session at ``window_s`` (or closes first), ``decide`` grants them
    all at once. Later replies are served at once by ``min_power_kw``. With
    ``window_s=None`` there is no timer: everything is decided at close
    (all replied, or the deadline). Subclasses supply ``decide`` and, if they
    carry state, ``settle``.
    """

    def __init__(self, window_s: float | None, state: StrategyState) -> None:
        self._window_s = window_s
        self._state = state
        self._decided = False

    def decide(self, pending: Sequence[Offer], remaining_kw: float) -> list[Grant]:
        """Grants for the replies collected in the window (arrival order in ``pending``)."""
        return fill_in_order(pending, remaining_kw)

    def on_offer(self, offer: Offer, rank: int, remaining_kw: float) -> float | None:
        if not self._decided:
            return None
        return min_power_kw(offer, remaining_kw)

    def wakeup_s(self) -> float | None:
        return None if self._decided or self._window_s is None else self._window_s

    def on_timer(
        self, elapsed_s: float, pending: Sequence[Offer], remaining_kw: float
    ) -> Sequence[Grant]:
        self._decided = True
        return self.decide(pending, remaining_kw) if pending else ()

    def on_close(self, pending: Sequence[Offer], remaining_kw: float) -> Sequence[Grant]:
        self._decided = True
        return self.decide(pending, remaining_kw) if pending else ()

    def settle(self, decisions: Sequence[Decision]) -> StrategyState:
        return self._state

"""Loads that must finish soonest go first (DOMAIN.md: "an EV about to leave").

Replies are collected for a short window (``window_s``, default 5 s after the
request); then the collected sites are served in order of urgency with the
``fifo_min_power`` rule, and later replies first come, first served with the
same rule.

Urgency is the latest time a site's most urgent load can start and still
finish: ``until_s - energy_kwh / max_kw`` (in seconds; ``until_s`` alone when
the energy need is unknown). Ties go to the earlier ``until_s``, then to the
earlier reply; sites with no deadline come last, in arrival order.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

from central.core.strategies.rules import WindowedSession, check_window_s, fill_in_order
from central.core.strategy import Grant, Session, StrategyState

if TYPE_CHECKING:
    from central.core.cycle import CycleContext, Offer

DEFAULT_WINDOW_S = 5.0


def urgency(offer: Offer) -> tuple[float, float]:
    """(latest start, deadline) of the offer's most urgent load, in s after the request."""
    best = (math.inf, math.inf)
    for load in offer.loads:
        until = load.until_s
        if until is None or not math.isfinite(until):
            continue
        run_s = 0.0
        if load.energy_kwh is not None and load.energy_kwh > 0.0 and load.max_kw > 0.0:
            run_s = load.energy_kwh / load.max_kw * 3600.0
        best = min(best, (until - run_s, until))
    return best


def by_urgency(offers: Sequence[Offer]) -> list[Offer]:
    """``offers`` most urgent first; arrival order breaks ties (``sorted`` is stable)."""
    return sorted(offers, key=urgency)


class DeadlineSession(WindowedSession):
    """Most urgent first among the replies collected in the window."""

    def decide(self, pending: Sequence[Offer], remaining_kw: float) -> list[Grant]:
        return fill_in_order(by_urgency(pending), remaining_kw)


class Deadline:
    """The ``deadline`` strategy."""

    name = "deadline"

    def __init__(self, window_s: float = DEFAULT_WINDOW_S) -> None:
        self.window_s = check_window_s(window_s)

    def begin(self, context: CycleContext, state: StrategyState) -> Session:
        return DeadlineSession(self.window_s, state)

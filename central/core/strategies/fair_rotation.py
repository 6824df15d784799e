"""Priority to the sites that have received least (DOMAIN.md: FIFO "favours the
fastest responders (unfair; rotate priority or weigh past allocations)").

The strategy carries a ledger from cycle to cycle: per site, the energy it was
allocated, decayed by half every ``half_life_cycles`` cycles (default 96: a
day of 15-minute cycles). Replies are collected for a short window
(``window_s``, default 5 s); the collected sites are served lowest ledger
first (ties: earlier reply) with the ``fifo_min_power`` rule; later replies
first come, first served with the same rule. ``settle`` decays the ledger and
adds this cycle's allocations (kW x ``period_h``).

State: ``{"ledger_kwh": {site: kWh}}``, plain JSON, so the coordinator can
keep it across restarts. Entries that decay below 1 Wh are dropped, so sites
that left the community do not grow it forever.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from central.core.strategies.rules import WindowedSession, check_window_s, fill_in_order
from central.core.strategy import Grant, Session, StrategyState

if TYPE_CHECKING:
    from central.core.cycle import CycleContext, Decision, Offer

DEFAULT_WINDOW_S = 5.0
DEFAULT_HALF_LIFE_CYCLES = 96.0
DEFAULT_PERIOD_H = 0.25
LEDGER_KEY = "ledger_kwh"
FORGET_BELOW_KWH = 1e-3


def ledger_of(state: StrategyState) -> dict[str, float]:
    """The ledger in ``state``; entries that are not finite numbers >= 0 are dropped."""
    raw = state.get(LEDGER_KEY)
    if not isinstance(raw, Mapping):
        return {}
    return {
        str(site): float(kwh)
        for site, kwh in raw.items()
        if isinstance(kwh, int | float) and 0.0 <= kwh < math.inf
    }


class FairRotationSession(WindowedSession):
    """Lowest ledger first among the replies collected in the window."""

    def __init__(
        self, window_s: float, state: StrategyState, decay: float, period_h: float
    ) -> None:
        super().__init__(window_s, state)
        self._ledger = ledger_of(state)
        self._decay = decay
        self._period_h = period_h

    def decide(self, pending: Sequence[Offer], remaining_kw: float) -> list[Grant]:
        ledger = self._ledger
        order = sorted(pending, key=lambda o: ledger.get(o.site, 0.0))
        return fill_in_order(order, remaining_kw)

    def settle(self, decisions: Sequence[Decision]) -> StrategyState:
        ledger = {site: kwh * self._decay for site, kwh in self._ledger.items()}
        for d in decisions:
            if d.alloc_kw > 0.0:
                ledger[d.site] = ledger.get(d.site, 0.0) + d.alloc_kw * self._period_h
        kept = {s: kwh for s, kwh in ledger.items() if kwh >= FORGET_BELOW_KWH}
        return {**self._state, LEDGER_KEY: kept}


class FairRotation:
    """The ``fair_rotation`` strategy."""

    name = "fair_rotation"

    def __init__(
        self,
        window_s: float = DEFAULT_WINDOW_S,
        half_life_cycles: float = DEFAULT_HALF_LIFE_CYCLES,
        period_h: float = DEFAULT_PERIOD_H,
    ) -> None:
        self.window_s = check_window_s(window_s)
        if not 0.0 < half_life_cycles < math.inf:
            raise ValueError(f"half_life_cycles must be > 0, got {half_life_cycles!r}")
        if not 0.0 < period_h < math.inf:
            raise ValueError(f"period_h must be > 0, got {period_h!r}")
        self.decay = 0.5 ** (1.0 / half_life_cycles)
        self.period_h = float(period_h)

    def begin(self, context: CycleContext, state: StrategyState) -> Session:
        return FairRotationSession(self.window_s, state, self.decay, self.period_h)

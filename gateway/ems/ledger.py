"""The energy of one period, integrated from power samples (pure).

Feeds the period ``report``: energy imported and exported at the grid
connection, energy allocated by the coordinator, and energy the allocated
loads really used. Powers are sampled at irregular times; each sample holds
until the next (a step integral, as a meter's pulses would count).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class PeriodLedger:
    """Energy counters for the period that started at ``start_s``."""

    start_s: float
    import_kwh: float = 0.0
    export_kwh: float = 0.0
    allocated_kwh: float = 0.0
    used_kwh: float = 0.0
    _last_s: float | None = None
    _net_kw: float | None = None
    _used_kw: float = 0.0
    _alloc_kw: float = 0.0

    def sample(
        self, now_s: float, net_export_kw: float | None, used_kw: float, alloc_kw: float
    ) -> None:
        """Close the step since the last sample, then hold these values."""
        self._advance(now_s)
        self._net_kw = net_export_kw
        self._used_kw = max(used_kw, 0.0)
        self._alloc_kw = max(alloc_kw, 0.0)

    def close(self, end_s: float) -> PeriodLedger:
        """Integrate up to ``end_s`` and return a fresh ledger for the next period."""
        self._advance(end_s)
        nxt = PeriodLedger(end_s)
        nxt._last_s = end_s
        nxt._net_kw = self._net_kw
        nxt._used_kw = self._used_kw
        nxt._alloc_kw = 0.0
        return nxt

    def _advance(self, now_s: float) -> None:
        last = self._last_s if self._last_s is not None else self.start_s
        dt_h = max(0.0, now_s - last) / 3600.0
        if self._net_kw is not None:
            if self._net_kw >= 0:
                self.export_kwh += self._net_kw * dt_h
            else:
                self.import_kwh += -self._net_kw * dt_h
        self.used_kwh += min(self._used_kw, self._alloc_kw) * dt_h
        self.allocated_kwh += self._alloc_kw * dt_h
        self._last_s = max(last, now_s)

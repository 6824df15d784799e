"""Counting refused input by reason, and logging it without letting a flood flood the logs.

Both services refuse bad input the same way (PROTOCOL.md: dropped, counted,
logged with the topic and the reason). ``RejectionLog`` is the bookkeeping,
pure (the caller passes the time, monotonic seconds): every refusal is counted
under its reason, and ``note`` says whether this one should be logged. At most
one line per (source, reason) per ``interval_s``, the source being the site on
the coordinator, the topic kind or the device on a gateway; the line carries
how many were suppressed since the previous one. ``due`` hands back the keys
whose interval has passed with refusals still unlogged, so a flood that stops
is still summed up in the logs.

The table of (source, reason) keys is bounded: a site id comes from a topic an
attacker chooses, so past ``max_keys`` keys the source is logged as ``"*"``.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Final, NamedTuple

OTHER_SOURCES: Final = "*"
"""The source under which refusals are logged once the key table is full."""


class Line(NamedTuple):
    """A refusal to log: under which source (``"*"`` once the table is full), and how
    many refusals of that (source, reason) were suppressed since its previous line."""

    source: str | None
    suppressed: int


@dataclass(frozen=True, slots=True)
class Suppressed:
    """Refusals of one (source, reason) not logged yet, handed back by ``due``."""

    source: str | None
    reason: str
    count: int


@dataclass(slots=True)
class _Slot:
    logged_at_s: float
    suppressed: int = 0


class RejectionLog:
    """Counters per reason, and the rate limit of their log lines."""

    __slots__ = ("_next_purge_s", "_slots", "counts", "interval_s", "max_keys", "suppressed_total")

    def __init__(self, interval_s: float = 60.0, max_keys: int = 4096) -> None:
        if not interval_s >= 0:
            raise ValueError("interval_s must be >= 0")
        if max_keys < 1:
            raise ValueError("max_keys must be >= 1")
        self.interval_s = float(interval_s)
        self.max_keys = max_keys
        self.counts: Counter[str] = Counter()
        self.suppressed_total = 0
        self._slots: dict[tuple[str | None, str], _Slot] = {}
        self._next_purge_s = float("-inf")

    @property
    def total(self) -> int:
        """Every refusal counted so far."""
        return sum(self.counts.values())

    def __len__(self) -> int:
        """How many (source, reason) keys are tracked (at most ``max_keys`` + reasons)."""
        return len(self._slots)

    def note(self, reason: str, source: str | None, now_s: float) -> Line | None:
        """Count one refusal; None to stay silent, or the ``Line`` to log now."""
        self.counts[reason] += 1
        key = (source, reason)
        slot = self._slots.get(key)
        if slot is None:
            if len(self._slots) >= self.max_keys:
                self._purge(now_s)
                if len(self._slots) >= self.max_keys:
                    key = (OTHER_SOURCES, reason)
                    slot = self._slots.get(key)
            if slot is None:
                self._slots[key] = _Slot(now_s)
                return Line(key[0], 0)
        if now_s - slot.logged_at_s >= self.interval_s:
            suppressed = slot.suppressed
            slot.logged_at_s = now_s
            slot.suppressed = 0
            return Line(key[0], suppressed)
        slot.suppressed += 1
        self.suppressed_total += 1
        return None

    def due(self, now_s: float) -> list[Suppressed]:
        """Keys whose interval has passed with refusals unlogged; they are reset as logged."""
        out = []
        for (source, reason), slot in self._slots.items():
            if slot.suppressed and now_s - slot.logged_at_s >= self.interval_s:
                out.append(Suppressed(source, reason, slot.suppressed))
                slot.suppressed = 0
                slot.logged_at_s = now_s
        return out

    def _purge(self, now_s: float) -> None:
        # Forget keys that are quiet (nothing suppressed, interval over); at most
        # once per interval, so a full table costs O(1) per refusal, not O(keys).
        if now_s < self._next_purge_s:
            return
        self._next_purge_s = now_s + self.interval_s
        quiet = [
            key
            for key, slot in self._slots.items()
            if not slot.suppressed and now_s - slot.logged_at_s >= self.interval_s
        ]
        for key in quiet:
            del self._slots[key]

    def as_dict(self) -> dict[str, object]:
        """Counts by reason, the total, and how many log lines were suppressed."""
        return {
            "by_reason": dict(sorted(self.counts.items())),
            "total": self.total,
            "log_lines_suppressed": self.suppressed_total,
        }

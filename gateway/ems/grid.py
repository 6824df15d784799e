"""The grid level a home expects, from the coordinator's retained messages (pure).

``grid/signal`` carries one day's hourly levels (``hours``, local hours of the
day in the grid operator's time zone: Europe/Paris for RTE's Ecowatt, where a
DST day has 23 or 25 of them) and ``grid/shed`` a window ``[from, until)``
with a level. A gateway keeps both, so shedding happens on time even when
the coordinator is silent. ``outlook`` answers: the level now, and the
windows ahead (start, end, level) where the level reaches a threshold.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo


@dataclass(frozen=True, slots=True)
class Window:
    """``[start, end)`` at ``level`` (UTC datetimes)."""

    start: datetime
    end: datetime
    level: int


def hour_starts(day: date, tz: ZoneInfo) -> list[datetime]:
    """The UTC start of each local hour of ``day`` (23, 24 or 25 of them)."""
    start = datetime(day.year, day.month, day.day, tzinfo=tz).astimezone(UTC)
    nxt = day + timedelta(days=1)
    end = datetime(nxt.year, nxt.month, nxt.day, tzinfo=tz).astimezone(UTC)
    hours = []
    at = start
    while at < end:
        hours.append(at)
        at += timedelta(hours=1)
    return hours


def signal_windows(day: date, hours: tuple[int, ...] | list[int], tz: ZoneInfo) -> list[Window]:
    """One window per local hour of ``day`` with its level (UTC boundaries)."""
    starts = hour_starts(day, tz)
    out = []
    for i, level in enumerate(hours[: len(starts)]):
        out.append(Window(starts[i], starts[i] + timedelta(hours=1), int(level)))
    return out


def merge(windows: list[Window], threshold: int) -> list[Window]:
    """Contiguous windows at or above ``threshold``, merged (level = their maximum)."""
    out: list[Window] = []
    for w in sorted(windows, key=lambda w: w.start):
        if w.level < threshold:
            continue
        if out and w.start <= out[-1].end:
            last = out[-1]
            out[-1] = Window(last.start, max(last.end, w.end), max(last.level, w.level))
        else:
            out.append(w)
    return out


@dataclass(frozen=True, slots=True)
class GridOutlook:
    """What the gateway knows of the grid: hourly levels and shed windows."""

    hourly: tuple[Window, ...] = ()
    shed: tuple[Window, ...] = ()

    @classmethod
    def build(
        cls,
        signal_day: date | None,
        signal_hours: tuple[int, ...] | list[int] | None,
        shed: Window | None,
        tz: ZoneInfo,
    ) -> GridOutlook:
        hourly = (
            tuple(signal_windows(signal_day, signal_hours, tz))
            if signal_day is not None and signal_hours
            else ()
        )
        return cls(hourly, (shed,) if shed is not None and shed.level > 0 else ())

    def level_at(self, at: datetime) -> int:
        """The level at ``at``: the hour's own level where the signal covers it
        (an orange hour before a red one stays orange), else the shed window's
        (its level is the highest of the window's hours)."""
        for w in self.hourly:
            if w.start <= at < w.end:
                return w.level
        for w in self.shed:
            if w.start <= at < w.end:
                return w.level
        return 0

    def windows_from(self, threshold: int, now: datetime) -> list[Window]:
        """Windows at or above ``threshold`` that have not ended by ``now``."""
        return [w for w in merge([*self.hourly, *self.shed], threshold) if w.end > now]

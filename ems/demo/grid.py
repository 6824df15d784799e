"""The grid-stress episode of ``ems demo``: what the loopback RTE stand-in serves (pure).

The demo runs ``ems.rte_standin.RteStandIn`` on 127.0.0.1 and points the
coordinator's ``[ecowatt]`` at its sandbox URL. It serves four days from the
episode's day; that day has, by default, level 2 (orange) at 17:00 and level
3 (red) from 18:00 to 20:00, Paris time, the rest level 1 (``--stress HH-HH``
moves the red hours, ``--no-stress`` serves four calm days).

The episode's day is the simulated start's day in Paris, or the next day when
the start is already past the episode's end: the user always gets to see one.

``GridNow`` is what the views show: the coordinator's signal now (the same
``GridSchedule`` it publishes ``grid/signal`` and ``grid/shed`` from).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from central.core.grid import day_hours, hour_start
from ems.rte_standin import make_signals

PARIS = ZoneInfo("Europe/Paris")
DEFAULT_STRESS = (18, 20)
"""Level 3 from 18:00 to 20:00 Paris time (level 2 the hour before)."""
ORANGE, RED, CALM = 2, 3, 1


@dataclass(frozen=True, slots=True)
class Episode:
    """A stress day: level 2 the hour before ``red_from``, 3 from ``red_from`` to ``red_until``."""

    day: date
    red_from: int
    red_until: int

    @property
    def orange_from(self) -> int:
        return max(0, self.red_from - 1)

    def level_at_hour(self, local_hour: int) -> int:
        """The level of a local clock hour (0-23)."""
        if self.red_from <= local_hour < self.red_until:
            return RED
        if self.orange_from <= local_hour < self.red_from:
            return ORANGE
        return CALM

    def levels(self) -> list[int]:
        """One level per hour of the day as RTE counts them (``pas``: 23 or 25 on DST days)."""
        n = day_hours(self.day, PARIS)
        return [self.level_at_hour(hour_start(self.day, i, PARIS).astimezone(PARIS).hour)
                for i in range(n)]

    def _local(self, hour: int) -> datetime:
        # Wall-clock arithmetic: 18 hours after midnight is 18:00 even on a DST day.
        midnight = datetime(self.day.year, self.day.month, self.day.day, tzinfo=PARIS)
        return midnight + timedelta(hours=hour)

    @property
    def starts_at(self) -> datetime:
        """The first stressed instant (UTC)."""
        return self._local(self.orange_from).astimezone(UTC)

    @property
    def ends_at(self) -> datetime:
        """The end of the red hours (UTC)."""
        return self._local(self.red_until).astimezone(UTC)

    def describe(self) -> str:
        """``2026-06-21 level 2 at 17:00, level 3 18:00-20:00 Paris (15:00-18:00 UTC)``."""
        orange = (f"level 2 at {self.orange_from:02d}:00, "
                  if self.orange_from < self.red_from else "")
        return (f"{self.day.isoformat()} {orange}level 3 {self.red_from:02d}:00-"
                f"{self.red_until:02d}:00 Paris ({self.starts_at:%H:%M}-{self.ends_at:%H:%M} UTC)")


def episode_for(start: datetime, stress: tuple[int, int] | None) -> Episode | None:
    """The episode the demo shows: on the start's day, or the next if that one is over."""
    if stress is None:
        return None
    red_from, red_until = stress
    day = start.astimezone(PARIS).date()
    episode = Episode(day, red_from, red_until)
    if start >= episode.ends_at:
        episode = Episode(day + timedelta(days=1), red_from, red_until)
    return episode


def stand_in_signals(start: datetime, episode: Episode | None) -> dict[str, Any]:
    """Four days J..J+3 for the stand-in, from the start's day (Paris)."""
    first = start.astimezone(PARIS).date()
    levels: dict[int, Sequence[int]] = {}
    if episode is not None:
        levels[(episode.day - first).days] = episode.levels()
    return make_signals(first, levels, tz=PARIS)


def parse_stress(text: str) -> tuple[int, int]:
    """``18-20``: level 3 from 18:00 to 20:00 (Paris); hours 1-24, the first before the second."""
    try:
        first, second = (int(part.strip().removesuffix("h")) for part in text.split("-"))
    except ValueError as exc:
        raise ValueError(f"expected HH-HH such as 18-20, got {text!r}") from exc
    if not 1 <= first < second <= 24:
        raise ValueError(f"expected two hours 1 <= from < until <= 24, got {text!r}")
    return first, second


@dataclass(frozen=True, slots=True)
class GridNow:
    """The grid signal now, as the coordinator publishes it."""

    day: date
    hour: int
    """Hours since the day's local midnight (RTE's ``pas``)."""
    level: int
    hours: tuple[int, ...]
    source: str
    shed_level: int | None
    """The ``grid/shed`` window's level when one is in force or ahead, else None."""
    shed_from: datetime | None
    shed_until: datetime | None

    def local_hour(self, pas: int) -> int:
        """The local clock hour of ``pas`` (differs from ``pas`` on DST days)."""
        return hour_start(self.day, pas, PARIS).astimezone(PARIS).hour


def grid_now(coordinator: Any, at: datetime) -> GridNow | None:
    """What the coordinator's grid service says at ``at``; None when nothing is known."""
    grid = getattr(coordinator, "grid", None)
    if grid is None:
        return None
    schedule = grid.schedule()
    view = schedule.signal_at(at)
    if view is None:
        return None
    window = schedule.shed_window(at, grid.threshold)
    return GridNow(
        view.day, view.hour, view.level, tuple(view.hours), str(view.source),
        window.level if window is not None else None,
        window.from_at if window is not None else None,
        window.until_at if window is not None else None,
    )

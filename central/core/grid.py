"""The grid-stress signal as a pure schedule (RTE Ecowatt v5, PROTOCOL.md "Grid level").

No I/O and no clock: the instant and the time zone come in as arguments.

RTE's days are local days of Europe/Paris, and an hour is named by its
``pas``: the number of hours elapsed since the day's local midnight. So a
spring-forward day has 23 hours (``pas`` 0..22), a fall-back day 25 (0..24),
and hour ``h`` of day ``D`` always starts at ``midnight(D) + h`` hours in UTC,
whatever the wall clock says. ``hour_start`` and ``locate`` convert between
that naming and UTC instants; everything else is built on them.

Levels: 0 low-carbon production (v5 only), 1 normal, 2 tense, 3 very tense.

``parse_signals`` reads RTE's answer leniently where RTE is known to vary
(days in any order, a day with fewer entries than hours, a DST day that
carries 24 wall-clock entries) and refuses what it cannot use. What it had to
repair is returned as notes (the core does not log). ``GridSchedule`` merges
the signals with manual overrides and answers the questions the coordinator
publishes: the level of an hour, a day's hours and worst level, and the shed
window (the contiguous hours at or above a threshold).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, tzinfo
from typing import Literal

MIN_LEVEL = 0
MAX_LEVEL = 3
BASELINE_LEVEL = 1
"""The level of an hour nobody spoke for, on a day that has an override (normal)."""
DEFAULT_SHED_THRESHOLD = 2
"""Shed from level 2 (tense): the relay prototype cut when ``hvalue > 1``."""
MAX_OVERRIDE_AHEAD_DAYS = 31

Source = Literal["ecowatt", "manual"]
HourKey = tuple[date, int]
_HOUR = timedelta(hours=1)


class GridDataError(ValueError):
    """The signals are not in RTE's Ecowatt v5 shape: nothing usable in them."""


# Days and hours ---------------------------------------------------------------


def day_start(day: date, tz: tzinfo) -> datetime:
    """The UTC instant at which local day ``day`` starts (its midnight)."""
    return datetime(day.year, day.month, day.day, tzinfo=tz).astimezone(UTC)


def day_hours(day: date, tz: tzinfo) -> int:
    """How many hours local day ``day`` has: 24, or 23 / 25 on DST days."""
    span = day_start(day + timedelta(days=1), tz) - day_start(day, tz)
    return round(span / _HOUR)


def hour_start(day: date, hour: int, tz: tzinfo) -> datetime:
    """The UTC start of hour ``hour`` (hours elapsed since midnight) of local day ``day``."""
    return day_start(day, tz) + hour * _HOUR


def locate(at: datetime, tz: tzinfo) -> HourKey:
    """The local day and the hour (elapsed since its midnight) that contain instant ``at``."""
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError("locate needs a timezone-aware instant")
    day = at.astimezone(tz).date()
    hour = int((at - day_start(day, tz)) // _HOUR)
    return day, hour


def _wall_hour(day: date, hour: int, tz: tzinfo) -> int:
    return hour_start(day, hour, tz).astimezone(tz).hour


# Parsing RTE's answer ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DaySignal:
    """One day of RTE's answer, one level per hour elapsed since local midnight."""

    day: date
    levels: tuple[int, ...]
    dvalue: int | None = None
    message: str = ""
    generated_at: datetime | None = None
    filled: tuple[int, ...] = ()
    """Hours RTE gave no valid value for, carried over from their neighbour."""


@dataclass(frozen=True, slots=True)
class Signals:
    """RTE's days (sorted), and what the parser had to repair."""

    days: tuple[DaySignal, ...] = ()
    notes: tuple[str, ...] = ()

    def day(self, day: date) -> DaySignal | None:
        for d in self.days:
            if d.day == day:
                return d
        return None

    @property
    def generated_at(self) -> datetime | None:
        """The newest ``GenerationFichier`` of the answer."""
        stamps = [d.generated_at for d in self.days if d.generated_at is not None]
        return max(stamps) if stamps else None


def _level(value: object) -> int | None:
    # bool is an int in Python: true is not a level.
    if type(value) is int and MIN_LEVEL <= value <= MAX_LEVEL:
        return value
    return None


def _instant(value: object, tz: tzinfo) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=tz)
    return parsed


def _parse_day(raw: object, tz: tzinfo, notes: list[str]) -> DaySignal | None:
    if not isinstance(raw, dict):
        notes.append("a day that is not an object was skipped")
        return None
    jour = _instant(raw.get("jour"), tz)
    if jour is None:
        notes.append(f"a day without a valid 'jour' was skipped: {raw.get('jour')!r:.40}")
        return None
    day = jour.astimezone(tz).date()
    n = day_hours(day, tz)
    values = raw.get("values")
    if not isinstance(values, list):
        notes.append(f"{day}: no 'values' list, day skipped")
        return None
    given: dict[int, int] = {}
    bad = 0
    for entry in values:
        pas = entry.get("pas") if isinstance(entry, dict) else None
        level = _level(entry.get("hvalue")) if isinstance(entry, dict) else None
        if type(pas) is not int or pas < 0 or level is None:
            bad += 1
            continue
        given[pas] = level
    if bad:
        notes.append(f"{day}: {bad} invalid hourly entries ignored")
    levels: dict[int, int] = {}
    if n != 24 and set(given) == set(range(24)):
        # A DST day carrying 24 entries: read ``pas`` as the wall-clock hour
        # (the hour 02:00 missing in spring is dropped; doubled in autumn).
        notes.append(f"{day}: {n}-hour day with 24 entries read as wall-clock hours")
        for hour in range(n):
            levels[hour] = given[_wall_hour(day, hour, tz)]
    else:
        beyond = [p for p in given if p >= n]
        if beyond:
            notes.append(f"{day}: entries beyond its {n} hours ignored: {sorted(beyond)}")
        levels = {p: lv for p, lv in given.items() if p < n}
    if not levels:
        notes.append(f"{day}: no valid hourly value, day skipped")
        return None
    filled = tuple(h for h in range(n) if h not in levels)
    if filled:
        notes.append(f"{day}: {len(filled)} of {n} hours missing, carried from a neighbour")
    out: list[int] = []
    first = levels[min(levels)]
    for hour in range(n):
        out.append(levels.get(hour, out[-1] if out else first))
    generated = _instant(raw.get("GenerationFichier"), tz)
    message = raw.get("message")
    return DaySignal(
        day=day,
        levels=tuple(out),
        dvalue=_level(raw.get("dvalue")),
        message=message if isinstance(message, str) else "",
        generated_at=generated.astimezone(UTC) if generated is not None else None,
        filled=filled,
    )


def parse_signals(data: object, tz: tzinfo) -> Signals:
    """Read the body of ``GET …/ecowatt/v5/signals``; raise ``GridDataError`` if unusable."""
    if not isinstance(data, dict):
        raise GridDataError(f"expected a JSON object, got {type(data).__name__}")
    raw_days = data.get("signals")
    if not isinstance(raw_days, list):
        raise GridDataError("no 'signals' list in the answer")
    notes: list[str] = []
    by_day: dict[date, DaySignal] = {}
    for raw in raw_days:
        parsed = _parse_day(raw, tz, notes)
        if parsed is None:
            continue
        if parsed.day in by_day:
            notes.append(f"{parsed.day}: given twice, the later one kept")
        by_day[parsed.day] = parsed
    if not by_day:
        raise GridDataError("no usable day in the answer")
    return Signals(tuple(by_day[d] for d in sorted(by_day)), tuple(notes))


# The schedule ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SignalView:
    """What ``grid/signal`` says at one instant."""

    source: Source
    day: date
    hour: int
    level: int
    day_level: int
    hours: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class ShedWindow:
    """Contiguous hours at or above a threshold: ``[from_at, until_at)`` in UTC.

    ``level`` is the highest level among the window's hours that have not
    ended yet (the current one included), so a load whose shed level is above
    the window's remaining hours is not cut for nothing.
    """

    level: int
    from_at: datetime
    until_at: datetime
    reason: Source


@dataclass(frozen=True, slots=True)
class _Hour:
    start: datetime
    level: int
    manual: bool


class GridSchedule:
    """RTE's signals with manual overrides on top, in one local time zone."""

    __slots__ = ("_cache", "_overrides", "_signals", "tz")

    def __init__(
        self,
        signals: Signals | None = None,
        overrides: Mapping[HourKey, int] | None = None,
        *,
        tz: tzinfo,
    ) -> None:
        self.tz = tz
        self._signals = signals or Signals()
        self._overrides = {
            key: level
            for key, level in (overrides or {}).items()
            if _level(level) is not None and 0 <= key[1] < day_hours(key[0], tz)
        }
        self._cache: dict[date, tuple[int, ...] | None] = {}

    @property
    def signals(self) -> Signals:
        return self._signals

    @property
    def overrides(self) -> Mapping[HourKey, int]:
        return dict(self._overrides)

    def days(self) -> tuple[date, ...]:
        """Every day something is known of (RTE's days and days with an override)."""
        known = {d.day for d in self._signals.days} | {day for day, _ in self._overrides}
        return tuple(sorted(known))

    def hours(self, day: date) -> tuple[int, ...] | None:
        """The day's effective level per hour, or None when nothing is known of it."""
        if day not in self._cache:
            self._cache[day] = self._compute(day)
        return self._cache[day]

    def _compute(self, day: date) -> tuple[int, ...] | None:
        rte = self._signals.day(day)
        manual = {h: lv for (d, h), lv in self._overrides.items() if d == day}
        if rte is None and not manual:
            return None
        n = day_hours(day, self.tz)
        base = rte.levels if rte is not None else (BASELINE_LEVEL,) * n
        return tuple(manual.get(h, base[h]) for h in range(n))

    def level_at(self, day: date, hour: int) -> int | None:
        hours = self.hours(day)
        if hours is None or not 0 <= hour < len(hours):
            return None
        return hours[hour]

    def is_override(self, day: date, hour: int) -> bool:
        return (day, hour) in self._overrides

    def source_of(self, day: date) -> Source | None:
        """``manual`` when any hour of the day is overridden, ``ecowatt`` otherwise."""
        if self.hours(day) is None:
            return None
        return "manual" if any(d == day for d, _ in self._overrides) else "ecowatt"

    def day_level(self, day: date) -> int | None:
        """The day's worst effective hour (RTE's ``dvalue`` is the same, without overrides)."""
        hours = self.hours(day)
        return max(hours) if hours else None

    def level_at_time(self, at: datetime) -> int | None:
        return self.level_at(*locate(at, self.tz))

    def signal_at(self, at: datetime) -> SignalView | None:
        """What ``grid/signal`` carries at ``at``; None when the day is unknown."""
        day, hour = locate(at, self.tz)
        hours = self.hours(day)
        source = self.source_of(day)
        if hours is None or source is None:
            return None
        return SignalView(source, day, hour, hours[hour], max(hours), hours)

    def _timeline(self) -> list[_Hour]:
        out: list[_Hour] = []
        for day in self.days():
            hours = self.hours(day)
            if hours is None:
                continue
            start = day_start(day, self.tz)
            for h, level in enumerate(hours):
                out.append(_Hour(start + h * _HOUR, level, (day, h) in self._overrides))
        return out

    def shed_window(
        self, at: datetime, threshold: int = DEFAULT_SHED_THRESHOLD
    ) -> ShedWindow | None:
        """The window in force at ``at``, else the next one; None when none is known.

        A window is a run of consecutive known hours at or above ``threshold``;
        it may start before ``at`` and may span midnight. An unknown hour ends it.
        """
        if not MIN_LEVEL < threshold <= MAX_LEVEL:
            raise ValueError(f"threshold must be 1..{MAX_LEVEL}, got {threshold}")
        run: list[_Hour] = []
        for hour in self._timeline():
            contiguous = not run or run[-1].start + _HOUR == hour.start
            if hour.level >= threshold and contiguous:
                run.append(hour)
                continue
            if run and run[-1].start + _HOUR > at:
                break
            run = [hour] if hour.level >= threshold else []
        if not run or run[-1].start + _HOUR <= at:
            return None
        ahead = [h.level for h in run if h.start + _HOUR > at]
        reason: Source = "manual" if any(h.manual for h in run) else "ecowatt"
        return ShedWindow(max(ahead), run[0].start, run[-1].start + _HOUR, reason)


def override_problem(day: date, hour: int, at: datetime, tz: tzinfo) -> str | None:
    """Why an override of ``(day, hour)`` set at ``at`` is refused, or None if it is fine."""
    n = day_hours(day, tz)
    if not 0 <= hour < n:
        return f"{day} has {n} hours (0..{n - 1}); hour {hour} does not exist"
    if hour_start(day, hour, tz) + _HOUR <= at:
        return f"hour {hour} of {day} has already ended"
    today = at.astimezone(tz).date()
    if (day - today).days > MAX_OVERRIDE_AHEAD_DAYS:
        return f"{day} is more than {MAX_OVERRIDE_AHEAD_DAYS} days ahead"
    return None

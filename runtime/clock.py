"""Clocks both services run on, behind one small ``Clock`` protocol.

``SystemClock`` is wall time. ``AcceleratedClock`` runs ``speed`` times faster
from a chosen origin, so a demo or a test sees 15-minute periods every few
seconds with realistic cycle ids. Both expose timezone-aware UTC datetimes.
"""

from __future__ import annotations

import asyncio
import math
import time
from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    """What the services need of time."""

    def now(self) -> datetime:
        """The current time, timezone-aware UTC."""
        ...

    def monotonic(self) -> float:
        """Seconds that never jump back (timeouts, wear guard), at the clock's speed."""
        ...

    async def sleep_until(self, at: datetime) -> None:
        """Sleep until clock time ``at`` (returns at once if it has passed)."""
        ...

    def real_seconds(self, clock_s: float) -> float:
        """How many real seconds ``clock_s`` seconds of this clock take."""
        ...


class SystemClock:
    """Wall-clock time."""

    def now(self) -> datetime:
        return datetime.now(UTC)

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep_until(self, at: datetime) -> None:
        delay = (at - self.now()).total_seconds()
        if delay > 0:
            await asyncio.sleep(delay)

    def real_seconds(self, clock_s: float) -> float:
        return clock_s


class AcceleratedClock:
    """Time that runs ``speed`` times faster than wall time, starting at ``origin``."""

    def __init__(self, speed: float, origin: datetime | None = None) -> None:
        if not speed > 0:
            raise ValueError("speed must be positive")
        self.speed = speed
        self._origin = (origin or datetime.now(UTC)).astimezone(UTC)
        self._mono0 = time.monotonic()

    def now(self) -> datetime:
        elapsed = (time.monotonic() - self._mono0) * self.speed
        return self._origin + timedelta(seconds=elapsed)

    def monotonic(self) -> float:
        return time.monotonic() * self.speed

    async def sleep_until(self, at: datetime) -> None:
        delay = (at - self.now()).total_seconds() / self.speed
        if delay > 0:
            await asyncio.sleep(delay)

    def real_seconds(self, clock_s: float) -> float:
        return clock_s / self.speed


def make_clock(speed: float, origin: datetime | None = None) -> Clock:
    """The system clock at speed 1, an accelerated clock otherwise."""
    if speed == 1.0 and origin is None:
        return SystemClock()
    return AcceleratedClock(speed, origin)


def next_boundary(now: datetime, period_s: float) -> datetime:
    """The next period boundary strictly after ``now``, aligned to the Unix epoch."""
    ts = now.timestamp()
    nxt = math.floor(ts / period_s + 1e-9) * period_s + period_s
    return datetime.fromtimestamp(nxt, UTC)

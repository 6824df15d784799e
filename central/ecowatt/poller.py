"""``EcowattPoller``: fetch RTE's signals rarely, on a jittered schedule, and never give up.

The schedule (reference/mosquitto-and-faults.md §3 "Ecowatt outages, 401 and 429"):

- at most one call per ``min_interval_s`` (900 s on RTE's production API), counted
  from the start of the previous call, whatever its outcome, and across
  restarts (from the cached answer's time);
- after a good answer, again ``poll_interval_s`` later (hourly) plus up to
  ``JITTER_S``, or soon after RTE's ~17:00 (Paris) publication of J+3 if that
  comes first;
- on 429: when RTE says ``Retry-After``, not before; otherwise at least 15 minutes;
- on 5xx, timeouts, network errors or an unusable answer: capped, jittered
  exponential backoff ("decorrelated jitter": each delay drawn in
  ``[base, 3 × previous]``, capped at ``backoff_cap_s``);
- on an authentication failure (the client already retried once with a fresh
  token): an ``ecowatt_auth_failed`` alarm in the log, then a try again only
  ``backoff_cap_s`` later: never a loop.

Each good answer is parsed by the pure core, written to the cache (atomically,
off the event loop) and handed to ``on_signals``. The poller owns no MQTT and
touches no allocation state; it runs as its own task, and its delay policy is
a pure function of its arguments (``next_after_success``, ``Backoff``).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, time, timedelta, tzinfo
from typing import Any, Protocol

import structlog

from central.core.grid import GridDataError, Signals, parse_signals
from central.ecowatt.cache import CachedAnswer, SignalCache
from central.ecowatt.errors import (
    EcowattAuthError,
    EcowattBadResponse,
    EcowattError,
    EcowattRateLimited,
)
from runtime.clock import Clock

log = structlog.get_logger("central.ecowatt")

JITTER_S = 300.0
"""At most 5 min (and 10 % of the interval) added to each routine call, so that
coordinators do not call RTE in step."""
PUBLICATION = time(17, 0)
"""RTE publishes J+3 at about 17:00, Paris time."""
PUBLICATION_DELAY_S = (300.0, 1200.0)
"""Call 5 to 20 minutes after the publication time."""
RATE_LIMITED_S = 900.0
"""429 without ``Retry-After``: wait at least one quota window."""


@dataclass(frozen=True, slots=True)
class PollPolicy:
    """When to call RTE; see the module docstring."""

    min_interval_s: float = 900.0
    poll_interval_s: float = 3600.0
    backoff_cap_s: float = 3600.0
    jitter_s: float | None = None  # None: 10 % of poll_interval_s, at most JITTER_S
    tz: tzinfo | None = None  # None: publication time ignored

    @property
    def cap_s(self) -> float:
        return max(self.backoff_cap_s, self.min_interval_s)

    @property
    def jitter(self) -> float:
        if self.jitter_s is not None:
            return self.jitter_s
        return min(JITTER_S, self.poll_interval_s / 10.0)


def next_after_success(
    success_at: datetime, now: datetime, policy: PollPolicy, rng: random.Random
) -> datetime:
    """When to call again after a good answer received at ``success_at``."""
    at = success_at + timedelta(seconds=policy.poll_interval_s + rng.uniform(0, policy.jitter))
    if policy.tz is not None:
        local = now.astimezone(policy.tz)
        published = datetime.combine(local.date(), PUBLICATION, tzinfo=policy.tz)
        if success_at < published:
            # RTE's new J+3 is (or will soon be) out and we do not have it yet.
            soon = published + timedelta(seconds=rng.uniform(*PUBLICATION_DELAY_S))
            at = min(at, max(soon, now))
    return at


class Backoff:
    """Decorrelated-jitter backoff between ``base_s`` and ``cap_s``."""

    def __init__(self, base_s: float, cap_s: float, rng: random.Random) -> None:
        self.base_s = base_s
        self.cap_s = max(cap_s, base_s)
        self._rng = rng
        self._previous = base_s
        self.failures = 0

    def next_s(self) -> float:
        self.failures += 1
        upper = max(self.base_s, self._previous * 3.0)
        self._previous = min(self.cap_s, self._rng.uniform(self.base_s, upper))
        return self._previous

    def reset(self) -> None:
        self._previous = self.base_s
        self.failures = 0


class SignalSource(Protocol):
    """What the poller needs of a client (``EcowattClient``)."""

    signals_url: str

    async def fetch_signals(self) -> dict[str, Any]: ...


OnSignals = Callable[[Signals, datetime], None]


class EcowattPoller:
    """The fetch loop: one client, one cache, one callback."""

    def __init__(
        self,
        client: SignalSource,
        cache: SignalCache,
        clock: Clock,
        tz: tzinfo,
        policy: PollPolicy | None = None,
        *,
        rng: random.Random | None = None,
    ) -> None:
        self.client = client
        self.cache = cache
        self.clock = clock
        self.tz = tz
        self.policy = policy or PollPolicy(tz=tz)
        self.rng = rng or random.Random()
        self.backoff = Backoff(self.policy.min_interval_s, self.policy.cap_s, self.rng)
        self.last_call_at: datetime | None = None
        self.last_success_at: datetime | None = None
        self.next_at: datetime | None = None
        self.state = "starting"
        self.last_error: str | None = None
        self.calls = 0
        self.completed = 0

    # Cache ---------------------------------------------------------------------
    def load_cache(self) -> tuple[Signals, datetime] | None:
        """The cached answer, parsed; also seeds the quota and the schedule (sync)."""
        cached = self.cache.load(self.client.signals_url)
        if cached is None:
            return None
        try:
            signals = parse_signals(cached.body, self.tz)
        except GridDataError as exc:
            log.warning("ecowatt_cache_unusable", error=str(exc))
            return None
        self.last_call_at = self.last_success_at = cached.fetched_at
        return signals, cached.fetched_at

    # Schedule ------------------------------------------------------------------
    def first_call_at(self, now: datetime) -> datetime:
        """When to call first: at once without a recent answer, else on schedule."""
        at = now
        if self.last_success_at is not None:
            routine = next_after_success(self.last_success_at, now, self.policy, self.rng)
            at = max(at, routine)
        return self._floor(at)

    def _floor(self, at: datetime) -> datetime:
        if self.last_call_at is None:
            return at
        return max(at, self.last_call_at + timedelta(seconds=self.policy.min_interval_s))

    # The loop ------------------------------------------------------------------
    async def run(self, on_signals: OnSignals) -> None:
        """Poll until cancelled; nothing raised inside ever ends the loop."""
        self.next_at = self.first_call_at(self.clock.now())
        log.info("ecowatt_poller_started", url=self.client.signals_url,
                 first_call_at=self.next_at.isoformat())
        while True:
            await self.clock.sleep_until(self.next_at)
            self.next_at = self._floor(await self.poll_once(on_signals))

    async def poll_once(self, on_signals: OnSignals) -> datetime:
        """One call to RTE; returns when to call next (before the quota floor)."""
        try:
            return await self._poll(on_signals)
        finally:
            self.completed += 1

    async def _poll(self, on_signals: OnSignals) -> datetime:
        now = self.clock.now()
        self.last_call_at = now
        self.calls += 1
        try:
            body = await self.client.fetch_signals()
            signals = parse_signals(body, self.tz)
        except EcowattRateLimited as exc:
            wait = exc.retry_after_s if exc.retry_after_s is not None else RATE_LIMITED_S
            wait = max(wait, 1.0) + self.rng.uniform(1.0, 30.0)
            return self._failed("rate_limited", exc, now, wait, retry_after_s=exc.retry_after_s)
        except EcowattAuthError as exc:
            # The client already tried a fresh token once: this needs a human.
            return self._failed("auth_failed", exc, now, self.policy.cap_s, alarm=True)
        except (EcowattError, GridDataError) as exc:
            bad = isinstance(exc, EcowattBadResponse | GridDataError)
            state = "bad_response" if bad else "unavailable"
            return self._failed(state, exc, now, self.backoff.next_s())
        except Exception as exc:  # a bug must not end the poller (nor the coordinator)
            log.exception("ecowatt_poll_crashed")
            return self._failed("error", exc, now, self.backoff.next_s())
        self.backoff.reset()
        self.state = "ok"
        self.last_error = None
        self.last_success_at = now
        if signals.notes:
            log.warning("ecowatt_signals_repaired", notes=list(signals.notes)[:10])
        try:
            await asyncio.to_thread(
                self.cache.save, CachedAnswer(body, now, self.client.signals_url)
            )
        except OSError as exc:
            log.error("ecowatt_cache_not_written", path=str(self.cache.path), error=str(exc))
        try:
            on_signals(signals, now)
        except Exception:
            log.exception("ecowatt_signals_not_applied")
        nxt = next_after_success(now, now, self.policy, self.rng)
        log.info("ecowatt_poll_ok", days=[d.day.isoformat() for d in signals.days],
                 next_call_at=self._floor(nxt).isoformat())
        return nxt

    def _failed(
        self,
        state: str,
        exc: BaseException,
        now: datetime,
        wait_s: float,
        *,
        alarm: bool = False,
        **extra: Any,
    ) -> datetime:
        self.state = state
        self.last_error = str(exc)[:300]
        nxt = now + timedelta(seconds=wait_s)
        fields: dict[str, Any] = {
            "error": self.last_error,
            "error_type": type(exc).__name__,
            "status": getattr(exc, "status", None),
            "next_call_at": self._floor(nxt).isoformat(),
            "failures": self.backoff.failures,
            **extra,
        }
        if alarm:
            log.error("ecowatt_auth_failed", alarm=True, **fields)
        else:
            log.warning(f"ecowatt_{state}", **fields)
        return nxt

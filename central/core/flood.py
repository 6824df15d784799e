"""Per-site flood control: a token bucket per site, and quarantine after a sustained flood.

A gateway sends a handful of messages a period (a net load every minute, a
status, one reply per cycle, a report per period and the resends of its
unacknowledged ones). A site far beyond that (a bug in a loop, a hijacked
box) must not slow the others down: each message from a site takes a token
from that site's bucket (``rate_per_s`` tokens a second, at most ``burst``
held); with none left the message is dropped before it is decoded. A site
whose drops reach ``quarantine_after`` within ``quarantine_window_s`` is
quarantined for ``quarantine_s``: every message of it is dropped, cheaply,
and it is not asked in the cycles that open meanwhile.

Pure: the caller passes the time (monotonic seconds, real time: a flood is a
rate of real messages whatever the clock's speed) and logs the transitions
``admit`` reports. Memory is one small record per site heard from.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Final


class Verdict(Enum):
    """What becomes of one message."""

    ADMIT = "admit"
    THROTTLED = "flood_throttled"  # no token left: dropped and counted
    QUARANTINED = "quarantined"  # the site is in quarantine: dropped and counted


class Transition(Enum):
    """A change in a site's standing, to be logged once by the caller."""

    QUARANTINED = "site_quarantined"
    RELEASED = "site_released"


@dataclass(frozen=True, slots=True)
class FloodPolicy:
    """The limits of one coordinator (``[flood]`` in its configuration)."""

    rate_per_s: float = 10.0
    burst: float = 1000.0
    quarantine_after: int = 5000
    quarantine_window_s: float = 60.0
    quarantine_s: float = 600.0

    def __post_init__(self) -> None:
        if not self.rate_per_s > 0:
            raise ValueError("rate_per_s must be positive")
        if not self.burst >= 1:
            raise ValueError("burst must be at least 1")
        if self.quarantine_after < 1:
            raise ValueError("quarantine_after must be at least 1")
        if not self.quarantine_window_s > 0:
            raise ValueError("quarantine_window_s must be positive")
        if not self.quarantine_s >= 0:
            raise ValueError("quarantine_s must not be negative")


class _Bucket:
    __slots__ = ("dropped", "quarantined_until_s", "tokens", "updated_s", "window_drops",
                 "window_start_s")

    def __init__(self, tokens: float, now_s: float) -> None:
        self.tokens = tokens
        self.updated_s = now_s
        self.window_start_s = now_s
        self.window_drops = 0
        self.dropped = 0
        self.quarantined_until_s: float | None = None


@dataclass(frozen=True, slots=True)
class Admission:
    """``admit``'s answer: the verdict and, when the site's standing changed, how."""

    verdict: Verdict
    transition: Transition | None = None
    until_s: float | None = None  # end of the quarantine, for QUARANTINED


_ADMIT: Final = Admission(Verdict.ADMIT)
_THROTTLED: Final = Admission(Verdict.THROTTLED)
_IN_QUARANTINE: Final = Admission(Verdict.QUARANTINED)


class FloodGuard:
    """The token buckets of every site of one community."""

    __slots__ = ("_buckets", "_quarantined", "policy")

    def __init__(self, policy: FloodPolicy | None = None) -> None:
        self.policy = policy or FloodPolicy()
        self._buckets: dict[str, _Bucket] = {}
        self._quarantined: set[str] = set()  # sites put in quarantine, not yet released

    def admit(self, site: str, now_s: float) -> Admission:
        """Take one token for a message of ``site`` arriving at ``now_s``."""
        bucket = self._buckets.get(site)
        policy = self.policy
        if bucket is None:
            bucket = self._buckets[site] = _Bucket(policy.burst, now_s)
        until = bucket.quarantined_until_s
        released = False
        if until is not None:
            if now_s < until:
                bucket.dropped += 1
                return _IN_QUARANTINE
            # Out of quarantine with a full bucket and a clean record.
            bucket.quarantined_until_s = None
            bucket.tokens = policy.burst
            bucket.updated_s = now_s
            bucket.window_start_s = now_s
            bucket.window_drops = 0
            self._quarantined.discard(site)
            released = True
        elapsed = now_s - bucket.updated_s
        if elapsed > 0:
            tokens = bucket.tokens + elapsed * policy.rate_per_s
            bucket.tokens = tokens if tokens < policy.burst else policy.burst
            bucket.updated_s = now_s
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return Admission(Verdict.ADMIT, Transition.RELEASED) if released else _ADMIT
        bucket.dropped += 1
        if now_s - bucket.window_start_s > policy.quarantine_window_s:
            bucket.window_start_s = now_s
            bucket.window_drops = 0
        bucket.window_drops += 1
        if bucket.window_drops >= policy.quarantine_after:
            until = now_s + policy.quarantine_s
            bucket.quarantined_until_s = until
            self._quarantined.add(site)
            return Admission(Verdict.QUARANTINED, Transition.QUARANTINED, until)
        return _THROTTLED

    def quarantined(self, now_s: float) -> dict[str, float]:
        """Sites in quarantine at ``now_s`` and when it ends."""
        out = {}
        for site in self._quarantined:
            until = self._buckets[site].quarantined_until_s
            if until is not None and now_s < until:
                out[site] = until
        return out

    def held(self) -> frozenset[str]:
        """Sites put in quarantine and not released yet (their quarantine may have ended:
        a site is released by its next message)."""
        return frozenset(self._quarantined)

    def dropped(self, site: str) -> int:
        """Messages of ``site`` dropped so far (throttled or in quarantine)."""
        bucket = self._buckets.get(site)
        return bucket.dropped if bucket is not None else 0

    def __len__(self) -> int:
        return len(self._buckets)

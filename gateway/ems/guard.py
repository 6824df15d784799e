"""The wear guard: minimum on and off times and starts per hour.

Every start the EMS commands passes ``may_start``; every automatic stop passes
``may_stop``. A heat pump's compressor or a contactor does not care who asked:
the guard holds against the coordinator and against local logic alike. Two
stops bypass the minimum on time on purpose, and only those: the resident's
manual "off" and grid shedding (safety first); neither can ever add a start.
"""

from __future__ import annotations

from gateway.ems.loads import LoadRuntime, LoadSpec

HOUR_S = 3600.0


class WearGuard:
    """Stateless checks over a load's runtime record."""

    @staticmethod
    def starts_in_last_hour(rt: LoadRuntime, now_s: float) -> int:
        rt.starts[:] = [t for t in rt.starts if now_s - t < HOUR_S]
        return len(rt.starts)

    @classmethod
    def may_start(cls, spec: LoadSpec, rt: LoadRuntime, now_s: float) -> bool:
        """Off long enough and below the starts-per-hour limit."""
        if rt.last_change_s is not None and not rt.on and now_s - rt.last_change_s < spec.min_off_s:
            return False
        return cls.starts_in_last_hour(rt, now_s) < spec.max_starts_per_hour

    @staticmethod
    def may_stop(spec: LoadSpec, rt: LoadRuntime, now_s: float) -> bool:
        """On long enough (automatic stops only)."""
        return rt.last_change_s is None or not rt.on or now_s - rt.last_change_s >= spec.min_on_s

    @classmethod
    def next_start_s(cls, spec: LoadSpec, rt: LoadRuntime, now_s: float) -> float:
        """The earliest time a start will be allowed."""
        at = now_s
        if rt.last_change_s is not None and not rt.on:
            at = max(at, rt.last_change_s + spec.min_off_s)
        recent = sorted(t for t in rt.starts if now_s - t < HOUR_S)
        if len(recent) >= spec.max_starts_per_hour:
            at = max(at, recent[len(recent) - spec.max_starts_per_hour] + HOUR_S)
        return at

"""How the coordinator runs Python's cyclic garbage collector during a cycle.

A 100k-reply cycle creates hundreds of thousands of small, acyclic objects
(offers, decisions, payloads) that reference counting frees anyway; the
cyclic collector's generational passes over them cost 1.1-1.3 s a cycle here
(bench/cycle.py). During a cycle the coordinator freezes what already lives
(out of every scan) and collects young objects less often; at close it goes
back to normal, so nothing escapes collection for longer than a cycle. The
benchmark measures the pure core under the same policy.
"""

from __future__ import annotations

import gc

CYCLE_GEN0_THRESHOLD = 100_000


class CycleGc:
    """Enter at a cycle's request, leave at its close (idempotent both ways)."""

    __slots__ = ("_saved",)

    def __init__(self) -> None:
        self._saved: tuple[int, int, int] | None = None

    def enter(self) -> None:
        if self._saved is not None:
            return
        self._saved = gc.get_threshold()
        gc.freeze()
        _, gen1, gen2 = self._saved
        gc.set_threshold(max(self._saved[0], CYCLE_GEN0_THRESHOLD), gen1, gen2)

    def leave(self) -> None:
        if self._saved is None:
            return
        gc.set_threshold(*self._saved)
        self._saved = None
        gc.unfreeze()

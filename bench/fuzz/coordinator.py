"""Fuzz the coordinator's message handling: ``python -m bench.fuzz.coordinator``.

``--cases N --seed S`` runs the deterministic corpus (the test suite runs
100,000); ``--atheris -max_total_time=3600 DIR`` runs coverage-guided with
atheris, every input through the real consumer under the harness's checks
(bench/fuzz/runner.py, bench/fuzz/harness.py).
"""

from __future__ import annotations

import sys
from typing import Any

from bench.fuzz.runner import run_fuzz


def _instrumented() -> Any:
    try:
        import atheris
    except ImportError:
        return None
    return atheris.instrument_imports(include=["central", "protocol"])


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    guard = _instrumented() if "--atheris" in args else None
    if guard is not None:
        with guard:  # coverage for the code under test, not for the harness
            import central.app
            import central.core.cycle  # noqa: F401
            import protocol.codec  # noqa: F401
    from bench.fuzz.harness import CoordinatorHarness, coordinator_harness

    async def feed_one(h: CoordinatorHarness, topic: str, payload: bytes) -> None:
        h.clock.advance(0.01)
        await h.batch([("m", topic, payload, h.clock.monotonic())])

    def summary(h: CoordinatorHarness) -> dict[str, Any]:
        return {"stats": h.coordinator.stats.as_dict(), "cycles": h.run.cycles,
                "allocations_published": len(h.bus.allocs)}

    return run_fuzz("coordinator", args, coordinator_harness, feed_one, summary)


if __name__ == "__main__":
    raise SystemExit(main())

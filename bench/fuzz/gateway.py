"""Fuzz the gateway's handlers and device drivers: ``python -m bench.fuzz.gateway``.

``--cases N --seed S`` runs the deterministic corpus (the test suite runs
100,000); ``--atheris -max_total_time=3600 DIR`` runs coverage-guided with
atheris, every input through the real handlers and drivers under the harness's
checks (bench/fuzz/runner.py, bench/fuzz/harness.py).
"""

from __future__ import annotations

import sys
from typing import Any

from bench.fuzz.runner import run_fuzz


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if "--atheris" in args:
        try:
            import atheris
        except ImportError:
            pass
        else:
            with atheris.instrument_imports(include=["gateway", "protocol"]):
                import gateway.app
                import gateway.devices.shelly_rpc  # noqa: F401
                import protocol.codec  # noqa: F401
    from bench.fuzz.corpus import Case
    from bench.fuzz.harness import GatewayHarness, gateway_harness

    async def feed_one(h: GatewayHarness, topic: str, payload: bytes) -> None:
        h.clock.advance(1.0)
        h.handle(Case(topic, payload, "atheris", "atheris"))
        h.gateway.tick()

    def summary(h: GatewayHarness) -> dict[str, Any]:
        return {"diagnostics": h.gateway.diagnostics(), "ticks": h.run.ticks,
                "allocations_applied": len(h.run.allocations), "commands": h.run.commands}

    return run_fuzz("gateway", args, gateway_harness, feed_one, summary)


if __name__ == "__main__":
    raise SystemExit(main())

"""A coordinator process for the restart tests (test_coordinator_restart.py).

``python crashable_central.py CONFIG SURPLUS_KW``: runs the coordinator of
``CONFIG`` and opens one cycle as soon as the sites' surplus reaches
``SURPLUS_KW``, so a test can SIGKILL it mid-cycle. The restarted coordinator
is the real ``python -m central``.
"""

from __future__ import annotations

import asyncio
import signal
import sys

from central.app import Coordinator
from central.config import load_central_settings
from runtime.clock import SystemClock


async def main(config: str, surplus_kw: float) -> None:
    settings = load_central_settings(config)
    coordinator = Coordinator(settings, SystemClock())
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    task = asyncio.create_task(coordinator.run(stop))
    await coordinator.wait_ready()
    while coordinator.sites.surplus(coordinator.clock.now(), 3600).surplus_kw < surplus_kw - 1e-9:
        await asyncio.sleep(0.02)
    await coordinator.start_cycle_now()
    await task


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], float(sys.argv[2])))

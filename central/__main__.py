"""``ems-central --config central.toml``: parse arguments, load config, log, run."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Sequence

import structlog

from central import __version__
from central.app import Coordinator
from central.config import load_central_settings
from central.errors import CentralError
from protocol.clock import make_clock
from protocol.logs import configure_logging
from protocol.settings import EX_CONFIG, ConfigError


async def _serve(coordinator: Coordinator) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await coordinator.run(stop)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ems-central", description="Energy-community coordinator")
    parser.add_argument("--config", "-c", required=True, help="TOML config file")
    parser.add_argument("--version", action="version", version=__version__)
    args = parser.parse_args(argv)
    try:
        settings = load_central_settings(args.config)
    except ConfigError as exc:
        sys.stderr.write(f"ems-central: bad configuration\n{exc}\n")
        return EX_CONFIG
    configure_logging(settings.log.level, settings.log.format)
    log = structlog.get_logger("central")
    try:
        coordinator = Coordinator(settings, make_clock(settings.clock.speed))
        asyncio.run(_serve(coordinator))
    except CentralError as exc:
        log.error("coordinator_failed", error=str(exc))
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())

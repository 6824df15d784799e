"""The entry point both services share: arguments, config, logs, run until a signal.

``run_service`` parses ``--config``, loads and validates the settings (a bad
config exits 78 with the key named, which systemd does not restart in a
loop), configures structlog once, builds the service and runs it until
SIGINT or SIGTERM, translating the service's own root error into exit 1.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import structlog

from protocol.logs import configure_logging
from protocol.settings import EX_CONFIG, ConfigError


class Service(Protocol):
    async def run(self, stop: asyncio.Event) -> None: ...


async def _serve(build: Callable[[], Service]) -> None:
    service = build()  # inside the loop: services create asyncio objects
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await service.run(stop)


def run_service(
    argv: Sequence[str] | None,
    *,
    prog: str,
    description: str,
    version: str,
    load: Callable[[str], Any],
    build: Callable[[Any], Service],
    root_error: type[Exception],
) -> int:
    """Run one service; return its exit status."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--config", "-c", required=True, help="TOML config file")
    parser.add_argument("--version", action="version", version=version)
    args = parser.parse_args(argv)
    try:
        settings = load(args.config)
    except ConfigError as exc:
        sys.stderr.write(f"{prog}: bad configuration\n{exc}\n")
        return EX_CONFIG
    configure_logging(settings.log.level, settings.log.format)
    log = structlog.get_logger(prog)
    try:
        asyncio.run(_serve(lambda: build(settings)))
    except root_error as exc:
        log.error("service_failed", error=str(exc))
        return 1
    except KeyboardInterrupt:
        return 130
    return 0

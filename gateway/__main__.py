"""``ems-gateway --config gateway.toml``: parse arguments, load config, log, run."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Sequence

import structlog

from gateway import __version__
from gateway.config import load_gateway_settings
from gateway.errors import GatewayError
from protocol.clock import make_clock
from protocol.logs import configure_logging
from protocol.settings import EX_CONFIG, ConfigError


async def _serve(settings: object) -> None:
    from gateway.app import Gateway

    gateway = Gateway(settings, make_clock(settings.clock.speed))  # type: ignore[attr-defined, arg-type]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await gateway.run(stop)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ems-gateway", description="Energy-community gateway")
    parser.add_argument("--config", "-c", required=True, help="TOML config file")
    parser.add_argument("--version", action="version", version=__version__)
    args = parser.parse_args(argv)
    try:
        settings = load_gateway_settings(args.config)
    except ConfigError as exc:
        sys.stderr.write(f"ems-gateway: bad configuration\n{exc}\n")
        return EX_CONFIG
    configure_logging(settings.log.level, settings.log.format)
    log = structlog.get_logger("gateway")
    try:
        asyncio.run(_serve(settings))
    except GatewayError as exc:
        log.error("gateway_failed", error=str(exc))
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``ems-gateway --config gateway.toml``: the gateway's entry point."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from gateway import __version__
from gateway.config import GatewaySettings, load_gateway_settings
from gateway.errors import GatewayError
from runtime.clock import make_clock
from runtime.service import Service, run_service


def _build(settings: GatewaySettings) -> Service:
    from gateway.app import Gateway

    return Gateway(settings, make_clock(settings.clock.speed))


def main(argv: Sequence[str] | None = None) -> int:
    return run_service(
        argv,
        prog="ems-gateway",
        description="Energy-community gateway for one home",
        version=__version__,
        load=load_gateway_settings,
        build=_build,
        root_error=GatewayError,
    )


if __name__ == "__main__":
    sys.exit(main())

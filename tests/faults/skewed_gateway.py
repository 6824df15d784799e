"""A gateway process whose clock is off by a given number of seconds.

``python skewed_gateway.py CONFIG OFFSET_S`` runs the real ``Gateway`` of
``CONFIG`` exactly as ``ems-gateway`` does (same settings, logs and signals),
but on a clock ``OFFSET_S`` ahead of the system's (behind when negative): a
home box whose NTP sync failed. Used by test_gateway_faults.py.
"""

from __future__ import annotations

import sys
from datetime import datetime, timedelta

from gateway import __version__
from gateway.app import Gateway
from gateway.config import GatewaySettings, load_gateway_settings
from gateway.errors import GatewayError
from runtime.clock import SystemClock
from runtime.service import run_service


class SkewedClock(SystemClock):
    """Wall time plus a fixed offset; monotonic time is the system's."""

    def __init__(self, offset_s: float) -> None:
        self.offset = timedelta(seconds=offset_s)

    def now(self) -> datetime:
        return super().now() + self.offset


def main(config: str, offset_s: float) -> int:
    def build(settings: GatewaySettings) -> Gateway:
        return Gateway(settings, SkewedClock(offset_s))

    return run_service(["--config", config], prog="skewed-gateway",
                       description="a gateway on a skewed clock", version=__version__,
                       load=load_gateway_settings, build=build, root_error=GatewayError)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], float(sys.argv[2])))

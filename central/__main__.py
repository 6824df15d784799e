"""``ems-central --config central.toml``: the coordinator's entry point."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from central import __version__
from central.config import CentralSettings, load_central_settings
from central.errors import CentralError
from runtime.clock import make_clock
from runtime.service import Service, run_service


def _build(settings: CentralSettings) -> Service:
    from central.app import Coordinator

    return Coordinator(settings, make_clock(settings.clock.speed))


def main(argv: Sequence[str] | None = None) -> int:
    return run_service(
        argv,
        prog="ems-central",
        description="Energy-community coordinator",
        version=__version__,
        load=load_central_settings,
        build=_build,
        root_error=CentralError,
    )


if __name__ == "__main__":
    sys.exit(main())

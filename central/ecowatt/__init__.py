"""RTE's Ecowatt grid-stress signal: the API client, its poller and the publishing service.

The parsing and the schedule are pure and live in ``central.core.grid``; this
package is the shell around them (HTTP, disk, MQTT, time).
"""

from __future__ import annotations

RTE_HOST = "digital.iservices.rte-france.com"
PRODUCTION_TOKEN_URL = f"https://{RTE_HOST}/token/oauth/"
PRODUCTION_SIGNALS_URL = f"https://{RTE_HOST}/open_api/ecowatt/v5/signals"
SANDBOX_SIGNALS_URL = f"https://{RTE_HOST}/open_api/ecowatt/v5/sandbox/signals"
PRODUCTION_MIN_INTERVAL_S = 900.0
"""RTE allows one call per 15 minutes per application on the production signals."""

__all__ = [
    "PRODUCTION_MIN_INTERVAL_S",
    "PRODUCTION_SIGNALS_URL",
    "PRODUCTION_TOKEN_URL",
    "RTE_HOST",
    "SANDBOX_SIGNALS_URL",
]

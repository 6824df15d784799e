"""The coordinator's error tree.

    CentralError
    ├── ConfigError     (protocol.settings.ConfigError, re-raised as-is: exit 78)
    ├── RecorderError   the records cannot be read or written
    └── BusError        the broker cannot be reached or refused us
"""

from __future__ import annotations


class CentralError(Exception):
    """Root of every error the coordinator raises on purpose."""


class RecorderError(CentralError):
    """The recorder could not read or write; ``url`` says which store."""

    def __init__(self, message: str, url: str = "") -> None:
        super().__init__(message)
        self.url = url


class BusError(CentralError):
    """The MQTT broker could not be reached, or refused the connection."""

    def __init__(self, message: str, host: str = "", port: int = 0) -> None:
        super().__init__(message)
        self.host = host
        self.port = port

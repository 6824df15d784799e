"""The gateway's error tree.

    GatewayError
    ├── DeviceError          a device refused, timed out or is unavailable
    │   └── DeviceUnavailable   the device is offline / detached / not found
    └── ProfileError         a firmware profile file is invalid (names file and key)

Configuration errors are ``protocol.settings.ConfigError`` (exit 78).
"""

from __future__ import annotations


class GatewayError(Exception):
    """Root of every error the gateway raises on purpose."""


class DeviceError(GatewayError):
    """A device command failed; ``device`` and ``channel`` say which."""

    def __init__(self, message: str, device: str = "", channel: int | None = None) -> None:
        super().__init__(message)
        self.device = device
        self.channel = channel


class DeviceUnavailable(DeviceError):
    """The device cannot be reached (offline, detached, not found)."""


class ProfileError(GatewayError):
    """A firmware profile is invalid; ``path`` and ``key`` say where."""

    def __init__(self, message: str, path: str = "", key: str = "") -> None:
        super().__init__(message)
        self.path = path
        self.key = key

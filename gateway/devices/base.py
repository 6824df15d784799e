"""The capabilities the gateway needs of devices, and the port drivers talk through.

Drivers are event-driven and single-threaded: the gateway calls their
handlers on its own event loop (MQTT messages are marshalled there from the
client's network thread), and awaits their commands. A driver never blocks
the loop: USB calls run in a worker thread with a timeout.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

MessageHandler = Callable[[str, bytes], None]
ChangeListener = Callable[[str], None]
"""Called with the id of the relay/meter whose state changed."""


class MqttPort(Protocol):
    """The home's MQTT broker, as a driver sees it (Shelly devices live there)."""

    def subscribe(self, topic: str, handler: MessageHandler) -> None:
        """Call ``handler(topic, payload)`` on the gateway's loop for every message."""
        ...

    def publish(self, topic: str, payload: bytes | str, qos: int = 1, retain: bool = False) -> None:
        """Publish without waiting (the client queues it)."""
        ...


class Clock(Protocol):
    """Monotonic seconds for timeouts and freshness (never the wall clock)."""

    def monotonic(self) -> float: ...


@dataclass(slots=True)
class RelayState:
    """What is known of one switched channel."""

    on: bool | None = None
    available: bool = False
    power_kw: float | None = None
    energy_kwh: float | None = None
    updated_s: float | None = None  # monotonic time of the last report


class Relay(Protocol):
    """One switched channel: a plug's relay, a board's output."""

    @property
    def relay_id(self) -> str:
        """``<device>/<channel>``."""
        ...

    @property
    def state(self) -> RelayState: ...

    async def set(self, on: bool) -> None:
        """Switch the appliance on or off; raises ``DeviceError`` on failure or timeout."""
        ...


class SetPoint(Protocol):
    """A channel whose power can be set, not only switched: a wallbox's charging current.

    A modulating load (``modulation`` other than ``"none"``) must sit on such a
    channel; the gateway sets the power before it switches the channel on.
    """

    async def set_power(self, power_kw: float) -> None:
        """Run at (at most) ``power_kw``; raises ``DeviceError`` on failure or timeout."""
        ...


class PowerMeter(Protocol):
    """A measured power (and energy) for one appliance channel."""

    @property
    def state(self) -> RelayState: ...


class NetMeter(Protocol):
    """The home's grid connection: > 0 means the home injects (exports)."""

    @property
    def meter_id(self) -> str: ...

    @property
    def net_export_kw(self) -> float | None:
        """The last reading, None when unknown or stale."""
        ...

    @property
    def updated_s(self) -> float | None: ...


class Device(Protocol):
    """A configured device: what it offers, and its lifecycle."""

    device_id: str

    def relays(self) -> dict[int, Relay]:
        """Switched channels by number (empty for a meter)."""
        ...

    def net_meter(self) -> NetMeter | None:
        """The grid-connection meter this device provides, if any."""
        ...

    async def start(self) -> None:
        """Subscribe / open; must not raise when the device is absent (it becomes unavailable)."""
        ...

    async def stop(self) -> None: ...

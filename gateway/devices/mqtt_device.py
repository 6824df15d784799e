"""What the MQTT device drivers share: guarded handlers, channels, grid readings.

Every handler a driver subscribes goes through ``MqttDevice._subscribe``, which
wraps it so that nothing escapes into the port: a payload that does not parse
(``PayloadError``) is counted in ``bad_payloads`` and logged with the device,
the topic and an excerpt; any other exception is counted, logged with its
traceback, and dropped (STYLE.md, "Five things not to do", 2).

Availability follows the device's will (``online`` = ``false``). Before any
``online`` message, a report from the device (an announce, a state, an RPC
reply) counts as evidence that it is online: Gen1 devices do not retain
``online`` by default, so a gateway that starts after its plug would otherwise
never learn it. After an explicit ``false``, only ``true`` (or a Gen1 announce,
which a device sends as it reconnects) makes it available again.

Freshness: ``GridReading.net_export_kw`` is None when the last reading is older
than ``max_age_s`` (default ``FRESH_FOR_S`` = 300 s, by the injected monotonic
clock), when the device is offline, or before the first reading. Relay states
are not aged: their ``updated_s`` says when they were last heard.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Awaitable, Callable
from typing import Any, Literal

import orjson
import structlog

from gateway.devices.base import ChangeListener, Clock, MqttPort, RelayState
from protocol.rejections import RejectionLog

log = structlog.get_logger("gateway.devices")

FRESH_FOR_S = 300.0
"""A grid reading older than this (monotonic seconds) is unknown: None."""

Sign = Literal["export_positive", "import_positive"]
Handler = Callable[[str, bytes], None]


MAX_DEVICE_PAYLOAD_BYTES = 64 * 1024
"""A device payload past this is refused unread (a Pro 4PM's full status is ~10 KiB)."""
LOG_INTERVAL_S = 60.0
"""At most one ``bad_payload`` line per device and reason in this long."""


class PayloadError(ValueError):
    """A payload that does not parse: counted under ``reason``, logged and dropped by the guard."""

    def __init__(self, message: str, reason: str = "invalid") -> None:
        super().__init__(message)
        self.reason = reason


def load_json(payload: bytes, what: str) -> Any:
    """Decoded JSON; ``PayloadError`` (reason ``malformed_json``) when it is not JSON."""
    try:
        return orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise PayloadError(f"{what}: not JSON ({exc})", "malformed_json") from None


def excerpt(payload: bytes, limit: int = 120) -> str:
    """A short printable excerpt of a payload for the logs."""
    text = payload[:limit].decode("utf-8", errors="replace")
    return text + ("…" if len(payload) > limit else "")


def parse_number(value: object, what: str = "number") -> float:
    """A finite float from a number or a numeric string; ``PayloadError`` otherwise."""
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise PayloadError(f"{what}: not a number: {str(value)[:40]!r}", "not_a_number")
    try:
        number = float(value)
    except (ValueError, OverflowError):  # OverflowError: an int past float's range
        raise PayloadError(f"{what}: not a number: {str(value)[:40]!r}", "not_a_number") from None
    if not math.isfinite(number):
        raise PayloadError(f"{what}: not finite: {number}", "not_finite")
    return number


MAX_POWER_W = 1_000_000.0
"""A power reading beyond 1 MW is no home's: refused as ``out_of_range`` (a 1e308 W
reading is finite, and integrated over a period it made the report unbuildable)."""


def parse_power_w(value: object, what: str = "power", scale: float = 1.0) -> float:
    """A power in W (``scale`` = 1000 for a kW reading) within ``MAX_POWER_W``."""
    watts = parse_number(value, what) * scale
    if not abs(watts) <= MAX_POWER_W:
        raise PayloadError(f"{what}: {watts:g} W is beyond any home's", "out_of_range")
    return watts


def parse_bool_word(payload: bytes, what: str = "flag") -> bool:
    """``true``/``false`` (as Shelly's ``online`` topics say it)."""
    word = payload.strip().lower()
    if word == b"true":
        return True
    if word == b"false":
        return False
    raise PayloadError(f"{what}: expected true/false, got {excerpt(payload, 20)!r}",
                       "not_a_flag")


class ChannelRelay:
    """One switched channel: the state last heard, and ``set`` through its driver."""

    def __init__(self, relay_id: str, setter: Callable[[bool], Awaitable[None]]) -> None:
        self._relay_id = relay_id
        self._setter = setter
        self._state = RelayState()

    @property
    def relay_id(self) -> str:
        """``<device>/<channel>``."""
        return self._relay_id

    @property
    def state(self) -> RelayState:
        """A copy of what is known (callers cannot change the driver's state)."""
        return dataclasses.replace(self._state)

    async def set(self, on: bool) -> None:
        """Switch the channel; raises ``DeviceError`` / ``DeviceUnavailable``."""
        await self._setter(on)

    def update(self, now_s: float, **values: object) -> bool:
        """Record a report (fields of ``RelayState``); True when a value changed."""
        changed = False
        for name, value in values.items():
            if getattr(self._state, name) != value:
                setattr(self._state, name, value)
                changed = True
        self._state.updated_s = now_s
        return changed

    def set_available(self, available: bool) -> bool:
        """Mark the channel (un)available; True when that changed."""
        if self._state.available == available:
            return False
        self._state.available = available
        return True


class SetPointChannel(ChannelRelay):
    """A switched channel whose power can also be set (``base.SetPoint``): a wallbox."""

    def __init__(
        self,
        relay_id: str,
        setter: Callable[[bool], Awaitable[None]],
        power_setter: Callable[[float], Awaitable[None]],
    ) -> None:
        super().__init__(relay_id, setter)
        self._power_setter = power_setter

    async def set_power(self, power_kw: float) -> None:
        """Run at (at most) ``power_kw``; raises ``DeviceError`` / ``DeviceUnavailable``."""
        await self._power_setter(power_kw)


class GridReading:
    """The home's grid connection as one power reading (``NetMeter``)."""

    def __init__(self, meter_id: str, clock: Clock, sign: Sign, max_age_s: float) -> None:
        self._meter_id = meter_id
        self._clock = clock
        self._sign = sign
        self._max_age_s = max_age_s
        self._export_kw: float | None = None
        self._updated_s: float | None = None
        self.available = True

    @property
    def meter_id(self) -> str:
        return self._meter_id

    @property
    def net_export_kw(self) -> float | None:
        """> 0 when the home exports; None when unknown, offline or stale (> max_age_s)."""
        if self._export_kw is None or self._updated_s is None or not self.available:
            return None
        if self._clock.monotonic() - self._updated_s > self._max_age_s:
            return None
        return self._export_kw

    @property
    def updated_s(self) -> float | None:
        return self._updated_s

    def record_w(self, power_w: float) -> bool:
        """Record a power in W as the device reports it; True when the value changed.

        ``import_positive`` (Shelly meters, most P1 readers): export = -power.
        """
        export_kw = (-power_w if self._sign == "import_positive" else power_w) / 1000.0
        export_kw += 0.0  # normalise -0.0
        changed = export_kw != self._export_kw
        self._export_kw = export_kw
        self._updated_s = self._clock.monotonic()
        return changed


class MqttDevice:
    """Base of the MQTT drivers: guarded subscriptions, counters, availability."""

    def __init__(
        self, device_id: str, port: MqttPort, clock: Clock, on_change: ChangeListener
    ) -> None:
        self.device_id = device_id
        self._port = port
        self._clock = clock
        self._on_change = on_change
        self._running = False
        self._online: bool | None = None
        self.rejections = RejectionLog(LOG_INTERVAL_S)
        """Payloads refused, by reason (logged: one line per reason an interval)."""
        self.handler_failures = 0
        """Handlers that raised something else than ``PayloadError``: a bug, logged in full."""
        self._log = log.bind(device=device_id)

    @property
    def online(self) -> bool | None:
        """True/False from the device's ``online`` topic (or evidence); None before."""
        return self._online

    def _subscribe(self, topic: str, handler: Handler) -> None:
        self._port.subscribe(topic, self._guard(handler))

    @property
    def bad_payloads(self) -> int:
        """Payloads that did not parse or whose handler failed (each one counted)."""
        return self.rejections.total + self.handler_failures

    def _refuse(self, topic: str, payload: bytes, reason: str, detail: str) -> None:
        """Count a refused payload; log it unless its reason was logged within the interval."""
        line = self.rejections.note(reason, self.device_id, self._clock.monotonic())
        if line is not None:
            self._log.warning("bad_payload", topic=topic[:200], payload=excerpt(payload),
                              reason=reason, detail=detail[:200], suppressed=line.suppressed)

    def _guard(self, handler: Handler) -> Handler:
        def guarded(topic: str, payload: bytes) -> None:
            if not self._running:
                return  # stopped: the port has no unsubscribe
            if len(payload) > MAX_DEVICE_PAYLOAD_BYTES:
                self._refuse(topic, payload, "oversized", f"{len(payload)} bytes")
                return
            try:
                handler(topic, payload)
            except PayloadError as exc:
                self._refuse(topic, payload, exc.reason, str(exc))
            except Exception:
                self.handler_failures += 1
                self._log.exception("handler_failed", topic=topic, payload=excerpt(payload))

        return guarded

    def _notify(self, item_id: str) -> None:
        try:
            self._on_change(item_id)
        except Exception:
            self._log.exception("change_listener_failed", item=item_id)

    def _set_online(self, online: bool) -> None:
        """Record the device's availability; subclasses spread it to channels/meters."""
        if online == self._online:
            return
        before = self._online
        self._online = online
        self._log.info("device_online" if online else "device_offline", before=before)
        self._availability_changed(online)

    def _seen(self) -> None:
        """A report from the device: online, unless its will said otherwise."""
        if self._online is None:
            self._set_online(True)

    def _availability_changed(self, online: bool) -> None:
        """Hook: called after ``_online`` changed."""

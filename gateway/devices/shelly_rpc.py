"""Shelly Gen2+ JSON-RPC over MQTT, and what the Gen2 drivers share (reference §2).

A request ``{"id", "src", "method", "params"}`` goes to ``<prefix>/rpc``; the
device answers on ``<src>/rpc`` with ``{"id", "src", "dst", "result"}`` or
``{"id", "src", "dst", "error": {"code", "message"}}``. Replies are matched by
``id`` (an integer, unique per ``RpcChannel``); a reply with an unknown id (a
late answer after a timeout) is logged and dropped. Errors are matched on
``code`` only: messages differ between firmware versions.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from typing import Any

import orjson
import structlog

from gateway.config import DeviceSettings
from gateway.devices.base import ChangeListener, Clock, MqttPort
from gateway.devices.mqtt_device import MqttDevice, PayloadError, load_json, parse_bool_word
from gateway.errors import DeviceError, DeviceUnavailable
from protocol.rejections import RejectionLog

# Shelly Gen2 error codes (reference §2 "Errors"; aioshelly defines -114, -105 and 404).
INVALID_ARGUMENT = -103
DEADLINE_EXCEEDED = -104
NOT_FOUND = -105
METHOD_NOT_FOUND = -114
NO_HANDLER = 404  # unknown method, older firmware


class ShellyRpcError(DeviceError):
    """The device answered an RPC with an error; ``code`` is Shelly's error code."""

    def __init__(
        self,
        message: str,
        device: str = "",
        channel: int | None = None,
        *,
        code: int | None,
        rpc_message: str,
        method: str,
    ) -> None:
        super().__init__(message, device, channel)
        self.code = code
        self.rpc_message = rpc_message
        self.method = method


class RpcChannel:
    """Requests to one Gen2 device and the replies to them."""

    def __init__(
        self,
        port: MqttPort,
        prefix: str,
        src: str,
        device_id: str,
        online: Callable[[], bool | None],
    ) -> None:
        self._port = port
        self._prefix = prefix
        self.src = src
        self._device_id = device_id
        self._online = online
        # Start from a random id so a restarted gateway does not match stale replies.
        self._next_id = random.randrange(1, 1 << 24)
        self._pending: dict[int, tuple[str, asyncio.Future[Any], asyncio.TimerHandle]] = {}
        self._log = structlog.get_logger("gateway.devices").bind(device=device_id, src=src)
        self._unmatched = RejectionLog(60.0)

    @property
    def reply_topic(self) -> str:
        """``<src>/rpc``: where the device answers."""
        return f"{self.src}/rpc"

    def request(
        self, method: str, params: dict[str, Any] | None, timeout_s: float
    ) -> asyncio.Future[Any]:
        """Publish a request; the future gets the ``result``, or a ``DeviceError``."""
        loop = asyncio.get_running_loop()
        rpc_id = self._next_id
        self._next_id += 1
        fut: asyncio.Future[Any] = loop.create_future()
        timer = loop.call_later(timeout_s, self._expire, rpc_id, timeout_s)
        self._pending[rpc_id] = (method, fut, timer)
        frame: dict[str, Any] = {"id": rpc_id, "src": self.src, "method": method}
        if params is not None:
            frame["params"] = params
        self._port.publish(f"{self._prefix}/rpc", orjson.dumps(frame), qos=1)
        return fut

    async def call(
        self, method: str, params: dict[str, Any] | None, timeout_s: float
    ) -> Any:
        """Send a request and wait for its result (raises ``DeviceError``)."""
        fut = self.request(method, params, timeout_s)
        try:
            return await fut
        except asyncio.CancelledError:
            self._drop(fut)
            raise

    def on_reply(self, _topic: str, payload: bytes) -> None:
        """Handle a frame on ``<src>/rpc``; ``PayloadError`` when it is not a reply."""
        frame = load_json(payload, "rpc reply")
        if not isinstance(frame, dict) or "id" not in frame:
            raise PayloadError("rpc reply: not an object with an 'id'")
        rpc_id = frame["id"]
        entry = self._pending.pop(rpc_id, None) if isinstance(rpc_id, int) else None
        if entry is None:
            # A late answer after a timeout; a device repeating them gets a line an interval.
            line = self._unmatched.note("rpc_reply_unmatched", None, time.monotonic())
            if line is not None:
                self._log.info("rpc_reply_unmatched", rpc_id=str(rpc_id)[:40],
                               suppressed=line.suppressed)
            return
        method, fut, timer = entry
        timer.cancel()
        if fut.done():
            return
        if "error" in frame:
            error = frame["error"]
            code = error.get("code") if isinstance(error, dict) else None
            message = str(error.get("message", "")) if isinstance(error, dict) else str(error)
            code = code if isinstance(code, int) and not isinstance(code, bool) else None
            self._log.warning("rpc_error", method=method, code=code, message=message)
            fut.set_exception(
                ShellyRpcError(
                    f"{self._device_id}: {method} failed: {code} {message}",
                    self._device_id,
                    code=code,
                    rpc_message=message,
                    method=method,
                )
            )
        elif "result" in frame:
            fut.set_result(frame["result"])
        else:
            fut.set_exception(DeviceError(f"{self._device_id}: {method}: malformed reply"))
            raise PayloadError("rpc reply: neither 'result' nor 'error'")

    def fail_all(self, exc: DeviceError) -> None:
        """Fail every pending request (device offline, driver stopped)."""
        pending, self._pending = self._pending, {}
        for _method, fut, timer in pending.values():
            timer.cancel()
            if not fut.done():
                fut.set_exception(exc)

    def _expire(self, rpc_id: int, timeout_s: float) -> None:
        entry = self._pending.pop(rpc_id, None)
        if entry is None:
            return
        method, fut, _ = entry
        if fut.done():
            return
        msg = f"{self._device_id}: no reply to {method} within {timeout_s:g} s"
        self._log.warning("rpc_timeout", method=method, rpc_id=rpc_id, timeout_s=timeout_s)
        if self._online() is None:
            fut.set_exception(DeviceUnavailable(msg + "; nothing heard from the device",
                                                self._device_id))
        else:
            fut.set_exception(DeviceError(msg, self._device_id))

    def _drop(self, fut: asyncio.Future[Any]) -> None:
        for rpc_id, (_m, pending, timer) in list(self._pending.items()):
            if pending is fut:
                timer.cancel()
                del self._pending[rpc_id]


def parse_notification(payload: bytes) -> tuple[str, dict[str, Any]]:
    """``(method, params)`` of a frame on ``<prefix>/events/rpc``."""
    frame = load_json(payload, "events/rpc")
    if not isinstance(frame, dict) or not isinstance(frame.get("method"), str):
        raise PayloadError("events/rpc: not an object with a 'method'")
    params = frame.get("params", {})
    if not isinstance(params, dict):
        raise PayloadError("events/rpc: 'params' is not an object")
    return frame["method"], params


def parse_object(payload: bytes, what: str) -> dict[str, Any]:
    """A JSON object (a component's status on ``<prefix>/status/<component>``)."""
    data = load_json(payload, what)
    if not isinstance(data, dict):
        raise PayloadError(f"{what}: not a JSON object")
    return data


def gen2_prefix(settings: DeviceSettings) -> str:
    """The device's topic prefix (``prefix`` in the device's settings)."""
    if not settings.prefix:
        raise ValueError(f"device {settings.id}: a Shelly Gen2 device needs 'prefix'")
    return settings.prefix


class ShellyGen2Device(MqttDevice):
    """What the Gen2 drivers share: RPC, ``online``, notifications, full-status requests.

    A full status (``Shelly.GetStatus``) is asked at start, and again whenever
    the device is online while none is known (it went offline, or the request
    expired because the gateway was not connected yet). Subclasses say which
    ``<prefix>/status/<component>`` topics to follow and apply status objects.
    """

    def __init__(
        self,
        settings: DeviceSettings,
        port: MqttPort,
        clock: Clock,
        on_change: ChangeListener,
        reply_prefix: str | None,
    ) -> None:
        super().__init__(settings.id, port, clock, on_change)
        self.prefix = gen2_prefix(settings)
        self._timeout_s = settings.command_timeout_s
        self._rpc = RpcChannel(
            port, self.prefix, reply_prefix or f"ems-gw-{settings.id}", settings.id,
            lambda: self._online,
        )
        self._status_known = False
        self._status_pending = False
        self._log = self._log.bind(prefix=self.prefix)

    @property
    def src(self) -> str:
        """Our RPC ``src``: replies come back on ``<src>/rpc``."""
        return self._rpc.src

    async def start(self) -> None:
        """Subscribe, then ask the device for its full status (answered when it is up)."""
        self._running = True
        self._subscribe(self._rpc.reply_topic, self._on_reply)
        self._subscribe(f"{self.prefix}/online", self._on_online)
        self._subscribe(f"{self.prefix}/events/rpc", self._on_event)
        for component in self._status_components():
            self._subscribe(f"{self.prefix}/status/{component}", self._on_status)
        self._request_status()
        self._log.info("device_started", src=self.src)

    async def stop(self) -> None:
        """Ignore further messages and fail pending requests."""
        self._running = False
        self._rpc.fail_all(DeviceError(f"{self.device_id}: stopped", self.device_id))

    async def rpc(self, method: str, params: dict[str, Any] | None = None) -> Any:
        """Any RPC to this device; ``ShellyRpcError`` carries the device's error code."""
        if self._online is False:
            raise DeviceUnavailable(f"{self.device_id}: device offline", self.device_id)
        return await self._rpc.call(method, params, self._timeout_s)

    # -- for subclasses -------------------------------------------------------------

    def _status_components(self) -> list[str]:
        """Components whose ``<prefix>/status/<component>`` topic to follow."""
        return []

    def _parse_components(self, components: dict[str, Any]) -> list[Any]:
        """Read ``{"<component>": status, ...}`` (partial or full) into updates, changing
        nothing: ``PayloadError`` for a bad one, so a payload applies whole or not at all."""
        return []

    def _apply_parsed(self, updates: list[Any]) -> None:
        """Apply what ``_parse_components`` read (cannot fail)."""

    def _apply_components(self, components: dict[str, Any]) -> None:
        self._apply_parsed(self._parse_components(components))

    # -- handlers -----------------------------------------------------------------------

    def _request_status(self) -> None:
        if self._status_pending:
            return
        self._status_pending = True
        fut = self._rpc.request("Shelly.GetStatus", None, self._timeout_s)
        fut.add_done_callback(self._on_full_status)

    def _on_full_status(self, fut: asyncio.Future[Any]) -> None:
        self._status_pending = False
        if fut.cancelled():
            return
        exc = fut.exception()
        if exc is not None:
            self._log.info("status_request_failed", error=str(exc))
            return
        if not self._running:
            return
        result = fut.result()
        try:
            if not isinstance(result, dict):
                raise PayloadError("Shelly.GetStatus: result is not an object")
            self._apply_components(result)
            self._status_known = True
        except PayloadError as err:
            self._refuse(self._rpc.reply_topic, b"", err.reason, str(err))

    def _on_reply(self, topic: str, payload: bytes) -> None:
        self._rpc.on_reply(topic, payload)
        self._seen()

    def _on_online(self, _topic: str, payload: bytes) -> None:
        online = parse_bool_word(payload, "online")
        self._set_online(online)
        if online and not self._status_known:
            self._request_status()  # rpc_ntf may be off: no NotifyFullStatus then

    def _availability_changed(self, online: bool) -> None:
        if not online:
            self._status_known = False
            self._rpc.fail_all(
                DeviceUnavailable(f"{self.device_id}: device went offline", self.device_id)
            )

    def _on_event(self, _topic: str, payload: bytes) -> None:
        method, params = parse_notification(payload)
        if method in ("NotifyStatus", "NotifyFullStatus"):
            # Read all before changing anything: a bad frame is no sign of life either.
            updates = self._parse_components(params)
            self._seen()
            self._apply_parsed(updates)
            if method == "NotifyFullStatus":
                self._status_known = True
        # NotifyEvent (button pushes...) carries nothing we use.

    def _on_status(self, topic: str, payload: bytes) -> None:
        component = topic.rpartition("/")[2]
        updates = self._parse_components({component: parse_object(payload, component)})
        self._seen()
        self._apply_parsed(updates)

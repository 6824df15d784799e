"""``PahoPort``: a ``gateway.devices.base.MqttPort`` over paho-mqtt, for tests and demos.

paho runs its network loop in its own thread; every message is handed to the
asyncio loop that called ``start`` with ``loop.call_soon_threadsafe``, so
drivers' handlers run on that loop as they do in the gateway (which has its
own port). Several handlers may share a topic filter; each message goes to
every handler whose filter matches. Subscriptions are renewed on reconnect.

A handler that raises is logged with the topic and counted in
``handler_errors``; it never reaches paho's thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import uuid

import paho.mqtt.client as paho
import structlog
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from gateway.devices.base import MessageHandler

log = structlog.get_logger("gateway.sim.port")


class PahoPort:
    """An MQTT port whose handlers run on one asyncio loop."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        client_id: str | None = None,
        keepalive_s: int = 30,
        sub_qos: int = 1,
    ) -> None:
        self.host = host
        self.port = port
        self.client_id = client_id or f"ems-port-{uuid.uuid4().hex[:8]}"
        self._keepalive_s = keepalive_s
        self._sub_qos = sub_qos
        self._handlers: dict[str, list[MessageHandler]] = {}
        self._lock = threading.Lock()
        self._pending_subs: set[int] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._connected = threading.Event()
        self._synced = threading.Event()
        self._synced.set()
        self.handler_errors = 0
        self._client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=MQTTProtocolVersion.MQTTv311,
        )
        self._client.on_connect = self._on_connect
        self._client.on_message = self._on_message
        self._client.on_subscribe = self._on_subscribe
        self._client.on_disconnect = self._on_disconnect

    async def start(self, timeout_s: float = 5.0) -> None:
        """Connect and wait for the broker's CONNACK (``TimeoutError`` otherwise)."""
        self._loop = asyncio.get_running_loop()
        self._client.connect_async(self.host, self.port, keepalive=self._keepalive_s)
        self._client.loop_start()
        if not await asyncio.to_thread(self._connected.wait, timeout_s):
            self._client.loop_stop()
            raise TimeoutError(f"no CONNACK from {self.host}:{self.port} in {timeout_s} s")

    async def stop(self) -> None:
        """Disconnect cleanly and stop paho's thread."""
        self._client.disconnect()
        await asyncio.to_thread(self._client.loop_stop)
        self._connected.clear()

    async def synced(self, timeout_s: float = 5.0) -> None:
        """Wait until the broker acknowledged every subscription made so far."""
        if not await asyncio.to_thread(self._synced.wait, timeout_s):
            raise TimeoutError("subscriptions not acknowledged")

    def subscribe(self, topic: str, handler: MessageHandler) -> None:
        """Call ``handler(topic, payload)`` on the loop for every matching message."""
        with self._lock:
            handlers = self._handlers.setdefault(topic, [])
            handlers.append(handler)
            if len(handlers) > 1 or not self._connected.is_set():
                return  # already subscribed, or renewed in _on_connect
            self._synced.clear()
            _, mid = self._client.subscribe(topic, qos=self._sub_qos)
            if mid is not None:
                self._pending_subs.add(mid)

    def publish(self, topic: str, payload: bytes | str, qos: int = 1, retain: bool = False) -> None:
        """Queue a publish (never waits)."""
        self._client.publish(topic, payload, qos=qos, retain=retain)

    # -- paho's thread -------------------------------------------------------

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:  # type: ignore[no-untyped-def]
        if reason_code.is_failure:
            log.warning("port_connect_failed", reason=str(reason_code), client_id=self.client_id)
            return
        with self._lock:
            topics = list(self._handlers)
            if topics:
                self._synced.clear()
                _, mid = client.subscribe([(t, self._sub_qos) for t in topics])
                if mid is not None:
                    self._pending_subs.add(mid)
            self._connected.set()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:  # type: ignore[no-untyped-def]
        self._connected.clear()

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:  # type: ignore[no-untyped-def]
        with self._lock:
            self._pending_subs.discard(mid)
            if not self._pending_subs:
                self._synced.set()

    def _on_message(self, client, userdata, msg) -> None:  # type: ignore[no-untyped-def]
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        # The loop may close between the check and the call: the run is over then.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(self._dispatch, msg.topic, bytes(msg.payload))

    # -- the loop --------------------------------------------------------------

    def _dispatch(self, topic: str, payload: bytes) -> None:
        with self._lock:
            matching = [
                h
                for pattern, handlers in self._handlers.items()
                if paho.topic_matches_sub(pattern, topic)
                for h in handlers
            ]
        for handler in matching:
            try:
                handler(topic, payload)
            except Exception:
                self.handler_errors += 1
                log.exception("port_handler_failed", topic=topic, payload=payload[:120])

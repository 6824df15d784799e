"""``MqttBus``: the coordinator's MQTT connection (gmqtt, asyncio).

gmqtt is the fastest Python client measured here (reference/mqtt-performance.md:
a 100k-reply cycle in about 5 s with orjson), but it has no outgoing queue:
past 65,535 unacknowledged QoS 1 messages (or the broker's Receive Maximum)
it raises ``OverflowError``. ``publish`` therefore never hands gmqtt more than
``max_inflight`` unacknowledged messages; the rest wait in an ordered backlog
that drains as PUBACKs come back. ``publish`` never blocks and never raises
into a caller.

Incoming messages are handed to a ``sink`` (the coordinator's queue) as
``(topic, payload)``; the callback does nothing else, so it cannot block the
network loop and an error in it is logged, counted and contained.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import Callable
from typing import Any

import gmqtt
import structlog
from gmqtt.mqtt.constants import MQTTv50, MQTTv311
from gmqtt.storage import PersistentStorage

from central.errors import BusError
from protocol.settings import MqttSettings

log = structlog.get_logger(__name__)

Sink = Callable[[str, bytes], None]


class _WindowStorage(PersistentStorage):  # type: ignore[misc]
    """gmqtt's in-flight store that tells us when a PUBACK frees a slot."""

    def __init__(self, on_free: Callable[[], None]) -> None:
        super().__init__()
        self._on_free = on_free

    def __len__(self) -> int:
        return len(self._messages)

    def __bool__(self) -> bool:
        # gmqtt does ``persistent_storage or PersistentStorage()``: an empty store
        # must not be falsy, or gmqtt silently swaps in its own and the window
        # never hears a PUBACK.
        return True

    def remove_message_by_mid(self, mid: int) -> None:
        super().remove_message_by_mid(mid)
        self._on_free()


class MqttBus:
    """One MQTT connection with a bounded in-flight window and a backlog."""

    def __init__(
        self,
        settings: MqttSettings,
        client_id: str,
        *,
        will: tuple[str, bytes, bool] | None = None,
        clean_session: bool = True,
    ) -> None:
        self.settings = settings
        self.client_id = client_id
        self._window = settings.max_inflight
        self._backlog: deque[tuple[str, bytes, int, bool]] = deque()
        self._storage = _WindowStorage(self._drain_backlog)
        will_message = gmqtt.Message(will[0], will[1], qos=1, retain=will[2]) if will else None
        self._client = gmqtt.Client(
            client_id,
            clean_session=clean_session,
            will_message=will_message,
            persistent_storage=self._storage,
            logger=None,
        )
        assert self._client._persistent_storage is self._storage
        self._client.on_message = self._on_message
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._sink: Sink | None = None
        self._subscriptions: list[str] = []
        self._connects = 0
        # Called on the loop after every connection but the first (the service
        # says again what the broker may have lost, e.g. its retained status).
        self.on_reconnect: Callable[[], None] | None = None
        self._connected = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._closing = False
        self.published = 0
        self.failed = 0
        self.callback_errors = 0

    # Connection --------------------------------------------------------------
    def set_sink(self, sink: Sink) -> None:
        self._sink = sink

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    async def connect(self, timeout_s: float = 10.0) -> None:
        s = self.settings
        if s.username:
            password = s.password.get_secret_value() if s.password else None
            self._client.set_auth_credentials(s.username, password)
        ssl_ctx: ssl.SSLContext | bool = False
        if s.tls:
            ssl_ctx = ssl.create_default_context(
                cafile=str(s.ca_file) if s.ca_file else None
            )
            if s.cert_file:
                ssl_ctx.load_cert_chain(str(s.cert_file), str(s.key_file) if s.key_file else None)
        version = MQTTv50 if s.protocol == "5" else MQTTv311
        self._client.set_config({"reconnect_retries": -1, "reconnect_delay": 2})
        try:
            await asyncio.wait_for(
                self._client.connect(
                    s.host, s.port, ssl=ssl_ctx, keepalive=s.keepalive_s, version=version
                ),
                timeout_s,
            )
        except (OSError, TimeoutError) as exc:
            raise BusError(
                f"cannot connect to MQTT broker {s.host}:{s.port}: {exc}", s.host, s.port
            ) from exc
        except Exception as exc:  # gmqtt raises its own errors for refused CONNACKs
            raise BusError(
                f"MQTT broker {s.host}:{s.port} refused the connection: {exc}", s.host, s.port
            ) from exc

    def subscribe(self, topics: list[str]) -> None:
        self._subscriptions.extend(topics)
        self._client.subscribe([gmqtt.Subscription(t, qos=1) for t in topics])

    async def disconnect(self, drain_timeout_s: float = 5.0) -> None:
        await self.drain(drain_timeout_s)
        # Some brokers (amqtt 0.12) drop a delivery still pending when the
        # DISCONNECT right behind it is handled: give the last ones a moment.
        await asyncio.sleep(0.1)
        self._closing = True
        try:
            await self._client.disconnect()
        except Exception as exc:  # the connection may already be gone
            log.warning("mqtt_disconnect_failed", error=str(exc))

    # Callbacks (gmqtt's network loop) -------------------------------------------
    def _on_connect(self, client: Any, flags: Any, rc: Any, properties: Any) -> None:
        self._connected.set()
        self._connects += 1
        log.info("mqtt_connected", host=self.settings.host, port=self.settings.port,
                 client_id=self.client_id, reconnect=self._connects > 1)
        if self._connects > 1:
            # gmqtt does not subscribe again by itself, and with a clean session
            # (or a broker that restarted without it) the broker forgot ours: the
            # coordinator would run deaf (tests/faults/test_broker_faults.py).
            for sub in list(client.subscriptions):
                client.resubscribe(sub)
            if self.on_reconnect is not None:
                try:
                    self.on_reconnect()
                except Exception:
                    self.callback_errors += 1
                    log.exception("reconnect_handler_failed")
        self._drain_backlog()

    def _window_now(self) -> int:
        # MQTT 5: the broker's Receive Maximum (mosquitto: max_inflight_messages,
        # 20 by default) caps unacknowledged QoS 1 messages, and gmqtt raises
        # OverflowError past it. gmqtt applies it after on_connect, so read it
        # each time (less a margin for SUBSCRIBE packet ids).
        try:
            broker_max = int(self._client._package_handler.id_generator._max)
        except (AttributeError, TypeError, ValueError):
            broker_max = 65535
        return max(1, min(self._window, broker_max - 4))

    def _on_disconnect(self, client: Any, packet: Any, exc: Any = None) -> None:
        self._connected.clear()
        if self._closing:
            log.info("mqtt_disconnected", host=self.settings.host, port=self.settings.port)
            return
        log.warning("mqtt_disconnected", host=self.settings.host, port=self.settings.port,
                    error=str(exc) if exc else None)

    def _on_message(self, client: Any, topic: str, payload: bytes, qos: int, props: Any) -> int:
        # Wrapped: an exception escaping here would reach gmqtt's loop.
        try:
            if self._sink is not None:
                self._sink(topic, payload)
        except Exception:
            self.callback_errors += 1
            log.exception("mqtt_callback_failed", topic=topic,
                          payload=bytes(payload[:120]).decode("utf-8", "replace"))
        return 0  # PUBACK reason code: success

    # Publishing --------------------------------------------------------------
    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None:
        """Send now if the window allows, otherwise queue in order. Never blocks."""
        if self._backlog or not self.connected or (
            qos > 0 and len(self._storage) >= self._window_now()
        ):
            self._backlog.append((topic, payload, qos, retain))
            self._idle.clear()
            return
        if not self._send(topic, payload, qos, retain):
            self._backlog.append((topic, payload, qos, retain))
            self._idle.clear()

    def _send(self, topic: str, payload: bytes, qos: int, retain: bool) -> bool:
        """Hand one message to gmqtt; False when it must wait (no packet id free)."""
        try:
            self._client.publish(topic, payload, qos=qos, retain=retain)
            self.published += 1
        except OverflowError:
            return False
        except Exception as exc:  # e.g. payload too large: retrying cannot help
            self.failed += 1
            log.error("mqtt_publish_failed", topic=topic, error=str(exc))
        return True

    def _drain_backlog(self) -> None:
        backlog = self._backlog
        window = self._window_now()
        while backlog and self.connected and len(self._storage) < window:
            if not self._send(*backlog[0]):
                break  # keep it first in line; a PUBACK will call us again
            backlog.popleft()
        if not backlog and len(self._storage) == 0:
            self._idle.set()

    @property
    def pending(self) -> int:
        """Messages not yet acknowledged by the broker (in flight + backlog)."""
        return len(self._storage) + len(self._backlog)

    async def drain(self, timeout_s: float = 30.0) -> bool:
        """Wait until every published message is acknowledged; False on timeout."""
        # asyncio.timeout, not wait_for in a loop: on 3.11 wait_for can swallow a
        # cancellation that lands as the awaited event is set.
        try:
            async with asyncio.timeout(timeout_s):
                while self.pending:
                    self._drain_backlog()
                    if not self.pending:
                        break
                    if not self.connected:
                        await asyncio.sleep(0.05)  # reconnecting: gmqtt will resend
                        continue
                    self._idle.clear()
                    await self._idle.wait()
        except TimeoutError:
            return False
        return True

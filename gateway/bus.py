"""``PahoBus``: the gateway's connection to the home's MQTT broker (paho-mqtt 2.x).

The home's broker carries both the Shelly devices' topics and the community
topics (bridged to the coordinator's broker). paho's network thread does
nothing but match the topic to its handlers and hand the message to the
gateway's asyncio loop (``call_soon_threadsafe``); every handler runs there,
one at a time, wrapped so an exception is logged with the topic and a
payload excerpt and counted, never propagated (an exception escaping a paho
callback would end its network thread while the process lives on).

Subscriptions are remembered and renewed on every reconnect; paho retries
the connection with a backoff of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
import structlog
from paho.mqtt.enums import CallbackAPIVersion

from gateway.errors import GatewayError
from protocol.settings import MqttSettings

log = structlog.get_logger(__name__)

Handler = Callable[[str, bytes], None]


class PahoBus:
    """One paho client; handlers run on the given asyncio loop."""

    def __init__(
        self,
        settings: MqttSettings,
        client_id: str,
        *,
        will: tuple[str, bytes, bool] | None = None,
    ) -> None:
        self.settings = settings
        self.client_id = client_id
        protocol = mqtt.MQTTv5 if settings.protocol == "5" else mqtt.MQTTv311
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=protocol
        )
        if settings.username:
            password = settings.password.get_secret_value() if settings.password else None
            self._client.username_pw_set(settings.username, password)
        if settings.tls:
            cafile = str(settings.ca_file) if settings.ca_file else None
            ctx = ssl.create_default_context(cafile=cafile)
            if settings.cert_file:
                ctx.load_cert_chain(
                    str(settings.cert_file), str(settings.key_file) if settings.key_file else None
                )
            self._client.tls_set_context(ctx)
        if will is not None:
            self._client.will_set(will[0], will[1], qos=1, retain=will[2])
        self._client.reconnect_delay_set(min_delay=1, max_delay=60)
        self._client.max_inflight_messages_set(100)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message
        self._client.on_socket_open = self._on_socket_open
        self._handlers: list[tuple[str, Handler]] = []
        # Exact topics by dict, only wildcard filters are matched one by one
        # (paho's topic_matches_sub costs ~5 us a call: 23 filters a message).
        self._exact: dict[str, list[Handler]] = {}
        self._wild: list[tuple[str, Handler]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._connected = asyncio.Event()
        self.on_reconnect: Callable[[], None] | None = None
        self._closing = False
        self.handler_errors = 0
        self.received = 0

    # Lifecycle ---------------------------------------------------------------------
    async def connect(self, timeout_s: float = 10.0) -> None:
        """Connect and start the network thread; raise ``GatewayError`` if unreachable."""
        self._loop = asyncio.get_running_loop()
        s = self.settings
        try:
            await asyncio.to_thread(self._client.connect, s.host, s.port, s.keepalive_s)
        except (OSError, ValueError) as exc:
            raise GatewayError(f"cannot connect to MQTT broker {s.host}:{s.port}: {exc}") from exc
        self._client.loop_start()
        try:
            await asyncio.wait_for(self._connected.wait(), timeout_s)
        except TimeoutError:
            self._client.loop_stop()
            raise GatewayError(f"MQTT broker {s.host}:{s.port} did not accept us") from None

    async def disconnect(self) -> None:
        self._closing = True
        self._client.disconnect()
        await asyncio.to_thread(self._client.loop_stop)

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    # Port for drivers and the gateway -----------------------------------------------
    def subscribe(self, topic: str, handler: Handler) -> None:
        """Call ``handler(topic, payload)`` on the loop for every message on ``topic``."""
        self._handlers.append((topic, handler))
        if "+" in topic or "#" in topic:
            self._wild.append((topic, handler))
        else:
            self._exact.setdefault(topic, []).append(handler)
        if self.connected:
            self._client.subscribe(topic, qos=1)

    def publish(self, topic: str, payload: bytes | str, qos: int = 1, retain: bool = False) -> None:
        """Queue a publication (paho's own queue; never blocks)."""
        info = self._client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
            log.warning("mqtt_publish_failed", topic=topic, rc=info.rc)

    # paho's network thread ------------------------------------------------------------
    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if reason.is_failure:
            log.error("mqtt_refused", reason=str(reason))
            return
        topics = sorted({t for t, _ in self._handlers})
        if topics:
            client.subscribe([(t, 1) for t in topics])
        loop = self._loop
        if loop is not None:
            loop.call_soon_threadsafe(self._connected_on_loop)

    def _connected_on_loop(self) -> None:
        self._connected.set()
        log.info("mqtt_connected", host=self.settings.host, port=self.settings.port,
                 client_id=self.client_id)
        if self.on_reconnect is not None:
            try:
                self.on_reconnect()
            except Exception:
                log.exception("reconnect_handler_failed")

    def _on_disconnect(
        self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any
    ) -> None:
        loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._connected.clear)
        if self._closing:
            log.info("mqtt_disconnected", reason=str(reason))
        else:
            log.warning("mqtt_disconnected", reason=str(reason))

    def _on_message(self, client: Any, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        loop = self._loop
        if loop is None:
            return
        # RuntimeError: the loop is closing, the service is stopping.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(self._dispatch, msg.topic, bytes(msg.payload))

    def _on_socket_open(self, client: Any, userdata: Any, sock: Any) -> None:
        # Nagle held a relay command behind the PUBACKs paho had just sent until
        # the broker's delayed ACK, ~40 ms (bench/gateway.py: p95 104 -> 17 ms).
        with contextlib.suppress(OSError, AttributeError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _dispatch(self, topic: str, payload: bytes) -> None:
        self.received += 1
        handlers = list(self._exact.get(topic, ()))
        handlers += [h for pattern, h in self._wild if mqtt.topic_matches_sub(pattern, topic)]
        for handler in handlers:
            try:
                handler(topic, payload)
            except Exception:
                self.handler_errors += 1
                log.exception(
                    "mqtt_handler_failed",
                    topic=topic,
                    payload=payload[:120].decode("utf-8", "replace"),
                )

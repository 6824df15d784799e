"""What the simulated MQTT devices share: their own paho client, will, ticks, a load model.

Each simulated device is one paho-mqtt 2.x client (``CallbackAPIVersion.VERSION2``)
with its network thread, as a real device is one MQTT connection:

- ``start()`` connects (with the device's will), subscribes, then lets the
  subclass announce itself (``_on_connected``) and returns once that is done;
- ``stop()`` disconnects cleanly: the broker does **not** send the will;
- ``go_offline()`` drops the TCP connection without DISCONNECT, as a power cut
  or a Wi-Fi loss does: the broker sends the will at once; ``go_online()``
  connects again (a new session) and the device announces itself again;
- a ticker thread calls ``_on_tick`` every ``period_s`` (0 = never).

State is shared between paho's thread, the ticker and the test or demo that
drives the device, so it is guarded by ``self._lock``. Callbacks never let an
exception reach paho's thread: they log it and count it in ``errors``.
"""

from __future__ import annotations

import contextlib
import random
import socket
import threading
import time
from dataclasses import dataclass
from types import TracebackType
from typing import Self

import paho.mqtt.client as paho
import structlog
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

log = structlog.get_logger("gateway.sim")


@dataclass
class SimLoad:
    """The appliance behind a relay: a water heater by default.

    When the relay is on it draws ``nominal_w`` with a little noise, unless its
    thermostat is ``satisfied`` (then ``standby_w``, about 0 W).
    """

    nominal_w: float = 2000.0
    noise_ratio: float = 0.005
    satisfied: bool = False
    standby_w: float = 0.0

    def draw_w(self, relay_on: bool, rng: random.Random) -> float:
        """The power the appliance draws now, in W."""
        if not relay_on:
            return 0.0
        if self.satisfied or self.nominal_w <= 0:
            return self.standby_w
        return max(0.0, self.nominal_w * (1.0 + rng.gauss(0.0, self.noise_ratio)))


class SimClock:
    """Simulated Unix time: wall time at start plus elapsed monotonic time x ``speed``."""

    def __init__(self, speed: float = 1.0, start_unix_s: float | None = None) -> None:
        self.speed = speed
        self._t0_unix = time.time() if start_unix_s is None else start_unix_s
        self._t0_mono = time.monotonic()

    def now(self) -> float:
        return self._t0_unix + (time.monotonic() - self._t0_mono) * self.speed


class SimMqttDevice:
    """One simulated device's MQTT connection (subclasses add the device's behaviour)."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        client_id: str,
        will_topic: str,
        will_payload: str = "false",
        will_retain: bool = False,
        qos: int = 0,
        period_s: float = 0.0,
        speed: float = 1.0,
        seed: int | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.client_id = client_id
        self._will = (will_topic, will_payload, will_retain)
        self.qos = qos
        self.period_s = period_s
        self.clock = SimClock(speed)
        self.rng = random.Random(seed)
        self.errors = 0
        self._lock = threading.RLock()
        self._client: paho.Client | None = None
        self._ready = threading.Event()
        self._stop_ticker = threading.Event()
        self._ticker: threading.Thread | None = None
        self._log = log.bind(sim=client_id)

    # -- lifecycle ------------------------------------------------------------

    def start(self, timeout_s: float = 5.0) -> None:
        """Connect, subscribe, announce; returns when the device is up."""
        self._connect(timeout_s)
        if self.period_s > 0 and self._ticker is None:
            self._stop_ticker.clear()
            self._ticker = threading.Thread(
                target=self._tick_loop, name=f"sim-{self.client_id}", daemon=True
            )
            self._ticker.start()

    def stop(self) -> None:
        """Disconnect cleanly (no will) and stop the ticker."""
        self._stop_ticker.set()
        if self._ticker is not None:
            self._ticker.join(timeout=5)
            self._ticker = None
        client, self._client = self._client, None
        self._ready.clear()
        if client is not None:
            client.disconnect()
            client.loop_stop()

    def go_offline(self) -> None:
        """Drop the connection without DISCONNECT: the broker publishes the will."""
        client, self._client = self._client, None
        self._ready.clear()
        if client is None:
            return
        client.loop_stop()
        sock = client.socket()
        if isinstance(sock, socket.socket):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        self._log.info("sim_offline")

    def go_online(self, timeout_s: float = 5.0) -> None:
        """Connect again after ``go_offline`` (the device announces itself again)."""
        if self._client is None:
            self._connect(timeout_s)

    @property
    def connected(self) -> bool:
        return self._ready.is_set()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- hooks for subclasses -------------------------------------------------------

    def _subscriptions(self) -> list[str]:
        return []

    def _on_connected(self) -> None:
        """Publish what the device publishes on connect (paho's thread)."""

    def _handle(self, topic: str, payload: bytes) -> None:
        """A message on one of ``_subscriptions`` (paho's thread)."""

    def _on_tick(self) -> None:
        """Every ``period_s`` (the ticker's thread)."""

    # -- helpers ------------------------------------------------------------------

    def publish(
        self, topic: str, payload: bytes | str, *, qos: int | None = None, retain: bool = False
    ) -> None:
        """Publish as the device (dropped while offline, as the device would lose it)."""
        client = self._client
        if client is not None:
            client.publish(topic, payload, qos=self.qos if qos is None else qos, retain=retain)

    def _connect(self, timeout_s: float) -> None:
        client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=MQTTProtocolVersion.MQTTv311,
        )
        topic, payload, retain = self._will
        client.will_set(topic, payload, qos=self.qos, retain=retain)
        client.on_connect = self._cb_connect
        client.on_subscribe = self._cb_subscribe
        client.on_message = self._cb_message
        self._ready.clear()
        self._client = client
        client.connect(self.host, self.port, keepalive=30)
        client.loop_start()
        if not self._ready.wait(timeout_s):
            raise TimeoutError(f"{self.client_id}: not connected within {timeout_s} s")

    def _cb_connect(self, client, userdata, flags, reason_code, properties) -> None:  # type: ignore[no-untyped-def]
        try:
            if reason_code.is_failure:
                self._log.warning("sim_connect_failed", reason=str(reason_code))
                return
            topics = self._subscriptions()
            if topics:
                client.subscribe([(t, self.qos) for t in topics])
            else:
                self._announce()
        except Exception:
            self.errors += 1
            self._log.exception("sim_callback_failed", callback="connect")

    def _cb_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:  # type: ignore[no-untyped-def]
        try:
            self._announce()
        except Exception:
            self.errors += 1
            self._log.exception("sim_callback_failed", callback="subscribe")

    def _announce(self) -> None:
        with self._lock:
            self._on_connected()
        self._ready.set()

    def _cb_message(self, client, userdata, msg) -> None:  # type: ignore[no-untyped-def]
        try:
            with self._lock:
                self._handle(msg.topic, bytes(msg.payload))
        except Exception:
            self.errors += 1
            self._log.exception("sim_callback_failed", topic=msg.topic, payload=msg.payload[:120])

    def _tick_loop(self) -> None:
        while not self._stop_ticker.wait(self.period_s):
            if not self._ready.is_set():
                continue
            try:
                with self._lock:
                    self._on_tick()
            except Exception:
                self.errors += 1
                self._log.exception("sim_tick_failed")

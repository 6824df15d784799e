"""Home Assistant discovery against the real mosquitto (gateway/hass.py).

The gateway side is the real ``PahoBus``; Home Assistant is played by a plain
paho client that subscribes to the discovery prefix, sends the birth message
and the resident's commands. Each test has its own topic root and puts its
discovery prefix under it, so no retained config leaks between tests.
"""

from __future__ import annotations

import asyncio
import json
import queue
import threading
import time
import uuid
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from ems.broker import EmbeddedBroker
from gateway.bus import PahoBus
from gateway.config import HomeAssistantSettings, LoadSettings, SiteSettings
from gateway.hass import MIGRATE_PAYLOAD, FileLedger, HassDiscovery
from protocol import Topics
from protocol.settings import MqttSettings

pytestmark = [pytest.mark.integration, pytest.mark.timeout(30)]

WAIT_S = 5.0
QUIET_S = 0.3
SITE = "home1"
T = TypeVar("T")


@dataclass(frozen=True)
class Received:
    topic: str
    payload: bytes
    retain: bool


def run(coro: Coroutine[Any, Any, T], timeout_s: float = 20.0) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(coro, timeout_s)

    return asyncio.run(bounded())


class FakeHomeAssistant:
    """A paho client on its own network thread, as Home Assistant's MQTT client."""

    def __init__(self, broker: EmbeddedBroker) -> None:
        self.client = paho.Client(CallbackAPIVersion.VERSION2,
                                  client_id=f"ha-{uuid.uuid4().hex[:8]}")
        self.received: queue.Queue[Received] = queue.Queue()
        self._subacks: dict[int, threading.Event] = {}
        self._lock = threading.Lock()
        self._connected = threading.Event()
        self.client.on_connect = lambda c, u, flags, rc, props: self._connected.set()
        self.client.on_message = lambda c, u, msg: self.received.put(
            Received(msg.topic, bytes(msg.payload), bool(msg.retain)))
        self.client.on_subscribe = self._on_subscribe
        self.client.connect(broker.host, broker.port, keepalive=30)
        self.client.loop_start()
        assert self._connected.wait(WAIT_S), "fake Home Assistant could not connect"

    def _on_subscribe(self, client: Any, userdata: Any, mid: int, codes: Any, props: Any) -> None:
        with self._lock:
            self._subacks.setdefault(mid, threading.Event()).set()

    def subscribe(self, topic: str) -> None:
        result, mid = self.client.subscribe(topic, qos=1)
        assert result == paho.MQTT_ERR_SUCCESS and mid is not None
        with self._lock:
            done = self._subacks.setdefault(mid, threading.Event())
        assert done.wait(WAIT_S), f"no SUBACK for {topic}"

    def publish(self, topic: str, payload: bytes) -> None:
        self.client.publish(topic, payload, qos=1).wait_for_publish(WAIT_S)

    def take(self, count: int) -> list[Received]:
        """Exactly ``count`` messages, then nothing more for a short quiet time."""
        out: list[Received] = []
        deadline = time.monotonic() + WAIT_S
        while len(out) < count:
            left = deadline - time.monotonic()
            assert left > 0, f"got {len(out)} of {count} messages: {[m.topic for m in out]}"
            try:
                out.append(self.received.get(timeout=left))
            except queue.Empty:
                continue
        extra: list[Received] = []
        with_quiet = time.monotonic() + QUIET_S
        while (left := with_quiet - time.monotonic()) > 0:
            try:
                extra.append(self.received.get(timeout=left))
            except queue.Empty:
                break
        assert not extra, f"unexpected: {[(m.topic, m.payload[:40]) for m in extra]}"
        return out

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def make_loads(*ids: str) -> list[LoadSettings]:
    return [LoadSettings(id=i, name=i.title(), kind="water_heater", device="plug",
                         nominal_kw=2.0) for i in ids]


class Gateway:
    """The gateway's bus and its discovery, as gateway/app.py wires them."""

    def __init__(self, broker: EmbeddedBroker, topics: Topics, prefix: str, ledger: Path,
                 load_ids: tuple[str, ...] = ("boiler", "ev"), form: str = "entity") -> None:
        self.bus = PahoBus(MqttSettings(host=broker.host, port=broker.port),
                           f"gw-{uuid.uuid4().hex[:8]}")
        self.modes: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
        self.hass = HassDiscovery(
            topics, HomeAssistantSettings(enabled=True, discovery_prefix=prefix),
            SiteSettings(id=SITE, name="Maison"), make_loads(*load_ids),
            self.bus.publish, "0.1.0", form=form, ledger=FileLedger(ledger),
        )
        self.hass.attach(self.bus.subscribe,
                         lambda load, mode: self.modes.put_nowait((load, mode)))

    async def start(self) -> None:
        await self.bus.connect()
        self.hass.announce()

    async def stop(self) -> None:
        await self.bus.disconnect()


def test_configs_are_retained_and_reannounced_on_birth(
    mosquitto: EmbeddedBroker, topic_root: str, community_id: str, tmp_path: Path
) -> None:
    topics = Topics(community_id, root=topic_root)
    prefix = f"{topic_root}/ha"

    async def body() -> None:
        gw = Gateway(mosquitto, topics, prefix, tmp_path / "hass.json")
        await gw.start()
        expected = {t: p for t, p in gw.hass.configs()}
        # Once a first listener has seen every config, the broker holds them all
        # as retained messages (it stores before it forwards).
        probe = FakeHomeAssistant(mosquitto)
        probe.subscribe(f"{prefix}/+/+/config")
        await asyncio.to_thread(probe.take, len(expected))
        probe.close()
        ha = FakeHomeAssistant(mosquitto)
        try:
            # HA starting after the gateway: the retained configs are there.
            ha.subscribe(f"{prefix}/+/+/config")
            first = await asyncio.to_thread(ha.take, len(expected))
            assert all(m.retain for m in first)
            assert {m.topic: json.loads(m.payload) for m in first} == expected
            ledger = json.loads((tmp_path / "hass.json").read_text())
            assert set(ledger["configs"]) == set(expected)

            # HA's birth message: every config again (live, so not flagged retained).
            ha.publish(f"{prefix}/status", b"online")
            again = await asyncio.to_thread(ha.take, len(expected))
            assert {m.topic for m in again} == set(expected)
            assert not any(m.retain for m in again)

            # HA's will is "offline": nothing is re-announced.
            ha.publish(f"{prefix}/status", b"offline")
            await asyncio.to_thread(ha.take, 0)
        finally:
            gw.hass.retract()
            await asyncio.sleep(0.1)
            ha.close()
            await gw.stop()

    run(body())


def test_mode_set_from_home_assistant_reaches_the_callback(
    mosquitto: EmbeddedBroker, topic_root: str, community_id: str, tmp_path: Path
) -> None:
    topics = Topics(community_id, root=topic_root)
    prefix = f"{topic_root}/ha"

    async def body() -> None:
        gw = Gateway(mosquitto, topics, prefix, tmp_path / "hass.json")
        await gw.start()
        ha = FakeHomeAssistant(mosquitto)
        try:
            # The birth round trip proves the gateway's subscriptions are live.
            ha.subscribe(f"{prefix}/switch/+/config")
            await asyncio.to_thread(ha.take, 2)
            ha.publish(f"{prefix}/status", b"online")
            await asyncio.to_thread(ha.take, 2)

            # What a switch and a select send, and something that is neither.
            ha.publish(topics.load_mode_set(SITE, "boiler"), b"ON")
            ha.publish(topics.load_mode_set(SITE, "boiler"), b"warp speed")
            ha.publish(topics.load_mode_set(SITE, "ev"), b"force_off")
            ha.publish(topics.load_mode_set(SITE, "boiler"), b"auto")
            got = [await asyncio.wait_for(gw.modes.get(), WAIT_S) for _ in range(3)]
            assert got == [("boiler", "force_on"), ("ev", "force_off"), ("boiler", "auto")]
            assert gw.hass.rejected == 1

            # The gateway reports the mode back, retained, for the select's state.
            ha.subscribe(topics.load_mode(SITE, "boiler"))
            gw.hass.publish_mode("boiler", "auto")
            [mode] = await asyncio.to_thread(ha.take, 1)
            assert (mode.topic, mode.payload) == (topics.load_mode(SITE, "boiler"), b"auto")
        finally:
            gw.hass.retract()
            await asyncio.sleep(0.1)
            ha.close()
            await gw.stop()

    run(body())


def test_a_removed_load_and_a_form_change_leave_only_current_configs(
    mosquitto: EmbeddedBroker, topic_root: str, community_id: str, tmp_path: Path
) -> None:
    topics = Topics(community_id, root=topic_root)
    prefix = f"{topic_root}/ha"
    ledger = tmp_path / "state" / "hass.json"

    async def body() -> None:
        watcher = FakeHomeAssistant(mosquitto)
        watcher.subscribe(f"{prefix}/#")
        try:
            # Run 1: two loads, per-entity configs.
            gw = Gateway(mosquitto, topics, prefix, ledger)
            await gw.start()
            n_first = len(gw.hass.configs())
            await asyncio.to_thread(watcher.take, n_first)
            await gw.stop()

            # Run 2: the ev charger is gone from the config: its configs are emptied.
            gw = Gateway(mosquitto, topics, prefix, ledger, load_ids=("boiler",))
            await gw.start()
            n_second = len(gw.hass.configs())
            seen = await asyncio.to_thread(watcher.take, n_second + (n_first - n_second))
            emptied = {m.topic for m in seen if m.payload == b""}
            assert emptied and all("_ev_" in t for t in emptied)
            await gw.stop()

            # Run 3: switched to device-based discovery: migrate, configs, then clear.
            gw = Gateway(mosquitto, topics, prefix, ledger, load_ids=("boiler",), form="device")
            await gw.start()
            seen = await asyncio.to_thread(watcher.take, 2 * n_second + 2)
            kinds = [("migrate" if m.payload == MIGRATE_PAYLOAD else
                      "clear" if m.payload == b"" else "config") for m in seen]
            assert kinds == ["migrate"] * n_second + ["config"] * 2 + ["clear"] * n_second
            await gw.stop()

            # What a Home Assistant starting now finds: only the two device configs.
            late = FakeHomeAssistant(mosquitto)
            try:
                late.subscribe(f"{prefix}/#")
                retained = await asyncio.to_thread(late.take, 2)
                assert sorted(m.topic for m in retained) == [
                    f"{prefix}/device/ems_{community_id}_{SITE}/config",
                    f"{prefix}/device/ems_{community_id}_{SITE}_boiler/config",
                ]
            finally:
                late.close()
        finally:
            watcher.close()

    run(body())

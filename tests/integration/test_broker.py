"""The development broker runner (``ems.broker``) and the brokers it starts.

Most tests run twice: against the session's real mosquitto (tests/conftest.py)
and against an in-process amqtt broker (``EmbeddedBroker(kind="amqtt")``), with
both a gmqtt and a paho client. Each test has its own topic root.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import socket
import threading
import time
import uuid
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

import gmqtt
import paho.mqtt.client as paho
import pytest
from gmqtt.mqtt.constants import MQTTv50, MQTTv311
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from ems.broker import (
    DEV_CONF_PATH,
    DEV_CONF_TEMPLATE,
    BrokerError,
    EmbeddedBroker,
    render_dev_config,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

WAIT_S = 5.0
T = TypeVar("T")


@dataclass(frozen=True)
class Received:
    topic: str
    payload: bytes
    qos: int
    retain: bool


def run(coro: Coroutine[Any, Any, T], timeout_s: float = 20.0) -> T:
    """Run an async test body with an overall timeout, so nothing hangs."""

    async def bounded() -> T:
        return await asyncio.wait_for(coro, timeout_s)

    return asyncio.run(bounded())


def new_client_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def gmqtt_version(broker: EmbeddedBroker) -> int:
    # amqtt 0.12.1 speaks MQTT 3.1.1 only; mosquitto gets gmqtt's default, MQTT 5.
    return int(MQTTv311 if broker.kind == "amqtt" else MQTTv50)


class GmqttCollector:
    """A gmqtt client that queues what it receives and awaits its SUBACKs."""

    def __init__(self, **client_kw: Any) -> None:
        self.client = gmqtt.Client(new_client_id("g"), **client_kw)
        self.received: asyncio.Queue[Received] = asyncio.Queue()
        self._subacks: dict[int, asyncio.Future[None]] = {}
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe

    def _on_message(self, client: Any, topic: str, payload: bytes, qos: int, props: Any) -> int:
        self.received.put_nowait(Received(topic, payload, qos, bool(props.get("retain"))))
        return 0  # PUBACK reason code "success"

    def _on_subscribe(self, client: Any, mid: int, qos: Any, props: Any) -> None:
        future = self._subacks.pop(mid, None)
        if future is not None and not future.done():
            future.set_result(None)

    async def connect(self, broker: EmbeddedBroker, version: int | None = None) -> Self:
        await self.client.connect(
            broker.host, broker.port, version=version or gmqtt_version(broker)
        )
        return self

    async def subscribe(self, topic: str) -> None:
        mid = self.client.subscribe(topic, qos=1)
        future = asyncio.get_running_loop().create_future()
        self._subacks[mid] = future
        await asyncio.wait_for(future, WAIT_S)

    async def next(self) -> Received:
        return await asyncio.wait_for(self.received.get(), WAIT_S)

    async def disconnect(self) -> None:
        await self.client.disconnect()


class PahoCollector:
    """A paho client on its network thread that queues what it receives."""

    def __init__(
        self, broker: EmbeddedBroker, protocol: MQTTProtocolVersion = paho.MQTTv311
    ) -> None:
        self.broker = broker
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=new_client_id("p"), protocol=protocol
        )
        self.received: queue.Queue[Received] = queue.Queue()
        self.connack: queue.Queue[Any] = queue.Queue()
        self._subacks: dict[int, threading.Event] = {}
        self._lock = threading.Lock()
        self.client.on_connect = lambda c, u, flags, rc, props: self.connack.put(rc)
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe

    def _on_message(self, client: Any, userdata: Any, msg: paho.MQTTMessage) -> None:
        self.received.put(Received(msg.topic, bytes(msg.payload), msg.qos, bool(msg.retain)))

    def _on_subscribe(self, client: Any, userdata: Any, mid: int, codes: Any, props: Any) -> None:
        with self._lock:
            self._subacks.setdefault(mid, threading.Event()).set()

    def __enter__(self) -> Self:
        self.client.connect(self.broker.host, self.broker.port, keepalive=30)
        self.client.loop_start()
        reason = self.connack.get(timeout=WAIT_S)
        assert not reason.is_failure, f"CONNACK refused: {reason}"
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def subscribe(self, topic: str) -> None:
        with self._lock:
            result, mid = self.client.subscribe(topic, qos=1)
            assert result == paho.MQTT_ERR_SUCCESS and mid is not None
            acked = self._subacks.setdefault(mid, threading.Event())
        assert acked.wait(WAIT_S), f"no SUBACK for {topic}"

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        info.wait_for_publish(WAIT_S)
        assert info.is_published(), f"no PUBACK for {topic}"

    def next(self) -> Received:
        return self.received.get(timeout=WAIT_S)


@pytest.fixture(scope="module")
def amqtt_broker() -> Iterator[EmbeddedBroker]:
    with EmbeddedBroker(kind="amqtt") as broker:
        yield broker


@pytest.fixture(params=["mosquitto", "amqtt"])
def broker(request: pytest.FixtureRequest) -> EmbeddedBroker:
    """Each test using this runs on the real mosquitto and on amqtt."""
    fixture = "mosquitto" if request.param == "mosquitto" else "amqtt_broker"
    result: EmbeddedBroker = request.getfixturevalue(fixture)
    return result


# --- the runner and its config ---------------------------------------------------


def test_dev_conf_file_matches_embedded_copy_and_is_tuned() -> None:
    assert DEV_CONF_PATH.read_text(encoding="utf-8") == DEV_CONF_TEMPLATE
    lines = render_dev_config("127.0.0.1", 18830, Path("/tmp/x")).splitlines()
    settings = [line for line in lines if line and not line.startswith("#")]
    for expected in (
        "listener 18830 127.0.0.1",
        "allow_anonymous true",
        "persistence false",
        "max_queued_messages 0",
        "max_inflight_messages 1000",
        "max_packet_size 65536",
    ):
        assert expected in settings
    assert not [line for line in settings if "@" in line]


def test_refuses_a_non_loopback_host() -> None:
    with pytest.raises(ValueError, match="loopback"):
        EmbeddedBroker(kind="amqtt", host="0.0.0.0")


def test_session_fixture_is_a_real_mosquitto(mosquitto: EmbeddedBroker) -> None:
    assert mosquitto.kind == "mosquitto"
    assert mosquitto.is_running() and mosquitto.pid is not None
    assert mosquitto.host == "127.0.0.1"
    assert mosquitto.url == f"mqtt://127.0.0.1:{mosquitto.port}"
    assert mosquitto.log_path is not None
    assert "mosquitto version" in mosquitto.log_path.read_text()


def test_kill_start_restart_stop_keep_the_port() -> None:
    broker = EmbeddedBroker(kind="mosquitto").start()
    try:
        port, first_pid = broker.port, broker.pid
        broker.kill()
        assert not broker.is_running()
        with pytest.raises(OSError):
            socket.create_connection((broker.host, port), timeout=1).close()
        broker.start()
        assert broker.port == port and broker.pid not in (None, first_pid)
        second_pid = broker.pid
        broker.restart()
        assert broker.port == port and broker.pid not in (None, second_pid)
        socket.create_connection((broker.host, port), timeout=1).close()
        workdir = broker.log_path.parent if broker.log_path else None
    finally:
        broker.stop()
    assert not broker.is_running()
    assert workdir is not None and not workdir.exists()


def test_amqtt_cannot_be_killed_but_restarts_on_its_port(amqtt_broker: EmbeddedBroker) -> None:
    with pytest.raises(BrokerError):
        amqtt_broker.kill()
    port = amqtt_broker.port
    amqtt_broker.restart()
    assert amqtt_broker.is_running() and amqtt_broker.port == port
    socket.create_connection((amqtt_broker.host, port), timeout=1).close()


# --- QoS 1, retained messages and wills, on both brokers --------------------------


def test_gmqtt_qos1_roundtrip(broker: EmbeddedBroker, topic_root: str) -> None:
    async def body() -> Received:
        sub = await GmqttCollector().connect(broker)
        pub = await GmqttCollector().connect(broker)
        await sub.subscribe(f"{topic_root}/site/s1/netload")
        pub.client.publish(f"{topic_root}/site/s1/netload", b'{"v":1}', qos=1)
        got = await sub.next()
        await pub.disconnect()
        await sub.disconnect()
        return got

    got = run(body())
    assert got == Received(f"{topic_root}/site/s1/netload", b'{"v":1}', qos=1, retain=False)


def test_paho_qos1_roundtrip(broker: EmbeddedBroker, topic_root: str) -> None:
    topic = f"{topic_root}/alloc/s1"
    with PahoCollector(broker) as sub, PahoCollector(broker) as pub:
        sub.subscribe(topic)
        pub.publish(topic, b'{"v":1,"kw":2.5}')
        assert sub.next() == Received(topic, b'{"v":1,"kw":2.5}', qos=1, retain=False)


def test_retained_message_reaches_late_subscribers(broker: EmbeddedBroker, topic_root: str) -> None:
    topic = f"{topic_root}/site/s1/status"
    with PahoCollector(broker) as pub:
        pub.publish(topic, b'{"v":1,"state":"online"}', retain=True)
    expected = Received(topic, b'{"v":1,"state":"online"}', qos=1, retain=True)

    with PahoCollector(broker) as late_paho:
        late_paho.subscribe(topic)
        assert late_paho.next() == expected

    async def late_gmqtt() -> Received:
        sub = await GmqttCollector().connect(broker)
        await sub.subscribe(topic)
        got = await sub.next()
        await sub.disconnect()
        return got

    assert run(late_gmqtt()) == expected


def test_retained_message_goes_only_to_matching_subscribers(
    broker: EmbeddedBroker, topic_root: str
) -> None:
    # amqtt 0.12.1 sent retained messages to any new client when *some* client
    # subscribed to them; ems.broker corrects that. A newcomer subscribed to another
    # topic must see its own marker first, and no retained message at all.
    with PahoCollector(broker) as holder:
        holder.subscribe(f"{topic_root}/a")
        holder.publish(f"{topic_root}/a", b"retained", retain=True)
        assert holder.next().payload == b"retained"
        with PahoCollector(broker) as newcomer:
            newcomer.subscribe(f"{topic_root}/b")
            newcomer.publish(f"{topic_root}/b", b"marker")
            assert newcomer.next() == Received(f"{topic_root}/b", b"marker", 1, retain=False)


def connect_then_die(broker: EmbeddedBroker, will_topic: str, will: bytes) -> None:
    """Connect a client with a will, then end its TCP connection without DISCONNECT."""
    client = paho.Client(
        CallbackAPIVersion.VERSION2, client_id=new_client_id("dying"), protocol=paho.MQTTv311
    )
    client.will_set(will_topic, will, qos=1, retain=True)
    connacks: list[Any] = []
    client.on_connect = lambda c, u, flags, rc, props: connacks.append(rc)
    client.connect(broker.host, broker.port, keepalive=30)
    deadline = time.monotonic() + WAIT_S
    while not connacks and time.monotonic() < deadline:
        client.loop(timeout=0.05)
    assert connacks and not connacks[0].is_failure
    sock = client.socket()
    assert isinstance(sock, socket.socket)
    sock.close()  # MQTT 3.1.1 section 3.1.2.5: closed without DISCONNECT -> will


def test_will_is_published_when_a_client_dies(broker: EmbeddedBroker, topic_root: str) -> None:
    topic = f"{topic_root}/site/s1/status"
    will = b'{"v":1,"state":"offline"}'
    with PahoCollector(broker) as watcher:
        watcher.subscribe(topic)
        connect_then_die(broker, topic, will)
        assert watcher.next() == Received(topic, will, qos=1, retain=False)
    with PahoCollector(broker) as late:
        late.subscribe(topic)
        assert late.next() == Received(topic, will, qos=1, retain=True)


# --- amqtt protocol versions -------------------------------------------------------


def test_amqtt_refuses_paho_mqtt5(amqtt_broker: EmbeddedBroker) -> None:
    client = paho.Client(
        CallbackAPIVersion.VERSION2, client_id=new_client_id("p5"), protocol=paho.MQTTv5
    )
    connacks: queue.Queue[Any] = queue.Queue()
    client.on_connect = lambda c, u, flags, rc, props: connacks.put(rc)
    client.connect(amqtt_broker.host, amqtt_broker.port)
    client.loop_start()
    try:
        reason = connacks.get(timeout=WAIT_S)
    finally:
        client.disconnect()
        client.loop_stop()
    assert reason.is_failure
    assert "protocol version" in str(reason).lower()


def test_amqtt_gmqtt_default_mqtt5_falls_back_to_311(
    amqtt_broker: EmbeddedBroker, topic_root: str
) -> None:
    async def body() -> Received:
        sub = GmqttCollector()
        # gmqtt retries as 3.1.1 after CONNACK 0x01, but only after reconnect_delay
        # (6 s by default); shorten it so the test stays fast.
        sub.client.set_config({"reconnect_delay": 0.1})
        await sub.client.connect(amqtt_broker.host, amqtt_broker.port)  # default: MQTT 5
        await sub.subscribe(f"{topic_root}/x")
        sub.client.publish(f"{topic_root}/x", b"ok", qos=1)
        got = await sub.next()
        await sub.disconnect()
        return got

    assert run(body()) == Received(f"{topic_root}/x", b"ok", qos=1, retain=False)


def test_amqtt_broker_from_async_code(topic_root: str) -> None:
    async def body() -> Received:
        async with EmbeddedBroker(kind="amqtt") as broker:
            sub = await GmqttCollector().connect(broker)
            await sub.subscribe(f"{topic_root}/x")
            sub.client.publish(f"{topic_root}/x", b"async", qos=1)
            got = await sub.next()
            await sub.disconnect()
        assert not broker.is_running()
        return got

    assert run(body()).payload == b"async"


# --- queue settings ----------------------------------------------------------------


def test_burst_of_5000_qos1_messages_all_arrive(mosquitto: EmbeddedBroker, topic_root: str) -> None:
    # With Mosquitto's default queue settings (max_queued_messages 1000,
    # max_inflight_messages 20) about 1,000-2,000 of these 5,000 arrive
    # (mqtt-performance.md section 2); dev.conf lifts the limits.
    count = 5000
    topic = f"{topic_root}/site/s1/flex"

    async def body() -> list[int]:
        received: list[int] = []
        all_in = asyncio.Event()
        sub = await GmqttCollector().connect(mosquitto)

        def on_message(client: Any, topic: str, payload: bytes, qos: int, props: Any) -> int:
            received.append(int(payload))
            if len(received) >= count:
                all_in.set()
            return 0

        sub.client.on_message = on_message
        await sub.subscribe(topic)
        # MQTT 3.1.1 publisher: under MQTT 5 gmqtt raises OverflowError once more
        # than the broker's Receive Maximum (max_inflight_messages) await PUBACK.
        pub = await GmqttCollector().connect(mosquitto, version=MQTTv311)
        for seq in range(count):
            pub.client.publish(topic, str(seq).encode(), qos=1)
        with contextlib.suppress(TimeoutError):  # the count below says what was lost
            await asyncio.wait_for(all_in.wait(), 15)
        await pub.disconnect()
        await sub.disconnect()
        return received

    received = run(body())
    assert len(received) == count, f"{count - len(received)} of {count} messages lost"
    assert received == list(range(count))  # one publisher, one topic: order is kept

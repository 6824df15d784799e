"""Simulated gateways for the coordinator's integration tests.

Each ``SimGateway`` is its own MQTT connection (gmqtt) with its retained
status and will, speaking the contract through ``protocol`` (topics, models,
encode) exactly as a real gateway must.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

import gmqtt
import orjson
from gmqtt.mqtt.constants import MQTTv311

from protocol import (
    Alloc,
    CycleRequest,
    Flex,
    LoadFlex,
    NetLoad,
    SiteStatus,
    Topics,
    decode,
    encode,
)
from protocol.models import Ack, CycleClosed


class SimGateway:
    """One simulated home: announces itself, reports net load, answers requests."""

    def __init__(
        self,
        topics: Topics,
        site: str,
        host: str,
        port: int,
        *,
        flex_kw: float | Callable[[CycleRequest], float | None] = 0.0,
        net_export_kw: float = 0.0,
        loads: tuple[LoadFlex, ...] = (),
    ) -> None:
        self.topics = topics
        self.site = site
        self.host = host
        self.port = port
        self.flex_kw = flex_kw
        self.net_export_kw = net_export_kw
        self.loads = loads  # listed in every flex reply
        self.requests: list[CycleRequest] = []
        self.allocs: list[Alloc] = []
        self.acks: list[int] = []
        self.closed: list[CycleClosed] = []
        self.got_alloc = asyncio.Event()
        will = gmqtt.Message(
            topics.site_status(site), encode(SiteStatus(state="offline")), qos=1, retain=True
        )
        self.client = gmqtt.Client(f"sim-{topics.root}-{site}", will_message=will)
        self.client.on_message = self._on_message

    async def start(self) -> None:
        await self.client.connect(self.host, self.port, version=MQTTv311)
        self.client.subscribe(
            [gmqtt.Subscription(t, qos=1) for t in self.topics.gateway_subscriptions(self.site)]
        )
        self.client.publish(
            self.topics.site_status(self.site),
            encode(SiteStatus(state="online", version="sim")),
            qos=1,
            retain=True,
        )
        self.send_netload()

    def send_netload(self, kw: float | None = None) -> None:
        value = self.net_export_kw if kw is None else kw
        msg = NetLoad(ts=datetime.now(UTC).replace(microsecond=0), net_export_kw=value)
        self.client.publish(self.topics.netload(self.site), encode(msg), qos=1)

    def publish_raw(self, topic: str, payload: bytes) -> None:
        self.client.publish(topic, payload, qos=1)

    def _on_message(self, client: Any, topic: str, payload: bytes, qos: int, props: Any) -> int:
        route = self.topics.parse(topic)
        if route is None:
            return 0
        msg = decode(route, payload)
        if isinstance(msg, CycleRequest):
            self.requests.append(msg)
            flex = self.flex_kw(msg) if callable(self.flex_kw) else self.flex_kw
            if flex is not None:
                reply = Flex(cycle=msg.cycle, flex_kw=flex, loads=self.loads)
                client.publish(self.topics.flex(self.site), encode(reply), qos=1)
        elif isinstance(msg, Alloc):
            self.allocs.append(msg)
            self.got_alloc.set()
        elif isinstance(msg, Ack):
            self.acks.append(msg.seq)
        elif isinstance(msg, CycleClosed):
            self.closed.append(msg)
        return 0

    async def stop(self, graceful: bool = True) -> None:
        if graceful:
            self.client.publish(
                self.topics.site_status(self.site),
                encode(SiteStatus(state="offline")),
                qos=1,
                retain=True,
            )
        await self.client.disconnect()


class Observer:
    """A read-only client that collects every message under the community."""

    def __init__(self, topics: Topics, host: str, port: int) -> None:
        self.topics = topics
        self.host = host
        self.port = port
        self.messages: list[tuple[str, dict[str, Any], bool]] = []
        self.client = gmqtt.Client(None)
        self.client.on_message = self._on_message

    async def start(self) -> None:
        await self.client.connect(self.host, self.port, version=MQTTv311)
        self.client.subscribe(gmqtt.Subscription(self.topics.everything(), qos=1))
        await asyncio.sleep(0.1)

    def _on_message(self, client: Any, topic: str, payload: bytes, qos: int, props: Any) -> int:
        try:
            data = orjson.loads(payload)
        except orjson.JSONDecodeError:
            data = {"raw": payload[:80].decode("utf-8", "replace")}
        retain = bool(props.get("retain", 0)) if isinstance(props, dict) else False
        self.messages.append((topic, data, retain))
        return 0

    def on(self, topic: str) -> list[dict[str, Any]]:
        return [d for t, d, _ in self.messages if t == topic]

    async def stop(self) -> None:
        await self.client.disconnect()


@contextlib.asynccontextmanager
async def running(service: Any) -> AsyncIterator[Any]:
    """Run a service (Coordinator, Gateway) until the block ends, then stop it cleanly."""
    stop = asyncio.Event()
    task = asyncio.create_task(service.run(stop))
    await asyncio.wait_for(service.wait_ready(), 15)
    try:
        yield service
    finally:
        stop.set()
        await asyncio.wait_for(task, 20)


async def until(predicate: Callable[[], object], timeout_s: float = 60.0) -> None:
    """Wait for ``predicate()`` (a liveness bound, not a speed assertion)."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)

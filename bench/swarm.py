"""Simulated sites on a few MQTT connections, and the plain gmqtt link under them.

``Link`` is one gmqtt connection (QoS 1) with an in-flight window and an ordered
backlog: gmqtt 0.8 has no outgoing queue and raises ``OverflowError`` past the
broker's Receive Maximum (reference/mqtt-performance.md, pitfall 3).

``GatewaySim`` holds N sites on a few links (site i on link i mod G): each site
subscribes to its ``alloc/{s}``, answers ``cycle/request`` with one ``flex``
reply, and the swarm counts what comes back. ``bench.cycle`` and
``bench.concurrency`` drive it; ``bench.soak`` builds its day-long swarm on
``Link``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import gmqtt
import orjson
from gmqtt.storage import PersistentStorage

from bench.common import progress, until
from protocol import CycleRequest, Flex, LoadFlex, NetLoad, SiteStatus, Topics, encode
from protocol.models import format_utc

GATEWAY_CONNECTIONS = 4
# gmqtt's id pool holds receive_maximum - 1 ids (IdGenerator raises OverflowError at
# max - 1 in use) and mosquitto's CONNACK says receive_maximum = max_inflight_messages
# = 1000 (mosquitto/dev.conf): 999 is the largest window that never overflows.
WINDOW = 999
SUBSCRIBE_CHUNK = 500  # topic filters per SUBSCRIBE, well under max_packet_size 65536
FLEX_KW = 1.0
NET_EXPORT_KW = 2.0  # S = 2 kW x N > N x 1 kW: every site is served (N allocations)
PERIOD_S = 3600.0
REPLY_TIMEOUT_S = 3000.0
IDLE_TIMEOUT_S = 20.0  # a run with no progress for this long is reported incomplete
CYCLE_ZERO = datetime(2026, 6, 21, 12, 0, tzinfo=UTC)
# The coordinator's clock starts just after an hour so its own scheduler (period 1 h)
# never opens a cycle during the benchmark.
CLOCK_ORIGIN = datetime(2026, 6, 21, 0, 0, 1, tzinfo=UTC)


class _Window(PersistentStorage):  # type: ignore[misc]
    """gmqtt's in-flight store, telling the link when a PUBACK frees a slot.

    No ``__len__``: gmqtt takes ``persistent_storage or PersistentStorage()``, so an
    empty store that is falsy would be silently replaced by a default one.
    """

    def __init__(self, on_free: Callable[[], None]) -> None:
        super().__init__()
        self._on_free = on_free

    @property
    def size(self) -> int:
        return len(self._messages)

    def remove_message_by_mid(self, mid: int) -> None:
        super().remove_message_by_mid(mid)
        self._on_free()


class Link:
    """One plain gmqtt connection (QoS 1) with an in-flight window and an ordered backlog."""

    def __init__(self, name: str, on_message: Callable[[str, bytes], None], window: int) -> None:
        self.window = window
        self.backlog: deque[tuple[str, bytes, bool]] = deque()
        self.storage = _Window(self._pump)
        self.client = gmqtt.Client(name, persistent_storage=self.storage, logger=None)
        assert self.client._persistent_storage is self.storage
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe
        self._handler = on_message
        self._subacks = 0
        self.errors = 0

    async def connect(self, host: str, port: int) -> None:
        async with asyncio.timeout(10):
            await self.client.connect(host, port, keepalive=600)

    async def subscribe(self, topics: Sequence[str], timeout_s: float = 60.0) -> None:
        """Subscribe in chunks and wait for every SUBACK."""
        chunks = [topics[i : i + SUBSCRIBE_CHUNK] for i in range(0, len(topics), SUBSCRIBE_CHUNK)]
        target = self._subacks + len(chunks)
        for chunk in chunks:
            self.client.subscribe([gmqtt.Subscription(t, qos=1) for t in chunk])
        await until(lambda: self._subacks >= target, timeout_s, "SUBACKs")

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        if self.backlog or self.storage.size >= self.window:
            self.backlog.append((topic, payload, retain))
        else:
            self.client.publish(topic, payload, qos=1, retain=retain)

    def _pump(self) -> None:
        backlog, storage, publish = self.backlog, self.storage, self.client.publish
        while backlog and storage.size < self.window:
            topic, payload, retain = backlog.popleft()
            publish(topic, payload, qos=1, retain=retain)

    @property
    def pending(self) -> int:
        return self.storage.size + len(self.backlog)

    async def drain(self, timeout_s: float = 60.0) -> None:
        await until(lambda: self.pending == 0, timeout_s, "PUBACKs")

    async def disconnect(self) -> None:
        with contextlib.suppress(Exception):
            async with asyncio.timeout(5):
                await self.client.disconnect()

    def _on_message(self, client: Any, topic: str, payload: bytes, qos: int, props: Any) -> int:
        try:
            self._handler(topic, payload)
        except Exception as exc:  # count and report; never into gmqtt's loop
            self.errors += 1
            if self.errors <= 3:
                progress(f"handler error on {topic}: {exc!r}")
        return 0

    def _on_subscribe(self, client: Any, mid: int, qos: Any, props: Any) -> None:
        self._subacks += 1


def request_payload(period_start: datetime, n: int) -> bytes:
    """The ``cycle/request`` a coordinator would publish for this cycle."""
    return encode(
        CycleRequest(
            cycle=period_start,
            surplus_kw=round(NET_EXPORT_KW * n, 6),
            period_start=period_start,
            period_end=period_start + timedelta(seconds=PERIOD_S),
            reply_by=period_start + timedelta(seconds=REPLY_TIMEOUT_S),
        )
    )


def flex_payload(period_start: datetime) -> bytes:
    """A realistic reply: one flexible load behind it (PROTOCOL.md, ``site/{s}/flex``)."""
    load = LoadFlex(id="water-heater", kind="water_heater", min_kw=FLEX_KW, max_kw=FLEX_KW)
    return encode(Flex(cycle=period_start, flex_kw=FLEX_KW, loads=(load,)))


@dataclass
class SimRun:
    """What the simulator saw of one cycle."""

    requested_at: float | None = None  # first request arrival (monotonic)
    allocs: int = 0
    distinct_sites: int = 0
    last_alloc_at: float | None = None
    closed_at: float | None = None
    closed: dict[str, Any] | None = None


class GatewaySim:
    """N sites behind a few gmqtt connections (site i on connection i mod G)."""

    def __init__(self, topics: Topics, n: int, connections: int, window: int) -> None:
        self.topics = topics
        self.n = n
        self.sites = [f"s{i:06d}" for i in range(n)]
        self.request_topic = topics.cycle_request()
        self.closed_topic = topics.cycle_closed()
        self.shards = [self.sites[k::connections] for k in range(connections)]
        self._flex_topics = [[topics.flex(s) for s in shard] for shard in self.shards]
        tag = uuid.uuid4().hex[:6]
        self.links = [
            Link(f"bench-gw-{tag}-{k}", self._handler(k), window) for k in range(connections)
        ]
        self._armed: tuple[str, bytes] | None = None  # (cycle id, flex payload)
        self._delays: list[list[float]] | None = None  # per link, per site: reply latency
        self._seen: set[str] = set()
        self.run = SimRun()

    async def start(self, host: str, port: int) -> None:
        await asyncio.gather(*(link.connect(host, port) for link in self.links))
        await asyncio.gather(
            *(
                link.subscribe(
                    [self.request_topic, self.closed_topic]
                    + [self.topics.alloc(s) for s in shard]
                )
                for link, shard in zip(self.links, self.shards, strict=True)
            )
        )

    async def announce(self) -> None:
        """Every site online (retained status) with a net export: S = NET_EXPORT_KW x N."""
        status = encode(SiteStatus(state="online", version="bench"))
        netload = encode(NetLoad(ts=CLOCK_ORIGIN, net_export_kw=NET_EXPORT_KW))
        for link, shard in zip(self.links, self.shards, strict=True):
            for site in shard:
                link.publish(self.topics.site_status(site), status, retain=True)
                link.publish(self.topics.netload(site), netload)
        await asyncio.gather(*(link.drain(120 + self.n / 500) for link in self.links))

    def arm(self, period_start: datetime, delays_s: Sequence[float] | None = None) -> None:
        """Answer the next request for ``period_start``; reset the counters.

        ``delays_s`` (one per site, in site order): each site answers that long
        after the request reached it, as a remote EMS that computes for a while;
        None: every site answers at once.
        """
        self._armed = (format_utc(period_start), flex_payload(period_start))
        self._delays = None
        if delays_s is not None:
            if len(delays_s) != self.n:
                raise ValueError(f"{len(delays_s)} delays for {self.n} sites")
            k = len(self.links)
            self._delays = [list(delays_s[i::k]) for i in range(k)]
        self._seen = set()
        self.run = SimRun()

    def _handler(self, k: int) -> Callable[[str, bytes], None]:
        link_topics = self._flex_topics

        def handle(topic: str, payload: bytes) -> None:
            now = time.monotonic()
            run = self.run
            if topic == self.request_topic:
                armed = self._armed
                if armed is None or orjson.loads(payload).get("cycle") != armed[0]:
                    return
                if run.requested_at is None or now < run.requested_at:
                    run.requested_at = now
                publish, flex = self.links[k].publish, armed[1]
                if self._delays is None:
                    for t in link_topics[k]:
                        publish(t, flex)
                else:
                    later = asyncio.get_running_loop().call_later
                    for t, d in zip(link_topics[k], self._delays[k], strict=True):
                        later(d, publish, t, flex)
            elif topic == self.closed_topic:
                run.closed_at = now
                run.closed = orjson.loads(payload)
            else:
                seen = self._seen
                seen.add(topic)
                run.allocs += 1
                run.last_alloc_at = now
                run.distinct_sites = len(seen)

        return handle

    async def wait(self, allocs: int, closed: bool) -> SimRun:
        """Until ``allocs`` allocations (and ``cycle/closed``) arrived or progress stops."""
        run = self.run
        mark, idle_since = -1, time.monotonic()
        while run.allocs < allocs or (closed and run.closed_at is None):
            if run.allocs != mark:
                mark, idle_since = run.allocs, time.monotonic()
            elif time.monotonic() - idle_since > IDLE_TIMEOUT_S:
                progress(f"  no progress for {IDLE_TIMEOUT_S:.0f} s: {run.allocs}/{allocs} "
                         f"allocations, closed={run.closed_at is not None}")
                break
            await asyncio.sleep(0.005)
        return run

    async def stop(self) -> None:
        await asyncio.gather(*(link.disconnect() for link in self.links))

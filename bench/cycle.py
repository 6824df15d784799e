"""How long one allocation cycle takes, next to what the broker alone needs.

``python -m bench.cycle`` (see docs/benchmarks.md). For each N it starts, on one
local Mosquitto (``ems.broker.EmbeddedBroker``, 127.0.0.1 only):

- a *floor hub*: a plain gmqtt client playing the coordinator with no logic.
  ``sink`` mode counts the N replies (broker floor for the replies alone);
  ``relay`` mode republishes one allocation per reply (floor for a whole cycle);
- the real ``central.app.Coordinator`` with a SQLite recorder in a temp dir.

Each hub is its own process (spawned), so it owns a core as the coordinator
would in production, and runs against its own simulator: a few gmqtt
connections in this process that hold N sites, subscribe to each site's
``alloc/{s}``, answer the request with N ``flex`` replies through an in-flight
window and count the allocations. Both hubs see identical traffic: same topic
shapes, same payload bytes, same window, same measuring points (the request's
arrival at the simulator, then the last allocation, and ``cycle/closed`` for the
coordinator). The runs interleave (sink, relay, coordinator, then again) so the
machine's noise falls on all columns alike. The pure core (``Cycle.offer_many``)
is timed in-process at the end.

Times across processes use ``time.monotonic()`` (CLOCK_MONOTONIC is system-wide
on Linux).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import logging
import multiprocessing
import os
import platform
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, MutableMapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import gmqtt
import orjson
import structlog
from gmqtt.storage import PersistentStorage

from central.app import Coordinator
from central.config import load_central_settings
from central.core import Cycle, Offer, get_strategy
from central.gcpolicy import CycleGc
from ems.broker import EmbeddedBroker
from protocol import CycleRequest, Flex, LoadFlex, NetLoad, SiteStatus, Topics, encode, encode_alloc
from protocol.logs import configure_logging
from protocol.models import format_utc
from runtime.clock import AcceleratedClock

DEFAULT_SIZES = (1_000, 10_000, 100_000)
QUICK_SIZES = (1_000, 10_000)
GATEWAY_CONNECTIONS = 4
# gmqtt's id pool holds receive_maximum - 1 ids (IdGenerator raises OverflowError at
# max - 1 in use) and mosquitto's CONNACK says receive_maximum = max_inflight_messages
# = 1000 (mosquitto/dev.conf): 999 is the largest window that never overflows.
WINDOW = 999
COORDINATOR_MAX_INFLIGHT = 1000  # the brief's [mqtt] max_inflight
SUBSCRIBE_CHUNK = 500  # topic filters per SUBSCRIBE, well under max_packet_size 65536
FLEX_KW = 1.0
NET_EXPORT_KW = 2.0  # S = 2 kW x N > N x 1 kW: every site is served (N allocations)
PERIOD_S = 3600.0
REPLY_TIMEOUT_S = 3000.0
IDLE_TIMEOUT_S = 20.0  # a run with no progress for this long is reported incomplete
CORE_RUNS = 5
CYCLE_ZERO = datetime(2026, 6, 21, 12, 0, tzinfo=UTC)
# The coordinator's clock starts just after an hour so its own scheduler (period 1 h)
# never opens a cycle during the benchmark.
CLOCK_ORIGIN = datetime(2026, 6, 21, 0, 0, 1, tzinfo=UTC)


def progress(message: str) -> None:
    """One progress line on stderr (stdout carries only the result)."""
    sys.stderr.write(f"[bench {time.strftime('%H:%M:%S')}] {message}\n")
    sys.stderr.flush()


# MQTT plumbing ---------------------------------------------------------------------


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
        await _until(lambda: self._subacks >= target, timeout_s, "SUBACKs")

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
        await _until(lambda: self.pending == 0, timeout_s, "PUBACKs")

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


async def _until(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        await asyncio.sleep(0.01)


async def _recv(conn: Connection, timeout_s: float) -> Any:
    """Receive from a pipe without blocking the event loop.

    ``asyncio.timeout``, not ``wait_for``: on 3.11 ``wait_for`` swallows a
    cancellation (Ctrl-C) that lands just as its future completes.
    """
    if not conn.poll():
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = loop.create_future()

        def wake() -> None:
            if not ready.done():
                ready.set_result(None)

        loop.add_reader(conn.fileno(), wake)
        try:
            async with asyncio.timeout(timeout_s):
                await ready
        finally:
            loop.remove_reader(conn.fileno())
    return conn.recv()


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


# The simulated gateways (this process) ---------------------------------------------


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

    def arm(self, period_start: datetime) -> None:
        """Answer the next request for ``period_start``; reset the counters."""
        self._armed = (format_utc(period_start), flex_payload(period_start))
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
                for t in link_topics[k]:
                    publish(t, flex)
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


# The hubs (child processes) -----------------------------------------------------------


@dataclass(frozen=True)
class HubSpec:
    """What a hub process needs to know; picklable for ``spawn``."""

    role: str  # "floor" or "coordinator"
    host: str
    port: int
    root: str
    community: str
    n: int
    window: int
    coordinator_max_inflight: int = COORDINATOR_MAX_INFLIGHT
    recorder_path: str = ""


def hub_process(conn: Connection, spec: HubSpec) -> None:
    """Entry point of a hub process: serve commands from the pipe until told to stop."""
    # The parent owns the lifecycle: Ctrl-C reaches it, and it stops us.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    main = _coordinator_hub if spec.role == "coordinator" else _floor_hub
    try:
        asyncio.run(main(conn, spec))
    except (EOFError, BrokenPipeError):
        pass  # the parent went away
    finally:
        conn.close()


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kB


class GcClock:
    """Time spent in the cyclic garbage collector, by generation (via ``gc.callbacks``).

    py-spy cannot see the collector: its pauses land on whatever line allocated.
    """

    def __init__(self) -> None:
        self.seconds = [0.0, 0.0, 0.0]
        self.count = [0, 0, 0]
        self._t0 = 0.0
        gc.callbacks.append(self._callback)

    def reset(self) -> None:
        self.seconds, self.count = [0.0, 0.0, 0.0], [0, 0, 0]

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._t0 = time.perf_counter()
        else:
            gen = info["generation"]
            self.seconds[gen] += time.perf_counter() - self._t0
            self.count[gen] += 1

    def snapshot(self) -> dict[str, Any]:
        return {"gc_s": sum(self.seconds), "gc_s_by_gen": list(self.seconds),
                "gc_count_by_gen": list(self.count)}


async def _floor_hub(conn: Connection, spec: HubSpec) -> None:
    """A plain client in the coordinator's seat: count replies, maybe relay allocations."""
    topics = Topics(spec.community, spec.root)
    alloc_prefix = f"{topics.base}/alloc/"
    state: dict[str, Any] = {}

    def on_flex(topic: str, payload: bytes) -> None:
        state["count"] += 1
        state["last"] = time.monotonic()
        if state["relay"]:
            # One allocation per reply, same topic and size as the coordinator's.
            link.publish(alloc_prefix + topic.split("/")[-2], state["alloc"])
        if state["count"] == spec.n:
            state["done"].set()

    gc_clock = GcClock()
    link = Link(f"bench-floor-{uuid.uuid4().hex[:6]}", on_flex, spec.window)
    await link.connect(spec.host, spec.port)
    await link.subscribe([topics.flex("+")])
    conn.send(("ready", os.getpid()))
    while True:
        cmd = await _recv(conn, 3600)
        if cmd[0] == "stop":
            await link.disconnect()
            conn.send(("bye", {"peak_rss_mb": _peak_rss_mb()}))
            return
        _, mode, period_start = cmd
        cycle_id = format_utc(period_start)
        valid_until = format_utc(period_start + timedelta(seconds=PERIOD_S))
        state.update(count=0, last=None, relay=mode == "relay", done=asyncio.Event(),
                     alloc=encode_alloc(cycle_id, FLEX_KW, spec.n // 2 + 1, valid_until, 1))
        gc_clock.reset()
        cpu0, t0 = time.process_time(), time.monotonic()
        link.publish(topics.cycle_request(), request_payload(period_start, spec.n))
        mark = -1
        while not state["done"].is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(IDLE_TIMEOUT_S):
                    await state["done"].wait()
            if state["count"] == mark:
                break  # no progress: report what arrived
            mark = state["count"]
        await link.drain(IDLE_TIMEOUT_S + spec.n / 1000)
        conn.send(("done", {"published_at": t0, "replies": state["count"],
                            "last_reply_at": state["last"],
                            "cpu_s": time.process_time() - cpu0, **gc_clock.snapshot()}))


class _LogTally:
    """A structlog processor: counts every event, shows only the first few warnings."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.quiet = False  # set while stopping: a deliberate disconnect is no news

    def __call__(
        self, logger: Any, method: str, event_dict: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        if self.quiet:
            raise structlog.DropEvent
        key = f"{method}:{event_dict.get('event')}"
        self.counts[key] += 1
        if method in ("debug", "info") or self.counts[key] > 3:
            raise structlog.DropEvent
        return event_dict


def _configure_hub_logging() -> _LogTally:
    tally = _LogTally()
    structlog.configure(
        processors=[
            tally,
            structlog.processors.add_log_level,
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )
    return tally


async def _coordinator_hub(conn: Connection, spec: HubSpec) -> None:
    """The real coordinator, in this process's event loop."""
    tally = _configure_hub_logging()
    settings = load_central_settings(
        None,
        env={},
        mqtt={"host": spec.host, "port": spec.port,
              "max_inflight": spec.coordinator_max_inflight,
              "client_id": f"bench-central-{spec.community}"},
        community={"id": spec.community, "topic_root": spec.root},
        cycle={"period_s": PERIOD_S, "reply_timeout_s": REPLY_TIMEOUT_S, "strategy": "fifo"},
        recorder={"url": f"sqlite:///{spec.recorder_path}"},
    )
    coordinator = Coordinator(settings, AcceleratedClock(1.0, CLOCK_ORIGIN))
    marks: dict[str, Any] = {}

    def listen(event: str, data: Any) -> None:
        if event == "cycle_opened":
            marks["opened_at"] = time.monotonic()
        elif event == "allocations":
            marks["allocations"] = marks.get("allocations", 0) + len(data[1])
        elif event == "cycle_closed":
            marks["closed_at"] = time.monotonic()
            marks["reason"] = data[1].reason
            marks["replies"] = data[1].replies

    coordinator.add_listener(listen)
    stop = asyncio.Event()
    task = asyncio.create_task(coordinator.run(stop))
    try:
        async with asyncio.timeout(15):
            await coordinator.wait_ready()
        # wait_ready() fires once SUBSCRIBE is sent, not acknowledged; give the broker
        # a moment so the (unretained) net loads announced next are not missed.
        await asyncio.sleep(0.3)
        conn.send(("ready", os.getpid()))
        t0 = time.monotonic()

        def knows_all() -> bool:
            records = coordinator.sites.records()
            return len(records) >= spec.n and all(
                r.online and r.net_export_kw is not None for r in records
            )

        await _until(knows_all, 120 + spec.n / 200, "the coordinator to know every site")
        conn.send(("known", time.monotonic() - t0, _peak_rss_mb()))
        gc_clock = GcClock()
        cpu0 = 0.0
        while True:
            # "go" opens a cycle; "collect" (sent once the simulator has seen it all)
            # reports on it, so the CPU after the close (allocations draining) counts.
            # Nothing else: no bus.drain(), which a live coordinator never calls.
            cmd = await _recv(conn, 3600)
            if cmd[0] == "stop":
                break
            if cmd[0] == "go":
                marks.clear()
                gc_clock.reset()
                cpu0 = time.process_time()
                await coordinator.start_cycle_now(cmd[2])
            elif cmd[0] == "collect":
                # The simulator saw cycle/closed; let the coordinator's own
                # listener catch up before reporting (bounded).
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(5):
                        while "closed_at" not in marks:
                            await asyncio.sleep(0.005)
                conn.send(("done", {**marks, "bus_pending": coordinator.bus.pending,
                                    "cpu_s": time.process_time() - cpu0,
                                    "rss_mb": _peak_rss_mb(), **gc_clock.snapshot(),
                                    "stats": coordinator.stats.as_dict()}))
    finally:
        tally.quiet = True
        stop.set()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(30):
                await task
    warnings = {k: v for k, v in tally.counts.items() if not k.startswith(("info", "debug"))}
    conn.send(("bye", {"peak_rss_mb": _peak_rss_mb(), "log_warnings": warnings,
                       "log_counts": dict(tally.counts)}))


class Hub:
    """Parent-side handle of a hub process: start, command, stop (always)."""

    def __init__(self, spec: HubSpec) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.spec = spec
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=hub_process, args=(child, spec), daemon=True,
                                name=f"bench-{spec.role}-{spec.n}")
        self.proc.start()
        child.close()
        self.pid: int | None = None
        self.farewell: dict[str, Any] = {}

    async def expect(self, kind: str, timeout_s: float) -> Any:
        try:
            msg = await _recv(self.conn, timeout_s)
        except (EOFError, TimeoutError) as exc:
            raise RuntimeError(
                f"{self.spec.role} hub (pid {self.proc.pid}) did not send {kind!r}: {exc!r}; "
                f"exit code {self.proc.exitcode}"
            ) from exc
        if msg[0] != kind:
            raise RuntimeError(f"{self.spec.role} hub sent {msg[0]!r}, expected {kind!r}")
        return msg[1] if len(msg) == 2 else msg[1:]

    async def ready(self) -> None:
        self.pid = await self.expect("ready", 60)

    def send(self, *cmd: Any) -> None:
        self.conn.send(cmd)

    async def stop(self, polite: bool = True) -> None:
        """Ask politely (or not, after a failure or Ctrl-C), then terminate, then kill."""
        if polite and self.proc.is_alive():
            with contextlib.suppress(Exception):
                self.send("stop")
                self.farewell = await self.expect("bye", 30)
            self.proc.join(5)
        for end in (self.proc.terminate, self.proc.kill):
            if self.proc.is_alive():
                end()
                self.proc.join(3)
        self.conn.close()


# Measuring ------------------------------------------------------------------------------


@dataclass
class SizeResult:
    """Every figure for one N; ``*_s`` lists hold one value per repeat."""

    n: int
    broker_replies_s: list[float] = field(default_factory=list)
    broker_round_trip_s: list[float] = field(default_factory=list)
    broker_round_trip_replies_in_s: list[float] = field(default_factory=list)
    coordinator_s: list[float] = field(default_factory=list)
    coordinator_internal_s: list[float] = field(default_factory=list)
    coordinator_last_alloc_s: list[float] = field(default_factory=list)
    coordinator_open_s: list[float] = field(default_factory=list)
    coordinator_cpu_s: list[float] = field(default_factory=list)
    floor_relay_cpu_s: list[float] = field(default_factory=list)
    broker_cpu_floor_s: list[float] = field(default_factory=list)
    broker_cpu_coordinator_s: list[float] = field(default_factory=list)
    allocations_received: list[int] = field(default_factory=list)
    round_trip_allocations: list[int] = field(default_factory=list)
    close_reasons: list[str | None] = field(default_factory=list)
    announce_s: float | None = None
    coordinator_rss_after_ingest_mb: float | None = None
    coordinator_gc_s: list[float] = field(default_factory=list)
    floor_relay_gc_s: list[float] = field(default_factory=list)
    coordinator_gc_count_by_gen: list[list[int]] = field(default_factory=list)
    core_offer_many_rps: list[float] = field(default_factory=list)
    core_offer_rps: list[float] = field(default_factory=list)
    core_offer_many_frozen_rps: list[float] = field(default_factory=list)
    coordinator_peak_rss_mb: float | None = None
    coordinator_log_warnings: dict[str, int] = field(default_factory=dict)
    coordinator_log_events: dict[str, int] = field(default_factory=dict)
    complete: bool = True

    def median(self, name: str) -> float | None:
        values = getattr(self, name)
        return statistics.median(values) if values else None

    @property
    def ratio_round_trip(self) -> float | None:
        c, f = self.median("coordinator_s"), self.median("broker_round_trip_s")
        return c / f if c and f else None

    @property
    def ratio_replies(self) -> float | None:
        c, f = self.median("coordinator_s"), self.median("broker_replies_s")
        return c / f if c and f else None

    def summary(self) -> dict[str, Any]:
        out = asdict(self)
        for name in ("broker_replies_s", "broker_round_trip_s", "broker_round_trip_replies_in_s",
                     "coordinator_s", "coordinator_internal_s", "coordinator_last_alloc_s",
                     "coordinator_cpu_s", "coordinator_gc_s"):
            out[f"{name}_median"] = self.median(name)
        out["ratio_coordinator_to_round_trip"] = self.ratio_round_trip
        out["ratio_coordinator_to_replies"] = self.ratio_replies
        out["core_offer_many_rps_best"] = max(self.core_offer_many_rps, default=None)
        out["core_offer_many_rps_median"] = self.median("core_offer_many_rps")
        out["core_offer_many_frozen_rps_median"] = self.median("core_offer_many_frozen_rps")
        out["core_offer_rps_median"] = self.median("core_offer_rps")
        return out


def _cpu_of(pid: int | None) -> float | None:
    """User + system CPU seconds of a process (for the broker), None if unknown."""
    if pid is None:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _delta(after: float | None, before: float | None) -> float | None:
    return after - before if after is not None and before is not None else None


def core_throughput(n: int, runs: int = CORE_RUNS) -> dict[str, list[float]]:
    """Replies per second of the pure core: ``offer_many``, the same with the heap
    frozen as the coordinator runs a cycle, and one-by-one ``offer``.

    FIFO, every site served (surplus 2 kW x N, 1 kW each), pre-built ``Offer``s.
    The "frozen" variant runs under the coordinator's own garbage-collector
    policy for a cycle (``central.gcpolicy.CycleGc``: what exists before the
    request leaves the collector's scans, young objects are collected less
    often; back to normal at close).
    """
    policy = CycleGc()
    fifo = get_strategy("fifo")
    sites = [f"s{i:06d}" for i in range(n)]
    offers = [Offer(s, CYCLE_ZERO, FLEX_KW, 0.001 * i) for i, s in enumerate(sites)]
    out: dict[str, list[float]] = {"offer_many": [], "offer_many_frozen": [], "offer": []}
    for _ in range(runs):
        for variant, rates in out.items():
            cycle, _ = Cycle.open(CYCLE_ZERO, NET_EXPORT_KW * n, sites, fifo,
                                  deadline_s=REPLY_TIMEOUT_S)
            gc.collect()
            if variant == "offer_many_frozen":
                policy.enter()
            try:
                t0 = time.perf_counter()
                if variant == "offer":
                    feed = cycle.offer
                    for offer in offers:
                        feed(offer)
                else:
                    cycle.offer_many(offers)
                elapsed = time.perf_counter() - t0
            finally:
                if variant == "offer_many_frozen":
                    policy.leave()
            if len(cycle.decisions) != n or cycle.close_reason != "all_replied":
                raise RuntimeError(f"core served {len(cycle.decisions)}/{n} "
                                   f"({cycle.close_reason})")
            rates.append(n / elapsed)
    return out


async def measure_size(
    n: int, repeat: int, host: str, port: int, broker_pid: int | None, root: str,
    workdir: Path, coordinator_max_inflight: int = COORDINATOR_MAX_INFLIGHT,
    connections: int = GATEWAY_CONNECTIONS, window: int = WINDOW,
) -> SizeResult:
    """All network runs for one N (floors and coordinator interleaved), then the core."""
    result = SizeResult(n)
    tag = uuid.uuid4().hex[:6]
    floor_c, coord_c = f"bf{n}-{tag}", f"bc{n}-{tag}"
    floor_sim = GatewaySim(Topics(floor_c, root), n, connections, window)
    coord_sim = GatewaySim(Topics(coord_c, root), n, connections, window)
    floor = Hub(HubSpec("floor", host, port, root, floor_c, n, window))
    coord = Hub(HubSpec("coordinator", host, port, root, coord_c, n, window,
                        coordinator_max_inflight, str(workdir / f"central-{n}.sqlite")))
    sims = (floor_sim, coord_sim)
    finished = False
    try:
        await asyncio.gather(floor_sim.start(host, port), coord_sim.start(host, port),
                             floor.ready(), coord.ready())
        progress(f"N={n:,}: simulators subscribed; floor hub pid {floor.pid}, "
                 f"coordinator pid {coord.pid}; announcing {n:,} sites")
        await coord_sim.announce()
        result.announce_s, result.coordinator_rss_after_ingest_mb = await coord.expect(
            "known", 120 + n / 200)
        progress(f"N={n:,}: the coordinator knows all sites after {result.announce_s:.2f} s")
        for r in range(repeat):
            period_start = CYCLE_ZERO + timedelta(hours=r)
            sink = await _floor_run(result, floor, floor_sim, period_start, "sink", broker_pid)
            relay = await _floor_run(result, floor, floor_sim, period_start, "relay", broker_pid)
            cycle = await _coordinator_run(result, coord, coord_sim, period_start, broker_pid)
            progress(
                f"N={n:,} run {r + 1}/{repeat}: replies {_fmt(sink, '.3f')} s, "
                f"replies+allocs {_fmt(relay, '.3f')} s, coordinator {_fmt(cycle, '.3f')} s "
                f"({result.allocations_received[-1]:,}/{n:,} allocations, "
                f"{result.close_reasons[-1]})"
            )
        finished = True
    finally:
        # After a failure or Ctrl-C, terminate the hubs at once instead of asking.
        await asyncio.gather(*(sim.stop() for sim in sims), return_exceptions=True)
        await asyncio.gather(floor.stop(finished), coord.stop(finished), return_exceptions=True)
    result.coordinator_peak_rss_mb = coord.farewell.get("peak_rss_mb")
    result.coordinator_log_warnings = coord.farewell.get("log_warnings", {})
    result.coordinator_log_events = coord.farewell.get("log_counts", {})
    if result.coordinator_log_warnings:
        progress(f"N={n:,}: coordinator warnings/errors: {result.coordinator_log_warnings}")
    return result


async def _floor_run(result: SizeResult, hub: Hub, sim: GatewaySim, period_start: datetime,
                     mode: str, broker_pid: int | None) -> float | None:
    """One broker-alone run (``sink`` or ``relay``); its time, None if incomplete."""
    n = result.n
    gc.collect()
    await asyncio.sleep(0.2)  # let the previous run's last packets settle
    sim.arm(period_start)
    cpu0 = _cpu_of(broker_pid)
    hub.send("go", mode, period_start)
    run = await sim.wait(n if mode == "relay" else 0, closed=False)
    done = await hub.expect("done", IDLE_TIMEOUT_S * 3 + n / 500)
    start = run.requested_at
    if start is None or done["replies"] < n:
        result.complete = False
        progress(f"  {mode}: incomplete, {done['replies']}/{n} replies")
        return None
    if mode == "sink":
        elapsed: float = done["last_reply_at"] - start
        result.broker_replies_s.append(elapsed)
        return elapsed
    result.round_trip_allocations.append(run.distinct_sites)
    if run.last_alloc_at is None or run.distinct_sites < n:
        result.complete = False
        progress(f"  relay: incomplete, {run.distinct_sites}/{n} allocations")
        return None
    elapsed = run.last_alloc_at - start
    result.broker_round_trip_s.append(elapsed)
    result.broker_round_trip_replies_in_s.append(done["last_reply_at"] - start)
    result.floor_relay_cpu_s.append(done["cpu_s"])
    result.floor_relay_gc_s.append(done["gc_s"])
    if (cpu := _delta(_cpu_of(broker_pid), cpu0)) is not None:
        result.broker_cpu_floor_s.append(cpu)
    return elapsed


async def _coordinator_run(result: SizeResult, hub: Hub, sim: GatewaySim,
                           period_start: datetime, broker_pid: int | None) -> float | None:
    """One real cycle: request arrival -> ``cycle/closed`` and N allocations; None if not."""
    n = result.n
    gc.collect()
    await asyncio.sleep(0.2)
    sim.arm(period_start)
    cpu0 = _cpu_of(broker_pid)
    triggered_at = time.monotonic()
    hub.send("go", "cycle", period_start)
    run = await sim.wait(n, closed=True)
    hub.send("collect")
    done = await hub.expect("done", 60)
    result.allocations_received.append(run.distinct_sites)
    reason = run.closed.get("reason") if run.closed else None
    result.close_reasons.append(reason)
    ends = [t for t in (run.closed_at, run.last_alloc_at) if t is not None]
    ok = (run.requested_at is not None and run.closed_at is not None and reason == "all_replied"
          and run.distinct_sites == n and (run.closed or {}).get("replies") == n)
    if not ok or not ends or run.requested_at is None:
        result.complete = False
        progress(f"  coordinator: incomplete, {run.distinct_sites}/{n} allocations, "
                 f"closed={run.closed}, stats={done.get('stats')}")
        return None
    elapsed = max(ends) - run.requested_at
    result.coordinator_s.append(elapsed)
    result.coordinator_open_s.append(run.requested_at - triggered_at)
    assert run.last_alloc_at is not None
    result.coordinator_last_alloc_s.append(run.last_alloc_at - run.requested_at)
    if "opened_at" in done and "closed_at" in done:
        result.coordinator_internal_s.append(done["closed_at"] - done["opened_at"])
    result.coordinator_cpu_s.append(done["cpu_s"])
    result.coordinator_gc_s.append(done["gc_s"])
    result.coordinator_gc_count_by_gen.append(done["gc_count_by_gen"])
    if (cpu := _delta(_cpu_of(broker_pid), cpu0)) is not None:
        result.broker_cpu_coordinator_s.append(cpu)
    return elapsed


@dataclass
class BenchResult:
    sizes: list[SizeResult]
    repeat: int
    machine: dict[str, Any]
    wall_s: float
    bench_peak_rss_mb: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "repeat": self.repeat,
            "machine": self.machine,
            "wall_s": self.wall_s,
            "bench_peak_rss_mb": self.bench_peak_rss_mb,
            "sizes": [s.summary() for s in self.sizes],
        }


def machine_info() -> dict[str, Any]:
    mosquitto = "?"
    with contextlib.suppress(Exception):
        out = subprocess.run(["/usr/sbin/mosquitto", "-h"], capture_output=True, text=True,
                             timeout=5)
        mosquitto = (out.stdout or out.stderr).splitlines()[0]
    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "cpus": os.cpu_count(),
        "cpu": cpu,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "mosquitto": mosquitto,
        "gmqtt": getattr(gmqtt, "__version__", "?"),
        "loadavg_start": os.getloadavg(),
    }


async def run_benchmark(
    sizes: Sequence[int], repeat: int, *, broker: Any | None = None, root: str = "ems",
    coordinator_max_inflight: int = COORDINATOR_MAX_INFLIGHT,
) -> BenchResult:
    """Run everything; start (and always stop) a local Mosquitto unless ``broker`` is given."""
    t0 = time.monotonic()
    machine = machine_info()
    with contextlib.ExitStack() as stack:
        if broker is None:
            broker = stack.enter_context(EmbeddedBroker(kind="mosquitto", host="127.0.0.1"))
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="ems-bench-")))
        pid = getattr(broker, "pid", None)
        progress(f"broker {broker.host}:{broker.port} (pid {pid}); sizes {list(sizes)}, "
                 f"repeat {repeat}")
        results = []
        for n in sizes:
            result = await measure_size(
                n, repeat, broker.host, broker.port, pid, root, workdir,
                coordinator_max_inflight=coordinator_max_inflight,
            )
            # After the network runs, once their simulators are freed: a big heap
            # would make the collector's full passes slower than in the coordinator.
            gc.collect()
            progress(f"N={n:,}: pure core, {CORE_RUNS} runs")
            core = core_throughput(n)
            result.core_offer_many_rps = core["offer_many"]
            result.core_offer_many_frozen_rps = core["offer_many_frozen"]
            result.core_offer_rps = core["offer"]
            results.append(result)
    machine["loadavg_end"] = os.getloadavg()
    return BenchResult(results, repeat, machine, time.monotonic() - t0, _peak_rss_mb())


# Reporting --------------------------------------------------------------------------------


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _complete_runs(s: SizeResult) -> str:
    done = len(s.coordinator_s)
    text = f"{done}/{len(s.allocations_received)}"
    if done < len(s.allocations_received):
        text += f" (got {', '.join(f'{a:,}' for a in s.allocations_received)})"
    return text


def format_table(bench: BenchResult) -> str:
    """The side-by-side table: one row per figure, one column per N."""
    sizes = bench.sizes
    m = f"median of {bench.repeat}"

    def row(label: str, fn: Callable[[SizeResult], str]) -> list[str]:
        return [label, *(fn(s) for s in sizes)]

    def cpu_us(s: SizeResult, name: str) -> str:
        v = s.median(name)
        return _fmt(v * 1e6 / s.n if v is not None else None, ".1f")

    rows = [
        ["", *(f"N={s.n:,}" for s in sizes)],
        row(f"broker alone, N replies (s, {m})",
            lambda s: _fmt(s.median("broker_replies_s"), ".3f")),
        row("broker alone, N replies + N allocations (s) [fair floor]",
            lambda s: _fmt(s.median("broker_round_trip_s"), ".3f")),
        row("coordinator, request -> closed + N allocations (s)",
            lambda s: _fmt(s.median("coordinator_s"), ".3f")),
        row("ratio coordinator / fair floor (target <= 2)",
            lambda s: _fmt(s.ratio_round_trip, ".2f")),
        row("ratio coordinator / replies alone",
            lambda s: _fmt(s.ratio_replies, ".2f")),
        row("coordinator, last reply decided: opened -> closed (s)",
            lambda s: _fmt(s.median("coordinator_internal_s"), ".3f")),
        row("coordinator, start_cycle_now -> request at gateways (s)",
            lambda s: _fmt(s.median("coordinator_open_s"), ".3f")),
        row("floor relay, last reply in (s)",
            lambda s: _fmt(s.median("broker_round_trip_replies_in_s"), ".3f")),
        row("coordinator CPU per reply (us)", lambda s: cpu_us(s, "coordinator_cpu_s")),
        row("relay (floor hub) CPU per reply (us)", lambda s: cpu_us(s, "floor_relay_cpu_s")),
        row("broker CPU per reply, coordinator / floor (us)",
            lambda s: f"{cpu_us(s, 'broker_cpu_coordinator_s')} / "
                      f"{cpu_us(s, 'broker_cpu_floor_s')}"),
        row(f"core offer_many, median of {CORE_RUNS} (M replies/s, target >= 1)",
            lambda s: _fmt((s.median("core_offer_many_rps") or 0) / 1e6, ".2f")),
        row("core offer_many, GC frozen as the coordinator runs it (M replies/s)",
            lambda s: _fmt((s.median("core_offer_many_frozen_rps") or 0) / 1e6, ".2f")),
        row("core offer() one by one (M replies/s)",
            lambda s: _fmt((s.median("core_offer_rps") or 0) / 1e6, ".2f")),
        row("coordinator / relay time in the garbage collector (s)",
            lambda s: f"{_fmt(s.median('coordinator_gc_s'), '.2f')} / "
                      f"{_fmt(s.median('floor_relay_gc_s'), '.2f')}"),
        row("coordinator peak RSS, after ingest / at the end (MB)",
            lambda s: f"{_fmt(s.coordinator_rss_after_ingest_mb, '.0f')} / "
                      f"{_fmt(s.coordinator_peak_rss_mb, '.0f')}"),
        row("coordinator ingest of N status + N netload (s)",
            lambda s: _fmt(s.announce_s, ".2f")),
        row("coordinator runs with all N allocations and all_replied", _complete_runs),
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                       for i, (c, w) in enumerate(zip(r, widths, strict=True))) for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    mach = bench.machine
    lines.append("")
    lines.append(f"{mach['cpus']} CPUs ({mach['cpu']}), Python {mach['python']}, "
                 f"{mach['mosquitto']}; load avg {mach['loadavg_start'][0]:.2f} -> "
                 f"{mach.get('loadavg_end', (0,))[0]:.2f}; wall {bench.wall_s:.0f} s; "
                 f"bench process peak RSS {bench.bench_peak_rss_mb:.0f} MB")
    if not all(s.complete for s in sizes):
        lines.append("WARNING: some runs were incomplete (see the progress lines); "
                     "their medians use the complete runs only.")
    return "\n".join(lines)


def parse_sizes(text: str) -> list[int]:
    """``"1000,10k,100k"`` -> ``[1000, 10000, 100000]``."""
    sizes = []
    for part in text.split(","):
        part = part.strip().lower().replace("_", "")
        scale = 1_000 if part.endswith("k") else 1
        value = int(float(part.rstrip("k")) * scale)
        if value < 1:
            raise argparse.ArgumentTypeError(f"size must be positive: {part!r}")
        sizes.append(value)
    return sizes


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.cycle",
        description="Coordinator cycle time against the broker-alone floor (docs/benchmarks.md).",
    )
    parser.add_argument("--sizes", type=parse_sizes, default=list(DEFAULT_SIZES),
                        help="comma-separated N (default 1000,10000,100000; 10k works)")
    parser.add_argument("--quick", action="store_true", help="N = 1k and 10k only")
    parser.add_argument("--repeat", type=int, default=3, help="runs per N; medians reported")
    parser.add_argument("--json", action="store_true",
                        help="print JSON on stdout (the table then goes to stderr)")
    parser.add_argument("--coordinator-max-inflight", type=int,
                        default=COORDINATOR_MAX_INFLIGHT,
                        help="the coordinator's [mqtt] max_inflight (default 1000)")
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    sizes = list(QUICK_SIZES) if args.quick else args.sizes
    # Library logs (the broker's start and stop) go to stderr, never into the table.
    configure_logging("warning", "console")
    # SIGTERM unwinds like Ctrl-C, so the finally blocks stop the hubs and the broker.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        bench = asyncio.run(run_benchmark(
            sizes, args.repeat, coordinator_max_inflight=args.coordinator_max_inflight))
    except KeyboardInterrupt:
        progress("interrupted; broker, hubs and temp files cleaned up")
        return 130
    table = format_table(bench)
    if args.json:
        sys.stderr.write(table + "\n")
        sys.stdout.write(json.dumps(bench.as_dict(), indent=2) + "\n")
    else:
        sys.stdout.write(table + "\n")
    return 0 if all(s.complete for s in bench.sizes) else 1


if __name__ == "__main__":
    sys.exit(main())

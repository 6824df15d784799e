"""The processes in the coordinator's seat: a bare *floor* client and the real coordinator.

Each runs in a spawned process of its own (so it owns a core, as the coordinator
would in production) and obeys commands from a pipe (``bench.common.Hub``):

- the **floor hub** (``role="floor"``): a plain gmqtt client with no logic.
  ``sink`` mode counts the N replies; ``relay`` mode republishes one allocation
  per reply;
- the **coordinator hub** (``role="coordinator"``): the real
  ``central.app.Coordinator`` with a SQLite recorder; ``go`` opens a cycle
  (``start_cycle_now``), ``collect`` reports on it.

``run_coordinator_cycle`` is one cycle seen from the simulated sites
(``bench.swarm.GatewaySim``): used by ``bench.cycle`` and ``bench.concurrency``.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import sys
import time
import uuid
from collections import Counter
from collections.abc import MutableMapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from multiprocessing.connection import Connection
from typing import Any

import structlog

from bench.common import GcClock, Hub, cpu_seconds, delta, peak_rss_mb, recv, until
from bench.swarm import (
    CLOCK_ORIGIN,
    FLEX_KW,
    IDLE_TIMEOUT_S,
    PERIOD_S,
    REPLY_TIMEOUT_S,
    GatewaySim,
    Link,
    SimRun,
    request_payload,
)
from central.app import Coordinator
from central.config import load_central_settings
from protocol import Topics, encode_alloc
from protocol.models import format_utc
from runtime.clock import AcceleratedClock

COORDINATOR_MAX_INFLIGHT = 1000  # the brief's [mqtt] max_inflight


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


def start_hub(spec: HubSpec) -> Hub:
    """Spawn the hub ``spec`` describes."""
    return Hub(hub_process, spec, spec.role, f"bench-{spec.role}-{spec.n}")


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
        cmd = await recv(conn, 3600)
        if cmd[0] == "stop":
            await link.disconnect()
            conn.send(("bye", {"peak_rss_mb": peak_rss_mb()}))
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


class LogTally:
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

    def warnings(self) -> dict[str, int]:
        """Counts of every event above info."""
        return {k: v for k, v in self.counts.items() if not k.startswith(("info", "debug"))}


def configure_hub_logging() -> LogTally:
    """The coordinator's logs in a hub: counted by event, warnings shown (a few) on stderr."""
    tally = LogTally()
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
    tally = configure_hub_logging()
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

        await until(knows_all, 120 + spec.n / 200, "the coordinator to know every site")
        conn.send(("known", time.monotonic() - t0, peak_rss_mb()))
        gc_clock = GcClock()
        cpu0 = 0.0
        while True:
            # "go" opens a cycle; "collect" (sent once the simulator has seen it all)
            # reports on it, so the CPU after the close (allocations draining) counts.
            # Nothing else: no bus.drain(), which a live coordinator never calls.
            cmd = await recv(conn, 3600)
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
                                    "rss_mb": peak_rss_mb(), **gc_clock.snapshot(),
                                    "stats": coordinator.stats.as_dict()}))
    finally:
        tally.quiet = True
        stop.set()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(30):
                await task
    conn.send(("bye", {"peak_rss_mb": peak_rss_mb(), "log_warnings": tally.warnings(),
                       "log_counts": dict(tally.counts)}))


@dataclass
class CoordinatorCycle:
    """One real cycle as the simulated sites saw it, and the hub's own report."""

    n: int
    run: SimRun
    done: dict[str, Any]
    triggered_at: float
    broker_cpu_s: float | None = None

    @property
    def reason(self) -> str | None:
        return self.run.closed.get("reason") if self.run.closed else None

    @property
    def complete(self) -> bool:
        """Closed with ``all_replied`` after N replies, and N sites got an allocation."""
        run = self.run
        return (run.requested_at is not None and run.closed_at is not None
                and self.reason == "all_replied" and run.distinct_sites == self.n
                and (run.closed or {}).get("replies") == self.n
                and run.last_alloc_at is not None)

    @property
    def elapsed_s(self) -> float | None:
        """Request at the sites -> ``cycle/closed`` and the last allocation, whichever is last."""
        ends = [t for t in (self.run.closed_at, self.run.last_alloc_at) if t is not None]
        if not ends or self.run.requested_at is None:
            return None
        return max(ends) - self.run.requested_at


async def run_coordinator_cycle(
    hub: Hub, sim: GatewaySim, period_start: datetime, n: int, *,
    broker_pid: int | None = None, delays_s: Sequence[float] | None = None,
) -> CoordinatorCycle:
    """Open one cycle on the coordinator hub; wait for N allocations and ``cycle/closed``."""
    gc.collect()
    await asyncio.sleep(0.2)  # let the previous run's last packets settle
    sim.arm(period_start, delays_s)
    cpu0 = cpu_seconds(broker_pid)
    triggered_at = time.monotonic()
    hub.send("go", "cycle", period_start)
    run = await sim.wait(n, closed=True)
    hub.send("collect")
    done = await hub.expect("done", 60)
    return CoordinatorCycle(n, run, done, triggered_at, delta(cpu_seconds(broker_pid), cpu0))

"""One site floods while a cycle runs: the honest replies' delay with and without it.

A real coordinator and a real Mosquitto (127.0.0.1), ``honest`` simulated gateways
(gmqtt) offering 1.0, 1.05, ... kW on a surplus larger than their sum, so each is
served exactly its offer whatever the order; one more site, ``flood``, sends
``flood_messages`` messages (replies for the open and for stale cycles, net
loads, reports) as fast as its client can, QoS 0, from a process of its own (a
hostile box is another machine), starting before the request.
Measured, side by side for a run without the flood and one with it: each honest
site's delay from publishing its reply to receiving its allocation, the flood's
rate as sent and as the coordinator drained it, what was dropped and when the
site was quarantined.

    .venv/bin/python -m bench.fuzz.flood                 # 50,000 messages, 20 sites
    .venv/bin/python -m bench.fuzz.flood --messages 200000 --json

``tests/hostile/test_flood_integration.py`` runs the same with 50,000 messages and
checks the outcome (allocations, liveness, counters), never the timings.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import gmqtt
from gmqtt.mqtt.constants import MQTTv311

from protocol import Alloc, CycleRequest, Flex, NetLoad, SiteStatus, Topics, decode, encode

FLOOD_SITE = "flood"
FLOOD_SETTINGS = {"rate_per_s": 10.0, "burst": 200, "quarantine_after": 2000,
                  "quarantine_window_s": 60.0, "quarantine_s": 600.0, "log_interval_s": 60.0}


class TimedGateway:
    """A simulated home that times its reply and the allocation that answers it."""

    def __init__(self, topics: Topics, site: str, host: str, port: int, flex_kw: float) -> None:
        self.topics = topics
        self.site = site
        self.host = host
        self.port = port
        self.flex_kw = flex_kw
        self.replied_at: float | None = None
        self.alloc_at: float | None = None
        self.allocs: list[Alloc] = []
        will = gmqtt.Message(topics.site_status(site), encode(SiteStatus(state="offline")),
                             qos=1, retain=True)
        self.client = gmqtt.Client(f"flood-{topics.root}-{site}", will_message=will)
        self.client.on_message = self._on_message

    async def start(self, net_export_kw: float) -> None:
        await self.client.connect(self.host, self.port, version=MQTTv311)
        self.client.subscribe([gmqtt.Subscription(t, qos=1)
                               for t in self.topics.gateway_subscriptions(self.site)])
        self.client.publish(self.topics.site_status(self.site),
                            encode(SiteStatus(state="online", version="sim")), qos=1, retain=True)
        self.client.publish(self.topics.netload(self.site), encode(NetLoad(
            ts=datetime.now(UTC).replace(microsecond=0), net_export_kw=net_export_kw)), qos=1)

    def _on_message(self, client: Any, topic: str, payload: bytes, qos: int, props: Any) -> int:
        route = self.topics.parse(topic)
        if route is None:
            return 0
        msg = decode(route, payload)
        if isinstance(msg, CycleRequest) and self.flex_kw > 0:
            self.replied_at = time.perf_counter()
            client.publish(self.topics.flex(self.site),
                           encode(Flex(cycle=msg.cycle, flex_kw=self.flex_kw)), qos=1)
        elif isinstance(msg, Alloc):
            self.alloc_at = time.perf_counter()
            self.allocs.append(msg)
        return 0

    @property
    def delay_ms(self) -> float | None:
        if self.replied_at is None or self.alloc_at is None:
            return None
        return (self.alloc_at - self.replied_at) * 1000.0

    async def stop(self) -> None:
        await self.client.disconnect()


@dataclass
class FloodRun:
    """One run's outcome and figures."""

    flood_messages: int
    allocations: dict[str, float] = field(default_factory=dict)
    delays_ms: list[float] = field(default_factory=list)
    close_reason: str | None = None
    sent_per_s: float | None = None
    drained_per_s: float | None = None
    received: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    dropped: int = 0
    quarantined: bool = False
    quarantined_after_s: float | None = None
    errors: int = 0
    callback_errors: int = 0

    def summary(self) -> dict[str, Any]:
        d = self.delays_ms
        return {
            "honest_delay_ms_median": round(statistics.median(d), 2) if d else None,
            "honest_delay_ms_max": round(max(d), 2) if d else None,
            "flood_sent_per_s": round(self.sent_per_s) if self.sent_per_s else None,
            "flood_drained_per_s": round(self.drained_per_s) if self.drained_per_s else None,
            "flood_dropped": self.dropped,
            "quarantined_after_s": (round(self.quarantined_after_s, 3)
                                    if self.quarantined_after_s is not None else None),
        }


async def _until(predicate: Any, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def _running(coordinator: Any) -> AsyncIterator[Any]:
    stop = asyncio.Event()
    task = asyncio.create_task(coordinator.run(stop))
    await asyncio.wait_for(coordinator.wait_ready(), 15)
    try:
        yield coordinator
    finally:
        stop.set()
        await asyncio.wait_for(task, 60)


async def run_cycle(host: str, port: int, root: str, workdir: Path, *, flood_messages: int,
                    honest: int = 20) -> FloodRun:
    """One cycle with ``honest`` sites, and ``flood_messages`` from the flooding site."""
    from central.app import Coordinator
    from central.config import load_central_settings
    from runtime.clock import SystemClock

    settings = load_central_settings(
        None, env={},
        mqtt={"host": host, "port": port, "client_id": f"central-{root}"},
        community={"id": "c1", "topic_root": root},
        cycle={"period_s": 3600, "reply_timeout_s": 20.0},
        recorder={"url": f"sqlite:///{workdir / f'{root}.sqlite'}"},
        flood=FLOOD_SETTINGS,
    )
    topics = Topics("c1", root)
    result = FloodRun(flood_messages)
    coordinator = Coordinator(settings, SystemClock())
    closed: list[Any] = []
    coordinator.add_listener(lambda ev, data: closed.append(data[1])
                             if ev == "cycle_closed" else None)
    gateways = [TimedGateway(topics, f"h{i:02d}", host, port, 1.0 + 0.05 * i)
                for i in range(honest)]
    flooder = TimedGateway(topics, FLOOD_SITE, host, port, 0.0)
    async with _running(coordinator):
        await asyncio.gather(*(g.start(3.0) for g in gateways), flooder.start(0.0))
        sites = honest + 1
        await _until(lambda: len(coordinator.sites.online_sites()) == sites, 30)
        await _until(lambda: coordinator.sites.surplus(coordinator.clock.now(), 3600)
                     .surplus_kw >= 3.0 * honest - 1e-6, 30)
        received0 = coordinator.stats.received
        expected = received0 + flood_messages
        proc = None
        marks: dict[str, float] = {}

        async def watch() -> None:
            # When the site was quarantined and when the last flood message was handled.
            while "drained" not in marks:
                rec = coordinator.sites.get(FLOOD_SITE)
                if "quarantined" not in marks and rec is not None \
                        and rec.quarantined_until is not None:
                    marks["quarantined"] = time.time()
                if coordinator.stats.received >= expected:
                    marks["drained"] = time.time()
                await asyncio.sleep(0.002)

        watcher = None
        if flood_messages:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "bench.fuzz.flood", "--flooder", host, str(port), root,
                str(flood_messages), stdout=asyncio.subprocess.PIPE,
                cwd=str(Path(__file__).resolve().parents[2]))
            watcher = asyncio.create_task(watch())
            # The request goes out while the flood is under way.
            await _until(lambda: coordinator.stats.received - received0 >= min(
                5000, flood_messages // 4), 60)
        await coordinator.start_cycle_now()
        await _until(lambda: all(g.allocs for g in gateways), 60)
        if proc is not None and watcher is not None:
            await asyncio.wait_for(watcher, 120)
            out, _ = await proc.communicate()
            sent = json.loads(out)
            result.sent_per_s = sent["sent_per_s"]
            result.drained_per_s = sent["messages"] / max(
                marks["drained"] - sent["started_at"], 1e-9)
            if "quarantined" in marks:
                result.quarantined_after_s = marks["quarantined"] - sent["started_at"]
        await _until(lambda: bool(closed), 60)
        result.close_reason = closed[0].reason
        result.allocations = {g.site: g.allocs[0].alloc_kw for g in gateways}
        result.delays_ms = [d for g in gateways if (d := g.delay_ms) is not None]
        stats = coordinator.stats
        result.received = stats.received
        result.rejected = dict(stats.rejected)
        result.dropped = coordinator.flood.dropped(FLOOD_SITE) if coordinator.flood else 0
        rec = coordinator.sites.get(FLOOD_SITE)
        result.quarantined = rec is not None and rec.quarantined(coordinator.clock.now())
        result.errors = stats.errors
        result.callback_errors = coordinator.bus.callback_errors
        await asyncio.gather(*(g.stop() for g in gateways), flooder.stop())
    return result


async def compare(host: str, port: int, workdir: Path, *, flood_messages: int,
                  honest: int = 20, root: str = "flood") -> tuple[FloodRun, FloodRun]:
    """A run without the flood, then one with it, each under its own topic root."""
    quiet = await run_cycle(host, port, f"{root}q", workdir, flood_messages=0, honest=honest)
    loud = await run_cycle(host, port, f"{root}f", workdir, flood_messages=flood_messages,
                           honest=honest)
    return quiet, loud


def format_table(quiet: FloodRun, loud: FloodRun) -> str:
    rows = [("", "without flood", f"with {loud.flood_messages:,} flood msgs")]
    a, b = quiet.summary(), loud.summary()
    for key in a:
        rows.append((key, str(a[key]), str(b[key])))
    rows.append(("honest allocations equal", "", str(quiet.allocations == loud.allocations)))
    width = [max(len(r[i]) for r in rows) for i in range(3)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, width, strict=True)) for r in rows)


def flooder(host: str, port: int, root: str, messages: int) -> dict[str, float]:
    """The flooding site, in its own process: ``messages`` QoS 0 publishes, flat out."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    topics = Topics("c1", root)
    cycle = datetime.now(UTC).replace(second=0, microsecond=0)
    payloads = [
        (topics.flex(FLOOD_SITE), encode(Flex(cycle=cycle, flex_kw=5.0))),
        (topics.flex(FLOOD_SITE), b'{"v":1,"cycle":"2020-01-01T00:00:00Z","flex_kw":5}'),
        (topics.netload(FLOOD_SITE), encode(NetLoad(ts=cycle, net_export_kw=0.0))),
        (topics.report(FLOOD_SITE), b'{"v":1,"seq":1,"period":"2020-01-01T00:00:00Z",'
         b'"import_kwh":0,"export_kwh":0,"allocated_kwh":0,"used_kwh":0}'),
    ]
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"flooder-{root}")
    client.max_queued_messages_set(0)
    client.connect(host, port)
    client.loop_start()
    started_at = time.time()
    t0 = time.perf_counter()
    infos = [client.publish(*payloads[i % len(payloads)], qos=0) for i in range(messages)]
    infos[-1].wait_for_publish(60)
    elapsed = time.perf_counter() - t0
    client.disconnect()
    client.loop_stop()
    return {"messages": messages, "sent_per_s": messages / elapsed, "started_at": started_at}


def main(argv: list[str] | None = None) -> int:
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == "--flooder":
        host, port, root, messages = sys.argv[2:6]
        print(json.dumps(flooder(host, int(port), root, int(messages))))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=50_000)
    parser.add_argument("--honest", type=int, default=20)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    from ems.broker import EmbeddedBroker

    with EmbeddedBroker(kind="mosquitto", host="127.0.0.1") as broker, \
            tempfile.TemporaryDirectory() as tmp:
        quiet, loud = asyncio.run(compare(broker.host, broker.port, Path(tmp),
                                          flood_messages=args.messages, honest=args.honest))
    if args.json:
        json.dump({"without": asdict(quiet), "with": asdict(loud)}, sys.stdout, indent=1)
    else:
        print(format_table(quiet, loud))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

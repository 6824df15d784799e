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
The MQTT plumbing and the simulated sites are in ``bench/swarm.py``, the hub
processes in ``bench/hubs.py``, and what every benchmark shares (progress lines,
/proc readings, the local broker) in ``bench/common.py``.

Times across processes use ``time.monotonic()`` (CLOCK_MONOTONIC is system-wide
on Linux).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import signal
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from bench.common import (
    Hub,
    cpu_seconds,
    delta,
    local_broker,
    machine_info,
    parse_sizes,
    progress,
)
from bench.common import fmt as _fmt
from bench.common import peak_rss_mb as _peak_rss_mb
from bench.hubs import (
    COORDINATOR_MAX_INFLIGHT,
    HubSpec,
    run_coordinator_cycle,
    start_hub,
)
from bench.swarm import (
    CYCLE_ZERO,
    FLEX_KW,
    GATEWAY_CONNECTIONS,
    IDLE_TIMEOUT_S,
    NET_EXPORT_KW,
    REPLY_TIMEOUT_S,
    WINDOW,
    GatewaySim,
    Link,
)
from central.core import Cycle, Offer, get_strategy
from central.gcpolicy import CycleGc
from protocol import Topics
from protocol.logs import configure_logging

__all__ = [
    "CORE_RUNS", "DEFAULT_SIZES", "QUICK_SIZES", "BenchResult", "Link", "SizeResult",
    "core_throughput", "format_table", "machine_info", "main", "measure_size", "parse_sizes",
    "run_benchmark",
]

DEFAULT_SIZES = (1_000, 10_000, 100_000)
QUICK_SIZES = (1_000, 10_000)
CORE_RUNS = 5


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
    floor = start_hub(HubSpec("floor", host, port, root, floor_c, n, window))
    coord = start_hub(HubSpec("coordinator", host, port, root, coord_c, n, window,
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
    cpu0 = cpu_seconds(broker_pid)
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
    if (cpu := delta(cpu_seconds(broker_pid), cpu0)) is not None:
        result.broker_cpu_floor_s.append(cpu)
    return elapsed


async def _coordinator_run(result: SizeResult, hub: Hub, sim: GatewaySim,
                           period_start: datetime, broker_pid: int | None) -> float | None:
    """One real cycle: request arrival -> ``cycle/closed`` and N allocations; None if not."""
    n = result.n
    outcome = await run_coordinator_cycle(hub, sim, period_start, n, broker_pid=broker_pid)
    run, done = outcome.run, outcome.done
    result.allocations_received.append(run.distinct_sites)
    result.close_reasons.append(outcome.reason)
    elapsed = outcome.elapsed_s
    if not outcome.complete or elapsed is None or run.requested_at is None:
        result.complete = False
        progress(f"  coordinator: incomplete, {run.distinct_sites}/{n} allocations, "
                 f"closed={run.closed}, stats={done.get('stats')}")
        return None
    result.coordinator_s.append(elapsed)
    result.coordinator_open_s.append(run.requested_at - outcome.triggered_at)
    assert run.last_alloc_at is not None
    result.coordinator_last_alloc_s.append(run.last_alloc_at - run.requested_at)
    if "opened_at" in done and "closed_at" in done:
        result.coordinator_internal_s.append(done["closed_at"] - done["opened_at"])
    result.coordinator_cpu_s.append(done["cpu_s"])
    result.coordinator_gc_s.append(done["gc_s"])
    result.coordinator_gc_count_by_gen.append(done["gc_count_by_gen"])
    if outcome.broker_cpu_s is not None:
        result.broker_cpu_coordinator_s.append(outcome.broker_cpu_s)
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


async def run_benchmark(
    sizes: Sequence[int], repeat: int, *, broker: Any | None = None, root: str = "ems",
    coordinator_max_inflight: int = COORDINATOR_MAX_INFLIGHT,
) -> BenchResult:
    """Run everything; start (and always stop) a local Mosquitto unless ``broker`` is given."""
    t0 = time.monotonic()
    machine = machine_info()
    with contextlib.ExitStack() as stack:
        broker = local_broker(stack, broker)
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

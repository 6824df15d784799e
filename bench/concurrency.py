"""The allocation study's concurrency experiment (its Table 6), reproduced side by side.

``python -m bench.concurrency`` (see docs/benchmarks.md, "Concurrency"). The
study sent one request to N simulated local EMS at once, let each answer with
its flexibility, and allocated the replies first come, first served; it timed
that with one thread per EMS, a pool, and asyncio. Here, in one process and
without a broker:

- **each simulated EMS** gets the request at t0, computes its answer (the
  study's draw: a net load in -5..10 kW and a flexibility in 0.01-5 kW, rounded
  to 0.01, from its own seeded generator, encoded as JSON) and has it ready at
  t0 + its latency, drawn uniform in [0, ``--latency-s``] (2 s by default, the
  floor every method shows in the study). The EMS are remote machines working
  in parallel, so a latency is a time to wait for, not work: a mechanism that
  reaches EMS i late finds its answer ready;
- **threads**: one OS thread per EMS, at most ``--max-threads`` alive at once
  (Linux caps threads at ``pid_max``, 32,768 here, so 100k cannot all exist);
  each sleeps until its answer is ready and queues it;
- **process pool**: ``ProcessPoolExecutor`` with one worker per CPU, one task
  per EMS (the worker sleeps until the answer is ready), results queued by
  done-callbacks; the pool is started and warmed before t0;
- **asyncio**: one task per EMS (``asyncio.sleep`` until ready) feeding an
  ``asyncio.Queue``.

In every variant one consumer takes the replies in arrival order, decodes them
and feeds the real pure core (``central.core.Cycle``, FIFO) with a surplus that
serves every EMS, so the cycle closes ``all_replied`` on the N-th reply. The
time is t0 -> that close. Log-log slopes are least squares over the sizes, as
the study's (its 0.59 / 0.47 / 0.20 are least squares over its four sizes).

Then **over a real broker**: the asyncio variant as the product runs it, the
real ``central.app.Coordinator`` (FIFO, SQLite recorder) in its own process and
N simulated sites on gmqtt connections with an in-flight window
(``bench.swarm.GatewaySim``, ``bench.hubs``, as ``bench.cycle`` uses them),
each site answering after the same latencies; the time is the request's arrival
at the sites -> the last allocation back at them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import queue
import random
import signal
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

from bench.common import (
    fmt,
    local_broker,
    loglog_slope,
    machine_info,
    machine_line,
    parse_sizes,
    progress,
)
from central.core import Cycle, Offer, get_strategy

DEFAULT_SIZES = (1_000, 10_000, 50_000, 100_000)
METHODS = ("threads", "pool", "asyncio")
STUDY_SIZES = (1_000, 10_000, 50_000, 100_000)
STUDY_SECONDS = {
    "threads": (2.2, 4.7, 16.9, 34.0),
    "pool": (2.3, 4.5, 10.5, 22.0),
    "asyncio": (2.0, 2.2, 3.5, 5.2),
}
STUDY_SLOPES = {"threads": 0.59, "pool": 0.47, "asyncio": 0.20}
DEFAULT_LATENCY_S = 2.0
DEFAULT_MAX_THREADS = 1_000
THREAD_STACK_BYTES = 256 * 1024  # plenty for one EMS; 100s of MB less than the 8 MB default
CYCLE_START = datetime(2026, 6, 21, 12, 0, tzinfo=UTC)
CYCLE_ID = "2026-06-21T12:00:00Z"


# One simulated EMS ----------------------------------------------------------------------


def ems_answer(i: int, seed: int) -> bytes:
    """EMS ``i``'s reply: the study's draw from its own generator, as JSON."""
    rng = random.Random(seed * 1_000_003 + i)
    net_kw = rng.randint(-5, 10)
    flex_kw = round(rng.uniform(0.01, 5.0), 2)
    return orjson.dumps({"v": 1, "cycle": CYCLE_ID, "site": f"s{i:06d}", "flex_kw": flex_kw,
                         "net_kw": net_kw})


def ems_blocking(i: int, seed: int, ready_at: float) -> bytes:
    """The EMS as a thread or a pool worker sees it: wait until its answer is ready."""
    wait = ready_at - time.monotonic()
    if wait > 0:
        time.sleep(wait)
    return ems_answer(i, seed)


def _warm(_: int) -> int:
    time.sleep(0.2)  # long enough that every worker gets one: all are started before t0
    return os.getpid()


# The allocator every variant feeds ------------------------------------------------------


class Allocator:
    """FIFO on the real core: one ``Offer`` per reply, in arrival order."""

    def __init__(self, n: int, seed: int) -> None:
        self.n = n
        sites = frozenset(f"s{i:06d}" for i in range(n))
        surplus_kw = 5.0 * n + 1.0  # more than every EMS can take: all are served
        self.cycle, _ = Cycle.open(CYCLE_START, surplus_kw, sites, get_strategy("fifo"),
                                   deadline_s=3600.0)
        self.t0 = time.monotonic()  # the request; each variant sets it again at its t0
        self.count = 0

    def take(self, payload: bytes) -> None:
        msg = orjson.loads(payload)
        self.cycle.offer(Offer(msg["site"], CYCLE_START, msg["flex_kw"],
                               time.monotonic() - self.t0))
        self.count += 1

    def check(self) -> None:
        cycle = self.cycle
        if len(cycle.decisions) != self.n or cycle.close_reason != "all_replied":
            raise RuntimeError(f"{len(cycle.decisions)}/{self.n} served, "
                               f"closed {cycle.close_reason!r}")


def run_threads(n: int, seed: int, latencies: Sequence[float], max_threads: int) -> float:
    """One thread per EMS, at most ``max_threads`` alive; one allocator thread."""
    alloc = Allocator(n, seed)
    replies: queue.SimpleQueue[bytes] = queue.SimpleQueue()
    slots = threading.BoundedSemaphore(max_threads)
    failures: list[BaseException] = []

    def ems(i: int, ready_at: float) -> None:
        try:
            replies.put(ems_blocking(i, seed, ready_at))
        except BaseException as exc:  # reported after the run, never lost in a thread
            failures.append(exc)
            replies.put(b"")
        finally:
            slots.release()

    def allocate() -> None:
        for _ in range(n):
            payload = replies.get()
            if payload:
                alloc.take(payload)

    old_stack = threading.stack_size(THREAD_STACK_BYTES)
    try:
        t0 = alloc.t0 = time.monotonic()
        consumer = threading.Thread(target=allocate, name="allocator")
        consumer.start()
        for i in range(n):
            slots.acquire()
            threading.Thread(target=ems, args=(i, t0 + latencies[i]), daemon=True).start()
        consumer.join()
        elapsed = time.monotonic() - t0
    finally:
        threading.stack_size(old_stack)
    if failures:
        raise RuntimeError(f"{len(failures)} EMS threads failed: {failures[0]!r}")
    alloc.check()
    return elapsed


def run_pool(n: int, seed: int, latencies: Sequence[float], pool: ProcessPoolExecutor) -> float:
    """One pool task per EMS; done-callbacks queue the replies for one allocator thread."""
    alloc = Allocator(n, seed)
    replies: queue.SimpleQueue[Future[bytes]] = queue.SimpleQueue()
    errors: list[BaseException] = []

    def allocate() -> None:
        for _ in range(n):
            fut = replies.get()
            try:
                alloc.take(fut.result())
            except BaseException as exc:
                errors.append(exc)

    t0 = alloc.t0 = time.monotonic()
    consumer = threading.Thread(target=allocate, name="allocator")
    consumer.start()
    for i in range(n):
        pool.submit(ems_blocking, i, seed, t0 + latencies[i]).add_done_callback(replies.put)
    consumer.join()
    elapsed = time.monotonic() - t0
    if errors:
        raise RuntimeError(f"{len(errors)} EMS tasks failed: {errors[0]!r}")
    alloc.check()
    return elapsed


async def run_asyncio(n: int, seed: int, latencies: Sequence[float]) -> float:
    """One task per EMS feeding an ``asyncio.Queue``; the allocator is this coroutine."""
    alloc = Allocator(n, seed)
    replies: asyncio.Queue[bytes] = asyncio.Queue()

    async def ems(i: int, ready_at: float) -> None:
        wait = ready_at - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        replies.put_nowait(ems_answer(i, seed))

    t0 = alloc.t0 = time.monotonic()
    async with asyncio.TaskGroup() as tg:
        for i in range(n):
            tg.create_task(ems(i, t0 + latencies[i]))
        for _ in range(n):
            alloc.take(await replies.get())
        elapsed = time.monotonic() - t0
    alloc.check()
    return elapsed


def draw_latencies(n: int, seed: int, latency_s: float) -> list[float]:
    """Each EMS's latency, uniform in [0, latency_s], the same for every variant."""
    rng = random.Random(seed)
    return [rng.uniform(0.0, latency_s) for _ in range(n)]


# Measuring -------------------------------------------------------------------------------


@dataclass
class Measured:
    """Seconds per run for one method and N."""

    method: str
    n: int
    seconds: list[float] = field(default_factory=list)
    floor_s: float = 0.0  # the largest latency drawn: no method can finish before it
    cpu_s: list[float] = field(default_factory=list)  # over the broker: the coordinator's CPU
    complete: bool = True
    note: str = ""

    @property
    def median(self) -> float | None:
        return statistics.median(self.seconds) if self.seconds else None


@dataclass
class ConcurrencyResult:
    sizes: list[int]
    repeat: int
    latency_s: float
    max_threads: int
    workers: int
    seed: int
    runs: list[Measured]
    machine: dict[str, Any]
    wall_s: float = 0.0
    plot: str | None = None

    def get(self, method: str, n: int) -> Measured | None:
        return next((m for m in self.runs if m.method == method and m.n == n), None)

    def medians(self, method: str) -> list[float | None]:
        return [(m.median if (m := self.get(method, n)) else None) for n in self.sizes]

    def slope(self, method: str) -> float | None:
        pairs = [(n, t) for n, t in zip(self.sizes, self.medians(method), strict=True)
                 if t is not None]
        if len(pairs) < 2:
            return None
        return loglog_slope([p[0] for p in pairs], [p[1] for p in pairs])

    @property
    def methods(self) -> list[str]:
        return [m for m in (*METHODS, "broker") if any(r.method == m for r in self.runs)]

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["medians"] = {m: dict(zip(self.sizes, self.medians(m), strict=True))
                          for m in self.methods}
        out["slopes"] = {m: self.slope(m) for m in self.methods}
        out["study"] = {"sizes": STUDY_SIZES, "seconds": STUDY_SECONDS,
                        "slopes_reported": STUDY_SLOPES,
                        "slopes_least_squares": {m: loglog_slope(STUDY_SIZES, t)
                                                 for m, t in STUDY_SECONDS.items()}}
        return out


def measure_in_process(sizes: Sequence[int], repeat: int, methods: Sequence[str], *,
                       latency_s: float, max_threads: int, workers: int, seed: int,
                       into: list[Measured]) -> None:
    """Every in-process method at every N, runs interleaved so noise hits them alike."""

    pool = None
    if "pool" in methods:
        pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
    try:
        if pool is not None:
            pids = set(pool.map(_warm, range(workers * 2)))
            progress(f"process pool ready: {len(pids)} workers")
        for n in sizes:
            latencies = draw_latencies(n, seed, latency_s)
            floor = max(latencies)
            rows = {m: Measured(m, n, floor_s=floor) for m in methods}
            into.extend(rows.values())
            for r in range(repeat):
                for method in methods:
                    row = rows[method]
                    if method == "threads":
                        elapsed = run_threads(n, seed, latencies, max_threads)
                    elif method == "pool":
                        assert pool is not None
                        elapsed = run_pool(n, seed, latencies, pool)
                    else:
                        elapsed = asyncio.run(run_asyncio(n, seed, latencies))
                    row.seconds.append(elapsed)
                progress(f"N={n:,} run {r + 1}/{repeat}: " + ", ".join(
                    f"{m} {rows[m].seconds[-1]:.2f} s" for m in methods))
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


async def measure_over_broker(sizes: Sequence[int], repeat: int, *, latency_s: float,
                              seed: int, broker: Any, root: str, workdir: Path,
                              into: list[Measured]) -> None:
    """The asyncio variant as the product runs it: real coordinator, real Mosquitto."""
    from bench.hubs import HubSpec, run_coordinator_cycle, start_hub
    from bench.swarm import CYCLE_ZERO, GATEWAY_CONNECTIONS, WINDOW, GatewaySim
    from protocol import Topics

    for n in sizes:
        latencies = draw_latencies(n, seed, latency_s)
        row = Measured("broker", n, floor_s=max(latencies))
        into.append(row)
        community = f"cc{n}-{uuid.uuid4().hex[:6]}"
        sim = GatewaySim(Topics(community, root), n, GATEWAY_CONNECTIONS, WINDOW)
        hub = start_hub(HubSpec("coordinator", broker.host, broker.port, root, community, n,
                                WINDOW, recorder_path=str(workdir / f"central-{n}.sqlite")))
        finished = False
        try:
            await asyncio.gather(sim.start(broker.host, broker.port), hub.ready())
            await sim.announce()
            ingest_s, _ = await hub.expect("known", 120 + n / 200)
            progress(f"N={n:,} over the broker: the coordinator knows every site "
                     f"after {ingest_s:.2f} s")
            for r in range(repeat):
                outcome = await run_coordinator_cycle(hub, sim, CYCLE_ZERO + timedelta(hours=r),
                                                      n, delays_s=latencies)
                run = outcome.run
                if not outcome.complete or run.requested_at is None or run.last_alloc_at is None:
                    row.complete = False
                    row.note = (f"{run.distinct_sites}/{n} allocations, "
                                f"closed {outcome.reason}")
                    progress(f"N={n:,} over the broker: incomplete, {row.note}")
                    continue
                row.seconds.append(run.last_alloc_at - run.requested_at)
                row.cpu_s.append(outcome.done["cpu_s"])
                progress(f"N={n:,} over the broker, run {r + 1}/{repeat}: "
                         f"{row.seconds[-1]:.2f} s to the last allocation")
            finished = True
        finally:
            await sim.stop()
            await hub.stop(finished)


def run_experiment(
    sizes: Sequence[int] = DEFAULT_SIZES, repeat: int = 3, *,
    methods: Sequence[str] = METHODS, latency_s: float = DEFAULT_LATENCY_S,
    max_threads: int = DEFAULT_MAX_THREADS, workers: int | None = None, seed: int = 1,
    over_broker: bool = True, broker: Any | None = None, root: str = "ems",
) -> ConcurrencyResult:
    """In-process methods first, then the broker variant (a local Mosquitto unless given)."""
    t0 = time.monotonic()
    workers = workers or os.cpu_count() or 1
    result = ConcurrencyResult(list(sizes), repeat, latency_s, max_threads, workers, seed, [],
                               machine_info())
    measure_in_process(sizes, repeat, methods, latency_s=latency_s, max_threads=max_threads,
                       workers=workers, seed=seed, into=result.runs)
    if over_broker:
        with contextlib.ExitStack() as stack:
            broker = local_broker(stack, broker)
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="ems-conc-")))
            asyncio.run(measure_over_broker(sizes, repeat, latency_s=latency_s, seed=seed,
                                            broker=broker, root=root, workdir=workdir,
                                            into=result.runs))
    result.machine["loadavg_end"] = os.getloadavg()
    result.wall_s = time.monotonic() - t0
    return result


# Reporting ---------------------------------------------------------------------------------


LABELS = {
    "threads": "threads (one per EMS, <= {max_threads} alive)",
    "pool": "process pool ({workers} workers)",
    "asyncio": "asyncio (one task per EMS)",
    "broker": "asyncio over Mosquitto, real coordinator",
}


def format_table(result: ConcurrencyResult) -> str:
    """Ours next to the study's, one row per method and source, slopes at the end."""
    sizes = result.sizes
    header = ["seconds, t0 -> last reply allocated", *(f"N={n:,}" for n in sizes), "slope k"]
    rows = [header]
    for method in result.methods:
        label = LABELS[method].format(max_threads=result.max_threads, workers=result.workers)
        rows.append([f"{label}: ours", *(fmt(t, ".2f") for t in result.medians(method)),
                     fmt(result.slope(method), ".2f")])
        study = dict(zip(STUDY_SIZES, STUDY_SECONDS.get(method, ()), strict=False))
        if method in STUDY_SECONDS:
            rows.append([f"{' ' * len(label)}  study", *(fmt(study.get(n), ".1f") for n in sizes),
                         f"{STUDY_SLOPES[method]:.2f}"])
    if "broker" in result.methods:
        cpu = [statistics.median(m.cpu_s) if (m := result.get("broker", n)) and m.cpu_s
               else None for n in sizes]
        rows.append(["  the coordinator's CPU time in that run", *(fmt(c, ".2f") for c in cpu),
                     ""])
    floors = [(m.floor_s if (m := result.get(result.methods[0], n)) else None) for n in sizes]
    rows.append(["largest latency drawn (no method can be faster)",
                 *(fmt(f, ".2f") for f in floors), ""])
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                       for i, (c, w) in enumerate(zip(r, widths, strict=True))) for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    lines.append("")
    lines.append(f"median of {result.repeat}; latency per EMS uniform in "
                 f"[0, {result.latency_s:g}] s; slope k: least squares of log t on log N over "
                 "the sizes shown (the study's: over 1k, 10k, 50k, 100k)")
    for m in result.runs:
        if not m.complete:
            lines.append(f"WARNING: {m.method} at N={m.n:,} incomplete: {m.note}")
    lines.append(f"{machine_line(result.machine)}; wall {result.wall_s:.0f} s"
                 + (f"; plot {result.plot}" if result.plot else ""))
    return "\n".join(lines)


def write_plot(result: ConcurrencyResult, out_dir: Path) -> Path:
    """Log-log: ours (solid) and the study's (dashed) per method (PNG, Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "concurrency.png"
    colors = {"threads": "tab:red", "pool": "tab:orange", "asyncio": "tab:blue",
              "broker": "tab:green"}
    fig, ax = plt.subplots(figsize=(8, 5.5))
    for method in result.methods:
        pts = [(n, t) for n, t in zip(result.sizes, result.medians(method), strict=True) if t]
        if pts:
            k = result.slope(method)
            name = "asyncio over Mosquitto + coordinator" if method == "broker" else method
            ax.plot(*zip(*pts, strict=True), "o-", color=colors[method],
                    label=f"{name}: ours (k = {fmt(k, '.2f')})")
        if method in STUDY_SECONDS:
            ax.plot(STUDY_SIZES, STUDY_SECONDS[method], "s--", color=colors[method], alpha=0.6,
                    label=f"{method}: study (k = {STUDY_SLOPES[method]:.2f})")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("simulated EMS (N)")
    ax.set_ylabel("seconds to allocate every reply")
    ax.grid(which="both", alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"Concurrency: latency U(0, {result.latency_s:g}) s, median of {result.repeat}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.concurrency",
        description="The study's threads / pool / asyncio experiment, side by side with its "
                    "figures, then over a real broker (docs/benchmarks.md, Concurrency).",
    )
    parser.add_argument("--sizes", type=parse_sizes, default=list(DEFAULT_SIZES),
                        help="comma-separated N (default 1k,10k,50k,100k)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per N; medians reported")
    parser.add_argument("--latency-s", type=float, default=DEFAULT_LATENCY_S,
                        help="largest EMS latency; each is uniform in [0, this] (default 2)")
    parser.add_argument("--max-threads", type=int, default=DEFAULT_MAX_THREADS,
                        help="threads alive at once in the threads variant (default 1000)")
    parser.add_argument("--workers", type=int, default=None,
                        help="process pool workers (default: one per CPU)")
    parser.add_argument("--methods", default=",".join(METHODS),
                        help="in-process methods to run (default threads,pool,asyncio)")
    parser.add_argument("--no-broker", action="store_true",
                        help="skip the run over a real broker")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("out/concurrency"),
                        help="directory for the log-log plot (default out/concurrency)")
    parser.add_argument("--json", action="store_true",
                        help="print JSON on stdout (the table then goes to stderr)")
    args = parser.parse_args(argv)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if unknown := [m for m in methods if m not in METHODS]:
        parser.error(f"unknown method(s) {', '.join(unknown)}; known: {', '.join(METHODS)}")
    if args.repeat < 1 or args.max_threads < 1 or (args.workers is not None and args.workers < 1):
        parser.error("--repeat, --max-threads and --workers must be at least 1")
    if args.latency_s < 0:
        parser.error("--latency-s must not be negative")
    from protocol.logs import configure_logging

    configure_logging("warning", "console")
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        result = run_experiment(
            args.sizes, args.repeat, methods=methods, latency_s=args.latency_s,
            max_threads=args.max_threads, workers=args.workers, seed=args.seed,
            over_broker=not args.no_broker)
    except KeyboardInterrupt:
        progress("interrupted; broker, helper processes and temp files cleaned up")
        return 130
    result.plot = str(write_plot(result, args.out))
    table = format_table(result)
    if args.json:
        sys.stderr.write(table + "\n")
        sys.stdout.write(json.dumps(result.as_dict(), indent=2) + "\n")
    else:
        sys.stdout.write(table + "\n")
    return 0 if all(m.complete for m in result.runs) else 1


if __name__ == "__main__":
    sys.exit(main())

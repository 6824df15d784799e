"""A day of cycles for N sites: does the coordinator keep its pace and its memory?

``python -m bench.soak`` (see docs/benchmarks.md, "Soak"). On one local Mosquitto
(``ems.broker.EmbeddedBroker``, 127.0.0.1 only) it runs:

- **the coordinator**: the real ``central.app.Coordinator`` (FIFO, SQLite
  recorder in a temp dir) in a spawned process of its own, so its memory is
  measured alone. It runs as the daemon does: its own scheduler opens a cycle
  at every period boundary of an ``AcceleratedClock``, which squeezes one day
  into ``--cycles`` periods of ``--period-s`` real seconds each;
- **the sites**: ``bench.soak_sites.SoakSwarm`` in this process, N simulated
  homes on a few gmqtt connections with an in-flight window. At every boundary
  each home sends its report for the period that ended (as a gateway does);
  each answers the request with its flexibility; at mid-period each sends its
  net load (a PV curve: nothing at night, so night cycles send no request).

Near the end of each period the coordinator's process reports its RSS
(``/proc/self/status``), the interpreter's allocated blocks and, with
``--tracemalloc``, the traced heap. At the end the recorder is read back: every
report sent must be recorded and acknowledged, and no site may hold two
decisions in one cycle. The growth check fits a line through RSS and cycle time
over the last two thirds of the cycles.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sqlite3
import sys
import tempfile
import time
import tracemalloc
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from bench.common import (
    Hub,
    LineFit,
    fit_line,
    local_broker,
    machine_info,
    peak_rss_mb,
    proc_status,
    progress,
    recv,
    until,
)
from bench.soak_report import format_line, format_table, write_plot

DEFAULT_SITES = 1_000
DEFAULT_CYCLES = 24
DAY_START = datetime(2026, 6, 21, 0, 0, tzinfo=UTC)
DAY_S = 86_400.0
REPLY_SHARE = 0.7  # reply_timeout_s as a share of the period
SAMPLE_AT = 0.9  # the memory sample, as a share of the period


def default_period_s(sites: int) -> float:
    """Real seconds per period: room for a cycle, N reports and N net loads on 2 cores.

    The coordinator commits each report on its own (about 3,700 a second on an idle
    reference machine, a few hundred when others share its disk).
    """
    return max(2.0, sites / 500)


# The coordinator's process ------------------------------------------------------------


@dataclass(frozen=True)
class SoakHubSpec:
    """What the coordinator's process needs; picklable for ``spawn``."""

    host: str
    port: int
    root: str
    community: str
    recorder_path: str
    period_s: float  # clock seconds
    reply_timeout_s: float  # clock seconds
    speed: float
    max_inflight: int = 1000  # the coordinator's [mqtt] max_inflight, as in bench.cycle
    tracemalloc: bool = False


def soak_hub_process(conn: Connection, spec: SoakHubSpec) -> None:
    """Entry point of the coordinator's process."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops us
    try:
        asyncio.run(_soak_hub(conn, spec))
    except (EOFError, BrokenPipeError):
        pass
    finally:
        conn.close()


async def _soak_hub(conn: Connection, spec: SoakHubSpec) -> None:
    # Imported here, not at the top: a spawned child also imports the parent's main
    # module, and the coordinator's process should hold what the coordinator needs.
    from bench.hubs import configure_hub_logging
    from central.app import Coordinator
    from central.config import load_central_settings
    from runtime.clock import AcceleratedClock

    tally = configure_hub_logging()
    if spec.tracemalloc:
        tracemalloc.start()
    conn.send(("ready", os.getpid()))
    cmd = await recv(conn, 600)
    if cmd[0] != "start":
        conn.send(("bye", {}))
        return
    settings = load_central_settings(
        None,
        env={},
        mqtt={"host": spec.host, "port": spec.port, "max_inflight": spec.max_inflight,
              "client_id": f"soak-central-{spec.community}"},
        community={"id": spec.community, "topic_root": spec.root},
        cycle={"period_s": spec.period_s, "reply_timeout_s": spec.reply_timeout_s,
               "strategy": "fifo"},
        recorder={"url": f"sqlite:///{spec.recorder_path}"},
    )
    clock = AcceleratedClock(spec.speed, cmd[1])
    coordinator = Coordinator(settings, clock)
    inside: dict[str, dict[str, Any]] = {}

    def listen(event: str, data: Any) -> None:
        if event == "cycle_opened":
            inside[data.cycle_id] = {"opened_at": time.monotonic()}
        elif event == "cycle_closed":
            inside.setdefault(data[0].cycle_id, {})["closed_at"] = time.monotonic()

    coordinator.add_listener(listen)
    stop = asyncio.Event()
    task = asyncio.create_task(coordinator.run(stop))
    try:
        async with asyncio.timeout(15):
            await coordinator.wait_ready()
        await asyncio.sleep(0.3)  # SUBSCRIBE sent is not SUBSCRIBE acknowledged
        conn.send(("running", clock.now(), time.monotonic()))
        while True:
            cmd = await recv(conn, 3600)
            if cmd[0] == "stop":
                break
            status = proc_status("self")
            traced = tracemalloc.get_traced_memory() if spec.tracemalloc else None
            conn.send(("sample", {
                "rss_mb": status.get("VmRSS"), "hwm_mb": status.get("VmHWM"),
                "heap_blocks": sys.getallocatedblocks(),
                "traced_mb": traced[0] / 2**20 if traced else None,
                "traced_peak_mb": traced[1] / 2**20 if traced else None,
                "cpu_s": time.process_time(), "queue": coordinator.queue.qsize(),
                "bus_pending": coordinator.bus.pending, "stats": coordinator.stats.as_dict(),
                "running": not task.done(), "inside": inside.get(cmd[1], {}),
            }))
    finally:
        tally.quiet = True
        stop.set()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(30):
                await task
    conn.send(("bye", {"peak_rss_mb": peak_rss_mb(), "log_warnings": tally.warnings(),
                       "log_counts": dict(tally.counts)}))


# One run -----------------------------------------------------------------------------------


@dataclass
class CycleRow:
    """One period as measured: the cycle, the coordinator's memory, the recorder."""

    index: int
    cycle: str
    request: bool = False
    surplus_kw: float | None = None
    reason: str | None = None
    replies: int | None = None
    sites: int | None = None
    allocated_kw: float | None = None
    allocations: int = 0
    duplicate_allocations: int = 0
    cycle_s: float | None = None  # request at the sites -> cycle/closed at the sites
    last_alloc_s: float | None = None
    open_lag_s: float | None = None  # boundary -> request (or closed) at the sites
    internal_s: float | None = None  # inside the coordinator: cycle_opened -> cycle_closed
    closed_late: bool = False  # not closed when the period's sample was taken
    rss_mb: float | None = None
    hwm_mb: float | None = None
    heap_blocks: int | None = None
    traced_mb: float | None = None
    recorder_mb: float | None = None  # the database file and its write-ahead log
    recorder_wal_mb: float | None = None
    acks_missing: int = 0  # sites whose report of the previous period is not acked yet
    swarm_late_s: float = 0.0  # how late this process sent the period's messages
    coordinator_cpu_s: float | None = None  # the coordinator's CPU time over the period
    queue: int | None = None  # messages and events waiting in the coordinator's queue


@dataclass
class SoakResult:
    sites: int
    cycles: int
    days: float
    period_s: float
    speed: float
    seed: int
    tracemalloc: bool
    rows: list[CycleRow]
    machine: dict[str, Any]
    wall_s: float = 0.0
    reports_sent: int = 0
    reports_recorded: int | None = None
    acks_missing_at_end: int = 0
    decisions_recorded: int | None = None
    decisions_duplicated: int | None = None
    allocations_received: int = 0
    stray_requests: int = 0
    coordinator_peak_rss_mb: float | None = None
    coordinator_log_warnings: dict[str, int] = field(default_factory=dict)
    coordinator_alive: bool = True
    growth: dict[str, dict[str, Any]] = field(default_factory=dict)
    plot: str | None = None
    recorder_dir: str = ""

    @property
    def checks(self) -> dict[str, bool]:
        """What must hold whatever the speed."""
        return {
            "no_report_lost": self.reports_recorded == self.reports_sent,
            "every_report_acked": self.acks_missing_at_end == 0,
            "at_most_one_decision_per_site_per_cycle":
                self.decisions_duplicated == 0
                and all(r.duplicate_allocations == 0 for r in self.rows),
            "every_decision_reached_its_site":
                self.decisions_recorded == self.allocations_received,
            "every_cycle_closed": all(r.reason is not None for r in self.rows),
            "coordinator_ran_throughout": self.coordinator_alive,
        }

    @property
    def ok(self) -> bool:
        return all(self.checks.values())

    def as_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if k != "rows"}
        out["checks"] = self.checks
        out["rows"] = [asdict(r) for r in self.rows]
        return out


def _recorder_mb(path: Path) -> tuple[float, float]:
    """Sizes (MB) of the database file with its write-ahead log, and of the log alone.

    The log grows to about 4 MB (SQLite checkpoints at 1000 pages) and is then
    reused from its start without shrinking.
    """
    sizes = []
    for suffix in ("", "-wal"):
        try:
            sizes.append((path.parent / (path.name + suffix)).stat().st_size / 2**20)
        except OSError:
            sizes.append(0.0)
    return sizes[0] + sizes[1], sizes[1]


def _read_back(path: Path) -> tuple[int, int, int]:
    """(reports, decisions, decisions beyond one per site and cycle) from the records."""
    db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        reports = db.execute("SELECT COUNT(*) FROM reports").fetchone()[0]
        decisions, distinct = db.execute(
            "SELECT COUNT(*), COUNT(DISTINCT cycle || ' ' || site) FROM decisions").fetchone()
    finally:
        db.close()
    return int(reports), int(decisions), int(decisions) - int(distinct)


async def _sleep_until(mono: float) -> float:
    """Sleep until monotonic time ``mono``; return how late we already were (s)."""
    late = time.monotonic() - mono
    if late < 0:
        await asyncio.sleep(-late)
        return 0.0
    return late


async def run_soak(
    sites: int = DEFAULT_SITES, cycles: int = DEFAULT_CYCLES, *, days: float = 1.0,
    period_s: float | None = None, seed: int = 1, trace: bool = False,
    broker: Any | None = None, root: str = "ems", recorder_dir: Path | None = None,
    on_cycle: Callable[[CycleRow], None] | None = None,
) -> SoakResult:
    """Run the soak; start (and always stop) a local Mosquitto unless ``broker`` is given."""
    from bench.soak_sites import SiteModel, SoakSwarm
    from protocol import Topics
    from protocol.models import format_utc

    t0 = time.monotonic()
    period_clock_s = DAY_S * days / cycles
    period_real_s = period_s or default_period_s(sites)
    speed = period_clock_s / period_real_s
    period = timedelta(seconds=period_clock_s)
    result = SoakResult(sites, cycles, days, period_real_s, speed, seed, trace, [],
                        machine_info(), recorder_dir=str(recorder_dir or tempfile.gettempdir()))
    with contextlib.ExitStack() as stack:
        broker = local_broker(stack, broker)
        workdir = Path(stack.enter_context(
            tempfile.TemporaryDirectory(prefix="ems-soak-", dir=recorder_dir)))
        db_path = workdir / "central.sqlite"
        community = f"soak-{uuid.uuid4().hex[:6]}"
        spec = SoakHubSpec(broker.host, broker.port, root, community, str(db_path),
                           period_clock_s, REPLY_SHARE * period_clock_s, speed,
                           tracemalloc=trace)
        swarm = SoakSwarm(Topics(community, root), SiteModel(sites, seed), period_clock_s)
        hub = Hub(soak_hub_process, spec, "coordinator", "bench-soak")
        finished = False
        try:
            await asyncio.gather(swarm.start(broker.host, broker.port), hub.ready())
            # Real seconds before the day starts: the coordinator's start, the sites'
            # status, then their first net loads half a period before the first boundary.
            lead_s = 2.0 + sites / 2500 + period_real_s / 2
            hub.send("start", DAY_START - timedelta(seconds=lead_s * speed))
            clock_now, clock_mono = await hub.expect("running", 60)
            progress(f"coordinator pid {hub.pid}; {sites:,} sites, {cycles} cycles of "
                     f"{period_real_s:g} s ({period_clock_s / 60:g} min at x{speed:.0f}); "
                     f"broker {broker.host}:{broker.port}")

            def real_at(at: datetime) -> float:
                return float(clock_mono + (at - clock_now).total_seconds() / speed)

            swarm.announce()
            await _sleep_until(real_at(DAY_START - period / 2))
            swarm.send_netloads(-1, DAY_START - period / 2)
            swarm.prepare_replies(0, DAY_START)
            reports: list[bytes] = []
            cpu = 0.0
            for k in range(cycles):
                start = DAY_START + k * period
                late = await _sleep_until(real_at(start))
                if k > 0:
                    swarm.send_reports(k, reports)
                late = max(late, await _sleep_until(real_at(start + period / 2)))
                net = swarm.send_netloads(k, start + period / 2)
                if k + 1 < cycles:
                    swarm.prepare_replies(k + 1, start + period)
                reports = swarm.build_reports(k, start, net)
                late = max(late, await _sleep_until(real_at(start + SAMPLE_AT * period)))
                row = CycleRow(k, format_utc(start), swarm_late_s=late,
                               acks_missing=swarm.acks_missing())
                row.recorder_mb, row.recorder_wal_mb = _recorder_mb(db_path)
                hub.send("sample", row.cycle)
                cpu = _take_sample(row, await hub.expect("sample", 60 + sites / 500), cpu)
                _take_cycle(row, swarm, real_at(start))
                row.closed_late = row.reason is None
                result.rows.append(row)
                if on_cycle is not None:
                    on_cycle(row)
            # The day's last report goes at the next boundary, as a gateway sends it.
            await _sleep_until(real_at(DAY_START + cycles * period))
            swarm.send_reports(cycles, reports)
            with contextlib.suppress(TimeoutError):
                await until(lambda: swarm.acks_missing() == 0, 60 + sites / 200, "acks")
            result.acks_missing_at_end = swarm.acks_missing()
            hub.send("sample", "")
            result.coordinator_alive = (await hub.expect("sample", 60))["running"]
            finished = True
        finally:
            await swarm.stop()
            await hub.stop(finished)
        for row in result.rows:  # a close that came after its sample
            _take_cycle(row, swarm, None)
        result.reports_sent = swarm.reports_sent
        result.stray_requests = swarm.stray
        result.allocations_received = sum(len(c.allocs) for c in swarm.cycles.values())
        result.coordinator_peak_rss_mb = hub.farewell.get("peak_rss_mb")
        result.coordinator_log_warnings = hub.farewell.get("log_warnings", {})
        (result.reports_recorded, result.decisions_recorded,
         result.decisions_duplicated) = _read_back(db_path)
    result.machine["loadavg_end"] = os.getloadavg()
    result.growth = growth(result.rows)
    result.wall_s = time.monotonic() - t0
    return result


def _take_sample(row: CycleRow, sample: dict[str, Any], cpu_before: float) -> float:
    """Copy the coordinator's sample into ``row``; return its CPU clock for the next one."""
    row.rss_mb, row.hwm_mb = sample["rss_mb"], sample["hwm_mb"]
    row.heap_blocks, row.traced_mb = sample["heap_blocks"], sample["traced_mb"]
    row.coordinator_cpu_s = sample["cpu_s"] - cpu_before
    row.queue = sample["queue"]
    inside = sample["inside"]
    if "opened_at" in inside and "closed_at" in inside:
        row.internal_s = inside["closed_at"] - inside["opened_at"]
    return float(sample["cpu_s"])


def _take_cycle(row: CycleRow, swarm: Any, boundary_at: float | None) -> None:
    seen = swarm.cycles.get(row.cycle)
    if seen is None:
        return
    row.request = seen.requested_at is not None
    row.allocations, row.duplicate_allocations = len(seen.allocs), seen.duplicate_allocs
    if seen.closed is not None:
        closed = seen.closed
        row.reason, row.replies, row.sites = closed["reason"], closed["replies"], closed["sites"]
        row.surplus_kw, row.allocated_kw = closed["surplus_kw"], closed["allocated_kw"]
    if seen.requested_at is not None:
        if seen.closed_at is not None:
            row.cycle_s = seen.closed_at - seen.requested_at
        if seen.last_alloc_at is not None:
            row.last_alloc_s = seen.last_alloc_at - seen.requested_at
    first = seen.requested_at or seen.closed_at
    if boundary_at is not None and first is not None:
        row.open_lag_s = first - boundary_at


# Growth ------------------------------------------------------------------------------------


def _verdict(fit: LineFit | None, unit: str) -> dict[str, Any]:
    if fit is None:
        return {"verdict": "too few points"}
    verdict = "no growth" if fit.within_noise else "grows" if fit.slope > 0 else "shrinks"
    return {"slope": fit.slope, "ci95": fit.slope_ci95, "points": fit.points, "unit": unit,
            "intercept": fit.intercept, "verdict": verdict}


def growth(rows: Sequence[CycleRow]) -> dict[str, dict[str, Any]]:
    """Least-squares slopes over the last two thirds of the cycles.

    "no growth" only when the slope's 95 % interval contains zero. Cycle time is
    fitted over the cycles that sent a request (night cycles have none).
    """
    tail = [r for r in rows if r.index >= len(rows) // 3]

    def fit(pick: Callable[[CycleRow], float | None]) -> LineFit | None:
        pts = [(r.index, v) for r in tail if (v := pick(r)) is not None]
        return fit_line([p[0] for p in pts], [p[1] for p in pts])

    return {
        "rss": _verdict(fit(lambda r: r.rss_mb), "MB/cycle"),
        "cycle_time": _verdict(fit(lambda r: r.cycle_s), "s/cycle"),
        "heap_blocks": _verdict(fit(lambda r: r.heap_blocks), "blocks/cycle"),
        "recorder": _verdict(fit(lambda r: r.recorder_mb), "MB/cycle"),
    }


# Command line ------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.soak",
        description="A compressed day of cycles against the real coordinator "
                    "(docs/benchmarks.md, Soak).",
    )
    parser.add_argument("--sites", type=int, default=DEFAULT_SITES,
                        help=f"simulated sites (default {DEFAULT_SITES:,}; the full soak: 10000)")
    parser.add_argument("--cycles", type=int, default=DEFAULT_CYCLES,
                        help=f"cycles, i.e. periods per run (default {DEFAULT_CYCLES}; "
                             "the full soak: 96)")
    parser.add_argument("--days", type=float, default=1.0,
                        help="days the cycles cover (default 1: 96 cycles = 15-min periods)")
    parser.add_argument("--period-s", type=float, default=None,
                        help="real seconds per period (default max(2, sites / 500))")
    parser.add_argument("--seed", type=int, default=1, help="the sites' random seed")
    parser.add_argument("--tracemalloc", action="store_true",
                        help="trace the coordinator's Python heap (slows it down)")
    parser.add_argument("--recorder-dir", type=Path, default=None,
                        help="where the recorder's temporary database goes (default: the "
                             "system's temp dir; /dev/shm takes the disk out of the run)")
    parser.add_argument("--out", type=Path, default=Path("out/soak"),
                        help="directory for the plot (default out/soak)")
    parser.add_argument("--json", action="store_true",
                        help="print JSON on stdout (the table then goes to stderr)")
    args = parser.parse_args(argv)
    if args.sites < 1:
        parser.error("--sites must be at least 1")
    if args.cycles < 3:
        parser.error("--cycles must be at least 3 (the growth check fits a line)")
    if args.days <= 0 or (args.period_s is not None and args.period_s <= 0):
        parser.error("--days and --period-s must be positive")
    from rich.console import Console
    from rich.progress import Progress, TimeElapsedColumn

    from protocol.logs import configure_logging

    configure_logging("warning", "console")
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    console = Console(stderr=True)
    try:
        with Progress(*Progress.get_default_columns(), TimeElapsedColumn(),
                      console=console) as bar:
            task = bar.add_task(f"soak {args.sites:,} sites", total=args.cycles)

            def on_cycle(row: CycleRow) -> None:
                bar.console.print(format_line(row), highlight=False, soft_wrap=True)
                bar.advance(task)

            result = asyncio.run(run_soak(
                args.sites, args.cycles, days=args.days, period_s=args.period_s,
                seed=args.seed, trace=args.tracemalloc, recorder_dir=args.recorder_dir,
                on_cycle=on_cycle))
    except KeyboardInterrupt:
        progress("interrupted; broker, coordinator and temp files cleaned up")
        return 130
    result.plot = str(write_plot(result, args.out))
    table = format_table(result)
    if args.json:
        sys.stderr.write(table + "\n")
        sys.stdout.write(json.dumps(result.as_dict(), indent=2) + "\n")
    else:
        sys.stdout.write(table + "\n")
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())

"""How long the coordinator's event loop stalls while ``milp`` decides a large cycle.

``python -m bench.solver_offloop`` (see docs/benchmarks.md, "Solver off the
event loop"). For each N, one real ``central.app.Coordinator`` (``milp``,
SQLite recorder in a temporary directory, connected to a local Mosquitto on
127.0.0.1) runs two cycles on the same N replies, side by side:

- **on the loop** (how the coordinator ran a solver before): the core's calls
  are made inline by the consumer, as for fifo;
- **solver thread** (as shipped): the calls that may solve go to the
  coordinator's solver thread (``Coordinator._core``) while the loop runs on.

The N sites' status, net load and flex messages go into the coordinator's
queue through its MQTT sink (``_enqueue_message``, what the bus callback
calls), so the broker's own speed is not in the figures; the allocations
leave through the real broker. The replies are ``ems.simulation``'s scale
inputs: one whole load per site, the surplus half the offers, so HiGHS has a
real choice. A ticker task sleeps 10 ms at a time and records every gap
between two of its wake-ups from the request to the close: the largest gap is
how long nothing else (MQTT, the web page, timers) could run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import logging
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import structlog

from central.app import Coordinator
from central.config import load_central_settings
from ems.broker import EmbeddedBroker
from ems.simulation.scenarios import draw_scale
from protocol import Flex, LoadFlex, NetLoad, SiteStatus, Topics, encode
from protocol.models import format_utc
from runtime.clock import SystemClock

DEFAULT_SIZES = (10_000, 50_000)
# Fine enough for stalls of 100 ms and more; a 1 ms ticker would itself slow the
# solver thread (each wake-up takes the GIL from it).
TICK_S = 0.01
MODES = ("on_loop", "solver_thread")


@dataclass
class Run:
    """One cycle in one mode."""

    sites: int
    strategy: str
    mode: str
    max_gap_ms: float
    p99_gap_ms: float
    ticks: int
    cycle_s: float
    core_s: float
    """Of which in the core's calls (``Coordinator._core``: inline or awaited on the thread)."""
    allocated_kw: float
    method: str | None


def _progress(message: str) -> None:
    sys.stderr.write(f"[bench {time.strftime('%H:%M:%S')}] {message}\n")
    sys.stderr.flush()


async def _ticker(gaps: list[float], stop: asyncio.Event) -> None:
    last = time.perf_counter()
    while not stop.is_set():
        await asyncio.sleep(TICK_S)
        now = time.perf_counter()
        gaps.append(now - last - TICK_S)
        last = now


async def _until(predicate: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


async def measure(broker: Any, sites: int, seed: int, time_limit_s: float,
                  workdir: Path, strategy: str, modes: tuple[str, ...],
                  root: str | None = None) -> list[Run]:
    """``modes`` on the same N replies, one coordinator, one cycle each."""
    root = root or f"b{sites}{strategy.replace('_', '')}"
    options = {"time_limit_s": time_limit_s} if strategy == "milp" else {}
    settings = load_central_settings(
        None, env={},
        mqtt={"host": broker.host, "port": broker.port, "client_id": f"bench-{root}",
              "max_inflight": 1000},
        community={"id": "c1", "topic_root": root},
        cycle={"period_s": 3600, "reply_timeout_s": 3000, "strategy": strategy,
               "strategy_options": options},
        recorder={"url": f"sqlite:///{workdir / f'records-{root}.sqlite'}"},
    )
    topics = Topics("c1", root)
    inputs = draw_scale(sites, seed)
    share_kw = inputs.surplus_kw / sites
    coordinator = Coordinator(settings, SystemClock())
    stop = asyncio.Event()
    task = asyncio.create_task(coordinator.run(stop))
    runs: list[Run] = []
    try:
        await asyncio.wait_for(coordinator.wait_ready(), 30)
        sink = coordinator._enqueue_message
        now = datetime.now(UTC).replace(microsecond=0)
        for o in inputs.offers:
            sink(topics.site_status(o.site), encode(SiteStatus(state="online", version="b")))
            sink(topics.netload(o.site), encode(NetLoad(ts=now, net_export_kw=share_kw)))
        await _until(lambda: len(coordinator.sites.online_sites()) == sites, 120, "sites")
        core, core_s = coordinator._core, [0.0]

        async def timed_core(fn: Any, *args: Any) -> Any:
            started = time.perf_counter()
            try:
                return await core(fn, *args)
            finally:
                core_s[0] += time.perf_counter() - started

        coordinator._core = timed_core  # type: ignore[method-assign]
        start = now.replace(second=0)
        for i, mode in enumerate(modes):
            if mode == "on_loop":
                solver, coordinator._solver_thread = coordinator._solver_thread, None
            period = start + timedelta(minutes=i + 1)
            replies = [
                (topics.flex(o.site), encode(Flex(
                    cycle=period, flex_kw=o.flex_kw,
                    loads=tuple(LoadFlex(id="load", min_kw=ld.min_kw, max_kw=ld.max_kw)
                                for ld in o.loads))))
                for o in inputs.offers
            ]
            before = len(coordinator.closed_cycles)
            core_s[0] = 0.0
            gc.collect()  # each mode starts from the same heap
            gaps: list[float] = []
            ticking = asyncio.Event()
            ticker = asyncio.create_task(_ticker(gaps, ticking))
            started = time.perf_counter()
            await coordinator.start_cycle_now(period)
            await _until(lambda p=period: coordinator.current is not None
                         and coordinator.current.cycle_id == format_utc(p), 30, "request")
            for topic, payload in replies:
                sink(topic, payload)
            await _until(lambda b=before: len(coordinator.closed_cycles) > b, 300, "close")
            cycle_s = time.perf_counter() - started
            ticking.set()
            await ticker
            if mode == "on_loop":
                coordinator._solver_thread = solver
            # The N allocations drain to the broker before the next mode's cycle, so
            # that one does not share the loop (and the GIL) with them.
            await coordinator.bus.drain(300)
            closed = coordinator.closed_cycles[-1]
            ordered = sorted(gaps)
            runs.append(Run(
                sites, strategy, mode, 1000 * max(gaps, default=0.0),
                1000 * ordered[int(0.99 * (len(ordered) - 1))] if ordered else 0.0,
                len(gaps), cycle_s, core_s[0], closed.allocated_kw,
                coordinator.strategy_state.get("last_method"),
            ))
            _progress(f"N={sites} {strategy} {mode}: max gap {runs[-1].max_gap_ms:.0f} ms, "
                      f"cycle {cycle_s:.2f} s (core {core_s[0]:.2f} s), {runs[-1].method} "
                      f"{coordinator.strategy_state.get('last_fallback_reason') or ''}")
    finally:
        stop.set()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 60)
    return runs


PLAN = (
    ("fifo", ("on_loop",)),  # the reference: no solver, the consumer's own work
    ("milp", MODES),
)


def table(runs: list[Run]) -> str:
    lines = [
        "N        | strategy | core calls    | max loop gap | p99 gap  | request->close "
        "| in core | allocated kW | method",
        "---------|----------|---------------|--------------|----------|----------------"
        "|---------|--------------|---------",
    ]
    for r in runs:
        lines.append(
            f"{r.sites:>8} | {r.strategy:<8} | {r.mode:<13} | {r.max_gap_ms:>9.1f} ms "
            f"| {r.p99_gap_ms:>5.1f} ms | {r.cycle_s:>12.2f} s | {r.core_s:>5.2f} s "
            f"| {r.allocated_kw:>12.2f} "
            f"| {r.method or '-'}"
        )
    return "\n".join(lines)


def medians(runs: list[Run]) -> list[Run]:
    """One row per (N, strategy, mode): the median of its rounds."""
    out = []
    keys = list(dict.fromkeys((r.sites, r.strategy, r.mode) for r in runs))
    for key in keys:
        rs = [r for r in runs if (r.sites, r.strategy, r.mode) == key]
        out.append(Run(
            *key, statistics.median(r.max_gap_ms for r in rs),
            statistics.median(r.p99_gap_ms for r in rs), rs[0].ticks,
            statistics.median(r.cycle_s for r in rs), statistics.median(r.core_s for r in rs),
            rs[0].allocated_kw, rs[0].method,
        ))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.solver_offloop",
                                     description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--sizes", default=",".join(str(n) for n in DEFAULT_SIZES),
                        help="site counts, e.g. 10000,50k (default 10000,50000)")
    parser.add_argument("--quick", action="store_true", help="N = 10k only")
    parser.add_argument("--repeat", type=int, default=1, help="rounds per N (default 1)")
    parser.add_argument("--time-limit-s", type=float, default=2.0,
                        help="milp's time_limit_s (default 2.0, as shipped)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", action="store_true", help="JSON on stdout, table on stderr")
    args = parser.parse_args(argv)
    sizes = [10_000] if args.quick else [
        int(s.strip().lower().removesuffix("k")) * (1000 if s.strip().lower().endswith("k")
                                                     else 1)
        for s in args.sizes.split(",")
    ]
    logging.basicConfig(level=logging.WARNING)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    runs: list[Run] = []
    with tempfile.TemporaryDirectory(prefix="bench-offloop-") as tmp, \
            EmbeddedBroker(kind="mosquitto", host="127.0.0.1") as broker:
        for sites in sizes:
            for round_ in range(args.repeat):
                for strategy, modes in PLAN:
                    root = f"b{sites}{strategy.replace('_', '')}r{round_}"
                    runs.extend(asyncio.run(measure(
                        broker, sites, args.seed, args.time_limit_s, Path(tmp), strategy,
                        modes, root)))
    shown = medians(runs)
    if args.json:
        json.dump([asdict(r) for r in runs], sys.stdout, indent=2)
        sys.stdout.write("\n")
        sys.stderr.write(table(shown) + "\n")
    else:
        print(table(shown))
    milp = [r for r in runs if r.strategy == "milp"]
    same = all(abs(a.allocated_kw - b.allocated_kw) < 1e-6
               for a, b in zip(milp[::2], milp[1::2], strict=True))
    print("milp: same allocations in both modes:", "yes" if same else "NO", file=sys.stderr)
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())

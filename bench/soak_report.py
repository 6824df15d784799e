"""How ``bench.soak`` shows a run: one line per cycle, the final table, the plot.

Standard library only at import time (rich and matplotlib load when used): the
coordinator's spawned process imports ``bench.soak``, and so this module.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.common import fmt, machine_line

if TYPE_CHECKING:
    from bench.soak import CycleRow, SoakResult


def format_line(row: CycleRow) -> str:
    """One cycle in a line, printed as it completes."""
    if row.request:
        what = (f"S {fmt(row.surplus_kw, ',.0f')} kW, {row.replies or 0:,} replies, "
                f"{fmt(row.allocated_kw, ',.0f')} kW to {row.allocations:,} sites, "
                f"{row.reason}, {fmt(row.cycle_s, '.2f')} s")
    else:
        what = (f"{row.reason} (S {fmt(row.surplus_kw, ',.0f')} kW)" if row.reason
                else "not closed yet")
    return (f"cycle {row.index:3d} {row.cycle[11:16]}  {what};  RSS {fmt(row.rss_mb, '.1f')} MB, "
            f"{fmt((row.heap_blocks or 0) / 1000, ',.0f')}k blocks, recorder "
            f"{fmt(row.recorder_mb, '.1f')} MB"
            + (f", {row.acks_missing:,} acks missing" if row.acks_missing else ""))


def _growth_line(name: str, g: dict[str, Any]) -> str:
    if "slope" not in g:
        return f"{name}: {g['verdict']}"
    return (f"{name}: {g['verdict']} ({g['slope']:+.4g} ± {g['ci95']:.2g} {g['unit']}, "
            f"95 %, {g['points']} cycles)")


def format_table(result: SoakResult) -> str:
    """The per-cycle table, the growth check, the invariants and the machine."""
    from rich import box
    from rich.console import Console
    from rich.table import Table

    traced = result.tracemalloc
    table = Table(box=box.SIMPLE_HEAD)
    for name in ("#", "cycle", "S kW", "replies", "alloc kW", "allocs", "close", "cycle s",
                 "last alloc s", "RSS MB", "traced MB" if traced else "heap kblk",
                 "recorder MB", "CPU s", "queue", "acks missing"):
        table.add_column(name, justify="left" if name in ("cycle", "close") else "right")
    for r in result.rows:
        heap = fmt(r.traced_mb, ".1f") if traced else fmt(
            r.heap_blocks / 1000 if r.heap_blocks is not None else None, ",.0f")
        table.add_row(
            str(r.index), r.cycle[11:16], fmt(r.surplus_kw, ",.0f"),
            f"{r.replies:,}" if r.request and r.replies is not None else "-",
            fmt(r.allocated_kw, ",.0f") if r.request else "-",
            f"{r.allocations:,}" if r.request else "-",
            (r.reason or "not closed") + (" (late)" if r.closed_late else ""),
            fmt(r.cycle_s, ".2f"), fmt(r.last_alloc_s, ".2f"), fmt(r.rss_mb, ".1f"), heap,
            fmt(r.recorder_mb, ".1f"), fmt(r.coordinator_cpu_s, ".2f"),
            fmt(r.queue, ","), f"{r.acks_missing:,}")
    buf = io.StringIO()
    Console(file=buf, width=160, color_system=None, force_terminal=False).print(table)
    lines = [f"soak: {result.sites:,} sites, {result.cycles} cycles over {result.days:g} "
             f"day(s), {result.period_s:g} s per period (clock x{result.speed:.0f}), "
             f"seed {result.seed}; recorder in {result.recorder_dir}",
             buf.getvalue().rstrip("\n"), ""]
    requests = [r for r in result.rows if r.request and r.cycle_s is not None]
    if requests:
        times = sorted(r.cycle_s for r in requests if r.cycle_s is not None)
        lines.append(f"cycles with a request: {len(requests)} of {len(result.rows)}; cycle time "
                     f"median {times[len(times) // 2]:.2f} s, max {times[-1]:.2f} s")
    rss = [r.rss_mb for r in result.rows if r.rss_mb is not None]
    hwm = max((r.hwm_mb for r in result.rows if r.hwm_mb is not None), default=None)
    if rss:
        lines.append(f"coordinator RSS at the end of each period: first {rss[0]:.1f} MB, "
                     f"last {rss[-1]:.1f} MB, max {max(rss):.1f} MB; high-water mark "
                     f"(VmHWM) {fmt(hwm, '.1f')} MB")
    lines.append("growth over the last two thirds (least squares, 95 % interval):")
    labels = {"rss": "  RSS", "cycle_time": "  cycle time (request cycles)",
              "heap_blocks": "  heap blocks", "recorder": "  recorder file"}
    lines.extend(_growth_line(labels[k], v) for k, v in result.growth.items())
    lines.append(f"reports sent {result.reports_sent:,}, recorded "
                 f"{fmt(result.reports_recorded, ',')}; acks missing at the end "
                 f"{result.acks_missing_at_end:,}; decisions recorded "
                 f"{fmt(result.decisions_recorded, ',')}, allocations received "
                 f"{result.allocations_received:,}, duplicates {result.decisions_duplicated}")
    failed = [k for k, ok in result.checks.items() if not ok]
    lines.append("checks: " + ("all passed" if not failed else "FAILED " + ", ".join(failed)))
    if result.coordinator_log_warnings:
        lines.append(f"coordinator warnings: {result.coordinator_log_warnings}")
    behind = [r for r in result.rows if r.closed_late or r.acks_missing]
    if behind:
        lines.append(
            f"note: the coordinator fell behind in {len(behind)} of {len(result.rows)} periods "
            "(a cycle still open or reports not yet acknowledged at the end of the period); "
            "growth there is its backlog, not a leak: give it longer periods (--period-s)")
    late = max((r.swarm_late_s for r in result.rows), default=0.0)
    if late > 0.5:
        lines.append(f"note: the simulated sites ran up to {late:.1f} s behind their schedule")
    lines.append(f"{machine_line(result.machine)}; wall {result.wall_s:.0f} s"
                 + (f"; plot {result.plot}" if result.plot else ""))
    return "\n".join(lines)


def write_plot(result: SoakResult, out_dir: Path) -> Path:
    """Cycle time and coordinator RSS against the cycle, with the RSS fit (PNG, Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"soak-{result.sites}x{result.cycles}.png"
    rows = result.rows
    fig, (ax_t, ax_m) = plt.subplots(2, 1, sharex=True, figsize=(9, 6.5))
    req = [r for r in rows if r.cycle_s is not None]
    ax_t.plot([r.index for r in req], [r.cycle_s for r in req], "o-", ms=3,
              label="request -> closed")
    last = [r for r in req if r.last_alloc_s is not None]
    ax_t.plot([r.index for r in last], [r.last_alloc_s for r in last], ".", ms=3, alpha=0.6,
              label="request -> last allocation")
    ax_t.set_ylabel("cycle time (s)")
    ax_t.legend(loc="upper left", fontsize=8)
    ax_t.grid(alpha=0.3)
    mem = [r for r in rows if r.rss_mb is not None]
    ax_m.plot([r.index for r in mem], [r.rss_mb for r in mem], "o-", ms=3, color="tab:red",
              label="coordinator RSS")
    g = result.growth.get("rss", {})
    if "slope" in g:
        xs = [r.index for r in mem if r.index >= len(rows) // 3]
        if xs:
            ax_m.plot([xs[0], xs[-1]], [g["slope"] * x + g["intercept"] for x in (xs[0], xs[-1])],
                      "--", color="black",
                      label=f"fit: {g['slope']:+.3f} MB/cycle ({g['verdict']})")
    ax_m.set_ylabel("RSS (MB)")
    ax_m.set_xlabel("cycle")
    ax_m.legend(loc="upper left", fontsize=8)
    ax_m.grid(alpha=0.3)
    fig.suptitle(f"Soak: {result.sites:,} sites, {result.cycles} cycles "
                 f"({result.period_s:g} s per period)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path

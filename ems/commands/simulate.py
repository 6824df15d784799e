"""``ems simulate``: the allocation study replayed through the real core.

``ems simulate cases`` runs the study's three reference cases;
``ems simulate summer-day`` its random summer day (DOMAIN.md). Both drive
``central.core`` with simulated gateways and simulated time: no broker, no
sleeping. Tables go to stdout; ``--json`` prints the same figures for
machines; the progress bar of long runs goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import Any

from central.core import STRATEGIES, get_strategy
from ems.commands.argtypes import positive_float, positive_int
from ems.simulation.cases import DEFAULT_REPLY_TIMEOUT_S, CaseResult, run_cases
from ems.simulation.summer_day import (
    PERIOD_H,
    CycleOutcome,
    Summary,
    SummerDayModel,
    run_summer_day,
    summarize,
)

DEFAULT_CYCLES = 40
"""One summer day of the study: 40 quarter hours of surplus-prone daylight."""
TABLE_MAX_CYCLES = 200
"""Past this many cycles only the summary is printed (unless ``--table``)."""
PROGRESS_MIN_CYCLES = 1000
"""Runs at least this long show a progress bar (on a terminal, not with --json)."""
PROGRESS_EVERY = 500


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``simulate`` and its sub-commands to the ``ems`` parser."""
    parser = subparsers.add_parser(
        "simulate",
        help="replay the allocation study through the real core",
        description="Run the allocation core on simulated gateways and simulated time.",
    )
    sub = parser.add_subparsers(dest="simulation", metavar="SIMULATION")
    sub.required = True
    strategies = sorted(STRATEGIES)

    cases = sub.add_parser(
        "cases",
        help="the study's three reference cases",
        description="Run the study's three reference cases (no surplus, exhausted, all served).",
    )
    cases.add_argument(
        "--strategy", choices=strategies, default="fifo", help="allocation strategy (default: fifo)"
    )
    cases.add_argument("--json", action="store_true", help="print JSON instead of tables")
    cases.set_defaults(func=run_cases_command)

    day = sub.add_parser(
        "summer-day",
        help="the study's random summer day (any number of cycles)",
        description=(
            "Per cycle: 5..30 active sites, net loads uniform -5..10 kW, offers uniform "
            "0..5 kW from non-exporting sites, reply delays uniform 1..10 s."
        ),
    )
    day.add_argument(
        "--cycles",
        type=positive_int,
        default=DEFAULT_CYCLES,
        help=f"number of 15-minute cycles (default: {DEFAULT_CYCLES})",
    )
    day.add_argument("--seed", type=int, default=1, help="random seed (default: 1)")
    day.add_argument(
        "--strategy", choices=strategies, default="fifo", help="allocation strategy (default: fifo)"
    )
    day.add_argument(
        "--reply-timeout",
        type=positive_float,
        default=DEFAULT_REPLY_TIMEOUT_S,
        metavar="SECONDS",
        dest="reply_timeout_s",
        help=f"cycle deadline after the request (default: {DEFAULT_REPLY_TIMEOUT_S:g})",
    )
    day.add_argument("--json", action="store_true", help="print JSON instead of tables")
    day.add_argument(
        "--table",
        action="store_true",
        help=f"print the per-cycle table even past {TABLE_MAX_CYCLES} cycles",
    )
    day.add_argument("--plot", type=Path, metavar="DIR", help="write the figures (PNG) into DIR")
    day.set_defaults(func=run_summer_day_command)




# Formatting ----------------------------------------------------------------


def _table(
    headers: Sequence[str], rows: Sequence[Sequence[str]], left: Collection[int] = (0,)
) -> list[str]:
    """Plain aligned columns: text columns (indexes in ``left``) to the left, numbers right."""
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            cell.ljust(w) if i in left else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    return [line(headers), line(["-" * w for w in widths]), *(line(r) for r in rows)]


def _kw(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _pct(share: float | None) -> str:
    return "-" if share is None else f"{100 * share:.2f} %"


def _print(lines: Sequence[str]) -> None:
    sys.stdout.write("\n".join(lines) + "\n")


def _dump_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2) + "\n")


# ems simulate cases ----------------------------------------------------------


def _case_lines(result: CaseResult) -> list[str]:
    rows = [
        [
            row.site,
            f"{row.net_load_kw:.2f}",
            f"{row.flex_kw:.2f}",
            f"{row.delay_s:.1f}",
            _kw(row.alloc_kw),
            "-" if row.rank is None else str(row.rank),
            row.status,
        ]
        for row in result.rows
    ]
    headers = ["site", "net load kW", "flex kW", "delay s", "alloc kW", "rank", "status"]
    lines = [f"Case {result.case.number}: {result.case.title}", ""]
    lines += ["  " + line for line in _table(headers, rows, left=(0, 6))]
    share = result.share_used
    lines += [
        "",
        f"  surplus S      {result.surplus_kw:8.2f} kW  (sum of net loads, + = export)",
        f"  offered        {result.offered_kw:8.2f} kW",
        f"  allocated      {result.allocated_kw:8.2f} kW",
        "  share used     "
        + (f"{100 * share:8.2f} %" if share is not None else f"{'-':>8}    (no surplus)"),
        f"  injected       {result.injected_kw:8.2f} kW",
        f"  close reason   {result.close_reason}",
    ]
    return lines


def run_cases_command(args: argparse.Namespace) -> int:
    """``ems simulate cases``."""
    results = run_cases(get_strategy(args.strategy))
    if args.json:
        _dump_json({"strategy": args.strategy, "cases": [r.to_dict() for r in results]})
        return 0
    lines: list[str] = []
    for result in results:
        if lines:
            lines.append("")
        lines += _case_lines(result)
    _print(lines)
    return 0


# ems simulate summer-day -----------------------------------------------------


def _outcome_dict(o: CycleOutcome) -> dict[str, object]:
    return {
        "cycle": o.cycle,
        "sites": o.sites,
        "surplus_kw": o.surplus_kw,
        "offered_kw": o.offered_kw,
        "allocated_kw": o.allocated_kw,
        "share_used": o.share_used,
        "injected_without_kw": o.injected_without_kw,
        "injected_with_kw": o.injected_with_kw,
        "close_reason": o.close_reason,
    }


def _cycle_table(outcomes: Sequence[CycleOutcome]) -> list[str]:
    headers = [
        "cycle",
        "sites",
        "S kW",
        "alloc kW",
        "share used",
        "injected w/o kW",
        "injected with kW",
        "close",
    ]
    rows = [
        [
            str(o.cycle),
            str(o.sites),
            f"{o.surplus_kw:.2f}",
            f"{o.allocated_kw:.2f}",
            _pct(o.share_used),
            f"{o.injected_without_kw:.2f}",
            f"{o.injected_with_kw:.2f}",
            o.close_reason,
        ]
        for o in outcomes
    ]
    return _table(headers, rows, left=(7,))


def _summary_lines(summary: Summary, args: argparse.Namespace) -> list[str]:
    lines = [
        f"Summer day: {summary.cycles} cycles, seed {args.seed}, strategy {args.strategy}, "
        f"reply timeout {args.reply_timeout_s:g} s",
        f"  cycles with a surplus (S > 0)   {summary.cycles_with_surplus}",
        f"  mean share of the surplus used  {_pct(summary.mean_share)}"
        f"  (stdev {_pct(summary.share_stdev)}; over cycles with S > 0)",
        f"  counting S <= 0 cycles as 0     {_pct(summary.mean_share_all_cycles)}",
        f"  energy-weighted share           {_pct(summary.energy_share)}",
        "",
    ]
    size_rows = [
        [
            label,
            str(s.cycles_with_surplus),
            _pct(s.mean_share),
            _kw(s.peak_injected_without_kw if s.cycles else None),
            _kw(s.peak_injected_with_kw if s.cycles else None),
        ]
        for label, s in summary.by_size.items()
    ]
    lines += ["  By community size (active sites):"]
    lines += [
        "    " + line
        for line in _table(
            ["sites", "cycles S>0", "mean share", "peak inj. w/o kW", "peak inj. with kW"],
            size_rows,
        )
    ]
    surplus_rows = [
        [label, str(s.cycles_with_surplus), _pct(s.mean_share)]
        for label, s in summary.by_surplus.items()
    ]
    lines += ["", "  By surplus size (kW):"]
    lines += ["    " + line for line in _table(["S kW", "cycles", "mean share"], surplus_rows)]
    lines += [
        "",
        f"  Injection into the grid ({PERIOD_H * 60:g} min per cycle):",
        f"    without coordination  {summary.injected_without_kwh:12.2f} kWh"
        f"  mean {summary.mean_injected_without_kw:7.2f} kW"
        f"  peak {summary.peak_injected_without_kw:7.2f} kW",
        f"    with coordination     {summary.injected_with_kwh:12.2f} kWh"
        f"  mean {summary.mean_injected_with_kw:7.2f} kW"
        f"  peak {summary.peak_injected_with_kw:7.2f} kW",
        "",
        "  Close reasons: "
        + ", ".join(f"{k} {v}" for k, v in sorted(summary.close_reasons.items())),
    ]
    return lines


def _run_with_progress(args: argparse.Namespace, keep: bool) -> tuple[Summary, list[CycleOutcome]]:
    outcomes = run_summer_day(
        args.cycles,
        args.seed,
        get_strategy(args.strategy),
        reply_timeout_s=args.reply_timeout_s,
        model=SummerDayModel(),
    )
    kept: list[CycleOutcome] = []
    on_cycle: Callable[[CycleOutcome], None] | None = kept.append if keep else None
    show = not args.json and args.cycles >= PROGRESS_MIN_CYCLES and sys.stderr.isatty()
    if not show:
        return summarize(outcomes, on_cycle), kept

    from rich.console import Console
    from rich.progress import Progress

    with Progress(console=Console(stderr=True), transient=True) as progress:
        task = progress.add_task("simulating", total=args.cycles)

        def tick(outcome: CycleOutcome) -> None:
            if on_cycle is not None:
                on_cycle(outcome)
            if outcome.cycle % PROGRESS_EVERY == 0:
                progress.update(task, completed=outcome.cycle)

        summary = summarize(outcomes, tick)
        progress.update(task, completed=args.cycles)
    return summary, kept


def run_summer_day_command(args: argparse.Namespace) -> int:
    """``ems simulate summer-day``."""
    show_table = args.table or args.cycles <= TABLE_MAX_CYCLES
    started = time.perf_counter()
    summary, outcomes = _run_with_progress(args, keep=show_table or args.plot is not None)
    elapsed_s = time.perf_counter() - started

    figures: list[Path] = []
    if args.plot is not None:
        from ems.simulation.plots import write_figures

        try:
            figures = write_figures(outcomes, summary.mean_share, args.plot)
        except OSError as exc:
            sys.stderr.write(f"ems simulate: cannot write figures to {args.plot}: {exc}\n")
            return 1

    if args.json:
        data: dict[str, object] = {
            "params": {
                "cycles": args.cycles,
                "seed": args.seed,
                "strategy": args.strategy,
                "reply_timeout_s": args.reply_timeout_s,
            },
            "summary": summary.to_dict(),
        }
        if show_table:
            data["cycles"] = [_outcome_dict(o) for o in outcomes]
        if figures:
            data["figures"] = [str(p) for p in figures]
        _dump_json(data)
        return 0

    lines: list[str] = []
    if show_table:
        lines += [*_cycle_table(outcomes), ""]
    lines += _summary_lines(summary, args)
    if figures:
        lines += ["", "  Figures:", *(f"    {p}" for p in figures)]
    _print(lines)
    sys.stdout.flush()
    sys.stderr.write(f"{args.cycles} cycles simulated in {elapsed_s:.1f} s\n")
    return 0

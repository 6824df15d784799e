"""``ems bench strategies``: every registered strategy on the same seeded inputs.

Runs each strategy in ``central.core.STRATEGIES`` through the pure core
(``Cycle.open`` / ``offer`` / ``tick`` with simulated reply delays) over the
scenarios of ``ems.simulation.scenarios`` and prints one row per strategy
with the metrics of ``central.core.metrics``; the homes reply and run their
loads with the gateway's own code (``gateway.ems``: a load's modulation, the
plan's set points), or, with ``--gateway switching``, as gateways did before
they modulated (every load switched whole). Then the multi-objective view:
which strategies are on the Pareto front, their distance to the ideal point
(normalised by the nadir) and the C-metric against ``fifo`` over the days.

``--scale 30,1000,10000,100000`` instead times one cycle per strategy and
site count (all replies at once) and says how ``milp`` and ``window``
decided (solver or fallback) and how far from the upper bound min(S, offers)
their allocation is.

Tables go to stdout, the progress bar (on a terminal) to stderr; ``--json``
prints the same figures for machines.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from central.core import STRATEGIES, Cycle, get_strategy
from central.core.metrics import (
    RunMetrics,
    c_metric,
    distances_to_ideal,
    ideal_point,
    nadir_point,
    pareto_front,
    summarize_run,
)
from ems.commands.argtypes import positive_float, positive_int
from ems.simulation.scenarios import (
    DEFAULT_REPLY_TIMEOUT_S,
    GATEWAY_MODELS,
    SCENARIOS,
    RunResult,
    cycles_of,
    draw_realistic,
    draw_scale,
    draw_study,
    run_realistic,
    run_study,
)

DEFAULT_DAYS = 7
DEFAULT_HOMES = 30
OBJECTIVES = (
    "1 - usable share",
    "1 - Jain (daily)",
    "load starts per day",
    "p95 time to allocation (s)",
    "comfort misses (kWh per day)",
)
"""The objectives of the multi-objective view, all minimised."""
REFERENCE = "fifo"


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``bench`` and its ``strategies`` sub-command to the ``ems`` parser."""
    parser = subparsers.add_parser(
        "bench",
        help="compare allocation strategies on simulated communities",
        description="Benchmarks of the allocation core (no broker, simulated time).",
    )
    sub = parser.add_subparsers(dest="bench", metavar="BENCH")
    sub.required = True
    cmd = sub.add_parser(
        "strategies",
        help="every strategy on the same seeded scenarios, or timed at scale",
        description=(
            "Run every registered strategy on the study's summer day (with loads) and a "
            "realistic community day; print one row of metrics per strategy."
        ),
    )
    cmd.add_argument(
        "--days",
        type=positive_int,
        default=DEFAULT_DAYS,
        help=f"days per scenario (default: {DEFAULT_DAYS})",
    )
    cmd.add_argument("--seed", type=int, default=1, help="random seed (default: 1)")
    cmd.add_argument(
        "--scenario",
        choices=(*SCENARIOS, "all"),
        default="all",
        help="which scenario (default: all)",
    )
    cmd.add_argument(
        "--homes",
        type=positive_int,
        default=DEFAULT_HOMES,
        help=f"homes in the realistic community (default: {DEFAULT_HOMES})",
    )
    cmd.add_argument(
        "--strategies",
        type=_strategy_list,
        default=list(STRATEGIES),
        metavar="A,B,...",
        help="strategies to run (default: all registered)",
    )
    cmd.add_argument(
        "--reply-timeout",
        type=positive_float,
        default=DEFAULT_REPLY_TIMEOUT_S,
        dest="reply_timeout_s",
        metavar="SECONDS",
        help=f"cycle deadline after the request (default: {DEFAULT_REPLY_TIMEOUT_S:g})",
    )
    cmd.add_argument(
        "--gateway",
        choices=GATEWAY_MODELS,
        default="modulating",
        help="how the homes drive their loads: 'modulating' (default: as the gateway "
        "does, wallboxes and inverter heat pumps at a set point) or 'switching' (every "
        "load whole, as before modulation)",
    )
    cmd.add_argument(
        "--scale",
        type=_size_list,
        metavar="N,N,...",
        help="time one cycle per strategy at these site counts instead",
    )
    cmd.add_argument(
        "--time-limit",
        type=positive_float,
        default=None,
        metavar="SECONDS",
        dest="time_limit_s",
        help="solver time limit of milp and window (default: theirs)",
    )
    cmd.add_argument("--plot", type=Path, metavar="DIR", help="write the figures (PNG) into DIR")
    cmd.add_argument("--json", action="store_true", help="print JSON instead of tables")
    cmd.set_defaults(func=run_strategies_command)




def _size_list(text: str) -> list[int]:
    sizes = []
    for part in text.split(","):
        part = part.strip().lower()
        scale = 1000 if part.endswith("k") else 1
        try:
            sizes.append(positive_int(part.removesuffix("k")) * scale)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a site count: {part!r}") from None
    return sizes


def _strategy_list(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in STRATEGIES]
    if unknown or not names:
        known = ", ".join(STRATEGIES)
        raise argparse.ArgumentTypeError(f"unknown strategy {unknown}; known: {known}")
    return names


def _build(name: str, time_limit_s: float | None) -> Any:
    if time_limit_s is not None and name in ("milp", "window"):
        return get_strategy(name, time_limit_s=time_limit_s)
    return get_strategy(name)


@contextmanager
def _progress(total: int, label: str, show: bool) -> Iterator[Callable[[int], None]]:
    """A rich progress bar on stderr (when ``show``); yields ``advance(n)``."""
    if not show:
        yield lambda n: None
        return
    from rich.console import Console
    from rich.progress import Progress

    with Progress(console=Console(stderr=True), transient=True) as progress:
        task = progress.add_task(label, total=total)
        yield lambda n: progress.advance(task, n)


# The scenarios -----------------------------------------------------------------------


def objectives(m: RunMetrics) -> list[float]:
    """A run's objective vector (see ``OBJECTIVES``); a missing figure counts as the worst."""
    days = max(m.days, 1)
    return [
        1.0 - (m.share_usable if m.share_usable is not None else 0.0),
        1.0 - (m.jain_daily if m.jain_daily is not None else 0.0),
        m.load_starts / days,
        m.alloc_delay_p95_s if m.alloc_delay_p95_s is not None else 0.0,
        m.comfort_miss_kwh / days,
    ]


def _per_day_vectors(result: RunResult) -> list[list[float]]:
    days = sorted({r.day for r in result.records})
    out = []
    for day in days:
        records = [r for r in result.records if r.day == day]
        miss = result.comfort_miss_by_day.get(day, 0.0)
        out.append(objectives(summarize_run(records, miss)))
    return out


def compare(results: Sequence[RunResult]) -> dict[str, Any]:
    """Metrics, objectives and the multi-objective view of one scenario's runs."""
    metrics = {r.strategy: summarize_run(r.records, r.comfort_miss_kwh) for r in results}
    vectors = {name: objectives(m) for name, m in metrics.items()}
    front = pareto_front(vectors)
    # The two objectives the study argues about: surplus really used vs fairness.
    front2 = pareto_front({name: v[:2] for name, v in vectors.items()})
    front_vectors = [vectors[n] for n in front]
    distances = distances_to_ideal(vectors)
    daily = {r.strategy: _per_day_vectors(r) for r in results}
    reference = daily.get(REFERENCE)
    rows: dict[str, Any] = {}
    for r in results:
        name = r.strategy
        rows[name] = {
            **metrics[name].to_dict(),
            "objectives": vectors[name],
            "pareto": name in front,
            "pareto_usable_fairness": name in front2,
            "distance_to_ideal": distances[name],
            "c_vs_fifo": c_metric(daily[name], reference) if reference else None,
            "c_fifo_vs": c_metric(reference, daily[name]) if reference else None,
            "methods": dict(sorted(r.methods.items())),
        }
    return {
        "objectives": list(OBJECTIVES),
        "front": front,
        "front_usable_fairness": front2,
        "ideal": ideal_point(front_vectors) if front_vectors else None,
        "nadir": nadir_point(front_vectors) if front_vectors else None,
        "strategies": rows,
    }


def run_scenarios(args: argparse.Namespace, show_progress: bool) -> dict[str, Any]:
    """Every chosen strategy over every chosen scenario; ``compare`` per scenario."""
    scenarios = list(SCENARIOS) if args.scenario == "all" else [args.scenario]
    total = sum(cycles_of(s, args.days) for s in scenarios) * len(args.strategies)
    out: dict[str, Any] = {}
    with _progress(total, "strategies", show_progress) as advance:
        for scenario in scenarios:
            results = []
            if scenario == "study":
                study = draw_study(args.days, args.seed, gateway=args.gateway)
            else:
                real = draw_realistic(args.days, args.seed, homes=args.homes)
            for name in args.strategies:
                strategy = _build(name, args.time_limit_s)
                common: dict[str, Any] = {
                    "seed": args.seed,
                    "reply_timeout_s": args.reply_timeout_s,
                    "on_cycle": lambda: advance(1),
                }
                if scenario == "study":
                    results.append(run_study(study, name, strategy, **common))
                else:
                    results.append(
                        run_realistic(real, name, strategy, gateway=args.gateway, **common)
                    )
            out[scenario] = compare(results)
    return out


# Scale -------------------------------------------------------------------------------


def time_one_cycle(
    name: str, sites: int, seed: int, reply_timeout_s: float, time_limit_s: float | None
) -> dict[str, Any]:
    """One cycle of ``name`` at ``sites`` sites, every reply at once: wall time and outcome."""
    inputs = draw_scale(sites, seed)
    strategy = _build(name, time_limit_s)
    bound_kw = min(inputs.surplus_kw, math.fsum(o.flex_kw for o in inputs.offers))
    started = time.perf_counter()
    cycle, _ = Cycle.open(
        "scale",
        inputs.surplus_kw,
        [o.site for o in inputs.offers],
        strategy,
        {},
        deadline_s=reply_timeout_s,
        seed=seed,
    )
    cycle.offer_many(inputs.offers)
    if cycle.close_reason is None:
        cycle.tick(reply_timeout_s)
    elapsed_s = time.perf_counter() - started
    state = cycle.settle({})
    return {
        "strategy": name,
        "sites": sites,
        "seconds": elapsed_s,
        "allocated_kw": cycle.allocated_kw,
        "bound_kw": bound_kw,
        "gap": max(bound_kw - cycle.allocated_kw, 0.0) / bound_kw if bound_kw > 0 else 0.0,
        "method": state.get("last_method"),
        "fallback_reason": state.get("last_fallback_reason"),
    }


def run_scale(args: argparse.Namespace, show_progress: bool) -> list[dict[str, Any]]:
    """``time_one_cycle`` for every chosen strategy at every size in ``--scale``."""
    rows = []
    for name in args.strategies:
        # Warm-up: the first call imports the strategy's module (and HiGHS, ~0.2 s).
        time_one_cycle(name, 3, args.seed, args.reply_timeout_s, args.time_limit_s)
    with _progress(len(args.scale) * len(args.strategies), "timing", show_progress) as advance:
        for sites in args.scale:
            for name in args.strategies:
                rows.append(
                    time_one_cycle(name, sites, args.seed, args.reply_timeout_s, args.time_limit_s)
                )
                advance(1)
    return rows


# Output ------------------------------------------------------------------------------


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    return [line(headers), line(["-" * w for w in widths]), *(line(r) for r in rows)]


def _f(value: float | None, fmt: str = ".2f", scale: float = 1.0) -> str:
    return "-" if value is None else format(value * scale, fmt)


def scenario_lines(name: str, data: dict[str, Any], args: argparse.Namespace) -> list[str]:
    rows = []
    for strategy, m in data["strategies"].items():
        methods = m["methods"]
        note = f"fallback {methods.get('fallback', 0)}" if methods else ""
        rows.append(
            [
                strategy,
                _f(m["share_allocated"], ".1f", 100),
                _f(m["share_usable"], ".1f", 100),
                _f(m["share_usable_modulating"], ".1f", 100),
                _f(m["injection_avoided_kwh"], ".1f"),
                _f(m["injection_peak_kw"], ".1f"),
                _f(m["jain_daily"], ".3f"),
                _f(m["jain_all_days"], ".3f"),
                _f(m["alloc_delay_mean_s"], ".2f"),
                _f(m["alloc_delay_p95_s"], ".2f"),
                _f(m["load_starts_per_day"], ".1f"),
                _f(m["comfort_miss_kwh"] / max(m["days"], 1), ".1f"),
                "*" if m["pareto"] else "",
                "*" if m["pareto_usable_fairness"] else "",
                _f(m["distance_to_ideal"], ".2f"),
                _f(m["c_vs_fifo"], ".2f"),
                _f(m["c_fifo_vs"], ".2f"),
                note,
            ]
        )
    headers = [
        "strategy",
        "alloc %",
        "usable %",
        "usable~ %",
        "avoided kWh",
        "inj peak kW",
        "Jain day",
        "Jain run",
        "t mean s",
        "t p95 s",
        "starts/day",
        "miss kWh/d",
        "front",
        "front2",
        "dist",
        "C(s,fifo)",
        "C(fifo,s)",
        "solver",
    ]
    first = next(iter(data["strategies"].values()))
    return [
        f"Scenario {name}: {first['days']} day(s), {first['cycles']} cycles "
        f"({first['cycles_with_surplus']} with a surplus), seed {args.seed}, "
        f"{args.gateway} gateways; injection peak without "
        f"coordination {first['injection_peak_without_kw']:.1f} kW, "
        f"{first['injection_without_kwh']:.1f} kWh",
        *("  " + line for line in _table(headers, rows)),
        "  objectives (minimised): " + "; ".join(OBJECTIVES),
        "  usable: what the gateways' plans really run; usable~: if every load could draw "
        "anything between its min and max (the strategies' model); front: on the Pareto front "
        "(front2: of usable share and daily Jain only); "
        "dist: to the ideal point, normalised by the nadir; C(a,b): share of b's days "
        "weakly dominated by a's",
    ]


def scale_lines(rows: Sequence[dict[str, Any]]) -> list[str]:
    sizes = sorted({r["sites"] for r in rows})
    names = list(dict.fromkeys(r["strategy"] for r in rows))
    by = {(r["strategy"], r["sites"]): r for r in rows}
    table = [[name, *(f"{by[name, n]['seconds']:.3f}" for n in sizes)] for name in names]
    lines = ["Seconds per cycle (pure core, every reply at once, whole loads, S = half the offers)"]
    lines += ["  " + line for line in _table(["strategy", *(f"N={n:,}" for n in sizes)], table)]
    lines += ["", "  How the optimisers decided (gap: 1 - allocated / min(S, offers)):"]
    for r in rows:
        if r["method"] is not None:
            why = f" ({r['fallback_reason']})" if r["fallback_reason"] else ""
            lines.append(
                f"    {r['strategy']:<8} N={r['sites']:<8,} {r['method']}{why}: "
                f"gap {100 * r['gap']:.3f} %, {r['seconds']:.2f} s"
            )
    return lines


def write_figures(data: dict[str, Any], directory: Path) -> list[Path]:
    """Share per strategy, fairness and the Pareto front (PNG, Agg canvas, no pyplot)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    directory.mkdir(parents=True, exist_ok=True)
    scenarios = list(data)
    paths = []

    def figure() -> tuple[Figure, Any]:
        fig = Figure(figsize=(6 * len(scenarios), 4.8), dpi=110, layout="constrained")
        FigureCanvasAgg(fig)
        return fig, fig.subplots(1, len(scenarios), squeeze=False)[0]

    fig, axes = figure()
    for ax, scenario in zip(axes, scenarios, strict=True):
        rows = data[scenario]["strategies"]
        xs = range(len(rows))
        for offset, key, label in (
            (-0.2, "share_allocated", "allocated"),
            (0.2, "share_usable", "usable"),
        ):
            ax.bar(
                [x + offset for x in xs],
                [100 * (m[key] or 0.0) for m in rows.values()],
                width=0.4,
                label=label,
            )
        ax.set_xticks(list(xs), list(rows), rotation=30, ha="right")
        ax.set_ylim(0, 125)  # room for the legend above the bars
        ax.set_ylabel("share of the surplus (%)")
        ax.set_title(f"{scenario}: share of the surplus per strategy")
        ax.legend()
    paths.append(directory / "strategies_share.png")
    fig.savefig(paths[-1], format="png")

    fig, axes = figure()
    for ax, scenario in zip(axes, scenarios, strict=True):
        rows = data[scenario]["strategies"]
        xs = range(len(rows))
        for offset, key, label in (
            (-0.2, "jain_daily", "per day (mean)"),
            (0.2, "jain_all_days", "over the run"),
        ):
            ax.bar(
                [x + offset for x in xs],
                [m[key] or 0.0 for m in rows.values()],
                width=0.4,
                label=label,
            )
        ax.set_xticks(list(xs), list(rows), rotation=30, ha="right")
        ax.set_ylim(0, 1.05)
        ax.set_ylabel("Jain's fairness index")
        ax.set_title(f"{scenario}: fairness of the allocated energy")
        ax.legend(loc="lower right")
    paths.append(directory / "strategies_fairness.png")
    fig.savefig(paths[-1], format="png")

    fig, axes = figure()
    for ax, scenario in zip(axes, scenarios, strict=True):
        rows = data[scenario]["strategies"]
        front2 = sorted(
            (100 * (rows[n]["share_usable"] or 0.0), rows[n]["jain_daily"] or 0.0)
            for n in data[scenario]["front_usable_fairness"]
        )
        ax.plot(
            *zip(*front2, strict=True),
            color="tab:red",
            drawstyle="steps-post",
            label="front of these two objectives",
        )
        for name, m in rows.items():
            x, y = 100 * (m["share_usable"] or 0.0), m["jain_daily"] or 0.0
            ax.scatter(
                [x],
                [y],
                color="tab:red" if m["pareto_usable_fairness"] else "tab:gray",
                marker="o" if m["pareto"] else "x",
                s=40,
            )
            ax.annotate(name, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
        ax.set_xlabel("usable share of the surplus (%)")
        ax.set_ylabel("Jain's index (daily mean)")
        ax.set_title(
            f"{scenario}: usable share vs fairness (o: on the {len(OBJECTIVES)}-objective front)"
        )
        ax.legend(loc="lower left")
    paths.append(directory / "strategies_pareto.png")
    fig.savefig(paths[-1], format="png")
    return paths


def run_strategies_command(args: argparse.Namespace) -> int:
    """``ems bench strategies``."""
    show = sys.stderr.isatty()
    started = time.perf_counter()
    if args.scale:
        rows = run_scale(args, show)
        if args.json:
            sys.stdout.write(json.dumps({"scale": rows}, indent=2) + "\n")
        else:
            sys.stdout.write("\n".join(scale_lines(rows)) + "\n")
        return 0
    data = run_scenarios(args, show)
    elapsed_s = time.perf_counter() - started
    figures: list[Path] = []
    if args.plot is not None:
        try:
            figures = write_figures(data, args.plot)
        except OSError as exc:
            sys.stderr.write(f"ems bench: cannot write figures to {args.plot}: {exc}\n")
            return 1
    if args.json:
        params = {
            "days": args.days,
            "seed": args.seed,
            "homes": args.homes,
            "strategies": args.strategies,
            "reply_timeout_s": args.reply_timeout_s,
            "gateway": args.gateway,
        }
        out = {"params": params, "scenarios": data, "figures": [str(p) for p in figures]}
        sys.stdout.write(json.dumps(out, indent=2) + "\n")
        return 0
    lines: list[str] = []
    for name, scenario in data.items():
        lines += [*scenario_lines(name, scenario, args), ""]
    lines += [f"Figures: {', '.join(str(p) for p in figures)}"] if figures else []
    sys.stdout.write("\n".join(lines).rstrip() + "\n")
    sys.stdout.flush()
    sys.stderr.write(f"strategies compared in {elapsed_s:.1f} s\n")
    return 0

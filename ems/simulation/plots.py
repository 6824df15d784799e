"""The summer-day figures (the study's figures 17-20), as PNG files.

Built on ``matplotlib.figure.Figure`` with the Agg canvas: no pyplot, no
global figure state, no display needed. Per-cycle figures show at most
``MAX_CYCLES_SHOWN`` cycles (the first ones); scatter figures show them all.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ems.simulation.summer_day import CycleOutcome

MAX_CYCLES_SHOWN = 200
"""Per-cycle figures beyond this many bars stop being readable."""

SURPLUS_BIN_KW = 10.0


def _new_figure() -> Figure:
    fig = Figure(figsize=(9, 4.8), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: Path) -> Path:
    fig.savefig(path, format="png")
    return path


def _shown(outcomes: Sequence[CycleOutcome]) -> tuple[Sequence[CycleOutcome], str]:
    if len(outcomes) <= MAX_CYCLES_SHOWN:
        return outcomes, ""
    return outcomes[:MAX_CYCLES_SHOWN], f" (first {MAX_CYCLES_SHOWN} of {len(outcomes)} cycles)"


def share_per_cycle(outcomes: Sequence[CycleOutcome], mean_share: float | None) -> Figure:
    """Figure 17: share of the surplus used, cycle by cycle (0 where S <= 0)."""
    shown, note = _shown(outcomes)
    fig = _new_figure()
    ax = fig.add_subplot()
    xs = [o.cycle for o in shown]
    ax.bar(xs, [100 * (o.share_used or 0.0) for o in shown], color="tab:green", width=0.8)
    if mean_share is not None:
        ax.axhline(
            100 * mean_share, color="black", linestyle="--", label="mean (cycles with S > 0)"
        )
        ax.legend(loc="upper right")
    ax.set_xlabel("cycle (15 min)")
    ax.set_ylabel("share of the surplus used (%)")
    ax.set_ylim(0, 105)
    ax.set_title("Share of the surplus allocated per cycle" + note)
    return fig


def _means_by(keys: Sequence[float], values: Sequence[float]) -> tuple[list[float], list[float]]:
    sums: dict[float, list[float]] = {}
    for key, value in zip(keys, values, strict=True):
        acc = sums.setdefault(key, [0.0, 0.0])
        acc[0] += value
        acc[1] += 1
    ordered = sorted(sums)
    return ordered, [sums[k][0] / sums[k][1] for k in ordered]


def share_vs_sites(outcomes: Sequence[CycleOutcome]) -> Figure:
    """Figure 18: share used against the number of active sites (cycles with S > 0)."""
    rows = [(o.sites, o.share_used) for o in outcomes if o.share_used is not None]
    fig = _new_figure()
    ax = fig.add_subplot()
    sites = [float(n) for n, _ in rows]
    shares = [100 * s for _, s in rows]
    ax.scatter(sites, shares, s=6, alpha=0.25, color="tab:blue", rasterized=True, label="cycle")
    xs, means = _means_by(sites, shares)
    ax.plot(xs, means, color="black", marker="o", markersize=3, label="mean per size")
    ax.set_xlabel("active sites")
    ax.set_ylabel("share of the surplus used (%)")
    ax.set_ylim(0, 105)
    ax.legend(loc="upper right")
    ax.set_title("Share of the surplus used vs community size")
    return fig


def share_vs_surplus(outcomes: Sequence[CycleOutcome]) -> Figure:
    """Figure 19: share used against the size of the surplus (cycles with S > 0)."""
    rows = [(o.surplus_kw, o.share_used) for o in outcomes if o.share_used is not None]
    fig = _new_figure()
    ax = fig.add_subplot()
    surpluses = [s for s, _ in rows]
    shares = [100 * share for _, share in rows]
    ax.scatter(
        surpluses, shares, s=6, alpha=0.25, color="tab:orange", rasterized=True, label="cycle"
    )
    bins = [SURPLUS_BIN_KW * (s // SURPLUS_BIN_KW) + SURPLUS_BIN_KW / 2 for s in surpluses]
    xs, means = _means_by(bins, shares)
    ax.plot(
        xs,
        means,
        color="black",
        marker="o",
        markersize=3,
        label=f"mean per {SURPLUS_BIN_KW:g} kW bin",
    )
    ax.set_xlabel("surplus S (kW)")
    ax.set_ylabel("share of the surplus used (%)")
    ax.set_ylim(0, 105)
    ax.legend(loc="upper right")
    ax.set_title("Share of the surplus used vs surplus size")
    return fig


def injection_per_cycle(outcomes: Sequence[CycleOutcome]) -> Figure:
    """Figure 20: power injected into the grid without and with coordination."""
    shown, note = _shown(outcomes)
    fig = _new_figure()
    ax = fig.add_subplot()
    xs = [o.cycle for o in shown]
    ax.plot(
        xs,
        [o.injected_without_kw for o in shown],
        color="tab:red",
        marker=".",
        label="without coordination",
    )
    ax.plot(
        xs,
        [o.injected_with_kw for o in shown],
        color="tab:green",
        marker=".",
        label="with coordination",
    )
    ax.set_xlabel("cycle (15 min)")
    ax.set_ylabel("injected power (kW)")
    ax.set_ylim(bottom=0)
    ax.legend(loc="upper right")
    ax.set_title("Injection into the grid per cycle" + note)
    return fig


def write_figures(
    outcomes: Sequence[CycleOutcome], mean_share: float | None, out_dir: Path
) -> list[Path]:
    """Write the four figures as PNGs into ``out_dir`` (created if needed); return their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    return [
        _save(share_per_cycle(outcomes, mean_share), out_dir / "fig17_share_per_cycle.png"),
        _save(share_vs_sites(outcomes), out_dir / "fig18_share_vs_sites.png"),
        _save(share_vs_surplus(outcomes), out_dir / "fig19_share_vs_surplus.png"),
        _save(injection_per_cycle(outcomes), out_dir / "fig20_injection_per_cycle.png"),
    ]

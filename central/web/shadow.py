"""Shadow mode on the operator API: ``/api/shadow`` and ``/api/shadow/summary``.

What each ``[cycle] shadow`` strategy would have given on the same replies as
the executed one (central/shadow.py), read from the recorder's
``shadow_scores`` through the page's ``RecordReader`` (never on the event
loop). The SSE stream sends a ``shadow`` event when a cycle's rows are
recorded; the page then re-reads the summary.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any, Literal

from fastapi import FastAPI, Query
from pydantic import BaseModel, ConfigDict, Field

from central.core.shadow import ShadowRecord, ShadowTotals
from central.recorder import Recorder
from central.web.models import UtcText
from protocol.models import format_utc

if TYPE_CHECKING:
    from central.app import Coordinator

Read = Callable[..., Awaitable[Any]]
TimeRange = Callable[[str | None, str | None], tuple[datetime, datetime]]


class _Out(BaseModel):
    model_config = ConfigDict(extra="ignore")


class ShadowScoreOut(_Out):
    """One shadow strategy on one cycle."""

    cycle: UtcText = Field(description="the cycle id: the start of its period")
    strategy: str
    status: Literal["ok", "error", "skipped"] = Field(
        description="ok: scored; error: the strategy raised; skipped: the previous "
        "cycle's shadow run was still going (error says \"skipped: late\")")
    surplus_kw: float
    allocated_kw: float | None
    usable_kw: float | None = Field(
        description="what the sites' loads can draw of it (whole loads); a site that "
        "listed no loads counts as using what it was given")
    share: float | None = Field(description="allocated / surplus, 0..1")
    usable_share: float | None = Field(description="usable / surplus, 0..1")
    sites_served: int | None = Field(description="sites allocated more than 0 kW")
    jain: float | None = Field(
        description="Jain's index of the allocations over the sites that offered > 0 kW")
    elapsed_s: float | None = Field(
        description="time to allocation: mean seconds from the request to each allocation")
    fallback: bool = Field(description="the solver gave no usable answer (milp, window)")
    compute_s: float | None = Field(description="seconds the shadow run took (its thread)")
    error: str | None


class ShadowScores(_Out):
    """``GET /api/shadow``: the shadow rows of a time range (or of the last cycles)."""

    since: UtcText | None
    until: UtcText | None
    executed: str = Field(description="the strategy the coordinator executes")
    strategies: list[str] = Field(description="the [cycle] shadow strategies (empty: off)")
    scores: list[ShadowScoreOut]


class ShadowStrategyTotals(_Out):
    """One shadow strategy over a time range."""

    strategy: str
    executed: bool = Field(description="it is also the strategy the coordinator executes")
    cycles: int = Field(description="cycles scored")
    errors: int
    skipped: int
    surplus_kwh: float = Field(description="surplus of the cycles scored")
    allocated_kwh: float
    usable_kwh: float
    share: float | None = Field(description="sum allocated / sum surplus, 0..1")
    usable_share: float | None = Field(description="sum usable / sum surplus, 0..1")
    sites_served_mean: float | None
    jain_mean: float | None = Field(description="mean over cycles of the cycle's Jain index")
    elapsed_mean_s: float | None = Field(description="mean time to allocation")
    fallbacks: int = Field(description="cycles in which the solver fell back")
    compute_mean_s: float | None
    compute_max_s: float | None


class ShadowSummary(_Out):
    """``GET /api/shadow/summary``: each shadow strategy summed over a time range."""

    since: UtcText
    until: UtcText
    executed: str
    period_s: float
    strategies: list[ShadowStrategyTotals]


def score_out(r: ShadowRecord) -> ShadowScoreOut:
    return ShadowScoreOut(
        cycle=r.cycle, strategy=r.strategy, status=r.status,  # type: ignore[arg-type]
        surplus_kw=r.surplus_kw, allocated_kw=r.allocated_kw, usable_kw=r.usable_kw,
        share=r.share, usable_share=r.usable_share, sites_served=r.sites_served, jain=r.jain,
        elapsed_s=r.elapsed_s, fallback=r.fallback, compute_s=r.compute_s, error=r.error,
    )


def totals_out(t: ShadowTotals, executed: str, period_h: float) -> ShadowStrategyTotals:
    return ShadowStrategyTotals(
        strategy=t.strategy, executed=t.strategy == executed, cycles=t.cycles,
        errors=t.errors, skipped=t.skipped, surplus_kwh=t.surplus_kw * period_h,
        allocated_kwh=t.allocated_kw * period_h, usable_kwh=t.usable_kw * period_h,
        share=t.share, usable_share=t.usable_share,
        sites_served_mean=t.sites_served / t.cycles if t.cycles else None,
        jain_mean=t.jain_mean, elapsed_mean_s=t.elapsed_mean_s, fallbacks=t.fallbacks,
        compute_mean_s=t.compute_mean_s, compute_max_s=t.compute_max_s,
    )


def add_shadow_routes(
    app: FastAPI, coordinator: Coordinator, read: Read, time_range: TimeRange
) -> None:
    """Register the shadow endpoints on ``app`` (``read``/``time_range``: ``create_app``'s)."""
    cycle_settings = coordinator.settings.cycle
    executed = coordinator.strategy.name

    @app.get("/api/shadow", tags=["shadow"], response_model=ShadowScores)
    async def shadow_scores(
        since: str | None = None,
        until: str | None = None,
        last: Annotated[int | None, Query(ge=1, le=10_000)] = None,
        limit: Annotated[int, Query(ge=1, le=50_000)] = 5000,
    ) -> ShadowScores:
        """Per cycle and shadow strategy, what it would have given on the cycle's replies:
        the cycles in ``[since, until)`` (ISO times, or local days; default the last day),
        or the ``last`` N cycles scored."""
        if last is not None:
            rows = await read(Recorder.last_shadow_scores, last)
            first = end = None
        else:
            start, stop = time_range(since, until)
            first, end = format_utc(start), format_utc(stop)
            rows = await read(Recorder.shadow_scores, first, end, limit)
        return ShadowScores(
            since=first, until=end, executed=executed,
            strategies=list(cycle_settings.shadow), scores=[score_out(r) for r in rows],
        )

    @app.get("/api/shadow/summary", tags=["shadow"], response_model=ShadowSummary)
    async def shadow_summary(since: str | None = None, until: str | None = None) -> ShadowSummary:
        """Each shadow strategy over the cycles in ``[since, until)``: energy shares of the
        surplus allocated and usable, mean Jain's index, fallbacks, errors, skipped runs."""
        start, stop = time_range(since, until)
        totals = await read(Recorder.shadow_summary, format_utc(start), format_utc(stop))
        by_name = {t.strategy: t for t in totals}
        # The configured strategies first, in their order, even with no row yet.
        names = [*cycle_settings.shadow, *(n for n in by_name if n not in cycle_settings.shadow)]
        period_h = cycle_settings.period_s / 3600.0
        return ShadowSummary(
            since=format_utc(start), until=format_utc(stop), executed=executed,
            period_s=cycle_settings.period_s,
            strategies=[
                totals_out(by_name.get(n) or _no_rows(n), executed, period_h) for n in names
            ],
        )


def _no_rows(name: str) -> ShadowTotals:
    return ShadowTotals(name, 0, 0, 0, 0.0, 0.0, 0.0, 0, None, None, 0, None, None)

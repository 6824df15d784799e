"""``create_app(coordinator)``: the operator's page and REST API (docs/operator-page.md).

Pure wiring: handlers read the coordinator's live state on its own event loop
(between two awaits, so consistently and without a lock) and the records
through ``RecordReader`` (a read-only SQLite connection on a thread of its
own), so no request ever blocks the loop on SQLite. The one write, a grid
override, goes through ``GridService.submit``: the same path as the MQTT
``admin/signal/set`` topic. Reading is open; writing needs the ``[web]
admin_token`` as a Bearer token (RFC 6750): none sent is 401, a wrong one 403.
"""

from __future__ import annotations

import asyncio
import csv
import hmac
import io
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeVar

import orjson
import structlog
from fastapi import Depends, FastAPI, HTTPException, Query, Response, status
from fastapi.responses import FileResponse, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles

from central import __version__
from central.core.grid import day_start, override_problem
from central.recorder import EXPORT_TABLES, Recorder
from central.web.events import EventHub
from central.web.live import LiveState, community_view, grid_view, relays_view, sites_view
from central.web.models import (
    CommunityNow,
    CycleHistory,
    GridNow,
    Health,
    HvalueIn,
    OverrideAccepted,
    OverrideIn,
    RelaysState,
    SitesPage,
)
from central.web.reader import RecordReader
from central.web.shadow import add_shadow_routes
from protocol.models import AdminSignalSet, format_utc

if TYPE_CHECKING:
    from central.app import Coordinator

T = TypeVar("T")
STATIC = Path(__file__).parent / "static"
READ_TIMEOUT_S = 30.0
EXPORT_PAGE = 5000
log = structlog.get_logger("central.web")
# Module level: FastAPI resolves the (string) annotations of handlers in this module.
_bearer = HTTPBearer(auto_error=False, description="the [web] admin_token")


@dataclass
class WebContext:
    """What the app holds besides the coordinator; closed by ``WebServer``."""

    hub: EventHub
    reader: RecordReader
    live: LiveState

    def close_streams(self) -> None:
        self.hub.close()

    def close(self) -> None:
        self.hub.close()
        self.reader.close()


def create_app(coordinator: Coordinator) -> FastAPI:
    """The ASGI app of ``coordinator``; registers its listeners on it."""
    settings = coordinator.settings.web
    ctx = WebContext(
        hub=EventHub(settings.sse_queue),
        reader=RecordReader(coordinator.recorder, coordinator._db),
        live=LiveState(coordinator.settings.cycle.period_s),
    )
    coordinator.add_listener(ctx.live.on_event)
    coordinator.add_listener(ctx.hub.on_coordinator_event)
    coordinator.grid.add_listener(ctx.hub.grid_listener(coordinator.clock.now))
    tz = coordinator.grid.tz

    app = FastAPI(
        title="ems-central operator API",
        version=__version__,
        description="The energy community's coordinator: live state, history, grid "
        "signal and its manual override (docs/operator-page.md).",
    )
    app.state.web = ctx

    async def read(fn: Callable[..., T], *args: Any) -> T:
        try:
            return await asyncio.wait_for(ctx.reader.run(fn, *args), READ_TIMEOUT_S)
        except TimeoutError as exc:
            raise HTTPException(503, "the records did not answer in time") from exc
        except Exception as exc:
            log.exception("web_read_failed", fn=getattr(fn, "__name__", str(fn)))
            raise HTTPException(503, f"cannot read the records: {exc}") from exc

    def time_range(since: str | None, until: str | None) -> tuple[datetime, datetime]:
        now = coordinator.clock.now()
        start = _instant(since, tz, "since") if since else now - timedelta(days=1)
        end = _instant(until, tz, "until", end=True) if until else now + timedelta(days=1)
        if end <= start:
            raise HTTPException(422, "until must be after since")
        return start, end

    # Page --------------------------------------------------------------------
    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    # Live state --------------------------------------------------------------
    @app.get("/api/community", tags=["live"], response_model=CommunityNow)
    async def community() -> dict[str, Any]:
        """The community now: surplus, allocated, injected, grid level, sites online/degraded."""
        return community_view(coordinator)

    @app.get("/api/health", tags=["live"], response_model=Health)
    async def health() -> dict[str, Any]:
        """Alive, and what it refused: counters by reason (flood control included), log
        lines suppressed by the rate limit, sites in quarantine (docs/reliability.md)."""
        return coordinator.health()

    @app.get("/api/sites", tags=["live"], response_model=SitesPage)
    async def sites(
        offset: Annotated[int, Query(ge=0)] = 0,
        limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
    ) -> Response:
        """One row per site, by id: net load and its age, last reply, allocation and rank,
        its share of the allocated energy since the start and over all the records."""
        if ctx.live.prior_kwh is None:
            await long_run_seeded()
        return _page(sites_view(coordinator, ctx.live, offset, limit))

    seed_lock = asyncio.Lock()

    async def long_run_seeded() -> None:
        # The earlier runs' allocations, read once (off the loop); until then, and if the
        # records cannot be read, the long-run share is null and the rows still show.
        async with seed_lock:
            if ctx.live.prior_kwh is not None:
                return
            try:
                prior = await read(Recorder.allocated_kw_by_site, coordinator.epoch)
            except HTTPException:
                return
            ctx.live.seed(prior)

    @app.get("/api/events", tags=["live"], response_class=StreamingResponse,
             responses={200: _text("text/event-stream", "WHATWG server-sent events")})
    async def events() -> StreamingResponse:
        """Server-sent events: ``cycle_opened``, ``allocations``, ``cycle_closed``, ``grid``."""
        return StreamingResponse(
            ctx.hub.stream(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    # History -----------------------------------------------------------------
    @app.get("/api/cycles", tags=["history"], response_model=CycleHistory)
    async def cycles(
        since: str | None = None,
        until: str | None = None,
        limit: Annotated[int, Query(ge=1, le=50_000)] = 5000,
    ) -> Response:
        """Cycles in ``[since, until)`` (ISO times, or local days): surplus, allocated, and
        the export the sites reported for the period (``injected_kw``, its mean)."""
        start, end = time_range(since, until)
        rows = await read(Recorder.cycle_history, format_utc(start), format_utc(end), limit)
        period_h = coordinator.settings.cycle.period_s / 3600.0
        return _page({
            "since": format_utc(start),
            "until": format_utc(end),
            "period_s": coordinator.settings.cycle.period_s,
            "cycles": [
                {
                    "cycle": r.cycle,
                    "surplus_kw": r.surplus_kw,
                    "allocated_kw": r.allocated_kw,
                    "injected_kw": (
                        round(r.export_kwh / period_h, 6) if r.export_kwh is not None else None
                    ),
                    "export_kwh": r.export_kwh,
                    "reports": r.reports,
                    "replies": r.replies,
                    "sites": r.sites,
                    "close_reason": r.close_reason,
                }
                for r in rows
            ],
        })

    @app.get("/api/export/{table}.csv", tags=["history"], response_class=StreamingResponse,
             responses={200: _text("text/csv", "a header row, then one row per record")})
    async def export(
        table: Literal["cycles", "decisions", "reports"],
        since: str | None = None,
        until: str | None = None,
    ) -> StreamingResponse:
        """CSV of one table over ``[since, until)``, streamed page by page."""
        start, end = time_range(since, until)
        first, last = format_utc(start), format_utc(end)
        # A first page before answering, so an unreadable database is a 503, not a cut CSV.
        page = await read(Recorder.export_page, table, first, last, None, EXPORT_PAGE)
        name = f"{coordinator.community}-{table}-{start:%Y%m%dT%H%M}-{end:%Y%m%dT%H%M}.csv"
        return StreamingResponse(
            _csv_pages(table, page, lambda after: read(
                Recorder.export_page, table, first, last, after, EXPORT_PAGE)),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": f'attachment; filename="{name}"'},
        )

    # Grid signal ---------------------------------------------------------------
    @app.get("/api/grid", tags=["grid"], response_model=GridNow)
    async def grid() -> dict[str, Any]:
        """The grid signal's days hour by hour: RTE's levels and the overrides on top."""
        return grid_view(coordinator)

    def admin(
        creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> None:
        if creds is None:
            raise HTTPException(
                status.HTTP_401_UNAUTHORIZED, "admin token required",
                headers={"WWW-Authenticate": "Bearer"},
            )
        token = settings.admin_token
        if token is None:
            raise HTTPException(status.HTTP_403_FORBIDDEN, "no [web] admin_token configured")
        if not hmac.compare_digest(
            creds.credentials.encode(), token.get_secret_value().encode()
        ):
            log.warning("web_admin_refused", reason="wrong token")
            raise HTTPException(status.HTTP_403_FORBIDDEN, "wrong admin token")

    def submit_override(day: date, hour: int, level: int | None, route: str) -> OverrideAccepted:
        # One implementation for the override and its prototype alias.
        if level is not None:
            problem = override_problem(day, hour, coordinator.clock.now(), tz)
            if problem is not None:
                raise HTTPException(422, problem)
        command = AdminSignalSet(day=day, hour=hour, level=level)
        log.info("admin_signal_received", source="web", route=route, day=day.isoformat(),
                 hour=hour, grid_level=level)
        coordinator.grid.submit(command)
        return OverrideAccepted(accepted=True, day=day, hour=hour, level=level)

    @app.post(
        "/api/grid/override", tags=["grid"], status_code=status.HTTP_202_ACCEPTED,
        dependencies=[Depends(admin)], responses=_REFUSALS,
    )
    async def override(body: OverrideIn) -> OverrideAccepted:
        """Override one hour's grid level (``level: null`` clears it), as ``admin/signal/set``.

        Checked here (422 for an hour that does not exist, has ended, or is too far
        ahead), then queued to the grid service, which stores and publishes it."""
        return submit_override(body.day, body.hour, body.level, "override")

    # The relay prototype's two calls, kept for its scripts ---------------------------
    @app.post(
        "/api/update_hvalue", tags=["prototype aliases"],
        status_code=status.HTTP_202_ACCEPTED, dependencies=[Depends(admin)],
        responses=_REFUSALS,
    )
    async def update_hvalue(body: HvalueIn) -> OverrideAccepted:
        """Alias of ``POST /api/grid/override`` with the prototype's body: ``{day, hour,
        hvalue}`` sets that hour's level to ``hvalue`` (1-3). Same token, same checks,
        same effect."""
        return submit_override(body.day, body.hour, body.hvalue, "update_hvalue")

    @app.get("/api/get_relays_state", tags=["prototype aliases"], response_model=RelaysState)
    async def get_relays_state(
        offset: Annotated[int, Query(ge=0)] = 0,
        limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
    ) -> Response:
        """Every site's loads, by site id: relay on/off, power and reason as the gateway
        last reported them (the retained ``site/{s}/load/{l}/state``)."""
        return _page(relays_view(coordinator, ctx.live, offset, limit))

    # Shadow mode: what the [cycle] shadow strategies would have given (central/web/shadow.py).
    add_shadow_routes(app, coordinator, read, time_range)

    return app


def _page(data: dict[str, Any]) -> Response:
    """A long answer (thousands of rows), encoded by orjson straight from its view.

    Validating it against its response model would hold the coordinator's loop
    several times longer than encoding it (bench/web_answers.py); the model still
    documents it, and tests/browser/test_api_schema.py keeps views and models in step.
    """
    return Response(orjson.dumps(data), media_type="application/json")


_REFUSALS: dict[int | str, dict[str, Any]] = {
    401: {"description": "no admin token sent"},
    403: {"description": "a wrong admin token, or none configured"},
}


def _text(media_type: str, description: str) -> dict[str, Any]:
    """An OpenAPI 200 response that is text (a stream), not JSON."""
    return {
        "description": description,
        "content": {media_type: {"schema": {"type": "string"}}},
    }


async def _csv_pages(
    table: str,
    page: list[tuple[Any, ...]],
    more: Callable[[tuple[Any, ...]], Awaitable[list[tuple[Any, ...]]]],
) -> AsyncIterator[bytes]:
    spec = EXPORT_TABLES[table]
    key_at = [spec.columns.index(k) for k in spec.key]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(spec.columns)
    while True:
        writer.writerows(page)
        yield buf.getvalue().encode()
        buf.seek(0)
        buf.truncate()
        if len(page) < EXPORT_PAGE:
            return
        page = await more(tuple(page[-1][i] for i in key_at))


def _instant(text: str, tz: Any, name: str, *, end: bool = False) -> datetime:
    """An ISO time (naive = local), or a local day: its start (its end for ``until``)."""
    try:
        if len(text) == 10:
            day = date.fromisoformat(text)
            return day_start(day + timedelta(days=1) if end else day, tz)
        # A "+02:00" offset arrives as " 02:00" when the client did not escape its "+".
        at = datetime.fromisoformat(text.replace(" ", "+").replace("Z", "+00:00"))
    except ValueError as exc:
        raise HTTPException(422, f"{name}: not an ISO date or time: {text!r}") from exc
    return at if at.tzinfo is not None else at.replace(tzinfo=tz)

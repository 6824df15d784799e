"""The operator API's request and response models: what ``/openapi.json`` documents.

Each JSON endpoint of ``central.web.app`` declares one of these as its
``response_model``, so the OpenAPI document carries real schemas. FastAPI checks
the short answers against them; the long pages (thousands of rows) are encoded
by orjson straight from their views, which stay plain dicts (cheap on the
coordinator's loop). ``tests/browser/test_api_schema.py`` checks the answers
against the document, field for field, and the views against these models.

Times are strings as the wire writes them (``protocol.models.format_utc``:
ISO 8601 UTC with a ``Z``), documented as ``date-time``; powers are kW, energies
kWh, durations seconds, as in PROTOCOL.md.
"""

from __future__ import annotations

from datetime import date
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

UtcText = Annotated[
    str,
    Field(json_schema_extra={"format": "date-time"}, examples=["2026-06-21T12:15:00Z"]),
]
Level = Annotated[int, Field(ge=0, le=3, description="0 low-carbon, 1 normal, 2 tense, 3 cut")]
GridSource = Literal["ecowatt", "manual"]


class _Out(BaseModel):
    # Responses: unknown keys are dropped by FastAPI; the schema test keeps the views and
    # these models in step, so nothing the page needs is dropped silently.
    model_config = ConfigDict(extra="ignore")


# /api/community ----------------------------------------------------------------------
class CycleNow(_Out):
    """The cycle in progress (or the last one, closed)."""

    cycle: UtcText = Field(description="the cycle id: the start of its period")
    state: Literal["open", "closed"]
    close_reason: str | None = Field(description="exhausted, all_replied, deadline, no_surplus")
    surplus_kw: float
    allocated_kw: float
    replies: int
    sites: int = Field(description="sites asked (online at the request)")
    reply_by: UtcText | None


class CoordinatorStats(_Out):
    """Counters since the coordinator started."""

    received: int
    accepted: dict[str, int] = Field(default_factory=dict,
                                     description="messages accepted, by topic kind")
    rejected: dict[str, int] = Field(description="messages refused, by reason")
    ignored: dict[str, int] = Field(description="messages ignored (stale replies...), by reason")
    cycles: int
    allocations: int
    errors: int = Field(default=0, description="bursts that raised (a bug; logged)")
    log_lines_suppressed: int = Field(
        default=0, description="refusals not logged (one line per site and reason an interval)")


class CommunityNow(_Out):
    """``GET /api/community``: the community now."""

    community: str
    now: UtcText
    epoch: int = Field(description="the coordinator's fencing epoch")
    strategy: str
    period_s: float
    surplus_kw: float = Field(description="sum of the fresh net loads, now")
    net_export_kw: float
    injected_kw: float = Field(description="sum of the positive fresh net loads")
    allocated_kw: float | None = Field(description="allocated in the current/last cycle")
    cycle: CycleNow | None
    grid_level: Level | None
    grid_source: GridSource | None
    sites_known: int
    sites_online: int
    sites_degraded: int = Field(description="online, but no fresh net load")
    stats: CoordinatorStats


# /api/sites ---------------------------------------------------------------------------
class SiteRow(_Out):
    """One site: status, last net load, its last reply and allocation, its share."""

    site: str
    online: bool
    version: str
    loads: list[str] = Field(description="the load ids its status announced")
    status_at: UtcText | None
    net_export_kw: float | None
    netload_at: UtcText | None
    netload_age_s: float | None
    degraded: bool
    last_cycle: UtcText | None = Field(description="the last cycle it replied to")
    reply_s: float | None = Field(description="its reply's delay after the request")
    flex_kw: float | None = Field(description="the flexibility it offered")
    alloc_kw: float | None
    rank: int | None
    alloc_kwh_since_start: float
    share_since_start: float | None = Field(description="0..1 of the community's allocation")
    alloc_kwh_long_run: float | None = Field(
        description="allocated energy over all the records (earlier runs included); "
        "null until the records were read")
    share_long_run: float | None = Field(description="0..1, over all the records")
    quarantined: bool = Field(default=False, description="flooding: every message dropped")
    quarantined_until: UtcText | None = None


class SitesPage(_Out):
    """``GET /api/sites``: one page of sites, by id."""

    total: int
    offset: int
    limit: int
    sites: list[SiteRow]


# /api/cycles --------------------------------------------------------------------------
class CycleHistoryRow(_Out):
    """One recorded cycle with the export its sites reported for the period."""

    cycle: UtcText
    surplus_kw: float
    allocated_kw: float | None
    injected_kw: float | None = Field(description="mean power of the reported export")
    export_kwh: float | None
    reports: int
    replies: int | None
    sites: int
    close_reason: str | None


class CycleHistory(_Out):
    """``GET /api/cycles``: the cycles of a time range, oldest first."""

    since: UtcText
    until: UtcText
    period_s: float
    cycles: list[CycleHistoryRow]


# /api/grid ----------------------------------------------------------------------------
class GridHour(_Out):
    """One hour of a day (hours count from the local midnight, as RTE's ``pas``)."""

    hour: int
    start_at: UtcText
    level: Level | None = Field(description="the level in force (RTE's or the override)")
    rte_level: Level | None
    override: bool


class GridDay(_Out):
    """One local day, hour by hour (23 or 25 hours on a DST day)."""

    day: date
    source: GridSource | None
    day_level: Level | None
    message: str
    hours: list[GridHour]


class ShedWindowOut(_Out):
    """The hours at or above the shed threshold, from now."""

    model_config = ConfigDict(populate_by_name=True)

    level: Level
    from_: UtcText = Field(alias="from")
    until: UtcText
    reason: GridSource


class GridNow(_Out):
    """``GET /api/grid``: the grid signal's days, RTE's levels and the overrides on top."""

    timezone: str
    today: date
    hour: int
    level: Level | None
    shed_threshold: int
    shed: ShedWindowOut | None
    ecowatt: bool = Field(description="whether RTE is polled")
    fetched_at: UtcText | None
    override_at: UtcText | None
    refused: int = Field(description="overrides refused since the start")
    days: list[GridDay]


# Overrides ----------------------------------------------------------------------------
class OverrideIn(BaseModel):
    """One hour's grid level, as ``admin/signal/set``: ``level: null`` clears the override."""

    model_config = ConfigDict(extra="forbid")

    day: date = Field(description="the local day (the [ecowatt] timezone)")
    hour: int = Field(ge=0, le=24, description="hours since the local midnight")
    level: int | None = Field(ge=0, le=3, description="0-3 (RTE: 1 normal, 2 tense, 3 cut)")


class HvalueIn(BaseModel):
    """The relay prototype's override: one hour's ``hvalue`` (RTE's level, 1-3)."""

    model_config = ConfigDict(extra="forbid")

    day: date = Field(description="the local day (the [ecowatt] timezone)")
    hour: int = Field(
        ge=0, le=24, description="RTE's ``pas``: hours since the local midnight (0-23; "
        "24 exists on the 25-hour autumn day)",
    )
    hvalue: int = Field(ge=1, le=3, description="1 normal, 2 tense, 3 cut")


class OverrideAccepted(_Out):
    """The override was checked and queued to the grid service (202)."""

    accepted: bool
    day: date
    hour: int
    level: Level | None


# /api/health --------------------------------------------------------------------------
class Rejections(_Out):
    """Refused messages (docs/reliability.md, "Hostile input")."""

    by_reason: dict[str, int]
    total: int
    log_lines_suppressed: int


class FloodPolicy(_Out):
    """The per-site rate limit and quarantine in force."""

    rate_per_s: float
    burst: float
    quarantine_after: int
    quarantine_window_s: float
    quarantine_s: float


class Health(CoordinatorStats):
    """``GET /api/health``: alive, its counters by reason, the quarantined sites."""

    status: Literal["ok"]
    community: str
    epoch: int
    now: UtcText
    queue: int = Field(description="messages and events waiting for the consumer")
    mqtt_connected: bool
    callback_errors: int = Field(description="MQTT callbacks that raised (logged)")
    rejections: Rejections
    quarantined: dict[str, UtcText] = Field(description="site: quarantined until")
    flood: FloodPolicy | None


# /api/get_relays_state ------------------------------------------------------------------
class LoadRelay(_Out):
    """One load's relay as its gateway last reported it (``load/{l}/state``)."""

    load: str
    on: bool | None = Field(description="supplied (relay closed); null: never reported")
    power_kw: float | None
    reason: Literal["allocation", "shed", "local", "manual", "idle"] | None
    reported_at: UtcText | None = Field(description="when the coordinator received it")


class SiteRelays(_Out):
    """One site's loads: those its status announced and those that reported a state."""

    site: str
    online: bool
    loads: list[LoadRelay]


class RelaysState(_Out):
    """``GET /api/get_relays_state``: every site's loads, by site id, one page."""

    total: int
    offset: int
    limit: int
    sites: list[SiteRelays]

"""One pydantic model per payload of the contract (PROTOCOL.md, version 1).

Every model is frozen, ignores unknown fields, demands ``"v": 1``, refuses
wrong types (strict mode), NaN and infinities, and checks powers against a
physical cap per site carried in the validation context
(``{"max_site_kw": 50.0}``, see ``protocol.codec.Limits``). Times are
timezone-aware UTC ``datetime``s, written as ``2026-06-21T12:15:00Z``.
"""

from __future__ import annotations

import math
from datetime import UTC, date, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    SerializerFunctionWrapHandler,
    ValidationInfo,
    model_serializer,
    model_validator,
)

from protocol.ids import ID_PATTERN

DEFAULT_MAX_SITE_KW = 50.0
# A community-wide figure (surplus, allocated) is capped far above any real
# low-voltage area, only to refuse absurd values.
MAX_COMMUNITY_KW = 1_000_000.0
MAX_ENERGY_KWH = 100_000.0
MAX_LIST = 256


def format_utc(at: datetime) -> str:
    """ISO 8601 UTC with a ``Z`` and no fractional part when it is zero."""
    # isoformat pads the year to 4 digits (strftime's %Y does not on Linux)
    # and writes microseconds only when there are some.
    return at.astimezone(UTC).replace(tzinfo=None).isoformat() + "Z"


def _utc(value: datetime) -> datetime:
    offset = value.utcoffset()
    if offset is None:
        raise ValueError("time must carry a UTC offset (e.g. 2026-06-21T12:15:00Z)")
    if offset.total_seconds() != 0:
        raise ValueError("time must be in UTC (Z or +00:00)")
    return value.astimezone(UTC)


def _site_cap(info: ValidationInfo) -> float:
    ctx = info.context
    if isinstance(ctx, dict):
        cap = ctx.get("max_site_kw")
        if isinstance(cap, int | float):
            return float(cap)
    return DEFAULT_MAX_SITE_KW


def _finite(value: float) -> float:
    if not math.isfinite(value):
        raise ValueError("must be a finite number")
    return value


def _site_power(value: float, info: ValidationInfo) -> float:
    _finite(value)
    if value < 0:
        raise ValueError("power must not be negative")
    cap = _site_cap(info)
    if value > cap:
        raise ValueError(f"power {value} kW exceeds the per-site cap of {cap} kW")
    return value


def _signed_site_power(value: float, info: ValidationInfo) -> float:
    _finite(value)
    cap = _site_cap(info)
    if abs(value) > cap:
        raise ValueError(f"|power| {value} kW exceeds the per-site cap of {cap} kW")
    return value


UtcTime = Annotated[
    datetime,
    AfterValidator(_utc),
    PlainSerializer(format_utc, return_type=str, when_used="always"),
]
Id = Annotated[str, Field(pattern=ID_PATTERN)]
SitePowerKw = Annotated[float, AfterValidator(_site_power)]
SignedSitePowerKw = Annotated[float, AfterValidator(_signed_site_power)]
CommunityPowerKw = Annotated[float, Field(ge=0, le=MAX_COMMUNITY_KW, allow_inf_nan=False)]
SignedCommunityPowerKw = Annotated[
    float, Field(ge=-MAX_COMMUNITY_KW, le=MAX_COMMUNITY_KW, allow_inf_nan=False)
]
EnergyKwh = Annotated[float, Field(ge=0, le=MAX_ENERGY_KWH, allow_inf_nan=False)]
Count = Annotated[int, Field(ge=0, le=2**53)]
Level = Annotated[int, Field(ge=0, le=3)]
Hour = Annotated[int, Field(ge=0, le=24)]
Version = Annotated[str, Field(min_length=1, max_length=64)]

LoadKind = Literal["water_heater", "heat_pump", "ev_charger", "battery", "generic"]
CloseReason = Literal["exhausted", "all_replied", "deadline", "no_surplus"]
OnlineState = Literal["online", "offline"]


class Payload(BaseModel):
    """Common base: ``v == 1``, strict types, no NaN, unknown fields ignored, frozen."""

    model_config = ConfigDict(
        frozen=True,
        extra="ignore",
        strict=True,
        allow_inf_nan=False,
        str_max_length=4096,
    )

    v: Literal[1] = 1


# Gateway -> coordinator -----------------------------------------------------


def _omit_unset(data: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    """Leave out optional extension fields that are not set: older payloads stay as they were."""
    for key in keys:
        if data.get(key) is None:
            data.pop(key, None)
    return data


class SiteStatus(Payload):
    """``site/{s}/status``, retained, also the will."""

    state: OnlineState
    version: Version = "unknown"
    loads: tuple[Id, ...] = Field(default=(), max_length=MAX_LIST)
    # Extension (docs/reliability.md): the report outbox, shown while online.
    outbox_pending: Count | None = None
    reports_dropped: Count | None = None

    @model_serializer(mode="wrap")
    def _serialize(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        return _omit_unset(handler(self), ("outbox_pending", "reports_dropped"))


class NetLoad(Payload):
    """``site/{s}/netload``: > 0 means the site injects into the grid."""

    ts: UtcTime
    net_export_kw: SignedSitePowerKw


class LoadFlex(BaseModel):
    """One flexible load behind a flex reply."""

    model_config = Payload.model_config

    id: Id
    kind: LoadKind = "generic"
    min_kw: SitePowerKw
    max_kw: SitePowerKw
    priority: Annotated[int, Field(ge=0, le=1000)] | None = None
    until: UtcTime | None = None
    energy_kwh: EnergyKwh | None = None

    @model_validator(mode="after")
    def _min_below_max(self) -> LoadFlex:
        if self.min_kw > self.max_kw:
            raise ValueError(f"load {self.id}: min_kw {self.min_kw} exceeds max_kw {self.max_kw}")
        return self


class Flex(Payload):
    """``site/{s}/flex``: a reply to a cycle request."""

    cycle: UtcTime
    flex_kw: SitePowerKw
    loads: tuple[LoadFlex, ...] = Field(default=(), max_length=64)


class Report(Payload):
    """``site/{s}/report``: end-of-period energy, kept in the gateway's outbox until acked."""

    seq: Count
    period: UtcTime
    import_kwh: EnergyKwh
    export_kwh: EnergyKwh
    allocated_kwh: EnergyKwh
    used_kwh: EnergyKwh
    # Extension (docs/reliability.md): the highest seq the gateway's full outbox
    # dropped unsent; the coordinator acknowledges past it instead of waiting.
    dropped_through: Count | None = None

    @model_serializer(mode="wrap")
    def _serialize(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        return _omit_unset(handler(self), ("dropped_through",))


class LoadState(Payload):
    """``site/{s}/load/{l}/state``, retained."""

    on: bool
    power_kw: SitePowerKw
    reason: Literal["allocation", "shed", "local", "manual", "idle"]
    # The device's energy counter (kWh) when it has one; it may restart from 0.
    energy_kwh: EnergyKwh | None = None


class SiteContext(Payload):
    """``site/{s}/context`` (extension, retained): what Home Assistant shows of the community."""

    net_export_kw: SignedSitePowerKw | None = None
    cycle: UtcTime | None = None
    alloc_kw: SitePowerKw = 0.0
    rank: Annotated[int, Field(ge=0, le=2**31)] = 0
    grid_level: Level = 1
    coordinator_online: bool = False
    degraded: bool = True


# Coordinator -> gateways ----------------------------------------------------


class CoordinatorStatus(Payload):
    """``coordinator/status``, retained, also the will."""

    state: OnlineState
    version: Version = "unknown"
    epoch: Count


class CycleRequest(Payload):
    """``cycle/request``: one per cycle with a surplus, to all sites at once."""

    cycle: UtcTime
    surplus_kw: CommunityPowerKw
    period_start: UtcTime
    period_end: UtcTime
    reply_by: UtcTime


class Alloc(Payload):
    """``alloc/{s}``: the power a site may use for the whole period."""

    cycle: UtcTime
    alloc_kw: SitePowerKw
    rank: Annotated[int, Field(ge=1, le=2**31)]
    valid_until: UtcTime
    epoch: Count


class Ack(Payload):
    """``ack/{s}``: every report up to ``seq`` is durably recorded."""

    seq: Count


class CycleClosed(Payload):
    """``cycle/closed``, retained."""

    cycle: UtcTime
    reason: CloseReason
    surplus_kw: SignedCommunityPowerKw
    allocated_kw: CommunityPowerKw
    replies: Count
    sites: Count


class GridSignal(Payload):
    """``grid/signal``, retained: the grid level for the current hour and the day."""

    source: Literal["ecowatt", "manual"]
    day: date
    hour: Hour
    level: Level
    day_level: Level
    hours: tuple[Level, ...] = Field(min_length=23, max_length=25)
    updated: UtcTime


class GridShed(Payload):
    """``grid/shed``, retained: loads shed from ``level`` between ``from`` and ``until``."""

    model_config = ConfigDict(populate_by_name=True)

    level: Level
    from_: UtcTime = Field(alias="from")
    until: UtcTime
    reason: Literal["ecowatt", "manual"]


class AdminSignalSet(Payload):
    """``admin/signal/set``: override one hour's level; ``level: null`` clears it."""

    day: date
    hour: Annotated[int, Field(ge=0, le=24)]
    level: Level | None


def dump(model: BaseModel) -> dict[str, Any]:
    """The JSON-ready dict of a payload, with aliases (``from``) and UTC ``Z`` times."""
    return model.model_dump(mode="json", by_alias=True)

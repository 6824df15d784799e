"""What the operator page shows of the coordinator's live state, as JSON-ready dicts.

Everything here runs on the coordinator's event loop (a listener, or a request
handler reading ``coordinator.sites`` between two awaits), so it sees a
consistent state without a lock. ``LiveState`` keeps what the coordinator
itself forgets: each site's last decision, its allocated energy since the
start (plus the earlier runs', read once from the records, for the long-run
share) and its loads' last states; its listener is O(decisions) and never blocks.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from central.core.grid import day_hours, hour_start, locate
from protocol.models import format_utc

if TYPE_CHECKING:
    from central.app import Coordinator


@dataclass(slots=True)
class LastDecision:
    """A site's allocation in the last cycle it replied to."""

    cycle: str
    alloc_kw: float
    rank: int
    flex_kw: float
    reply_s: float  # the reply's delay after the request (the cycle's clock)


@dataclass(slots=True)
class LoadSeen:
    """A load's last reported state (``site/{s}/load/{l}/state``, retained)."""

    on: bool
    power_kw: float
    reason: str
    at: datetime  # when the coordinator received it


class LiveState:
    """Each site's last decision, its allocated energy since the start, its loads' states."""

    def __init__(self, period_s: float) -> None:
        self.period_h = period_s / 3600.0
        self.last: dict[str, LastDecision] = {}
        self.alloc_kwh: dict[str, float] = {}
        self.total_alloc_kwh = 0.0
        self.loads: dict[str, dict[str, LoadSeen]] = {}
        # The long-run share: the earlier runs' allocations, read once from the records
        # (``seed``); this run's, above, add to them. None until read.
        self.prior_kwh: dict[str, float] | None = None
        self.prior_total_kwh = 0.0

    def seed(self, prior_kw: dict[str, float]) -> None:
        """The earlier runs' summed allocations per site (``Recorder.allocated_kw_by_site``)."""
        period_h = self.period_h
        self.prior_kwh = {site: kw * period_h for site, kw in prior_kw.items()}
        self.prior_total_kwh = sum(self.prior_kwh.values())

    def on_event(self, event: str, data: Any) -> None:
        """The coordinator's listener: keeps ``allocations`` and ``load_state``."""
        if event == "load_state":
            site, load, state, at = data
            self.loads.setdefault(site, {})[load] = LoadSeen(
                state.on, state.power_kw, state.reason, at)
            return
        if event != "allocations":
            return
        oc, decisions = data
        last = self.last
        kwh = self.alloc_kwh
        period_h = self.period_h
        for d in decisions:
            last[d.site] = LastDecision(oc.cycle_id, d.alloc_kw, d.rank, d.flex_kw, d.elapsed_s)
            energy = d.alloc_kw * period_h
            kwh[d.site] = kwh.get(d.site, 0.0) + energy
            self.total_alloc_kwh += energy


def _utc(at: datetime | None) -> str | None:
    return format_utc(at) if at is not None else None


def community_view(coordinator: Coordinator) -> dict[str, Any]:
    """The community now: surplus, allocation, injection, grid level, sites."""
    now = coordinator.clock.now()
    max_age_s = coordinator.settings.cycle.netload_age_s
    online = degraded = 0
    injected_kw = net_export_kw = 0.0
    for rec in coordinator.sites.records():
        fresh = (
            rec.netload_at is not None
            and rec.net_export_kw is not None
            and (now - rec.netload_at).total_seconds() <= max_age_s
        )
        if rec.online:
            online += 1
            degraded += not fresh
        if fresh:
            assert rec.net_export_kw is not None
            net_export_kw += rec.net_export_kw
            injected_kw += max(rec.net_export_kw, 0.0)
    cycle: dict[str, Any] | None = None
    current = coordinator.current
    if current is not None:
        c = current.cycle
        cycle = {
            "cycle": current.cycle_id,
            "state": "closed" if c.closed else "open",
            "close_reason": c.close_reason,
            "surplus_kw": c.context.surplus_kw,
            "allocated_kw": round(c.allocated_kw, 6),
            "replies": c.replies,
            "sites": len(c.context.sites),
            "reply_by": _utc(current.reply_by),
        }
    grid = coordinator.grid
    view = grid.schedule().signal_at(now)
    return {
        "community": coordinator.community,
        "now": format_utc(now),
        "epoch": coordinator.epoch,
        "strategy": coordinator.strategy.name,
        "period_s": coordinator.settings.cycle.period_s,
        "surplus_kw": round(coordinator.sites.surplus(now, max_age_s).surplus_kw, 6),
        "net_export_kw": round(net_export_kw, 6),
        "injected_kw": round(injected_kw, 6),
        "allocated_kw": cycle["allocated_kw"] if cycle else None,
        "cycle": cycle,
        "grid_level": view.level if view is not None else None,
        "grid_source": view.source if view is not None else None,
        "sites_known": len(coordinator.sites),
        "sites_online": online,
        "sites_degraded": degraded,
        "stats": coordinator.stats.as_dict(),
    }


def sites_view(
    coordinator: Coordinator, live: LiveState, offset: int, limit: int
) -> dict[str, Any]:
    """One row per site, by id, ``limit`` of them from ``offset``."""
    now = coordinator.clock.now()
    max_age_s = coordinator.settings.cycle.netload_age_s
    records = sorted(coordinator.sites.records(), key=lambda r: r.site)
    total_kwh = live.total_alloc_kwh
    prior = live.prior_kwh
    long_total_kwh = live.prior_total_kwh + total_kwh
    rows = []
    for rec in records[offset : offset + limit]:
        age = (now - rec.netload_at).total_seconds() if rec.netload_at is not None else None
        last = live.last.get(rec.site)
        kwh = live.alloc_kwh.get(rec.site, 0.0)
        long_kwh = prior.get(rec.site, 0.0) + kwh if prior is not None else None
        rows.append(
            {
                "site": rec.site,
                "online": rec.online,
                "version": rec.version,
                "loads": list(rec.loads),
                "status_at": _utc(rec.status_at),
                "net_export_kw": rec.net_export_kw,
                "netload_at": _utc(rec.netload_at),
                "netload_age_s": round(age, 3) if age is not None else None,
                "degraded": rec.online and (age is None or age > max_age_s),
                "last_cycle": last.cycle if last else None,
                "reply_s": round(last.reply_s, 3) if last else None,
                "flex_kw": last.flex_kw if last else None,
                "alloc_kw": last.alloc_kw if last else None,
                "rank": last.rank if last else None,
                "alloc_kwh_since_start": round(kwh, 6),
                "share_since_start": round(kwh / total_kwh, 6) if total_kwh > 0 else None,
                "alloc_kwh_long_run": round(long_kwh, 6) if long_kwh is not None else None,
                "share_long_run": (
                    round(long_kwh / long_total_kwh, 6)
                    if long_kwh is not None and long_total_kwh > 0 else None
                ),
                "quarantined": rec.quarantined(now),
                "quarantined_until": _utc(rec.quarantined_until) if rec.quarantined(now) else None,
            }
        )
    return {"total": len(records), "offset": offset, "limit": limit, "sites": rows}


def relays_view(
    coordinator: Coordinator, live: LiveState, offset: int, limit: int
) -> dict[str, Any]:
    """Every site's loads with their relay state and power as last reported, by site id.

    The loads are those the site's status announced plus any that reported a
    state; a load announced but never reported has ``on: null``."""
    records = sorted(coordinator.sites.records(), key=lambda r: r.site)
    rows = []
    for rec in records[offset : offset + limit]:
        seen = live.loads.get(rec.site, {})
        loads = []
        for load in sorted({*rec.loads, *seen}):
            state = seen.get(load)
            loads.append(
                {
                    "load": load,
                    "on": state.on if state else None,
                    "power_kw": state.power_kw if state else None,
                    "reason": state.reason if state else None,
                    "reported_at": _utc(state.at) if state else None,
                }
            )
        rows.append({"site": rec.site, "online": rec.online, "loads": loads})
    return {"total": len(records), "offset": offset, "limit": limit, "sites": rows}


def grid_view(coordinator: Coordinator) -> dict[str, Any]:
    """The grid signal's days hour by hour (RTE and overrides), today and tomorrow at least."""
    grid = coordinator.grid
    now = coordinator.clock.now()
    tz = grid.tz
    schedule = grid.schedule()
    today, hour_now = locate(now, tz)
    days = sorted({today, today + timedelta(days=1), *schedule.days()})
    out = []
    for day in days:
        if day < today - timedelta(days=1):
            continue
        hours = schedule.hours(day)
        rte = schedule.signals.day(day)
        out.append(
            {
                "day": day.isoformat(),
                "source": schedule.source_of(day),
                "day_level": schedule.day_level(day),
                "message": rte.message if rte is not None else "",
                "hours": [
                    {
                        "hour": h,
                        "start_at": format_utc(hour_start(day, h, tz)),
                        "level": hours[h] if hours is not None else None,
                        "rte_level": (
                            rte.levels[h] if rte is not None and h < len(rte.levels) else None
                        ),
                        "override": schedule.is_override(day, h),
                    }
                    for h in range(day_hours(day, tz))
                ],
            }
        )
    window = schedule.shed_window(now, grid.threshold)
    return {
        "timezone": grid.settings.timezone,
        "today": today.isoformat(),
        "hour": hour_now,
        "level": schedule.level_at(today, hour_now),
        "shed_threshold": grid.threshold,
        "shed": (
            {
                "level": window.level,
                "from": format_utc(window.from_at),
                "until": format_utc(window.until_at),
                "reason": window.reason,
            }
            if window is not None
            else None
        ),
        "ecowatt": grid.poller is not None,
        "fetched_at": _utc(grid.fetched_at),
        "override_at": _utc(grid.override_at),
        "refused": grid.refused,
        "days": out,
    }

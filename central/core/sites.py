"""What the coordinator knows of each site: status and latest net load.

Pure bookkeeping: the caller passes the time a message was received (its own
clock, never the gateway's timestamp, which may be skewed). A net load counts
toward the surplus while it is younger than ``max_age_s`` (one period).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


@dataclass(slots=True)
class SiteRecord:
    """One site's last known status and net load."""

    site: str
    online: bool = False
    version: str = "unknown"
    loads: tuple[str, ...] = ()
    status_at: datetime | None = None
    net_export_kw: float | None = None
    netload_at: datetime | None = None
    # Flood control (central/core/flood.py): every message dropped until then.
    quarantined_until: datetime | None = None

    def quarantined(self, now: datetime) -> bool:
        return self.quarantined_until is not None and now < self.quarantined_until


@dataclass(frozen=True, slots=True)
class SurplusView:
    """The community's surplus at one instant and the sites it was summed from."""

    surplus_kw: float
    contributing: tuple[str, ...]
    stale: tuple[str, ...]


class SiteBook:
    """The sites of one community, keyed by id."""

    __slots__ = ("_sites", "allowed")

    def __init__(self, allowed: frozenset[str] | None = None) -> None:
        self.allowed = allowed
        self._sites: dict[str, SiteRecord] = {}

    def knows(self, site: str) -> bool:
        """Whether ``site`` may take part (always true without an allow-list)."""
        return self.allowed is None or site in self.allowed

    def _record(self, site: str) -> SiteRecord:
        rec = self._sites.get(site)
        if rec is None:
            rec = self._sites[site] = SiteRecord(site)
        return rec

    def set_status(
        self,
        site: str,
        online: bool,
        at: datetime,
        version: str = "unknown",
        loads: tuple[str, ...] = (),
    ) -> SiteRecord:
        rec = self._record(site)
        rec.online = online
        rec.status_at = at
        rec.version = version
        rec.loads = loads
        return rec

    def set_netload(self, site: str, net_export_kw: float, at: datetime) -> SiteRecord:
        rec = self._record(site)
        rec.net_export_kw = net_export_kw
        rec.netload_at = at
        return rec

    def set_quarantine(self, site: str, until: datetime | None) -> SiteRecord:
        """Mark ``site`` quarantined until ``until`` (None: released)."""
        rec = self._record(site)
        rec.quarantined_until = until
        return rec

    def get(self, site: str) -> SiteRecord | None:
        return self._sites.get(site)

    def __len__(self) -> int:
        return len(self._sites)

    def records(self) -> list[SiteRecord]:
        return list(self._sites.values())

    def online_sites(self) -> frozenset[str]:
        """Sites whose last status says online."""
        return frozenset(s for s, rec in self._sites.items() if rec.online)

    def surplus(self, now: datetime, max_age_s: float) -> SurplusView:
        """Sum of the fresh net loads (heard within ``max_age_s`` before ``now``)."""
        total = 0.0
        fresh: list[str] = []
        stale: list[str] = []
        for site, rec in self._sites.items():
            if rec.netload_at is None or rec.net_export_kw is None:
                continue
            age = (now - rec.netload_at).total_seconds()
            if age <= max_age_s:
                total += rec.net_export_kw
                fresh.append(site)
            else:
                stale.append(site)
        return SurplusView(total, tuple(fresh), tuple(stale))

"""Every topic of the contract, built and parsed in one place (PROTOCOL.md).

A ``Topics`` value is bound to one topic root and one community. Builders
return the exact strings; ``parse`` turns an incoming topic back into a
``Route`` (what kind of message, for which site and load) or ``None`` when the
topic is not part of the contract.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

from protocol.ids import is_valid_id, validate_id

_ROOT_RE = re.compile(r"^[A-Za-z0-9_-]+(/[A-Za-z0-9_-]+)*$")


class TopicKind(StrEnum):
    """What a topic carries; the value is the payload model's name in the docs."""

    SITE_STATUS = "site_status"
    NETLOAD = "netload"
    FLEX = "flex"
    REPORT = "report"
    LOAD_STATE = "load_state"
    COORDINATOR_STATUS = "coordinator_status"
    CYCLE_REQUEST = "cycle_request"
    ALLOC = "alloc"
    ACK = "ack"
    CYCLE_CLOSED = "cycle_closed"
    GRID_SIGNAL = "grid_signal"
    GRID_SHED = "grid_shed"
    ADMIN_SIGNAL_SET = "admin_signal_set"


@dataclass(frozen=True, slots=True)
class Route:
    """A parsed topic: its kind and the ids it names (site and load when present)."""

    kind: TopicKind
    site: str | None = None
    load: str | None = None


_SITE_LEAVES = {
    "status": TopicKind.SITE_STATUS,
    "netload": TopicKind.NETLOAD,
    "flex": TopicKind.FLEX,
    "report": TopicKind.REPORT,
}
_FIXED = {
    ("coordinator", "status"): TopicKind.COORDINATOR_STATUS,
    ("cycle", "request"): TopicKind.CYCLE_REQUEST,
    ("cycle", "closed"): TopicKind.CYCLE_CLOSED,
    ("grid", "signal"): TopicKind.GRID_SIGNAL,
    ("grid", "shed"): TopicKind.GRID_SHED,
}


class Topics:
    """Topic builder and parser for one community under one root (default ``ems``)."""

    __slots__ = ("base", "community", "root")

    def __init__(self, community: str, root: str = "ems") -> None:
        validate_id(community, "community id")
        if not _ROOT_RE.fullmatch(root):
            raise ValueError(f"topic root {root!r} must be one or more levels of [A-Za-z0-9_-]")
        self.root = root
        self.community = community
        self.base = f"{root}/{community}"

    # Gateway -> coordinator -------------------------------------------------
    def site_status(self, site: str) -> str:
        return f"{self.base}/site/{site}/status"

    def netload(self, site: str) -> str:
        return f"{self.base}/site/{site}/netload"

    def flex(self, site: str) -> str:
        return f"{self.base}/site/{site}/flex"

    def report(self, site: str) -> str:
        return f"{self.base}/site/{site}/report"

    def load_state(self, site: str, load: str) -> str:
        return f"{self.base}/site/{site}/load/{load}/state"

    # Extensions for Home Assistant (docs/protocol.md, "Extensions"): under the
    # site's own prefix, so a gateway's broker account needs nothing more.
    def site_context(self, site: str) -> str:
        """Retained: the community context of one home (allocation, grid, degraded)."""
        return f"{self.base}/site/{site}/context"

    def load_mode(self, site: str, load: str) -> str:
        """Retained: a load's control mode (auto / force_on / force_off)."""
        return f"{self.base}/site/{site}/load/{load}/mode"

    def load_mode_set(self, site: str, load: str) -> str:
        """Where Home Assistant (the resident) sets a load's mode."""
        return f"{self.base}/site/{site}/load/{load}/mode/set"

    def site_prefix(self, site: str) -> str:
        """Everything a gateway may write: ``ems/{c}/site/{s}/#``."""
        return f"{self.base}/site/{site}/#"

    # Coordinator -> gateways ------------------------------------------------
    def coordinator_status(self) -> str:
        return f"{self.base}/coordinator/status"

    def cycle_request(self) -> str:
        return f"{self.base}/cycle/request"

    def cycle_closed(self) -> str:
        return f"{self.base}/cycle/closed"

    def alloc(self, site: str) -> str:
        return f"{self.base}/alloc/{site}"

    def ack(self, site: str) -> str:
        return f"{self.base}/ack/{site}"

    def grid_signal(self) -> str:
        return f"{self.base}/grid/signal"

    def grid_shed(self) -> str:
        return f"{self.base}/grid/shed"

    # Admin -> coordinator ---------------------------------------------------
    def admin_signal_set(self) -> str:
        return f"{self.base}/admin/signal/set"

    # Subscriptions ----------------------------------------------------------
    def coordinator_subscriptions(self) -> list[str]:
        """What the coordinator reads: every site's messages and the admin topics."""
        return [
            f"{self.base}/site/+/status",
            f"{self.base}/site/+/netload",
            f"{self.base}/site/+/flex",
            f"{self.base}/site/+/report",
            f"{self.base}/admin/#",
        ]

    def gateway_subscriptions(self, site: str) -> list[str]:
        """What a gateway reads (PROTOCOL.md, broker ACL)."""
        return [
            self.alloc(site),
            self.ack(site),
            f"{self.base}/cycle/#",
            f"{self.base}/grid/#",
            f"{self.base}/coordinator/#",
        ]

    def everything(self) -> str:
        return f"{self.base}/#"

    # Parsing ----------------------------------------------------------------
    def parse(self, topic: str) -> Route | None:
        """Return the route of ``topic``, or None when it is not a contract topic."""
        prefix = self.base + "/"
        if not topic.startswith(prefix):
            return None
        parts = topic[len(prefix) :].split("/")
        n = len(parts)
        head = parts[0]
        if head == "site":
            if n == 3:
                kind = _SITE_LEAVES.get(parts[2])
                if kind is not None and is_valid_id(parts[1]):
                    return Route(kind, site=parts[1])
            elif (
                n == 5
                and parts[2] == "load"
                and parts[4] == "state"
                and is_valid_id(parts[1])
                and is_valid_id(parts[3])
            ):
                return Route(TopicKind.LOAD_STATE, site=parts[1], load=parts[3])
            return None
        if n == 2:
            if head == "alloc" and is_valid_id(parts[1]):
                return Route(TopicKind.ALLOC, site=parts[1])
            if head == "ack" and is_valid_id(parts[1]):
                return Route(TopicKind.ACK, site=parts[1])
            fixed = _FIXED.get((head, parts[1]))
            return Route(fixed) if fixed is not None else None
        if n == 3 and parts == ["admin", "signal", "set"]:
            return Route(TopicKind.ADMIN_SIGNAL_SET)
        return None

"""The soak's simulated homes: a day of PV and consumption, and the swarm that speaks for them.

``SiteModel`` is pure and seeded: for period k it gives every site's net export
(a summer PV curve, nothing at night, minus a varying consumption), its
flexibility for the cycle (45 % of sites can absorb nothing and say so; the
others offer 0.3-4 kW behind one load) and its end-of-period energy report.

``SoakSwarm`` holds the N sites on a few ``bench.swarm.Link`` connections, as
real gateways would speak: retained ``status`` at start, one ``netload`` per
period, a ``flex`` reply to every request, one ``report`` per period (seq 1, 2,
... per site) at the period boundary. It records what comes back: each site's
``alloc`` per cycle (a second one for the same cycle counts as a duplicate), the
highest ``ack`` seq per site, and each ``cycle/request`` and ``cycle/closed``
with its arrival time.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import orjson

from bench.swarm import GATEWAY_CONNECTIONS, WINDOW, Link
from protocol import Flex, LoadFlex, NetLoad, Report, SiteStatus, Topics, encode
from protocol.models import LoadKind, format_utc

SUNRISE_H, SUNSET_H = 6.0, 20.0  # a June day in France, in UTC hours rounded
NO_FLEX_SHARE = 0.45
KINDS: tuple[LoadKind, ...] = ("water_heater", "heat_pump", "ev_charger", "battery")
KEEP_REPLIES = 4  # cycles whose replies stay ready


def pv_shape(at: datetime) -> float:
    """Share of peak PV output at ``at`` (UTC): a half sine from sunrise to sunset, 0 at night."""
    hour = at.hour + at.minute / 60 + at.second / 3600
    if not SUNRISE_H < hour < SUNSET_H:
        return 0.0
    return math.sin(math.pi * (hour - SUNRISE_H) / (SUNSET_H - SUNRISE_H))


@dataclass(frozen=True)
class Offer:
    """One site's answer to a cycle's request."""

    flex_kw: float
    min_kw: float
    kind: LoadKind


class SiteModel:
    """N homes: 60 % with 2-8 kWp of PV, every one with a 0.3-1.5 kW base load."""

    def __init__(self, n: int, seed: int) -> None:
        rng = random.Random(seed)
        self.n = n
        self.seed = seed
        self.sites = [f"s{i:06d}" for i in range(n)]
        self.pv_peak_kw = [rng.uniform(2.0, 8.0) if rng.random() < 0.6 else 0.0
                           for _ in range(n)]
        self.base_kw = [rng.uniform(0.3, 1.5) for _ in range(n)]

    def _rng(self, period: int, salt: int) -> random.Random:
        return random.Random(self.seed * 1_000_003 + period * 7 + salt)

    def net_export_kw(self, period: int, at: datetime) -> list[float]:
        """Every site's net export at ``at`` (> 0: injects): PV x 0.85-1 minus load x 0.7-1.3."""
        rng = self._rng(period, 1)
        shape = pv_shape(at)
        return [round(pv * shape * rng.uniform(0.85, 1.0) - base * rng.uniform(0.7, 1.3), 3)
                for pv, base in zip(self.pv_peak_kw, self.base_kw, strict=True)]

    def offers(self, period: int) -> list[Offer]:
        """Every site's flexibility for cycle ``period``."""
        rng = self._rng(period, 2)
        out = []
        for _ in range(self.n):
            if rng.random() < NO_FLEX_SHARE:
                out.append(Offer(0.0, 0.0, "generic"))
                continue
            flex = round(rng.uniform(0.3, 4.0), 2)
            out.append(Offer(flex, round(flex * rng.uniform(0.4, 1.0), 2), rng.choice(KINDS)))
        return out


@dataclass
class CycleSeen:
    """What the swarm saw of one cycle."""

    cycle: str
    requested_at: float | None = None
    closed_at: float | None = None
    closed: dict[str, Any] | None = None
    allocs: dict[str, float] = field(default_factory=dict)  # site -> alloc_kw
    duplicate_allocs: int = 0
    last_alloc_at: float | None = None


class SoakSwarm:
    """The N sites of ``model`` on a few connections; see the module docstring."""

    def __init__(self, topics: Topics, model: SiteModel, period_s: float,
                 connections: int = GATEWAY_CONNECTIONS, window: int = WINDOW) -> None:
        self.topics = topics
        self.model = model
        self.period = timedelta(seconds=period_s)
        self.hours = period_s / 3600
        k = connections
        self.shards = [list(range(n, model.n, k)) for n in range(k)]
        self.request_topic = topics.cycle_request()
        self.closed_topic = topics.cycle_closed()
        base = topics.base
        self._alloc_prefix, self._ack_prefix = f"{base}/alloc/", f"{base}/ack/"
        self._flex_topics = [topics.flex(s) for s in model.sites]
        tag = uuid.uuid4().hex[:6]
        self.links = [Link(f"soak-gw-{tag}-{j}", self._handler(j), window) for j in range(k)]
        self._replies: dict[str, list[bytes]] = {}  # cycle id -> flex payload per site
        self.cycles: dict[str, CycleSeen] = {}
        self.acked: dict[str, int] = defaultdict(int)
        self.reports_sent = 0
        self.last_seq = 0
        self.stray = 0  # requests for a cycle the swarm was not told about

    async def start(self, host: str, port: int) -> None:
        await asyncio.gather(*(link.connect(host, port) for link in self.links))
        sites = self.model.sites
        await asyncio.gather(*(
            link.subscribe([self.request_topic, self.closed_topic]
                           + [self.topics.alloc(sites[i]) for i in shard]
                           + [self.topics.ack(sites[i]) for i in shard])
            for link, shard in zip(self.links, self.shards, strict=True)))

    # What the sites send ---------------------------------------------------------

    def _send(self, topics: list[str], payloads: list[bytes], retain: bool = False) -> None:
        for link, shard in zip(self.links, self.shards, strict=True):
            publish = link.publish
            for i in shard:
                publish(topics[i], payloads[i], retain)

    def announce(self) -> None:
        """Every site online (retained ``status``)."""
        status = encode(SiteStatus(state="online", version="soak", loads=("flex",)))
        sites = self.model.sites
        self._send([self.topics.site_status(s) for s in sites], [status] * len(sites), True)

    def send_netloads(self, period: int, at: datetime) -> list[float]:
        """One ``netload`` per site, measured at ``at``; returns the values sent (kW)."""
        values = self.model.net_export_kw(period, at)
        payloads = [encode(NetLoad(ts=at, net_export_kw=v)) for v in values]
        self._send([self.topics.netload(s) for s in self.model.sites], payloads)
        return values

    def prepare_replies(self, period: int, cycle_start: datetime) -> None:
        """Build every site's ``flex`` reply to cycle ``period`` (answered on its request)."""
        payloads = []
        for offer in self.model.offers(period):
            loads = () if offer.flex_kw == 0 else (
                LoadFlex(id="flex", kind=offer.kind, min_kw=offer.min_kw, max_kw=offer.flex_kw),)
            payloads.append(encode(Flex(cycle=cycle_start, flex_kw=offer.flex_kw, loads=loads)))
        cycle_id = format_utc(cycle_start)
        # A coordinator that runs late asks late: keep the last few cycles' replies.
        self._replies[cycle_id] = payloads
        for old in list(self._replies)[:-KEEP_REPLIES]:
            del self._replies[old]
        self.cycles.setdefault(cycle_id, CycleSeen(cycle_id))

    def build_reports(self, period: int, period_start: datetime,
                      net_export_kw: list[float]) -> list[bytes]:
        """Every site's report for the period (seq = period + 1): energy in and out, and
        what it was allocated (from the ``alloc`` it received) and used of it."""
        seen = self.cycles.get(format_utc(period_start))
        allocs = seen.allocs if seen is not None else {}
        rng = random.Random(self.model.seed * 31 + period)
        h = self.hours
        out = []
        for site, net in zip(self.model.sites, net_export_kw, strict=True):
            allocated = allocs.get(site, 0.0) * h
            out.append(encode(Report(
                seq=period + 1, period=period_start,
                import_kwh=round(max(0.0, -net) * h, 6), export_kwh=round(max(0.0, net) * h, 6),
                allocated_kwh=round(allocated, 6),
                used_kwh=round(allocated * rng.uniform(0.8, 1.0), 6))))
        return out

    def send_reports(self, seq: int, payloads: list[bytes]) -> None:
        self._send([self.topics.report(s) for s in self.model.sites], payloads)
        self.reports_sent += len(payloads)
        self.last_seq = seq

    @property
    def pending(self) -> int:
        """Messages not yet acknowledged by the broker (in flight or waiting)."""
        return sum(link.pending for link in self.links)

    def acks_missing(self) -> int:
        """Sites whose last report is not acknowledged yet."""
        last = self.last_seq
        if last == 0:
            return 0
        acked = self.acked
        return sum(1 for s in self.model.sites if acked[s] < last)

    # What comes back ---------------------------------------------------------------

    def _handler(self, j: int) -> Any:
        alloc_prefix, ack_prefix = self._alloc_prefix, self._ack_prefix
        flex_topics, shard = self._flex_topics, self.shards[j]

        def handle(topic: str, payload: bytes) -> None:
            now = time.monotonic()
            if topic.startswith(alloc_prefix):
                msg = orjson.loads(payload)
                seen = self.cycles.get(msg["cycle"])
                if seen is None:
                    seen = self.cycles[msg["cycle"]] = CycleSeen(msg["cycle"])
                site = topic[len(alloc_prefix):]
                if site in seen.allocs:
                    seen.duplicate_allocs += 1
                seen.allocs[site] = msg["alloc_kw"]
                seen.last_alloc_at = now
            elif topic.startswith(ack_prefix):
                site = topic[len(ack_prefix):]
                seq = orjson.loads(payload)["seq"]
                if seq > self.acked[site]:
                    self.acked[site] = seq
            elif topic == self.request_topic:
                cycle_id = orjson.loads(payload)["cycle"]
                replies = self._replies.get(cycle_id)
                if replies is None:
                    self.stray += 1
                    return
                seen = self.cycles[cycle_id]
                if seen.requested_at is None or now < seen.requested_at:
                    seen.requested_at = now
                publish = self.links[j].publish
                for i in shard:
                    publish(flex_topics[i], replies[i])
            elif topic == self.closed_topic:
                msg = orjson.loads(payload)
                seen = self.cycles.get(msg["cycle"])
                if seen is None:
                    seen = self.cycles[msg["cycle"]] = CycleSeen(msg["cycle"])
                if seen.closed_at is None:  # all links get it; the first one counts
                    seen.closed_at, seen.closed = now, msg

        return handle

    async def stop(self) -> None:
        await asyncio.gather(*(link.disconnect() for link in self.links))

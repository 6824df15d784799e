"""The coordinator and the gateway, driven in-process with hostile input, under checks.

No broker: each service gets a loopback bus that records what it publishes
and hands it messages the way its MQTT adapter does (the coordinator's
consumer burst, the gateway's per-topic handlers). Everything else is real:
the coordinator's consumer (``_handle_batch``: decoding, flood control, the
core cycle, the SQLite recorder), the gateway's handlers, its pure EMS, its
outbox, Home Assistant and the real device drivers.

Each message is checked as it is handled:
- nothing raises (the loopback bus lets a handler's exception through);
- it is counted exactly once: accepted (by kind) or refused (by reason);
- a refused message changed nothing (the site's record, the gateway's
  allocation, grid outlook, epoch, a device's readings);
and each burst: a cycle never hands out more than its surplus nor more than
an offer, only to sites it asked, each at most once, only for its own cycle
id; a gateway applies at most one allocation a cycle and commands only its
loads. ``Violation`` names the broken rule and the case.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import paho.mqtt.client as paho_client

from bench.fuzz.corpus import Case, Target
from protocol import Topics, format_utc

EPS_KW = 1e-6


class Violation(AssertionError):
    """A broken invariant, with the case that broke it."""


class ManualClock:
    """A clock the harness moves: ``now()`` and ``monotonic()`` advance together."""

    speed = 1.0

    def __init__(self, start: datetime) -> None:
        self._now = start
        self._mono = 1000.0

    def now(self) -> datetime:
        return self._now

    def monotonic(self) -> float:
        return self._mono

    def advance(self, seconds: float) -> None:
        self._now += timedelta(seconds=seconds)
        self._mono += seconds

    def set_monotonic(self, mono: float) -> None:
        """Move to monotonic ``mono`` (never back)."""
        if mono > self._mono:
            self.advance(mono - self._mono)

    async def sleep_until(self, at: datetime) -> None:
        await asyncio.sleep(3600)  # the harness's time never reaches it by itself

    def real_seconds(self, clock_s: float) -> float:
        return clock_s


# Coordinator ----------------------------------------------------------------------------
class LoopbackBus:
    """``central.bus.MqttBus`` as the coordinator uses it, with no broker behind it."""

    def __init__(self) -> None:
        self.callback_errors = 0
        self.published: Counter[str] = Counter()
        self.allocs: list[tuple[str, dict[str, Any]]] = []
        self._sink: Callable[[str, bytes], None] | None = None
        self._alloc_prefix = ""

    def watch_allocs(self, prefix: str) -> None:
        self._alloc_prefix = prefix

    def set_sink(self, sink: Callable[[str, bytes], None]) -> None:
        self._sink = sink

    @property
    def connected(self) -> bool:
        return True

    async def connect(self, timeout_s: float = 10.0) -> None:
        return None

    def subscribe(self, topics: list[str]) -> None:
        return None

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None:
        self.published[topic.rsplit("/", 1)[-1] if "/alloc/" not in topic else "alloc"] += 1
        if self._alloc_prefix and topic.startswith(self._alloc_prefix):
            self.allocs.append((topic[len(self._alloc_prefix):], orjson.loads(payload)))

    def pending(self) -> int:
        return 0

    async def drain(self, timeout_s: float = 30.0) -> bool:
        return True

    async def disconnect(self, drain_timeout_s: float = 5.0) -> None:
        return None


@dataclass
class Scene:
    """What the generator's valid messages refer to; the harness keeps it current."""

    now: datetime
    cycle: datetime
    sites: tuple[str, ...]
    unknown_sites: tuple[str, ...] = ("zz9", "intruder", "s999")
    epoch: int = 1
    seq: int = 0

    def cycle_id(self, shift_periods: int = 0) -> str:
        return format_utc(self.cycle + timedelta(minutes=15 * shift_periods))


BAD_SITE_SEGMENTS = ("", "S01", "s 1", "-x", "x" * 33, "é", "+", "#", "s01/extra", "..")


def errors_in(logs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Log events that mean an exception reached a guard (a bug), not a refusal."""
    return [e for e in logs if e.get("exc_info") or e["log_level"] in ("error", "critical")]


def coordinator_targets(topics: Topics, scene: Scene) -> list[Target]:
    """Every topic the coordinator reads (PROTOCOL.md: site/+/..., admin/#, load states)."""
    sites = scene.sites
    others = (*sites[:4], "intruder")

    def site_topics(leaf: Callable[[str], str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
        hostile = tuple(leaf(s) for s in scene.unknown_sites)
        hostile += tuple(f"{topics.base}/site/{seg}/{leaf('X').rsplit('/', 1)[-1]}"
                         for seg in BAD_SITE_SEGMENTS)
        return tuple(leaf(s) for s in sites), hostile

    def status(rng: random.Random) -> dict[str, Any]:
        return {"v": 1, "state": rng.choice(("online", "online", "offline")),
                "version": "0.1.0", "loads": ["wh", "hp"][: rng.randint(0, 2)]}

    def netload(rng: random.Random) -> dict[str, Any]:
        return {"v": 1, "ts": format_utc(scene.now), "net_export_kw": round(rng.uniform(-9, 9), 3)}

    def flex(rng: random.Random) -> dict[str, Any]:
        until = scene.cycle + timedelta(minutes=rng.choice((15, 60, 240)))
        return {"v": 1, "cycle": scene.cycle_id(), "flex_kw": round(rng.uniform(0, 5), 2),
                "loads": [{"id": "wh", "kind": "water_heater", "min_kw": 1.0, "max_kw": 2.2,
                           "priority": rng.randint(0, 10), "until": format_utc(until),
                           "energy_kwh": 3.0}][: rng.randint(0, 1)]}

    def report(rng: random.Random) -> dict[str, Any]:
        scene.seq += 1
        return {"v": 1, "seq": scene.seq, "period": scene.cycle_id(-1),
                "import_kwh": 0.5, "export_kwh": 1.25, "allocated_kwh": 0.5, "used_kwh": 0.4}

    def load_state(rng: random.Random) -> dict[str, Any]:
        return {"v": 1, "on": rng.random() < 0.5, "power_kw": round(rng.uniform(0, 3), 3),
                "reason": rng.choice(("allocation", "shed", "local", "manual", "idle")),
                "energy_kwh": 12.5}

    def admin(rng: random.Random) -> dict[str, Any]:
        day = (scene.now + timedelta(days=rng.choice((0, 1)))).date().isoformat()
        return {"v": 1, "day": day, "hour": rng.randint(0, 23),
                "level": rng.choice((None, 0, 1, 2, 3))}

    out = []
    for name, leaf, seed in (
        ("site_status", topics.site_status, status),
        ("netload", topics.netload, netload),
        ("flex", topics.flex, flex),
        ("report", topics.report, report),
    ):
        valid, hostile = site_topics(leaf)
        out.append(Target(name, valid, seed, hostile, others))
    out.append(Target("load_state", tuple(topics.load_state(s, "wh") for s in sites), load_state,
                      (topics.load_state(sites[0], "WH"), topics.load_state("zz9", "wh"),
                       f"{topics.base}/site/{sites[0]}/load/wh/state/x"), others))
    out.append(Target("admin_signal_set", (topics.admin_signal_set(),), admin,
                      (f"{topics.base}/admin/signal", f"{topics.base}/admin/signal/set/x",
                       f"{topics.base}/admin/other"), others))
    return out


@dataclass
class CoordinatorRun:
    """What a coordinator run saw: counts and the log lines, for the report and the checks."""

    messages: int = 0
    by_mutation: Counter[str] = field(default_factory=Counter)
    cycles: int = 0
    decisions: int = 0
    rejected_lines: Counter[tuple[Any, Any]] = field(default_factory=Counter)


class CoordinatorHarness:
    """A real ``Coordinator`` on a loopback bus, a manual clock and a SQLite recorder."""

    def __init__(self, tmp: Path, *, sites: int = 20, allow_list: bool = True,
                 flood: dict[str, Any] | None = None, web_views: bool = True) -> None:
        from central.app import Coordinator
        from central.config import load_central_settings
        from central.recorder import Recorder

        self.site_ids = tuple(f"s{i:02d}" for i in range(sites))
        start = datetime(2026, 6, 21, 12, 0, tzinfo=UTC)
        self.clock = ManualClock(start)
        self.settings = load_central_settings(
            None, env={},
            community={"id": "c1", "topic_root": "ems"},
            cycle={"period_s": 900, "reply_timeout_s": 600},
            recorder={"url": f"sqlite:///{tmp / 'fuzz-central.sqlite'}"},
            flood=flood or {},
            **({"sites": list(self.site_ids)} if allow_list else {}),
        )
        self.bus = LoopbackBus()
        self.recorder = Recorder(self.settings.recorder.url)
        self.coordinator = Coordinator(self.settings, self.clock, recorder=self.recorder,
                                       bus=self.bus)  # type: ignore[arg-type]
        self.topics = self.coordinator.topics
        self.bus.watch_allocs(self.topics.base + "/alloc/")
        self.scene = Scene(now=start, cycle=start + timedelta(minutes=15), sites=self.site_ids)
        self.targets = coordinator_targets(self.topics, self.scene)
        self.web_views = web_views
        self.run = CoordinatorRun()
        self._original = self.coordinator._handle_message
        self.coordinator._handle_message = self._checked  # type: ignore[method-assign]
        self._case: Case | None = None
        self._grid_task: asyncio.Task[None] | None = None
        self._live: Any = None

    # Setup -----------------------------------------------------------------------------
    async def start(self) -> None:
        self._grid_task = asyncio.create_task(self.coordinator.grid.run())
        from central.web.live import LiveState

        self._live = LiveState(self.settings.cycle.period_s)
        self.coordinator.add_listener(self._live.on_event)
        honest = []
        for i, site in enumerate(self.site_ids):
            honest.append(("m", self.topics.site_status(site),
                           b'{"v":1,"state":"online","version":"sim"}', self.clock.monotonic()))
            honest.append(("m", self.topics.netload(site), orjson.dumps(
                {"v": 1, "ts": format_utc(self.clock.now()), "net_export_kw": 1.0 + i % 4}),
                self.clock.monotonic()))
        await self.batch(honest)

    async def close(self) -> None:
        if self._grid_task is not None:
            self._grid_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._grid_task
        self.coordinator._db_thread.shutdown(wait=True)
        solver = getattr(self.coordinator, "_solver_thread", None)
        if solver is not None:
            solver.shutdown(wait=True)
        self.recorder.close()

    async def open_cycle(self) -> None:
        """Open the next period's cycle (closing the current one as the boundary does)."""
        self.scene.cycle += timedelta(minutes=15)
        self.scene.now = self.clock.now()
        await self.batch([("boundary", self.scene.cycle)])
        self.run.cycles += 1

    # Feeding ---------------------------------------------------------------------------
    async def batch(self, items: list[tuple[Any, ...]]) -> None:
        """One consumer burst, as ``_consume`` hands it over (exceptions go through)."""
        await self.coordinator._handle_batch(items)
        self.check_cycle()

    async def feed(self, cases: Iterable[Case], *, burst: int = 400, dt_s: float = 0.01,
                   cycle_every: int = 20_000, honest_every: int = 500) -> CoordinatorRun:
        """Hand ``cases`` to the consumer in bursts, ``dt_s`` apart, with a new cycle every
        ``cycle_every`` messages and an honest reply every ``honest_every``."""
        rng = random.Random(7)
        items: list[tuple[Any, ...]] = []
        n = 0
        for case in cases:
            n += 1
            self.clock.advance(dt_s)
            self.scene.now = self.clock.now()
            items.append(("m", case.topic, case.payload, self.clock.monotonic(), case))
            if n % honest_every == 0:
                site = rng.choice(self.site_ids)
                items.append(("m", self.topics.flex(site), orjson.dumps(
                    {"v": 1, "cycle": self.scene.cycle_id(), "flex_kw": 1.5}),
                    self.clock.monotonic(), None))
            if len(items) >= burst:
                await self._burst(items)
                items = []
            if n % cycle_every == 0:
                await self._burst(items)
                items = []
                await self.open_cycle()
        await self._burst(items)
        self.run.messages += n
        return self.run

    async def _burst(self, items: list[tuple[Any, ...]]) -> None:
        if not items:
            return
        cases = {id(item): item[4] for item in items if len(item) > 4}
        self._cases_by_arrival = {item[3]: cases[id(item)] for item in items if len(item) > 4}
        await self.batch([item[:4] for item in items])
        if self.web_views and self._live is not None:
            self.check_views()

    # Checks ----------------------------------------------------------------------------
    def _record(self, site: str | None) -> tuple[Any, ...] | None:
        rec = self.coordinator.sites.get(site) if site is not None else None
        if rec is None:
            return None
        return (rec.online, rec.version, rec.loads, rec.status_at, rec.net_export_kw,
                rec.netload_at)

    def _checked(self, topic: str, payload: bytes, arrived: float, admitted: bool = False) -> Any:
        c = self.coordinator
        stats = c.stats
        case = getattr(self, "_cases_by_arrival", {}).get(arrived)
        route = self.topics.parse(topic)
        site = route.site if route is not None else None
        before = self._record(site)
        counts = (sum(stats.accepted.values()), stats.rejections.total,
                  stats.ignored["not_handled"])
        reports = len(c._reports)
        commands = c.grid._commands.qsize()
        offer = self._original(topic, payload, arrived, admitted)
        after = (sum(stats.accepted.values()), stats.rejections.total,
                 stats.ignored["not_handled"])
        delta = [a - b for a, b in zip(after, counts, strict=True)]
        if sorted(delta) != [0, 0, 1]:
            raise Violation(f"message counted {delta} (accepted, rejected, not handled): {case}")
        if case is not None:
            self.run.by_mutation[case.mutation.split("+")[0]] += 1
        if delta[1] == 1:
            if offer is not None:
                raise Violation(f"a refused message made an offer: {case}")
            if self._record(site) != before:
                raise Violation(f"a refused message changed site {site}: {case}")
            if len(c._reports) != reports or c.grid._commands.qsize() != commands:
                raise Violation(f"a refused message was acted on: {case}")
        return offer

    def check_cycle(self) -> None:
        """The cycle's contract, whatever came in."""
        current = self.coordinator.current
        if current is None:
            return
        cycle = current.cycle
        context = cycle.context
        if cycle.allocated_kw > max(context.surplus_kw, 0.0) + EPS_KW:
            raise Violation(f"over-allocated: {cycle.allocated_kw} > {context.surplus_kw}")
        seen: set[str] = set()
        total = 0.0
        for d in cycle.decisions:
            if d.site not in context.sites:
                raise Violation(f"decision for a site not asked: {d}")
            if not self.coordinator.sites.knows(d.site):
                raise Violation(f"decision for an unknown site: {d}")
            if d.site in seen:
                raise Violation(f"two decisions for {d.site} in one cycle")
            if not (0.0 <= d.alloc_kw <= d.flex_kw + EPS_KW):
                raise Violation(f"decision outside [0, offer]: {d}")
            seen.add(d.site)
            total += d.alloc_kw
        if abs(total - cycle.allocated_kw) > EPS_KW:
            raise Violation(f"decisions sum {total} != allocated {cycle.allocated_kw}")
        per_cycle: Counter[tuple[str, str]] = Counter()
        for site, alloc in self.bus.allocs:
            per_cycle[(alloc["cycle"], site)] += 1
            if alloc["alloc_kw"] < 0 or alloc["alloc_kw"] > self.settings.community.max_site_kw:
                raise Violation(f"published allocation out of range: {site} {alloc}")
        twice = [k for k, v in per_cycle.items() if v > 1]
        if twice:
            raise Violation(f"a site got two allocations in one cycle: {twice[:3]}")
        self.run.decisions = len(self.bus.allocs)

    def check_views(self) -> None:
        """The operator's views stay well formed whatever the sites sent."""
        from central.web.live import community_view, sites_view

        c = self.coordinator
        for view in (community_view(c), sites_view(c, self._live, 0, 100), c.health()):
            orjson.dumps(view)  # raises on NaN-free but non-JSON values; NaN passes: check it
            _finite(view)


def _finite(obj: Any) -> None:
    if isinstance(obj, float) and obj != obj:
        raise Violation("NaN in an operator view")
    if isinstance(obj, dict):
        for v in obj.values():
            _finite(v)
    elif isinstance(obj, list | tuple):
        for v in obj:
            _finite(v)


@contextlib.asynccontextmanager
async def coordinator_harness(tmp: Path, **kwargs: Any) -> AsyncIterator[CoordinatorHarness]:
    harness = CoordinatorHarness(tmp, **kwargs)
    await harness.start()
    await harness.open_cycle()
    try:
        yield harness
    finally:
        await harness.close()


# Gateway --------------------------------------------------------------------------------
class LoopbackPort:
    """``gateway.bus.PahoBus`` as the gateway and its drivers use it, with no broker.

    ``dispatch`` calls every matching handler and lets exceptions through (PahoBus
    catches them as a last resort; here they are findings). Published RPC requests
    are remembered so the harness can answer them.
    """

    def __init__(self) -> None:
        self.handlers: list[tuple[str, Callable[[str, bytes], None]]] = []
        self.published: Counter[str] = Counter()
        self.rpc_ids: dict[str, int] = {}
        self.handler_errors = 0
        self.received = 0
        self.on_reconnect: Callable[[], None] | None = None
        self._matches: dict[str, list[Callable[[str, bytes], None]]] = {}

    def subscribe(self, topic: str, handler: Callable[[str, bytes], None]) -> None:
        self.handlers.append((topic, handler))
        self._matches.clear()

    def publish(self, topic: str, payload: bytes | str, qos: int = 1, retain: bool = False) -> None:
        self.published[topic] += 1
        if topic.endswith("/rpc"):
            frame = orjson.loads(payload)
            self.rpc_ids[topic[: -len("/rpc")]] = frame["id"]

    @property
    def connected(self) -> bool:
        return True

    async def connect(self, timeout_s: float = 10.0) -> None:
        return None

    async def disconnect(self) -> None:
        return None

    def handlers_for(self, topic: str) -> list[Callable[[str, bytes], None]]:
        """The handlers whose filter matches ``topic`` (paho's matching, cached by topic)."""
        matched = self._matches.get(topic)
        if matched is None:
            matched = self._matches[topic] = [
                h for pattern, h in self.handlers
                if paho_client.topic_matches_sub(pattern, topic)
            ]
        return matched

    def dispatch(self, topic: str, payload: bytes) -> int:
        """Deliver to every matching handler; how many there were."""
        self.received += 1
        matched = self.handlers_for(topic)
        for handler in matched:
            handler(topic, payload)
        return len(matched)


SITE = "home1"
HA_PREFIX = "hafuzz"
BRIDGE_TOPIC = "$SYS/broker/connection/home1/state"
GATEWAY_DEVICES: list[dict[str, Any]] = [
    {"id": "plug", "profile": "shelly/plug-s", "prefix": "plug1"},
    {"id": "plus", "profile": "shelly/plus-plug-s", "prefix": "plusplug"},
    {"id": "pro4", "profile": "shelly/pro-4pm", "prefix": "pro4"},
    {"id": "grid", "profile": "shelly/pro-3em", "prefix": "em3"},
    {"id": "em", "profile": "shelly/em", "prefix": "em1"},
    {"id": "p1", "profile": "generic/mqtt-meter", "topic": "p1/power", "field": "grid.power"},
]
GATEWAY_LOADS: list[dict[str, Any]] = [
    {"id": "wh", "kind": "water_heater", "device": "plug", "nominal_kw": 2.0},
    {"id": "hp", "kind": "heat_pump", "device": "plus", "nominal_kw": 1.5, "min_kw": 1.0,
     "max_kw": 2.0},
    {"id": "ev", "kind": "ev_charger", "device": "pro4", "channel": 0, "nominal_kw": 3.5},
    {"id": "bat", "kind": "battery", "device": "pro4", "channel": 1, "nominal_kw": 2.5,
     "capacity_kwh": 10.0, "soc": 0.5},
    {"id": "pool", "kind": "generic", "device": "pro4", "channel": 2, "nominal_kw": 1.0,
     "shed_level": 1},
]


def gateway_targets(topics: Topics, scene: Scene, port: LoopbackPort, src: Callable[[str], str],
                    loads: list[str]) -> list[Target]:
    """Every topic the gateway reads: the community's, Home Assistant's, the bridge's,
    and each device driver's (Gen1 words and JSON, Gen2 RPC, meters)."""

    def when(seconds: float) -> str:
        return format_utc(scene.now + timedelta(seconds=seconds))

    def request(rng: random.Random) -> dict[str, Any]:
        c = scene.cycle
        return {"v": 1, "cycle": scene.cycle_id(), "surplus_kw": round(rng.uniform(0, 40), 2),
                "period_start": format_utc(c), "period_end": format_utc(c + timedelta(minutes=15)),
                "reply_by": when(60)}

    def alloc(rng: random.Random) -> dict[str, Any]:
        c = scene.cycle
        return {"v": 1, "cycle": scene.cycle_id(), "alloc_kw": round(rng.uniform(0, 6), 2),
                "rank": rng.randint(1, 30), "valid_until": format_utc(c + timedelta(minutes=15)),
                "epoch": scene.epoch + rng.choice((0, 0, 0, -1, 1))}

    def ack(rng: random.Random) -> dict[str, Any]:
        return {"v": 1, "seq": rng.randint(0, 50)}

    def closed(rng: random.Random) -> dict[str, Any]:
        return {"v": 1, "cycle": scene.cycle_id(), "reason": "exhausted", "surplus_kw": 10.0,
                "allocated_kw": 10.0, "replies": 3, "sites": 5}

    def coordinator_status(rng: random.Random) -> dict[str, Any]:
        return {"v": 1, "state": rng.choice(("online", "offline")), "version": "0.1.0",
                "epoch": scene.epoch}

    def signal(rng: random.Random) -> dict[str, Any]:
        level = rng.randint(0, 3)
        return {"v": 1, "source": "ecowatt", "day": scene.now.date().isoformat(),
                "hour": scene.now.hour, "level": level, "day_level": level,
                "hours": [rng.randint(0, 3) for _ in range(24)], "updated": when(0)}

    def shed(rng: random.Random) -> dict[str, Any]:
        return {"v": 1, "level": rng.randint(0, 3), "from": when(rng.choice((-3600, 0, 600))),
                "until": when(rng.choice((600, 7200))), "reason": "ecowatt"}

    def words(*options: bytes) -> Callable[[random.Random], bytes]:
        return lambda rng: rng.choice(options)

    def number(lo: float, hi: float) -> Callable[[random.Random], bytes]:
        return lambda rng: f"{rng.uniform(lo, hi):.2f}".encode()

    def switch_status(rng: random.Random, n: int) -> dict[str, Any]:
        return {"id": n, "source": "MQTT", "output": rng.random() < 0.5,
                "apower": round(rng.uniform(-1, 2500), 1), "voltage": 230.1, "current": 1.2,
                "aenergy": {"total": round(rng.uniform(0, 1e5), 3), "by_minute": [0, 0, 0]},
                "temperature": {"tC": 40.0}, **({"errors": ["overpower"]}
                                                if rng.random() < 0.05 else {})}

    def em_status(rng: random.Random) -> dict[str, Any]:
        return {"id": 0, "total_act_power": round(rng.uniform(-9000, 9000), 1),
                "a_act_power": 1.0, "total_current": 3.2}

    def notify(prefix: str, components: Callable[[random.Random], dict[str, Any]]) -> Any:
        def make(rng: random.Random) -> dict[str, Any]:
            method = rng.choice(("NotifyStatus", "NotifyStatus", "NotifyFullStatus",
                                 "NotifyEvent"))
            return {"src": prefix, "dst": f"{prefix}/events", "method": method,
                    "params": {"ts": 1750508100.5, **components(rng)}}
        return make

    def reply(prefix: str, components: Callable[[random.Random], dict[str, Any]]) -> Any:
        def make(rng: random.Random) -> dict[str, Any]:
            rpc_id = port.rpc_ids.get(prefix, 1)
            if rng.random() < 0.2:
                return {"id": rpc_id, "src": prefix, "dst": src(prefix),
                        "error": {"code": rng.choice((-103, -104, -105, -114, 404)),
                                  "message": "refused"}}
            return {"id": rpc_id, "src": prefix, "dst": src(prefix), "result":
                    rng.choice(({"was_on": True}, components(rng)))}
        return make

    def plus(rng: random.Random) -> dict[str, Any]:
        return {"switch:0": switch_status(rng, 0)}

    def pro4(rng: random.Random) -> dict[str, Any]:
        return {f"switch:{n}": switch_status(rng, n) for n in range(rng.randint(1, 4))}

    def em3(rng: random.Random) -> dict[str, Any]:
        return {"em:0": em_status(rng), "emdata:0": {"id": 0, "total_act": 1.0}}

    c, s = topics, SITE
    out = [
        Target("cycle_request", (c.cycle_request(),), request, (f"{c.base}/cycle/other",)),
        Target("alloc", (c.alloc(s),), alloc, (c.alloc("other"),)),
        Target("ack", (c.ack(s),), ack, (c.ack("other"),)),
        Target("cycle_closed", (c.cycle_closed(),), closed),
        Target("coordinator_status", (c.coordinator_status(),), coordinator_status),
        Target("grid_signal", (c.grid_signal(),), signal),
        Target("grid_shed", (c.grid_shed(),), shed),
        Target("hass_mode_set", tuple(c.load_mode_set(s, ld) for ld in loads),
               words(b"auto", b"force_on", b"force_off", b"ON", b"OFF"),
               (c.load_mode_set(s, "nope"),)),
        Target("hass_status", (f"{HA_PREFIX}/status",), words(b"online", b"offline")),
        Target("bridge_state", (BRIDGE_TOPIC,), words(b"0", b"1")),
        # Shelly Gen1 plug (words, W, watt-minutes, JSON announce and info).
        Target("gen1_relay", ("shellies/plug1/relay/0",), words(b"on", b"off", b"overpower")),
        Target("gen1_power", ("shellies/plug1/relay/0/power",), number(-5, 3000)),
        Target("gen1_energy", ("shellies/plug1/relay/0/energy",), number(0, 1e7)),
        Target("gen1_online", ("shellies/plug1/online", "shellies/em1/online"),
               words(b"true", b"false")),
        Target("gen1_announce", ("shellies/announce", "shellies/plug1/announce"),
               lambda rng: {"id": rng.choice(("plug1", "em1", "other")), "model": "SHPLG-S",
                            "mac": "A4CF12F45678", "ip": "192.0.2.7", "new_fw": False,
                            "fw_ver": "20230913-112003/v1.14.0-gcb84623"}),
        Target("gen1_info", ("shellies/plug1/info",),
               lambda rng: {"relays": [{"ison": rng.random() < 0.5, "overpower": False}],
                            "meters": [{"power": round(rng.uniform(0, 2000), 1),
                                        "total": rng.randint(0, 10**6)}]}),
        # Shelly EM (Gen1 meter).
        Target("em_power", ("shellies/em1/emeter/0/power",), number(-9000, 9000)),
        Target("em_info", ("shellies/em1/info",),
               lambda rng: {"emeters": [{"power": round(rng.uniform(-9000, 9000), 1),
                                         "total": 12.0}, {"power": 1.0}]}),
        # Shelly Gen2: Plus Plug S, Pro 4PM, Pro 3EM (RPC, notifications, status topics).
        Target("gen2_online", ("plusplug/online", "pro4/online", "em3/online"),
               words(b"true", b"false")),
        Target("plus_events", ("plusplug/events/rpc",), notify("plusplug", plus)),
        Target("plus_status", ("plusplug/status/switch:0",), lambda rng: switch_status(rng, 0)),
        Target("plus_reply", (f"{src('plusplug')}/rpc",), reply("plusplug", plus)),
        Target("pro4_events", ("pro4/events/rpc",), notify("pro4", pro4)),
        Target("pro4_status", tuple(f"pro4/status/switch:{n}" for n in range(4)),
               lambda rng: switch_status(rng, rng.randint(0, 3))),
        Target("pro4_reply", (f"{src('pro4')}/rpc",), reply("pro4", pro4)),
        Target("em3_events", ("em3/events/rpc",), notify("em3", em3)),
        Target("em3_status", ("em3/status/em:0",), em_status),
        Target("em3_reply", (f"{src('em3')}/rpc",), reply("em3", em3)),
        # A P1 reader on a generic topic.
        Target("p1_power", ("p1/power",),
               lambda rng: {"grid": {"power": round(rng.uniform(-9000, 9000), 1)}}),
    ]
    return out


@dataclass
class GatewayRun:
    messages: int = 0
    unrouted: int = 0
    allocations: list[tuple[str, float, int]] = field(default_factory=list)
    commands: int = 0
    ticks: int = 0
    by_target: Counter[str] = field(default_factory=Counter)


COMMUNITY_TARGETS = frozenset({"cycle_request", "alloc", "ack", "cycle_closed",
                               "coordinator_status", "grid_signal", "grid_shed"})


class GatewayHarness:
    """A real ``Gateway`` with every MQTT driver, on a loopback port and a manual clock."""

    def __init__(self, tmp: Path) -> None:
        from gateway.app import Gateway
        from gateway.config import load_gateway_settings

        start = datetime(2026, 6, 21, 12, 0, 30, tzinfo=UTC)
        self.clock = ManualClock(start)
        self.settings = load_gateway_settings(
            None, env={},
            community={"id": "c1", "topic_root": "ems"},
            site={"id": SITE},
            meter={"device": "grid"},
            devices=GATEWAY_DEVICES,
            loads=GATEWAY_LOADS,
            ems={"period_s": 900, "netload_interval_s": 60, "bridge_state_topic": BRIDGE_TOPIC},
            homeassistant={"enabled": True, "discovery_prefix": HA_PREFIX},
            state={"dir": str(tmp / "gateway-state")},
        )
        self.port = LoopbackPort()
        self.gateway = Gateway(self.settings, self.clock, bus=self.port)  # type: ignore[arg-type]
        self.topics = self.gateway.topics
        self.scene = Scene(now=start, cycle=start.replace(second=0) + timedelta(minutes=3),
                           sites=(SITE,))
        self.loads = [ld["id"] for ld in GATEWAY_LOADS]
        srcs = {dev.prefix: dev.src for dev in self.gateway.devices.values()
                if hasattr(dev, "src") and hasattr(dev, "prefix")}
        self.targets = gateway_targets(self.topics, self.scene, self.port,
                                       lambda prefix: srcs[prefix], self.loads)
        self.run = GatewayRun()
        self._cycles_applied: set[str] = set()
        self._last_alloc: Any = None
        self._devices_by_topic: dict[str, list[Any]] = {}
        self._highest_epoch = 0

    async def start(self) -> None:
        g = self.gateway
        g.attach()
        for device in g.devices.values():
            await device.start()
        g._announce()
        period = self.settings.ems.period_s
        from gateway.ems.ledger import PeriodLedger
        from runtime.clock import next_boundary

        g._period_start = next_boundary(self.clock.now(), period) - timedelta(seconds=period)
        g._ledger = PeriodLedger(g.to_s(g._period_start))

    async def close(self) -> None:
        for device in self.gateway.devices.values():
            await device.stop()
        self.gateway.outbox.close()

    def _state(self) -> tuple[Any, ...]:
        g = self.gateway
        return (g.signal, g.shed, g.last_alloc, g.alloc_kw, g.coordinator_online,
                g.ems.highest_epoch, g.commands.qsize(), g.bridge_up)

    def _device_state(self, device: Any) -> tuple[Any, ...]:
        relays = tuple((r.state.on, r.state.available, r.state.power_kw, r.state.energy_kwh)
                       for r in device.relays().values())
        meter = device.net_meter()
        reading = (meter._export_kw, meter.available) if meter is not None else None
        return (relays, reading, getattr(device, "firmware", None))

    def _devices_for(self, topic: str) -> list[Any]:
        cached = self._devices_by_topic.get(topic)
        if cached is not None:
            return cached
        out: list[Any] = []
        self._devices_by_topic[topic] = out
        for device in self.gateway.devices.values():
            for key in ("_base", "prefix", "topic", "src"):
                value = getattr(device, key, None)
                if isinstance(value, str) and (topic == value or topic.startswith(value + "/")):
                    out.append(device)
                    break
            else:
                if topic == "shellies/announce" and hasattr(device, "_base"):
                    out.append(device)
        return out

    async def feed(self, cases: Iterable[Case], *, dt_s: float = 0.05, tick_every: int = 200,
                   cycle_every: int = 2000) -> GatewayRun:
        g = self.gateway
        n = 0
        for case in cases:
            n += 1
            self.clock.advance(dt_s)
            self.scene.now = self.clock.now()
            self.handle(case)
            if n % tick_every == 0:
                g.tick()
                g._send_netload()
                self.run.ticks += 1
                await asyncio.sleep(0)  # let the drivers' RPC timers and futures run
            if n % cycle_every == 0:
                self.scene.cycle += timedelta(minutes=15)
                self.clock.set_monotonic(self.clock.monotonic() + 30)
        self.run.messages += n
        return self.run

    def handle(self, case: Case) -> None:
        g = self.gateway
        self.run.by_target[case.target] += 1
        community = case.target in COMMUNITY_TARGETS
        before = self._state()
        self._highest_epoch = g.ems.highest_epoch
        counts = (sum(g.accepted.values()), g.rejections.total)
        devices = self._devices_for(case.topic)
        dev_before = [(d, d.rejections.total, self._device_state(d)) for d in devices]
        if self.port.dispatch(case.topic, case.payload) == 0:
            self.run.unrouted += 1
        if g.errors:
            raise Violation(f"gateway errors: {case}")
        for device in g.devices.values():
            if getattr(device, "handler_failures", 0):
                raise Violation(f"device {device.device_id} handler failed: {case}")
        if community and self.port.handlers_for(case.topic):
            after = (sum(g.accepted.values()), g.rejections.total)
            delta = [a - b for a, b in zip(after, counts, strict=True)]
            if sorted(delta) != [0, 1]:
                raise Violation(f"message counted {delta} (accepted, rejected): {case}")
            if delta[1] == 1 and self._state() != before:
                raise Violation(f"a refused message changed the gateway: {case}")
        for device, refused, state in dev_before:
            if device.rejections.total > refused and self._device_state(device) != state:
                raise Violation(f"a refused payload changed {device.device_id}: {case}")
        self._check_allocation(case)
        self._drain_commands(case)

    def _check_allocation(self, case: Case) -> None:
        """At most one allocation applied per cycle, never from a fenced epoch."""
        g = self.gateway
        alloc = g.last_alloc
        if alloc is None or alloc is self._last_alloc:
            return
        self._last_alloc = alloc
        key = format_utc(alloc.cycle)
        if key in self._cycles_applied:
            raise Violation(f"a second allocation applied in cycle {key}: {case}")
        if alloc.epoch < self._highest_epoch:
            raise Violation(f"an allocation of a fenced epoch applied: {case}")
        self._cycles_applied.add(key)
        self.run.allocations.append((key, alloc.alloc_kw, alloc.epoch))
        if g.alloc_kw > self.settings.community.max_site_kw or g.alloc_kw < 0:
            raise Violation(f"allocation out of range {g.alloc_kw}: {case}")

    def _drain_commands(self, case: Case) -> None:
        queue = self.gateway.commands
        while not queue.empty():
            command = queue.get_nowait()
            if command.load not in self.loads or not isinstance(command.on, bool):
                raise Violation(f"command for an unknown load {command}: {case}")
            self.run.commands += 1


@contextlib.asynccontextmanager
async def gateway_harness(tmp: Path) -> AsyncIterator[GatewayHarness]:
    harness = GatewayHarness(tmp)
    await harness.start()
    try:
        yield harness
    finally:
        await harness.close()

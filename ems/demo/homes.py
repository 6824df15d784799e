"""Simulated homes for ``ems demo``: a stand-in for the real gateway.

Each home is its own MQTT client and speaks only the contract (PROTOCOL.md):
topics come from ``protocol.Topics``, payloads are ``protocol`` models
passed through ``encode``. A home

- publishes its retained ``status`` (online; the will says offline);
- publishes its ``netload`` once per period, at its own phase, from a PV
  profile (a sun curve over the simulated day, peaking at 12:00 UTC, about
  solar noon in France) minus a household consumption with noise;
- answers every ``cycle/request`` with a ``flex`` reply after its own reply
  delay, offering what its unsatisfied flexible loads can absorb;
- applies at most one ``alloc`` per cycle (never one from an older epoch or
  past its ``valid_until``) by switching loads on for the period, and
  publishes each load's retained ``state``.

The home's decisions (what to offer, which loads an allocation runs, how
energy needs evolve) are the pure functions at the top of this module; the
``SimHome`` class only does the I/O around them.

Simplification, on purpose: the reported net load leaves out the loads the
coordinator switched on. The allocation ends with its period, so the next
cycle's surplus is the community's uncoordinated surplus (PROTOCOL.md does not
say whether ``net_export_kw`` includes allocated loads; see docs/demo.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import structlog

from central.bus import MqttBus
from protocol import (
    Alloc,
    CoordinatorStatus,
    CycleRequest,
    Flex,
    LoadFlex,
    LoadKind,
    LoadState,
    NetLoad,
    Rejection,
    SiteStatus,
    TopicKind,
    Topics,
    decode,
    encode,
    format_utc,
)
from protocol.clock import Clock
from protocol.settings import MqttSettings

VERSION = "demo-home/1"
SUNRISE_H = 5.0
SUNSET_H = 19.0
"""A June day in France, in UTC: the sun curve peaks at 12:00 UTC."""
PV_DERATE = 0.8
"""Inverter, temperature and soiling losses: a 6 kWp roof gives about 4.8 kW at noon."""
SATISFIED_KWH = 0.05
"""A load needing less than this has nothing left to absorb: it offers 0."""
KEEP_RECORDS = 64
"""How many cycles of replies and allocations each home remembers (for the view)."""
LINGER_S = 0.1
"""Real seconds between the last acknowledged publish and DISCONNECT (see ``LingeringBus``)."""


# Specs: what a home is -----------------------------------------------------

@dataclass(frozen=True, slots=True)
class LoadSpec:
    """One flexible load: its power range and how much energy it needs."""

    id: str
    kind: LoadKind
    min_kw: float
    max_kw: float
    need_kwh: float
    """Energy still needed at the start of the demo (0 = satisfied)."""
    capacity_kwh: float
    """The most it can need: a full tank to reheat, a battery to charge."""
    until_h: float | None = None
    """Hour of the day (UTC) by which it must be done (an EV's departure)."""


@dataclass(frozen=True, slots=True)
class HomeSpec:
    """One simulated home."""

    site: str
    pv_kwp: float
    base_kw: float
    """Consumption at rest (fridge, standby, ventilation)."""
    peak_kw: float
    """Extra consumption at meal times and in the evening."""
    reply_mean_s: float
    """The home's typical reply delay (clock seconds): some homes are slower."""
    loads: tuple[LoadSpec, ...]
    seed: int


def make_homes(count: int, seed: int) -> list[HomeSpec]:
    """``count`` homes drawn from ``seed``: about 60 % with PV; every home has a
    water heater, some also an EV charger or a heat pump."""
    if count < 1:
        raise ValueError("at least one home is needed")
    rng = random.Random(seed)
    homes = []
    for i in range(count):
        # The first home always has PV, so a tiny community still has a surplus.
        pv_kwp = round(rng.uniform(3.0, 9.0), 1) if i == 0 or rng.random() < 0.6 else 0.0
        loads = [_water_heater(rng)]
        if rng.random() < 0.35:
            loads.append(_ev_charger(rng))
        if rng.random() < 0.3:
            loads.append(_heat_pump(rng))
        homes.append(
            HomeSpec(
                site=f"home-{i + 1:02d}",
                pv_kwp=pv_kwp,
                base_kw=round(rng.uniform(0.2, 0.5), 2),
                peak_kw=round(rng.uniform(0.6, 1.6), 2),
                reply_mean_s=round(rng.uniform(1.0, 10.0), 1),
                loads=tuple(loads),
                seed=seed * 10_007 + i,
            )
        )
    return homes


def _water_heater(rng: random.Random) -> LoadSpec:
    # A resistive element is all or nothing: min_kw = max_kw (DOMAIN.md).
    kw = round(rng.uniform(2.0, 3.0), 1)
    need = rng.uniform(0.0, 6.0)
    return LoadSpec("water-heater", "water_heater", kw, kw,
                    round(need if need > 0.8 else 0.0, 2), 10.0)


def _ev_charger(rng: random.Random) -> LoadSpec:
    # A 16 A portable cable behind a relay: on or off, no current control (DOMAIN.md).
    capacity_kwh = rng.choice((40.0, 50.0, 60.0))
    soc = rng.uniform(0.3, 0.6)
    need = round((0.8 - soc) * capacity_kwh, 1)  # charge to 80 % (SOC window 0.2-0.8)
    return LoadSpec("ev", "ev_charger", 3.7, 3.7, need, need,
                    until_h=round(rng.uniform(16.0, 19.0), 2))


def _heat_pump(rng: random.Random) -> LoadSpec:
    # A hot-water or pool heat pump: its compressor runs from about 60 % of its power.
    kw = round(rng.uniform(1.2, 2.0), 1)
    return LoadSpec("heat-pump", "heat_pump", round(0.6 * kw, 2), kw,
                    round(rng.uniform(2.0, 6.0), 2), 8.0)


# Pure profiles and decisions -------------------------------------------------

def _hour_of(at: datetime) -> float:
    return at.hour + at.minute / 60 + at.second / 3600


def sun_factor(at: datetime) -> float:
    """0 at night, 1 at 12:00 UTC: a sine arc from sunrise to sunset, sharpened."""
    h = _hour_of(at)
    if h <= SUNRISE_H or h >= SUNSET_H:
        return 0.0
    arc = math.sin(math.pi * (h - SUNRISE_H) / (SUNSET_H - SUNRISE_H))
    return float(arc**1.5)


def pv_kw(spec: HomeSpec, at: datetime, noise: float = 1.0) -> float:
    """PV production at ``at``; ``noise`` (about 0.85-1) stands for passing clouds."""
    return spec.pv_kwp * PV_DERATE * sun_factor(at) * noise


def consumption_kw(spec: HomeSpec, at: datetime, noise_kw: float = 0.0) -> float:
    """Household consumption without the flexible loads: breakfast, lunch, evening peaks."""
    h = _hour_of(at)
    shape = (
        0.6 * _bump(h, 7.5, 1.0) + 0.5 * _bump(h, 12.5, 0.8) + 1.0 * _bump(h, 19.5, 1.5)
    )
    return max(0.1, spec.base_kw + spec.peak_kw * shape + noise_kw)


def _bump(h: float, centre_h: float, width_h: float) -> float:
    return math.exp(-(((h - centre_h) / width_h) ** 2))


def draw_kw(kind: str, at: datetime) -> float:
    """How fast a load's need grows (kWh per hour): hot water drawn, a pool cooling."""
    h = _hour_of(at)
    if kind == "water_heater":
        return 0.1 + 1.5 * _bump(h, 7.5, 1.0) + 1.0 * _bump(h, 20.5, 1.5)
    if kind == "heat_pump":
        return 0.3
    return 0.0


@dataclass(slots=True)
class LoadRuntime:
    """A load's changing state: energy still needed and power drawn now."""

    spec: LoadSpec
    need_kwh: float
    power_kw: float = 0.0

    @property
    def on(self) -> bool:
        return self.power_kw > 0.0

    def deadline(self, at: datetime) -> datetime | None:
        if self.spec.until_h is None:
            return None
        midnight = at.replace(hour=0, minute=0, second=0, microsecond=0)
        return midnight + timedelta(hours=self.spec.until_h)

    def available(self, at: datetime) -> bool:
        """Whether it can absorb power now: not satisfied, and not gone (an EV)."""
        deadline = self.deadline(at)
        return self.need_kwh > SATISFIED_KWH and (deadline is None or at < deadline)


def flex_offer(loads: list[LoadRuntime], at: datetime) -> tuple[float, tuple[LoadFlex, ...]]:
    """The power the home can absorb for the period and the loads behind it.

    Satisfied loads are left out; a home with nothing to absorb offers 0 kW
    and still replies (PROTOCOL.md, flex).
    """
    offered = []
    for load in loads:
        if not load.available(at):
            continue
        s = load.spec
        offered.append(
            LoadFlex(
                id=s.id,
                kind=s.kind,
                min_kw=s.min_kw,
                max_kw=s.max_kw,
                until=load.deadline(at),
                energy_kwh=round(load.need_kwh, 3),
            )
        )
    return round(sum(lf.max_kw for lf in offered), 3), tuple(offered)


def _order(load: LoadRuntime) -> tuple[int, float]:
    # A load with a deadline first (an EV about to leave), then the largest.
    return (0 if load.spec.until_h is not None else 1, -load.spec.max_kw)


def plan_allocation(loads: list[LoadRuntime], alloc_kw: float, at: datetime) -> dict[str, float]:
    """Which loads run, at what power, within ``alloc_kw``.

    Whole allocations (DOMAIN.md): a load runs only if it gets at least its
    ``min_kw``; what is left below every load's minimum stays unused.
    """
    remaining = alloc_kw
    plan: dict[str, float] = {}
    for load in sorted((lo for lo in loads if lo.available(at)), key=_order):
        if remaining + 1e-9 >= load.spec.min_kw:
            power = min(load.spec.max_kw, remaining)
            plan[load.spec.id] = round(power, 3)
            remaining -= power
    return plan


def advance(loads: list[LoadRuntime], start: datetime, end: datetime) -> list[LoadRuntime]:
    """Move energy needs from ``start`` to ``end``; return the loads that became satisfied
    while running (their thermostat or charger cut them off)."""
    hours = (end - start).total_seconds() / 3600
    if hours <= 0:
        return []
    finished = []
    for load in loads:
        cap = load.spec.capacity_kwh
        need = load.need_kwh + draw_kw(load.spec.kind, start) * hours - load.power_kw * hours
        load.need_kwh = min(cap, max(0.0, need))
        if load.on and load.need_kwh <= SATISFIED_KWH:
            load.power_kw = 0.0
            finished.append(load)
    return finished


# The MQTT client around them -------------------------------------------------

class LingeringBus(MqttBus):
    """``MqttBus`` that pauses between its last acknowledged publish and DISCONNECT.

    amqtt 0.12.1 acknowledges a PUBLISH before its broker loop hands it on, and
    when the DISCONNECT that follows is seen first, the loop ends and the
    message is dropped (``Broker._client_message_loop`` cancels its pending
    ``wait_deliver``): a home's last ``offline`` status was lost in about one
    run in three. Mosquitto does not need it; it costs a tenth of a second.
    """

    async def disconnect(self, drain_timeout_s: float = 5.0) -> None:
        await self.drain(drain_timeout_s)
        await asyncio.sleep(LINGER_S)
        await super().disconnect(drain_timeout_s)


@dataclass(frozen=True, slots=True)
class ReplyRecord:
    """A flex reply this home sent."""

    delay_s: float
    flex_kw: float


@dataclass(frozen=True, slots=True)
class AppliedAlloc:
    """An allocation this home applied: what it got and what it switched on."""

    alloc_kw: float
    rank: int
    used_kw: float
    loads_on: tuple[tuple[str, float], ...]


@dataclass
class HomeCounters:
    """What a home received and refused."""

    requests: int = 0
    replies: int = 0
    allocations: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    ignored: Counter[str] = field(default_factory=Counter)
    callback_errors: int = 0


class SimHome:
    """One simulated home on its own MQTT connection."""

    def __init__(
        self,
        spec: HomeSpec,
        topics: Topics,
        clock: Clock,
        mqtt: MqttSettings,
        *,
        period_s: float,
        expiry_grace_s: float,
    ) -> None:
        self.spec = spec
        self.site = spec.site
        self.topics = topics
        self.clock = clock
        self.period_s = period_s
        self.expiry_grace_s = expiry_grace_s
        self.rng = random.Random(spec.seed)
        self.loads = [LoadRuntime(lo, lo.need_kwh) for lo in spec.loads]
        self.log = structlog.get_logger("ems.demo.home").bind(site=spec.site)
        offline = SiteStatus(state="offline", version=VERSION, loads=self._load_ids())
        will = (topics.site_status(spec.site), encode(offline), True)
        self.bus = LingeringBus(mqtt, f"ems-demo-{spec.site}", will=will)
        self.queue: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()
        self.ready = asyncio.Event()
        self._closing = False
        self._wake = asyncio.Event()
        self._reply_tasks: set[asyncio.Task[None]] = set()
        self.counters = HomeCounters()
        self.max_epoch = 0
        self.request: CycleRequest | None = None
        self.replies: dict[str, ReplyRecord] = {}
        self.applied: dict[str, AppliedAlloc] = {}
        self.alloc_until: datetime | None = None
        self.pv_kw = 0.0
        self.consumption_kw = 0.0
        self.net_export_kw = 0.0
        self._pv_noise = 1.0
        self._load_noise = 0.0
        self._advanced_at: datetime | None = None
        self._next_netload_at: datetime | None = None
        self._phase_s = self.rng.uniform(0.2, 0.8) * period_s

    # Lifecycle ---------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        """Connect, announce, live until ``stop`` is set, then leave cleanly."""
        self.bus.set_sink(self._enqueue)
        await self.bus.connect()
        self.bus.subscribe(self.topics.gateway_subscriptions(self.site))
        now = self.clock.now()
        self._advanced_at = now
        self._publish(self.topics.site_status(self.site),
                      SiteStatus(state="online", version=VERSION, loads=self._load_ids()),
                      retain=True)
        for load in self.loads:
            self._publish_state(load)
        self._measure(now)
        self._publish_netload(now)
        # First regular net load at this home's phase, then one per period.
        self._next_netload_at = now + timedelta(seconds=self._phase_s)
        self.ready.set()
        try:
            async with asyncio.TaskGroup() as tg:
                consumer = tg.create_task(self._consume(tg), name=f"{self.site}-consumer")
                ticker = tg.create_task(self._tick_loop(), name=f"{self.site}-ticker")
                await stop.wait()
                # The loops also end on the flag: a cancellation alone can be lost
                # (Python 3.11's wait_for swallows one that races a completion).
                self._closing = True
                self._wake.set()
                self.queue.put_nowait(("", b""))
                for task in (consumer, ticker, *self._reply_tasks):
                    task.cancel()
        finally:
            await self._leave()

    async def _leave(self) -> None:
        for load in self.loads:
            if load.on:
                load.power_kw = 0.0
                self._publish_state(load)
        self._publish(self.topics.site_status(self.site),
                      SiteStatus(state="offline", version=VERSION, loads=self._load_ids()),
                      retain=True)
        await self.bus.disconnect(drain_timeout_s=2.0)

    def _load_ids(self) -> tuple[str, ...]:
        return tuple(lo.spec.id for lo in self.loads)

    # Messages ----------------------------------------------------------------
    def _enqueue(self, topic: str, payload: bytes) -> None:
        # Runs in gmqtt's callback: only enqueue (STYLE.md, never block there).
        self.queue.put_nowait((topic, payload))

    async def _consume(self, tg: asyncio.TaskGroup) -> None:
        while not self._closing:
            topic, payload = await self.queue.get()
            if self._closing:
                return
            try:
                self._handle(topic, payload, tg)
            except Exception:
                # One bad message must not end the home: log with context, count, go on.
                self.counters.callback_errors += 1
                self.log.exception("message_failed", topic=topic,
                                   excerpt=payload[:120].decode("utf-8", "replace"))

    def _handle(self, topic: str, payload: bytes, tg: asyncio.TaskGroup) -> None:
        route = self.topics.parse(topic)
        if route is None:
            self._reject(topic, payload, Rejection("unknown_topic", "not a contract topic"))
            return
        if route.kind not in _HANDLED:
            return  # cycle/closed, ack, grid: nothing to do in the demo
        msg = decode(route, payload)
        if isinstance(msg, Rejection):
            self._reject(topic, payload, msg)
        elif isinstance(msg, CoordinatorStatus):
            self.max_epoch = max(self.max_epoch, msg.epoch)
        elif isinstance(msg, CycleRequest):
            self._on_request(msg, tg)
        elif isinstance(msg, Alloc):
            self._on_alloc(msg)

    def _reject(self, topic: str, payload: bytes, why: Rejection) -> None:
        self.counters.rejected[why.reason] += 1
        self.log.warning("payload_rejected", topic=topic, reason=why.reason, detail=why.detail,
                         excerpt=payload[:120].decode("utf-8", "replace"))

    def _on_request(self, request: CycleRequest, tg: asyncio.TaskGroup) -> None:
        self.counters.requests += 1
        self.request = request
        now = self.clock.now()
        # Reply delays vary by home and by cycle (the study: uniform 1-10 s), and
        # stay well inside the reply window so the demo shows FIFO, not deadlines.
        window_s = (request.reply_by - now).total_seconds()
        delay_s = self.spec.reply_mean_s * self.rng.uniform(0.6, 1.4)
        delay_s = max(0.2, min(delay_s, 0.8 * window_s))
        task = tg.create_task(self._reply_after(request, delay_s), name=f"{self.site}-reply")
        self._reply_tasks.add(task)
        task.add_done_callback(self._reply_tasks.discard)

    async def _reply_after(self, request: CycleRequest, delay_s: float) -> None:
        await asyncio.sleep(self.clock.real_seconds(delay_s))
        now = self.clock.now()
        self._advance(now)
        flex_kw, loads = flex_offer(self.loads, now)
        self._publish(self.topics.flex(self.site),
                      Flex(cycle=request.cycle, flex_kw=flex_kw, loads=loads))
        self.counters.replies += 1
        self._remember(self.replies, format_utc(request.cycle), ReplyRecord(delay_s, flex_kw))

    def _on_alloc(self, alloc: Alloc) -> None:
        cycle_id = format_utc(alloc.cycle)
        now = self.clock.now()
        # PROTOCOL.md: at most one allocation per cycle; never one from an older
        # epoch (a fenced-off coordinator) or past its valid_until.
        reason = None
        if alloc.epoch < self.max_epoch:
            reason = "old_epoch"
        elif alloc.valid_until <= now:
            reason = "expired"
        elif cycle_id in self.applied:
            reason = "duplicate"
        if reason is not None:
            self.counters.ignored[reason] += 1
            self.log.info("alloc_ignored", cycle=cycle_id, reason=reason, epoch=alloc.epoch)
            return
        self.max_epoch = alloc.epoch
        self.counters.allocations += 1
        self._advance(now)
        plan = plan_allocation(self.loads, alloc.alloc_kw, now)
        for load in self.loads:
            power = plan.get(load.spec.id, 0.0)
            if power != load.power_kw:
                load.power_kw = power
                self._publish_state(load)
        self.alloc_until = alloc.valid_until if plan else None
        applied = AppliedAlloc(alloc.alloc_kw, alloc.rank, round(sum(plan.values()), 3),
                               tuple(plan.items()))
        self._remember(self.applied, cycle_id, applied)
        self.log.info("alloc_applied", cycle=cycle_id, alloc_kw=alloc.alloc_kw, rank=alloc.rank,
                      used_kw=applied.used_kw, loads=dict(plan))
        self._wake.set()

    @staticmethod
    def _remember(store: dict[str, Any], key: str, value: Any) -> None:
        store[key] = value
        while len(store) > KEEP_RECORDS:
            del store[next(iter(store))]

    # Time-driven work --------------------------------------------------------
    async def _tick_loop(self) -> None:
        step_s = self.period_s / 6
        while not self._closing:
            now = self.clock.now()
            self._advance(now)
            self._measure(now)
            assert self._next_netload_at is not None
            if now >= self._next_netload_at:
                self._publish_netload(now)
                self._next_netload_at += timedelta(seconds=self.period_s)
            expiry = self._expiry_at()
            if expiry is not None and now >= expiry:
                self._expire()
                expiry = None
            wake = min(t for t in (self._next_netload_at, expiry,
                                   now + timedelta(seconds=step_s)) if t is not None)
            self._wake.clear()
            timeout = max(0.0, self.clock.real_seconds((wake - now).total_seconds()))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._wake.wait()

    def _expiry_at(self) -> datetime | None:
        """When the running allocation's loads switch off.

        An allocation ends with its period, but the next cycle usually hands the
        same loads power again: while this home waits for the next cycle's
        outcome (a request seen, no alloc yet) its loads stay on until that
        cycle's ``reply_by``, so a water heater does not blink off and on at each
        boundary. With no request (no surplus) they stop shortly after the end.
        """
        until = self.alloc_until
        if until is None:
            return None
        due = until + timedelta(seconds=self.expiry_grace_s)
        request = self.request
        if (request is not None and request.cycle >= until
                and format_utc(request.cycle) not in self.applied):
            due = max(due, request.reply_by)
        return due

    def _expire(self) -> None:
        self.alloc_until = None
        for load in self.loads:
            if load.on:
                load.power_kw = 0.0
                self._publish_state(load)

    def _advance(self, now: datetime) -> None:
        start = self._advanced_at
        self._advanced_at = now
        if start is None:
            return
        for load in advance(self.loads, start, now):
            self._publish_state(load)  # satisfied while running: its thermostat cut it

    def _measure(self, now: datetime) -> None:
        # Passing clouds and household noise change slowly: redraw a little each time.
        self._pv_noise = min(1.0, max(0.8, self._pv_noise + self.rng.gauss(0.0, 0.03)))
        self._load_noise = min(0.8, max(-0.3, 0.7 * self._load_noise + self.rng.gauss(0.0, 0.1)))
        self.pv_kw = pv_kw(self.spec, now, self._pv_noise)
        self.consumption_kw = consumption_kw(self.spec, now, self._load_noise)

    # Publishing ----------------------------------------------------------------
    def _publish_netload(self, now: datetime) -> None:
        self.net_export_kw = round(self.pv_kw - self.consumption_kw, 3)
        self._publish(self.topics.netload(self.site),
                      NetLoad(ts=now, net_export_kw=self.net_export_kw))

    def _publish_state(self, load: LoadRuntime) -> None:
        state = LoadState(on=load.on, power_kw=round(load.power_kw, 3),
                          reason="allocation" if load.on else "idle")
        self._publish(self.topics.load_state(self.site, load.spec.id), state, retain=True)

    def _publish(self, topic: str, message: Any, *, retain: bool = False) -> None:
        self.bus.publish(topic, encode(message), retain=retain)

    # For the view ----------------------------------------------------------------
    @property
    def power_on_kw(self) -> float:
        return sum(lo.power_kw for lo in self.loads)


_HANDLED = frozenset({TopicKind.COORDINATOR_STATUS, TopicKind.CYCLE_REQUEST, TopicKind.ALLOC})

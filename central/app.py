"""The live coordinator: wires the pure core to MQTT, the clock and the recorder.

One queue, one consumer. The MQTT callback only enqueues ``(topic, payload,
arrival)``; period boundaries and cycle timers enqueue events into the same
queue. The consumer drains bursts, decodes them (bad input is counted and
logged, never fatal), feeds replies to the core in arrival order, commits the
burst's replies and decisions in one transaction, then publishes each
``alloc/{s}``. So every decision is durable before its allocation leaves, and
nothing runs concurrently with the core.

The grid-stress signal (RTE Ecowatt and manual overrides) is its own task,
``GridService``, in the same task group: it polls, persists and publishes
``grid/signal`` and ``grid/shed`` by itself, so a slow or failing RTE never
delays a cycle; the consumer only hands it ``admin/signal/set`` messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

import structlog

from central import __version__
from central.bus import MqttBus
from central.config import CentralSettings
from central.core import Cycle, Offer, SiteBook, Step, get_strategy
from central.core.cycle import EPSILON_KW, LoadOffer
from central.core.flood import Admission, FloodGuard, Transition, Verdict
from central.core.grid import MAX_OVERRIDE_AHEAD_DAYS
from central.core.shadow import ShadowInputs, ShadowRecord
from central.core.strategy import StrategyState
from central.ecowatt.service import GridService, RecorderOverrides
from central.errors import RecorderError
from central.gcpolicy import CycleGc
from central.recorder import Recorder, ReplyRow, StoredCycle
from central.resume import rebuild
from central.shadow import ShadowService, state_key
from protocol import (
    AdminSignalSet,
    CoordinatorStatus,
    CycleClosed,
    CycleRequest,
    Flex,
    Limits,
    LoadState,
    NetLoad,
    Rejection,
    Report,
    SiteStatus,
    Topics,
    decode,
    encode,
    encode_alloc,
    format_utc,
    is_valid_id,
)
from protocol.models import Ack
from protocol.rejections import RejectionLog
from protocol.topics import TopicKind
from runtime.clock import Clock, next_boundary

if TYPE_CHECKING:
    from central.web import WebServer

T = TypeVar("T")
BURST_MAX = 20_000
# Strategies that decide every reply on arrival, in microseconds: their core calls
# run on the event loop (the 100k-reply hot path). Every other strategy may solve
# (milp, window) or split a whole cycle at once: its core calls run on the solver
# thread, so the loop keeps receiving and queueing replies meanwhile.
DECIDES_ON_ARRIVAL = frozenset({"fifo", "fifo_min_power"})


@dataclass(slots=True)
class OpenCycle:
    """The cycle in progress and what the shell needs around the core."""

    cycle: Cycle
    period_start: datetime
    period_end: datetime
    reply_by: datetime
    request_mono: float
    cycle_id: str
    valid_until: str
    timer: asyncio.TimerHandle | None = None
    wakeup_s: float | None = None
    accepted: list[Offer] | None = None  # shadow mode: the replies accepted, in order


@dataclass
class Stats:
    """Counters of everything the coordinator received, refused and sent.

    Each message received is counted once: ``accepted`` (by kind), ``rejected``
    (by reason, with the rate limit of their log lines) or ``ignored["not_handled"]``.
    An accepted reply may then be ``ignored`` by the cycle (stale, duplicate...).
    ``errors`` counts bursts that raised: a bug, logged with its traceback.
    """

    received: int = 0
    rejections: RejectionLog = field(default_factory=RejectionLog)
    accepted: Counter[str] = field(default_factory=Counter)
    ignored: Counter[str] = field(default_factory=Counter)
    cycles: int = 0
    allocations: int = 0
    errors: int = 0

    @property
    def rejected(self) -> Counter[str]:
        """Refused messages by reason (``docs/reliability.md``, "Hostile input")."""
        return self.rejections.counts

    def as_dict(self) -> dict[str, Any]:
        return {
            "received": self.received,
            "accepted": dict(self.accepted),
            "rejected": dict(self.rejected),
            "ignored": dict(self.ignored),
            "cycles": self.cycles,
            "allocations": self.allocations,
            "errors": self.errors,
            "log_lines_suppressed": self.rejections.suppressed_total,
        }


class Coordinator:
    """One community's coordinator."""

    def __init__(
        self,
        settings: CentralSettings,
        clock: Clock,
        *,
        recorder: Recorder | None = None,
        bus: MqttBus | None = None,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.community = settings.community.id
        self.topics = Topics(self.community, settings.community.topic_root)
        self.limits = Limits(max_site_kw=settings.community.max_site_kw)
        self.strategy = get_strategy(settings.cycle.strategy, **settings.cycle.strategy_options)
        self.sites = SiteBook(frozenset(settings.sites) if settings.sites is not None else None)
        self.recorder = recorder or Recorder(settings.recorder.url)
        # Carried across restarts (e.g. fair_rotation's ledger): saved after each cycle.
        self.strategy_state: StrategyState = self.recorder.load_strategy_state(self.strategy.name)
        self._db_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="recorder")
        # Core calls that may solve run here, one at a time, still in the consumer's order.
        self._solver_thread = (
            None if self.strategy.name in DECIDES_ON_ARRIVAL
            else ThreadPoolExecutor(max_workers=1, thread_name_prefix="solver")
        )
        self.epoch = self.recorder.next_epoch()
        self.log = structlog.get_logger("central").bind(community=self.community)
        status_topic = self.topics.coordinator_status()
        offline = encode(CoordinatorStatus(state="offline", version=__version__, epoch=self.epoch))
        self.bus = bus or MqttBus(
            settings.mqtt,
            settings.mqtt.client_id or f"ems-central-{self.community}",
            will=(status_topic, offline, True),
        )
        self.queue: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()
        flood = settings.flood
        self.stats = Stats(rejections=RejectionLog(flood.log_interval_s))
        # Per-site flood control (central/core/flood.py); replies the cycle ignores
        # are logged at the same rate as refusals.
        self.flood: FloodGuard | None = FloodGuard(flood.policy()) if flood.enabled else None
        self._ignored_log = RejectionLog(flood.log_interval_s)
        self._site_prefix = f"{self.topics.base}/site/"
        self._gc = CycleGc()
        self._reports: list[tuple[str, Report, datetime]] = []
        self.current: OpenCycle | None = None
        self.closed_cycles: list[CycleClosed] = []
        self._listeners: list[Callable[[str, Any], None]] = []
        self._ready = asyncio.Event()
        self.grid = GridService.build(
            settings.ecowatt,
            clock=clock,
            topics=self.topics,
            publish=self.bus.publish,
            store=RecorderOverrides(self.recorder, self._db),
        )
        # Shadow mode: the [cycle] shadow strategies scored after each cycle, off the loop.
        self.shadow: ShadowService | None = None
        if settings.cycle.shadow:
            self.shadow = ShadowService.build(
                settings.cycle.shadow, settings.cycle.shadow_options_of,
                self.recorder.load_strategy_state, self._persist_shadow, self._notify,
                self.log.bind(component="shadow"),
            )
        # The operator's page and API (central/web), a task of run() when enabled.
        self.web: WebServer | None = self._build_web() if settings.web.enabled else None

    # Public --------------------------------------------------------------------
    def add_listener(self, listener: Callable[[str, Any], None]) -> None:
        """Called with ``(event, data)`` for ``cycle_opened``, ``allocations``, ``cycle_closed``
        (and ``load_state``, ``(site, load, LoadState, received_at)``, with the web page)."""
        self._listeners.append(listener)

    async def wait_ready(self) -> None:
        await self._ready.wait()

    async def run(self, stop: asyncio.Event) -> None:
        """Connect, announce, run cycles until ``stop`` is set, then leave cleanly."""
        # First in the queue, before any reply: carry on with a cycle a killed run left open.
        self.queue.put_nowait(("resume",))
        self.bus.set_sink(self._enqueue_message)
        # A broker that restarted may have lost the retained status (kill -9).
        self.bus.on_reconnect = lambda: self._publish_status("online")
        await self.bus.connect()
        subscriptions = self.topics.coordinator_subscriptions()
        if self.web is not None:
            # The page's relay view (GET /api/get_relays_state): the retained load states.
            subscriptions.append(self.topics.load_state("+", "+"))
        self.bus.subscribe(subscriptions)
        self._publish_status("online")
        self.log.info(
            "coordinator_started",
            epoch=self.epoch,
            strategy=self.strategy.name,
            period_s=self.settings.cycle.period_s,
            version=__version__,
        )
        self._ready.set()
        try:
            async with asyncio.TaskGroup() as tg:
                consumer = tg.create_task(self._consume(), name="consumer")
                scheduler = tg.create_task(self._schedule(), name="scheduler")
                grid = tg.create_task(self._run_grid(), name="grid")
                shadow = (
                    tg.create_task(self.shadow.run(), name="shadow")
                    if self.shadow is not None else None
                )
                if self.web is not None:
                    tg.create_task(self.web.serve(), name="web")  # logs its failures itself
                await stop.wait()
                scheduler.cancel()
                grid.cancel()
                if shadow is not None:
                    shadow.cancel()
                if self.web is not None:
                    self.web.stop()
                # Let the consumer finish what is queued, then stop it.
                await self.queue.join()
                consumer.cancel()
        finally:
            await self._shutdown()

    async def start_cycle_now(self, period_start: datetime | None = None) -> None:
        """Open a cycle at once (tests, operator command); normally the scheduler does it."""
        at = period_start or self.clock.now()
        await self.queue.put(("boundary", at))

    def _build_web(self) -> WebServer:
        # Imported here: FastAPI and uvicorn load only when the page is enabled.
        from central.web import WebServer, create_app

        return WebServer(create_app(self), self.settings.web)

    async def _run_grid(self) -> None:
        # The grid signal is a service to the homes, not a reason to stop cycles.
        try:
            await self.grid.run()
        except Exception:
            self.log.exception("grid_service_failed")

    # MQTT side -----------------------------------------------------------------
    def _enqueue_message(self, topic: str, payload: bytes, arrived: float | None = None) -> None:
        arrived = time.monotonic() if arrived is None else arrived
        if self.flood is not None and topic.startswith(self._site_prefix):
            # Flood control here, before the queue: a flood's excess never sits in
            # front of the other sites' replies (bench/fuzz/flood.py measures it).
            # Only the site is read; the consumer parses the whole topic.
            site = topic[len(self._site_prefix):].partition("/")[0]
            if is_valid_id(site) and self.sites.knows(site):
                admission = self.flood.admit(site, arrived)
                if (admission.verdict is not Verdict.ADMIT or admission.transition is not None) \
                        and not self._flood_verdict(topic, payload, site, admission, arrived):
                    self.stats.received += 1
                    return
                self.queue.put_nowait(("m", topic, payload, arrived, True))
                return
        self.queue.put_nowait(("m", topic, payload, arrived))

    # Scheduler -----------------------------------------------------------------
    async def _schedule(self) -> None:
        period = self.settings.cycle.period_s
        while True:
            boundary = next_boundary(self.clock.now(), period)
            await self.clock.sleep_until(boundary)
            await self.queue.put(("boundary", boundary))

    def _post_tick(self, cycle_id: str) -> None:
        self.queue.put_nowait(("tick", cycle_id))

    # Consumer ------------------------------------------------------------------
    async def _consume(self) -> None:
        queue = self.queue
        while True:
            first = await queue.get()
            batch = [first]
            while len(batch) < BURST_MAX:
                try:
                    batch.append(queue.get_nowait())
                except asyncio.QueueEmpty:
                    break
            try:
                await self._handle_batch(batch)
            except Exception:
                # Nothing crashes the service: log with context and go on.
                self.stats.errors += 1
                self.log.exception("batch_failed", size=len(batch))
            finally:
                for _ in batch:
                    queue.task_done()

    async def _handle_batch(self, batch: list[tuple[Any, ...]]) -> None:
        offers: list[Offer] = []
        for item in batch:
            kind = item[0]
            if kind == "m":
                self.stats.received += 1
                offer = self._handle_message(item[1], item[2], item[3], len(item) > 4)
                if offer is not None:
                    offers.append(offer)
                continue
            if offers:
                await self._feed(offers)
                offers = []
            if kind == "boundary":
                await self._open_cycle(item[1])
            elif kind == "tick":
                await self._tick(item[1])
            elif kind == "resume":
                await self._resume_unclosed()
        if offers:
            await self._feed(offers)
        reports, self._reports = self._reports, []
        for site, report, received_at in reports:
            await self._record_report(site, report, received_at)

    def _handle_message(
        self, topic: str, payload: bytes, arrived: float, admitted: bool = False
    ) -> Offer | None:
        """Handle one message: counted once, accepted (by kind) or refused (by reason).

        ``admitted``: flood control already let it through (``_enqueue_message``).
        """
        route = self.topics.parse(topic)
        if route is None:
            self._reject(topic, payload, Rejection("unknown_topic", "not a contract topic"),
                         arrived)
            return None
        if route.site is not None:
            if not self.sites.knows(route.site):
                self._reject(topic, payload, Rejection("unknown_site", f"site {route.site!r}",
                                                       site=route.site), arrived)
                return None
            if self.flood is not None and not admitted:
                # Before decoding: a flood's excess costs a dict lookup, not a parse.
                admission = self.flood.admit(route.site, arrived)
                if (admission.verdict is not Verdict.ADMIT or admission.transition is not None) \
                        and not self._flood_verdict(topic, payload, route.site, admission, arrived):
                    return None
        if route.kind not in _HANDLED:
            # Our own publications echoed back, or topics for later features.
            self.stats.ignored["not_handled"] += 1
            return None
        msg = decode(route, payload, self.limits)
        if isinstance(msg, Rejection):
            self._reject(topic, payload, msg, arrived)
            return None
        if isinstance(msg, AdminSignalSet):
            # The grid service refuses what it cannot apply; a day its hour
            # arithmetic cannot even represent (year 1, 9999) is refused here.
            today = self.clock.now().date()
            if abs((msg.day - today).days) > MAX_OVERRIDE_AHEAD_DAYS + 2:
                self._reject(topic, payload, Rejection(
                    "out_of_range", f"day {msg.day.isoformat()} is too far from today",
                    route.kind), arrived)
                return None
        self.stats.accepted[route.kind.value] += 1
        site = route.site
        if isinstance(msg, Flex):
            assert site is not None
            return self._offer_of(site, msg, arrived)
        now = self.clock.now()
        if isinstance(msg, NetLoad):
            assert site is not None
            self.sites.set_netload(site, msg.net_export_kw, now)
        elif isinstance(msg, SiteStatus):
            assert site is not None
            online = msg.state == "online"
            before = self.sites.get(site)
            was_online = before.online if before is not None else None
            self.sites.set_status(site, online, now, msg.version, msg.loads)
            if was_online is not None and was_online != online:
                self.log.info("site_status", site=site, state=msg.state, version=msg.version)
            elif was_online is None:
                # First sighting: 100k of these at start-up are not news.
                self.log.debug("site_seen", site=site, state=msg.state, version=msg.version)
        elif isinstance(msg, Report):
            assert site is not None
            self._reports.append((site, msg, now))  # recorded by the consumer, in order
        elif isinstance(msg, AdminSignalSet):
            self.log.info("admin_signal_received", day=msg.day.isoformat(), hour=msg.hour,
                          level=msg.level)
            self.grid.submit(msg)
        elif isinstance(msg, LoadState):
            assert site is not None and route.load is not None
            self._notify("load_state", (site, route.load, msg, now))
        return None

    def _offer_of(self, site: str, msg: Flex, arrived: float) -> Offer:
        current = self.current
        elapsed = 0.0
        if current is not None:
            elapsed = self.clock_seconds(arrived - current.request_mono)
        loads = tuple(
            LoadOffer(
                lf.id,
                lf.min_kw,
                lf.max_kw,
                lf.kind,
                lf.priority,
                (lf.until - current.period_start).total_seconds()
                if (lf.until is not None and current is not None)
                else None,
                lf.energy_kwh,
            )
            for lf in msg.loads
        )
        return Offer(site, msg.cycle, msg.flex_kw, elapsed, loads)

    def clock_seconds(self, real_s: float) -> float:
        return real_s * getattr(self.clock, "speed", 1.0)

    def _reject(
        self, topic: str, payload: bytes, why: Rejection, arrived: float | None = None
    ) -> None:
        """Count a refused message under its reason; log it, at most one line per site
        and reason per ``[flood] log_interval_s``, with the number suppressed since."""
        now_s = time.monotonic() if arrived is None else arrived
        line = self.stats.rejections.note(why.reason, why.site, now_s)
        if line is None:
            return
        self.log.warning(
            "payload_rejected",
            topic=topic[:200],
            reason=why.reason,
            detail=why.detail,
            site=line.source,
            suppressed=line.suppressed,
            excerpt=payload[:120].decode("utf-8", "replace"),
        )

    def _flood_verdict(
        self, topic: str, payload: bytes, site: str, admission: Admission, arrived: float
    ) -> bool:
        """Act on a flood verdict; True when the message goes on to be decoded."""
        if admission.transition is Transition.RELEASED:
            self.sites.set_quarantine(site, None)
            self.log.info("site_released", site=site)
        elif admission.transition is Transition.QUARANTINED:
            assert self.flood is not None
            policy = self.flood.policy
            until = self.clock.now() + timedelta(seconds=self.clock_seconds(policy.quarantine_s))
            self.sites.set_quarantine(site, until)
            self.log.warning("site_quarantined", site=site, until=format_utc(until),
                             dropped=self.flood.dropped(site),
                             rate_per_s=policy.rate_per_s, burst=policy.burst)
        if admission.verdict is Verdict.ADMIT:
            return True
        # The hot path of a flood: count, and build the log line only when it is due.
        reason = _FLOOD_REASONS[admission.verdict]
        line = self.stats.rejections.note(reason, site, arrived)
        if line is not None:
            self.log.warning("payload_rejected", topic=topic[:200], reason=reason,
                             detail="per-site flood control", site=line.source,
                             suppressed=line.suppressed,
                             excerpt=payload[:120].decode("utf-8", "replace"))
        return False

    def log_suppressed(self, now_s: float | None = None) -> None:
        """One line per (site, reason) whose refusals went unlogged for an interval."""
        now_s = time.monotonic() if now_s is None else now_s
        for book, event in ((self.stats.rejections, "payload_rejected_suppressed"),
                            (self._ignored_log, "reply_ignored_suppressed")):
            for due in book.due(now_s):
                self.log.warning(event, site=due.source, reason=due.reason, count=due.count)

    def health(self) -> dict[str, Any]:
        """What ``GET /api/health`` shows: alive, counters by reason, quarantined sites."""
        now = self.clock.now()
        quarantined = {
            rec.site: format_utc(rec.quarantined_until)
            for rec in self.sites.records()
            if rec.quarantined_until is not None and rec.quarantined(now)
        }
        return {
            "status": "ok",
            "community": self.community,
            "epoch": self.epoch,
            "now": format_utc(now),
            "queue": self.queue.qsize(),
            "mqtt_connected": self.bus.connected,
            "callback_errors": self.bus.callback_errors,
            **self.stats.as_dict(),
            "rejections": self.stats.rejections.as_dict(),
            "quarantined": quarantined,
            "flood": None if self.flood is None else {
                "rate_per_s": self.flood.policy.rate_per_s,
                "burst": self.flood.policy.burst,
                "quarantine_after": self.flood.policy.quarantine_after,
                "quarantine_window_s": self.flood.policy.quarantine_window_s,
                "quarantine_s": self.flood.policy.quarantine_s,
            },
        }

    # Cycles --------------------------------------------------------------------
    async def _open_cycle(self, period_start: datetime) -> None:
        self.log_suppressed()  # what a flood left unlogged, once a period
        cycle_id = format_utc(period_start)
        current = self.current
        if current is not None and current.cycle_id == cycle_id and not current.cycle.closed:
            self.log.warning("cycle_already_open", cycle=cycle_id)
            return
        if current is not None and not current.cycle.closed:
            # A cycle never outlives its period (reply_timeout_s < period_s).
            await self._apply_step(current, await self._core(current.cycle.close, "deadline"))
        # One cycle id is one run: never open a recorded cycle again over its records.
        stored = await self._db(self.recorder.stored_cycle, cycle_id)
        if stored is not None:
            if stored.closed:
                self.log.warning("cycle_not_reopened", cycle=cycle_id,
                                 closed_at=stored.closed_at, reason=stored.close_reason)
            else:
                await self._resume(stored, allow_live=True)
            return
        cfg = self.settings.cycle
        now = self.clock.now()
        view = self.sites.surplus(now, cfg.netload_age_s)
        surplus_kw = round(view.surplus_kw, 6)
        online = self.sites.online_sites()
        if self.flood is not None:
            # A quarantined site's reply would be dropped: it is not waited for.
            held = [s for s in self.flood.held() if (rec := self.sites.get(s)) is not None
                    and rec.quarantined(now)]
            online = online.difference(held)
        period_end = period_start + timedelta(seconds=cfg.period_s)
        reply_by = now + timedelta(seconds=cfg.reply_timeout_s)
        cycle, step = Cycle.open(
            period_start,
            surplus_kw,
            online,
            self.strategy,
            self.strategy_state,
            deadline_s=cfg.reply_timeout_s,
        )
        oc = OpenCycle(
            cycle, period_start, period_end, reply_by, time.monotonic(), cycle_id,
            format_utc(period_end), accepted=[] if self.shadow is not None else None,
        )
        # The cycle's inputs first: a restarted coordinator resumes from them (_resume).
        created = await self._db(
            self.recorder.open_cycle,
            period_start,
            self.community,
            self.epoch,
            self.strategy.name,
            now,
            surplus_kw,
            len(online),
            len(view.contributing),
            reply_by if step.closed is None else None,
            period_end,
            online if step.closed is None else None,
        )
        if not created:  # another coordinator on the same records got there first
            self.log.error("cycle_recorded_elsewhere", cycle=cycle_id)
            return
        self.current = oc
        self.stats.cycles += 1
        log = self.log.bind(cycle=cycle_id)
        log.info(
            "cycle_opened",
            surplus_kw=round(view.surplus_kw, 3),
            sites=len(online),
            contributing=len(view.contributing),
            stale=len(view.stale),
        )
        self._notify("cycle_opened", oc)
        if step.closed is None:
            self._gc.enter()  # central/gcpolicy.py: back to normal at close
            request = CycleRequest(
                cycle=period_start,
                surplus_kw=round(view.surplus_kw, 6),
                period_start=period_start,
                period_end=period_end,
                reply_by=reply_by,
            )
            self.bus.publish(self.topics.cycle_request(), encode(request))
            log.info("request_published", reply_by=format_utc(reply_by))
        await self._apply_step(oc, step)

    async def _resume_unclosed(self) -> None:
        """At start: every cycle a previous run opened and never closed, oldest first."""
        stored = await self._db(self.recorder.unclosed_cycles)
        for i, cycle in enumerate(stored):
            # Only the latest can still be running; older ones are closed from their records.
            await self._resume(cycle, allow_live=i == len(stored) - 1)

    async def _resume(self, stored: StoredCycle, *, allow_live: bool) -> None:
        """Carry on with a recorded cycle that was never closed (faults §3, crash mid-cycle).

        The core cycle is rebuilt from the records (``central.resume``), never
        recomputed: each stored decision is republished as stored, under this
        run's epoch (gateways fence older epochs and apply a cycle at most once).
        Before its reply-by the cycle goes on (the request is sent again: replies
        sent while no coordinator listened are lost) and closes at its original
        reply-by; after it, it closes at once and decides nothing new.
        """
        cfg = self.settings.cycle
        now = self.clock.now()
        log = self.log.bind(cycle=stored.cycle)
        period_start = datetime.fromisoformat(stored.cycle)
        period_end = stored.period_end or period_start + timedelta(seconds=cfg.period_s)
        reply_by = stored.reply_by
        why_closed = None
        if reply_by is None or now >= reply_by or now >= period_end:
            why_closed = "reply_by_passed"
        elif not allow_live:
            why_closed = "superseded"
        elif stored.strategy != self.strategy.name:
            why_closed = "strategy_changed"
        elif stored.site_ids is None:
            why_closed = "sites_not_recorded"
        replies = await self._db(self.recorder.accepted_replies, stored.cycle)
        decisions = await self._db(self.recorder.decisions, stored.cycle)
        rebuilt = await self._core(functools.partial(
            rebuild, stored, replies, decisions, self.strategy, self.strategy_state,
            frozen=why_closed is not None, default_deadline_s=cfg.reply_timeout_s,
        ))
        if rebuilt.mismatched:
            # Republished as stored anyway; the replay only rebuilds the state.
            log.warning("resume_replay_mismatch", sites=rebuilt.mismatched[:20],
                        count=len(rebuilt.mismatched))
        elapsed_s = max(0.0, (now - stored.opened_at).total_seconds())
        oc = OpenCycle(
            rebuilt.cycle, period_start, period_end, reply_by or now,
            time.monotonic() - self.clock.real_seconds(elapsed_s), stored.cycle,
            format_utc(period_end),
        )
        log.info("cycle_resumed", previous_epoch=stored.epoch, decisions=len(decisions),
                 replies=len(replies), remaining_kw=round(rebuilt.cycle.remaining_kw, 3),
                 elapsed_s=round(elapsed_s, 3), closing=why_closed)
        if now < period_end and rebuilt.stored:
            publish = self.bus.publish
            for d in rebuilt.stored:
                publish(self.topics.alloc(d.site),
                        encode_alloc(oc.cycle_id, d.alloc_kw, d.rank, oc.valid_until, self.epoch))
            log.info("allocations_republished", count=len(rebuilt.stored), epoch=self.epoch)
        if why_closed is not None:
            # Nothing new: what the replay would add (0 kW to pending replies) is dropped.
            reason = rebuilt.closed or "deadline"
            await self._close(oc, reason)
            return
        assert reply_by is not None  # why_closed is None
        self.current = oc
        self.stats.cycles += 1
        self._notify("cycle_opened", oc)
        if rebuilt.closed is None:
            self._gc.enter()
            request = CycleRequest(
                cycle=period_start,
                surplus_kw=stored.surplus_kw,
                period_start=period_start,
                period_end=period_end,
                reply_by=reply_by,
            )
            self.bus.publish(self.topics.cycle_request(), encode(request))
            log.info("request_republished", reply_by=format_utc(reply_by))
        await self._apply_step(oc, Step(decisions=rebuilt.new, closed=rebuilt.closed))

    async def _feed(self, offers: list[Offer]) -> None:
        current = self.current
        if current is None:
            self.stats.ignored["no_cycle"] += len(offers)
            return
        step = await self._core(current.cycle.offer_many, offers)
        ignored = {id(i.offer): i.reason for i in step.ignored}
        if current.accepted is not None:
            current.accepted.extend(o for o in offers if id(o) not in ignored)
        rows = [
            ReplyRow(o.site, o.elapsed_s, o.flex_kw, ignored.get(id(o), "accepted"), o.loads)
            for o in offers
        ]
        now_s = time.monotonic()
        for i in step.ignored:
            self.stats.ignored[i.reason] += 1
            # A site repeating a reply a thousand times gets one line an interval.
            line = self._ignored_log.note(i.reason, i.offer.site, now_s)
            if line is not None:
                self.log.info("reply_ignored", site=line.source, reason=i.reason,
                              cycle=current.cycle_id, suppressed=line.suppressed)
        await self._apply_step(current, step, rows)

    async def _tick(self, cycle_id: str) -> None:
        current = self.current
        if current is None or current.cycle_id != cycle_id:
            return
        current.timer = None
        current.wakeup_s = None
        elapsed = self.clock_seconds(time.monotonic() - current.request_mono)
        await self._apply_step(current, await self._core(current.cycle.tick, elapsed))

    async def _apply_step(
        self, oc: OpenCycle, step: Step, rows: list[ReplyRow] | None = None
    ) -> None:
        """Record, then publish, what one step decided; close if it closed."""
        if rows or step.decisions:
            await self._db(self.recorder.record_step, oc.period_start, self.epoch,
                           rows or [], step.decisions)
        if step.decisions:
            publish = self.bus.publish
            alloc_topic = self.topics.alloc
            epoch = self.epoch
            for d in step.decisions:
                publish(alloc_topic(d.site),
                        encode_alloc(oc.cycle_id, d.alloc_kw, d.rank, oc.valid_until, epoch))
            self.stats.allocations += len(step.decisions)
            self._notify("allocations", (oc, step.decisions))
        if step.closed is not None:
            await self._close(oc, step.closed)
        else:
            self._arm_timer(oc)

    def _arm_timer(self, oc: OpenCycle) -> None:
        wake = oc.cycle.next_wakeup_s()
        if wake is None or wake == oc.wakeup_s:
            return
        if oc.timer is not None:
            oc.timer.cancel()
        loop = asyncio.get_running_loop()
        real = self.clock.real_seconds(wake)
        oc.wakeup_s = wake
        oc.timer = loop.call_at(
            loop.time() + max(0.0, oc.request_mono + real - time.monotonic()),
            self._post_tick,
            oc.cycle_id,
        )

    async def _close(self, oc: OpenCycle, reason: str) -> None:
        self._gc.leave()
        if oc.timer is not None:
            oc.timer.cancel()
            oc.timer = None
        cycle = oc.cycle
        now = self.clock.now()
        await self._db(self.recorder.close_cycle, oc.period_start, reason, now,
                       cycle.allocated_kw, cycle.replies)
        closed = CycleClosed(
            cycle=oc.period_start,
            reason=reason,  # type: ignore[arg-type]
            surplus_kw=cycle.context.surplus_kw,
            allocated_kw=round(cycle.allocated_kw, 6),
            replies=cycle.replies,
            sites=len(cycle.context.sites),
        )
        self.strategy_state = cycle.settle(self.strategy_state)
        if self.strategy_state.get("last_method") == "fallback":
            self.log.warning("strategy_fallback", cycle=oc.cycle_id, strategy=self.strategy.name,
                             reason=self.strategy_state.get("last_fallback_reason"))
        try:
            await self._db(self.recorder.save_strategy_state, self.strategy.name,
                           self.strategy_state, now)
        except RecorderError as exc:
            self.log.warning("strategy_state_not_saved", cycle=oc.cycle_id, error=str(exc))
        # From here to the listeners nothing awaits: whoever sees cycle/closed
        # can count on the coordinator's own view (listeners, page) being done.
        self.bus.publish(self.topics.cycle_closed(), encode(closed), retain=True)
        self.closed_cycles.append(closed)
        del self.closed_cycles[:-100]
        self.log.info(
            "cycle_closed",
            cycle=oc.cycle_id,
            reason=reason,
            surplus_kw=round(cycle.context.surplus_kw, 3),
            allocated_kw=round(cycle.allocated_kw, 3),
            replies=cycle.replies,
            sites=len(cycle.context.sites),
            elapsed_s=round(self.clock_seconds(time.monotonic() - oc.request_mono), 3),
        )
        self._notify("cycle_closed", (oc, closed))
        if self.shadow is not None and oc.accepted is not None:
            self._submit_shadow(oc)

    def _submit_shadow(self, oc: OpenCycle) -> None:
        """Hand the closed cycle to shadow mode (after cycle/closed: it never delays it)."""
        assert self.shadow is not None and oc.accepted is not None
        context = oc.cycle.context
        if not context.surplus_kw > EPSILON_KW:
            return  # nothing to allocate: every strategy gives nothing
        inputs = ShadowInputs(
            context.cycle, context.surplus_kw, context.sites, context.deadline_s,
            tuple(oc.accepted), context.seed,
        )
        oc.accepted = None  # the cycle's replies now belong to the shadow run
        self.shadow.submit(oc.cycle_id, inputs)

    async def _persist_shadow(
        self, rows: list[ShadowRecord], states: dict[str, StrategyState]
    ) -> None:
        await self._db(self._write_shadow, rows, states, self.clock.now())

    def _write_shadow(
        self, rows: list[ShadowRecord], states: dict[str, StrategyState], now: datetime
    ) -> None:
        # On the recorder thread. Shadow states live under their own names, never
        # the executed strategy's row.
        self.recorder.record_shadow_scores(rows)
        for name, state in states.items():
            self.recorder.save_strategy_state(state_key(name), state, now)

    # Reports -------------------------------------------------------------------
    async def _record_report(self, site: str, msg: Report, now: datetime) -> None:
        try:
            acked = await self._db(
                self.recorder.record_report, site, msg.seq, msg.period, msg.import_kwh,
                msg.export_kwh, msg.allocated_kwh, msg.used_kwh, now, msg.dropped_through,
            )
        except Exception:
            self.log.exception("report_not_recorded", site=site, seq=msg.seq)
            return
        self.bus.publish(self.topics.ack(site), encode(Ack(seq=acked)))
        self.log.info("report_recorded", site=site, seq=msg.seq, acked=acked)

    # Plumbing ------------------------------------------------------------------
    async def _db(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._db_thread, fn, *args)

    async def _core(self, fn: Callable[..., T], *args: Any) -> T:
        """A core call that may solve: on the solver thread (see ``DECIDES_ON_ARRIVAL``).

        The consumer awaits it, so calls stay in order and nothing else feeds the
        core meanwhile; the loop goes on receiving and queueing replies.
        """
        if self._solver_thread is None:
            return fn(*args)
        return await asyncio.get_running_loop().run_in_executor(self._solver_thread, fn, *args)

    def _publish_status(self, state: str) -> None:
        status = CoordinatorStatus(state=state, version=__version__, epoch=self.epoch)  # type: ignore[arg-type]
        self.bus.publish(self.topics.coordinator_status(), encode(status), retain=True)

    def _notify(self, event: str, data: Any) -> None:
        for listener in self._listeners:
            try:
                listener(event, data)
            except Exception:
                self.log.exception("listener_failed", listener_event=event)

    async def _shutdown(self) -> None:
        current = self.current
        with contextlib.suppress(Exception):
            if current is not None and not current.cycle.closed:
                if self.clock.now() >= current.reply_by:
                    await self._apply_step(
                        current, await self._core(current.cycle.close, "deadline"))
                else:
                    # Stopped within the reply window (a restart, an upgrade): every
                    # decision is already recorded, so leave the cycle open there and
                    # the next start resumes it, as after a crash (central/resume.py);
                    # closing it now would refuse the sites still to reply.
                    if current.timer is not None:
                        current.timer.cancel()
                    self._gc.leave()
                    self.log.info("cycle_left_open", cycle=current.cycle_id,
                                  reply_by=format_utc(current.reply_by),
                                  allocated_kw=round(current.cycle.allocated_kw, 3),
                                  replies=current.cycle.replies)
        self._publish_status("offline")
        await self.bus.disconnect()
        self._db_thread.shutdown(wait=True)
        if self._solver_thread is not None:
            self._solver_thread.shutdown(wait=True)
        self.recorder.close()
        self.log.info("coordinator_stopped", **self.stats.as_dict())


_FLOOD_REASONS = {v: v.value for v in Verdict}

_HANDLED = frozenset(
    {
        TopicKind.SITE_STATUS,
        TopicKind.NETLOAD,
        TopicKind.FLEX,
        TopicKind.REPORT,
        TopicKind.ADMIN_SIGNAL_SET,
        TopicKind.LOAD_STATE,  # subscribed only with the web page (relay view)
    }
)

"""Wiring of ``ems demo``: a broker, the real coordinator and real gateways in one loop.

``run_demo(options)`` starts an ``EmbeddedBroker`` (unless one is given),
builds the real ``central.app.Coordinator`` on an ``AcceleratedClock`` with a
SQLite recorder and, per home, a ``DemoHome`` (``ems.demo.home``): the real
``gateway.app.Gateway`` on the same clock, with simulated Shelly devices and,
in some homes, a fake Phidget board. A loopback stand-in for RTE's Ecowatt
API (``ems.rte_standin.RteStandIn``, same clock) serves the stress episode of
``ems.demo.grid``; the coordinator's ``[ecowatt]`` polls its sandbox URL.
It runs until ``stop`` is set, ``options.cycles`` cycles have closed or
``options.duration_s`` real seconds have passed. It then stops the gateways
(each publishes ``offline``), the homes' physics and simulated devices, the
coordinator (it publishes ``offline`` and disconnects), RTE's stand-in and
the broker, in that order, and returns what happened as a ``DemoState``.

Every client speaks MQTT 3.1.1 (the gateways, the coordinator and the
simulated devices): amqtt knows nothing else, and one protocol for both
brokers keeps the demo the same everywhere.

The runner touches no global state: logging and signal handling belong to
the command (``ems.commands.demo``), so tests can call it in-process.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import signal
import socket
import tempfile
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from datetime import time as dtime
from pathlib import Path
from typing import Any, Protocol

import structlog

from central.app import Coordinator, OpenCycle
from central.config import load_central_settings
from central.core import EPSILON_KW, Decision
from central.errors import CentralError
from ems.broker import BrokerError, BrokerKind, EmbeddedBroker
from ems.demo.grid import DEFAULT_STRESS, Episode, GridNow, episode_for, grid_now, stand_in_signals
from ems.demo.home import DemoHome
from ems.demo.plan import make_homes
from ems.rte_standin import RteStandIn
from gateway.errors import GatewayError
from protocol import CycleClosed
from protocol.settings import ConfigError
from runtime.clock import AcceleratedClock

log = structlog.get_logger("ems.demo")

HISTORY = 50
"""Closed cycles kept in memory (the view shows the last ten)."""
READY_TIMEOUT_S = 15.0
"""Real seconds to wait for the coordinator, every simulated device and every gateway."""
SETTLE_TIMEOUT_S = 3.0
"""Real seconds to wait, after the last cycle, for the gateways to apply its allocations."""
GATEWAYS_STOP_TIMEOUT_S = 10.0
"""Real seconds for the gateways to stop their devices, say offline and disconnect."""
COORDINATOR_STOP_TIMEOUT_S = 15.0
"""Real seconds for the coordinator to close its cycle, say offline and disconnect."""
RTE_CLIENT_ID = "ems-demo"
ECOWATT_MIN_INTERVAL_S = 60.0
"""Clock seconds between two calls to the stand-in at least (RTE's production: 900 s real)."""
ECOWATT_POLL_INTERVAL_S = 3600.0
"""Clock seconds between routine calls: hourly, as against RTE (30 real seconds at ×120)."""
ECOWATT_TIMEOUT_S = 5.0


DEFAULT_HOMES = 20
DEFAULT_SPEED = 120.0
"""A 900 s period every 7.5 real seconds, a 60 s reply window of 0.5 s. Measured
with 20 homes on a busy 2-core machine (docs/demo.md, "Keeping up"): replies
within 0.26 s (p95) on either broker, none late; at ×180 the pure-Python amqtt
broker left a quarter of the cycles without replies in their 0.33 s window."""
WEB_HOST = "127.0.0.1"
"""The operator page listens on loopback only: reading it needs no token."""


class DemoError(Exception):
    """The demo could not run: no broker, a client could not connect, bad options."""


@dataclass(frozen=True, slots=True)
class DemoOptions:
    """Everything ``ems demo`` can be told."""

    db_url: str
    homes: int = DEFAULT_HOMES
    seed: int = 1
    broker: BrokerKind = "auto"
    speed: float = DEFAULT_SPEED
    period_s: float = 900.0
    reply_timeout_s: float = 60.0
    start_at: datetime | None = None
    """Simulated time at launch; default: today 11:00 UTC, so there is a surplus at once."""
    cycles: int | None = None
    duration_s: float | None = None
    community: str = "demo"
    log_file: Path | None = None
    state_dir: Path | None = None
    """Where each gateway keeps its state (``<dir>/<site>``); default: a temporary directory."""
    stress: tuple[int, int] | None = DEFAULT_STRESS
    """Level 3 from/until these hours (Paris) on the episode's day, level 2 the hour
    before (``ems.demo.grid``); None: the RTE stand-in serves four calm days."""
    grid_cache: Path | None = None
    """The coordinator's Ecowatt cache file; default: in a temporary directory."""
    web: bool = True
    """Serve the operator page (``central.web``) from the coordinator on 127.0.0.1."""
    web_port: int = 0
    """Its port; 0: any free one (``DemoState.web_url`` says which)."""

    def resolved_start(self) -> datetime:
        if self.start_at is not None:
            return self.start_at.astimezone(UTC)
        return default_start()


def default_start(today: datetime | None = None) -> datetime:
    """Today's 11:00 UTC: near solar noon in France, so the first cycles have a surplus."""
    day = (today or datetime.now(UTC)).astimezone(UTC).date()
    return datetime.combine(day, dtime(11, 0), tzinfo=UTC)


@dataclass(slots=True)
class CycleRecord:
    """One cycle as the demo saw it: opened, its allocations, how it closed."""

    cycle_id: str
    period_start: datetime
    surplus_kw: float
    sites: int
    requested: bool
    decisions: list[Decision] = field(default_factory=list)
    closed: CycleClosed | None = None
    opened_mono: float = field(default_factory=time.monotonic)
    """When the demo saw it open (real seconds, ``time.monotonic``)."""

    @property
    def allocated_kw(self) -> float:
        return sum(d.alloc_kw for d in self.decisions)

    @property
    def share_used(self) -> float | None:
        """Allocated / surplus, None without a surplus."""
        return self.allocated_kw / self.surplus_kw if self.surplus_kw > EPSILON_KW else None

    @property
    def injected_kw(self) -> float:
        """What the community still injects into the grid after the allocations."""
        return max(0.0, self.surplus_kw - self.allocated_kw)


@dataclass
class DemoState:
    """The one container the runner fills and the views read (same event loop)."""

    options: DemoOptions
    broker_kind: str = ""
    broker_url: str = ""
    clock: AcceleratedClock | None = None
    coordinator: Coordinator | None = None
    homes: list[DemoHome] = field(default_factory=list)
    current: CycleRecord | None = None
    history: deque[CycleRecord] = field(default_factory=lambda: deque(maxlen=HISTORY))
    cycles_closed: int = 0
    cycles_with_request: int = 0
    allocations: int = 0
    allocated_kwh: float = 0.0
    close_reasons: Counter[str] = field(default_factory=Counter)
    stopping: str | None = None
    """Why the demo is stopping (``cycles``, ``duration``, ``stop``), None while it runs."""
    episode: Episode | None = None
    """The stress episode the RTE stand-in serves (None: ``--no-stress``)."""
    rte: RteStandIn | None = None
    web_url: str | None = None
    """The operator page, once the coordinator serves it (``http://127.0.0.1:PORT/``)."""

    def grid(self) -> GridNow | None:
        """The coordinator's grid signal now; None before RTE answered."""
        now = self.now()
        if self.coordinator is None or now is None:
            return None
        return grid_now(self.coordinator, now)

    @property
    def last_closed(self) -> CycleRecord | None:
        return self.history[-1] if self.history else None

    def now(self) -> datetime | None:
        return self.clock.now() if self.clock is not None else None

    def awaiting_replies(self, now_mono: float | None = None) -> bool:
        """A cycle has asked the homes and is still open (for at most ``REPLY_QUIET_S``)."""
        record = self.current
        if record is None or not record.requested or record.closed is not None:
            return False
        now_mono = time.monotonic() if now_mono is None else now_mono
        return now_mono - record.opened_mono < REPLY_QUIET_S

    def home(self, site: str) -> DemoHome | None:
        for home in self.homes:
            if home.site == site:
                return home
        return None

    @property
    def rejected_by_coordinator(self) -> int:
        c = self.coordinator
        return sum(c.stats.rejected.values()) if c is not None else 0

    @property
    def rejected_by_homes(self) -> int:
        """Community payloads the gateways refused as invalid."""
        return sum(h.rejected for h in self.homes)

    # Coordinator events (its listener: called in the loop, must not raise) ------
    def on_event(self, event: str, data: Any) -> CycleRecord | None:
        """Record a coordinator event; return the record when a cycle closed."""
        if event == "cycle_opened":
            oc: OpenCycle = data
            self.current = CycleRecord(
                oc.cycle_id,
                oc.period_start,
                oc.cycle.context.surplus_kw,
                len(oc.cycle.context.sites),
                # Cycle.open has already closed a cycle that sends no request.
                requested=not oc.cycle.closed,
            )
        elif event == "allocations":
            oc, decisions = data
            record = self._record_of(oc)
            record.decisions.extend(decisions)
            self.allocations += len(decisions)
        elif event == "cycle_closed":
            oc, closed = data
            record = self._record_of(oc)
            record.closed = closed
            self.history.append(record)
            self.cycles_closed += 1
            self.cycles_with_request += int(record.requested)
            self.close_reasons[closed.reason] += 1
            self.allocated_kwh += record.allocated_kw * self.options.period_s / 3600
            return record
        return None

    def _record_of(self, oc: OpenCycle) -> CycleRecord:
        current = self.current
        if current is None or current.cycle_id != oc.cycle_id:
            current = self.current = CycleRecord(
                oc.cycle_id, oc.period_start, oc.cycle.context.surplus_kw,
                len(oc.cycle.context.sites), requested=True,
            )
        return current


class DemoView(Protocol):
    """What the runner tells a view (live terminal, plain lines, nothing)."""

    def started(self, state: DemoState) -> None: ...

    def refresh(self, state: DemoState) -> None: ...

    def cycle_closed(self, state: DemoState, record: CycleRecord) -> None: ...

    def finished(self, state: DemoState) -> None: ...


VIEW_REFRESH_S = 0.5
"""How often the live view is redrawn. Drawing 20 homes takes rich about 0.1 s
of the event loop that every gateway and the coordinator share (0.3 s on a
busy machine), so not more often."""
REPLY_QUIET_S = 1.0
"""No redraw for up to this long after a request, until the cycle closes: the
replies must not wait behind a drawing (at ×120 the reply window is 0.5 s)."""


async def run_demo(
    options: DemoOptions,
    *,
    stop: asyncio.Event | None = None,
    broker: EmbeddedBroker | None = None,
    view: DemoView | None = None,
) -> DemoState:
    """Run the demo; return its state once everything has stopped.

    ``broker``: an already started broker to use (tests observe it); by
    default the demo starts and stops its own ``EmbeddedBroker(options.broker)``.
    Raises ``DemoError`` when the demo cannot run.
    """
    _check(options)
    stop = stop or asyncio.Event()
    state = DemoState(options)
    own_broker = broker is None
    if broker is None:
        try:
            broker = EmbeddedBroker(options.broker)
            await asyncio.to_thread(_start_broker, broker)
        except (BrokerError, ValueError) as exc:
            raise DemoError(f"cannot start the {options.broker} broker: {exc}") from exc
    state.broker_kind, state.broker_url = broker.kind, broker.url
    try:
        await _run(options, broker, state, stop, view)
    except BaseExceptionGroup as group:
        known = _first_known(group)
        if known is None:
            raise
        raise DemoError(str(known)) from group
    except ConfigError as exc:
        detail = "; ".join(f"{key}: {message}" for key, message in exc.problems)
        raise DemoError(f"invalid settings: {detail}") from exc
    except (CentralError, GatewayError) as exc:
        raise DemoError(str(exc)) from exc
    finally:
        if own_broker:
            await asyncio.to_thread(broker.stop)
    return state


def _check(options: DemoOptions) -> None:
    problems = []
    if options.homes < 1:
        problems.append("homes must be at least 1")
    if not options.speed > 0:
        problems.append("speed must be positive")
    if options.cycles is not None and options.cycles < 1:
        problems.append("cycles must be at least 1")
    if options.duration_s is not None and not options.duration_s > 0:
        problems.append("duration must be positive")
    if not 0 < options.reply_timeout_s < options.period_s:
        problems.append(f"the reply timeout ({options.reply_timeout_s:g} s) must be positive "
                        f"and shorter than the period ({options.period_s:g} s)")
    if options.stress is not None and not 1 <= options.stress[0] < options.stress[1] <= 24:
        problems.append(f"stress hours must satisfy 1 <= from < until <= 24, got {options.stress}")
    if not 0 <= options.web_port <= 65535:
        problems.append(f"the page's port must be 0 (any free one) to 65535, "
                        f"got {options.web_port}")
    if problems:
        raise DemoError("; ".join(problems))
    if options.web and options.web_port:
        _check_port(options.web_port)


def _check_port(port: int) -> None:
    """Fail at once, and clearly, when the port asked for the page is taken.

    The coordinator's web server only logs a port it cannot bind (a page must not
    stop a production coordinator); the demo's user asked for this one.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((WEB_HOST, port))
        except OSError as exc:
            raise DemoError(f"cannot serve the operator page on {WEB_HOST}:{port}: "
                            f"{exc.strerror or exc}") from exc


def _start_broker(broker: EmbeddedBroker) -> None:
    """Start the broker with SIGINT blocked in this (worker) thread.

    A child inherits the blocked-signal mask of the thread that spawns it, so a
    terminal Ctrl-C, which the kernel sends to the whole foreground process
    group, does not kill mosquitto under the clients' feet: the demo stops it
    itself, after homes and coordinator have said goodbye. (The proper fix is
    for ``EmbeddedBroker`` to start mosquitto in its own session; see
    docs/demo.md.) Python handles signals in the main thread only, so blocking
    them here changes nothing else; the mask is restored for the pool's next job.
    """
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        broker.start()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _first_known(group: BaseExceptionGroup[Any]) -> BaseException | None:
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            found = _first_known(exc)
            if found is not None:
                return found
        elif isinstance(exc, CentralError | GatewayError | ConfigError | BrokerError | DemoError):
            return exc
    return None


async def _run(
    options: DemoOptions,
    broker: EmbeddedBroker,
    state: DemoState,
    stop: asyncio.Event,
    view: DemoView | None,
) -> None:
    mqtt = {"host": broker.host, "port": broker.port, "protocol": "3.1.1",
            "client_id": f"ems-demo-central-{options.community}"}
    # One clock for the coordinator, every gateway and RTE's stand-in: the same simulated time.
    start = options.resolved_start()
    clock = AcceleratedClock(options.speed, start)
    with contextlib.ExitStack() as stack:
        tmp = None
        if options.state_dir is None or options.grid_cache is None:
            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="ems-demo-")))
        # RTE on loopback: the coordinator polls it as it would RTE's sandbox.
        secret = secrets.token_urlsafe(16)
        try:
            rte = stack.enter_context(
                RteStandIn(client_id=RTE_CLIENT_ID, client_secret=secret, clock=clock))
        except OSError as exc:
            raise DemoError(f"cannot start the RTE stand-in: {exc}") from exc
        state.episode = episode_for(start, options.stress)
        rte.set_signals(stand_in_signals(start, state.episode))
        state.rte = rte
        grid_cache = options.grid_cache or (tmp or Path()) / "ecowatt-signals.json"
        # env={}: the demo runs on its own broker whatever EMS_* variables say.
        settings = load_central_settings(
            None,
            env={},
            mqtt=mqtt,
            community={"id": options.community},
            cycle={"period_s": options.period_s, "reply_timeout_s": options.reply_timeout_s},
            clock={"speed": options.speed},
            recorder={"url": options.db_url},
            ecowatt={"enabled": True, "client_id": RTE_CLIENT_ID, "client_secret": secret,
                     "token_url": rte.token_url, "signals_url": rte.sandbox_url,
                     "min_interval_s": ECOWATT_MIN_INTERVAL_S,
                     "poll_interval_s": ECOWATT_POLL_INTERVAL_S,
                     "timeout_s": ECOWATT_TIMEOUT_S, "cache_path": str(grid_cache)},
            web={"enabled": options.web, "host": WEB_HOST, "port": options.web_port},
        )
        coordinator = Coordinator(settings, clock)
        state_dir = options.state_dir or (tmp or Path()) / "gateways"
        homes = [
            DemoHome(spec, clock=clock, host=broker.host, port=broker.port,
                     community=options.community, period_s=options.period_s,
                     speed=options.speed, state_dir=state_dir)
            for spec in make_homes(options.homes, options.seed)
        ]
        state.clock, state.coordinator, state.homes = clock, coordinator, homes

        target = asyncio.Event()

        def on_event(event: str, data: Any) -> None:
            record = state.on_event(event, data)
            if record is None:
                return
            # First the stop condition: the coordinator logs and swallows what a
            # listener raises, and a view error must not keep --cycles from stopping.
            if options.cycles is not None and state.cycles_closed >= options.cycles:
                target.set()
            if view is not None:
                view.cycle_closed(state, record)

        coordinator.add_listener(on_event)
        log.info("demo_starting", broker=broker.kind, url=broker.url, homes=len(homes),
                 speed=options.speed, start=clock.now().isoformat(), db=options.db_url,
                 state_dir=str(state_dir), rte=rte.base_url,
                 stress=state.episode.describe() if state.episode else None)
        try:
            await _supervise(options, state, coordinator, homes, stop, target, view)
        finally:
            if view is not None:
                view.finished(state)
    log.info("demo_stopped", cycles=state.cycles_closed, allocations=state.allocations)


async def _supervise(
    options: DemoOptions,
    state: DemoState,
    coordinator: Coordinator,
    homes: list[DemoHome],
    stop: asyncio.Event,
    target: asyncio.Event,
    view: DemoView | None,
) -> None:
    coord_stop, gateways_stop = asyncio.Event(), asyncio.Event()
    async with asyncio.TaskGroup() as tg:
        coord_task = tg.create_task(coordinator.run(coord_stop), name="coordinator")
        await _until_ready(coordinator.wait_ready(), coord_task, "the coordinator")
        if coordinator.web is not None:
            await _until_ready(coordinator.web.started.wait(), coord_task,
                               "the operator page")
            state.web_url = f"http://{WEB_HOST}:{coordinator.web.port}/"
        try:
            # The devices first: a gateway asks its devices for their state at start.
            await _start_devices(homes)
            gateway_tasks = [tg.create_task(h.gateway.run(gateways_stop), name=h.site)
                             for h in homes]
            for home, task in zip(homes, gateway_tasks, strict=True):
                await _until_ready(home.gateway.wait_ready(), task, f"{home.site}'s gateway")
            physics = [tg.create_task(h.run_physics(), name=f"{h.site}-physics") for h in homes]
            if view is not None:
                view.started(state)
            view_task = tg.create_task(_refresh(view, state), name="view") if view else None

            state.stopping = await _wait_for_end(stop, target, options.duration_s)
            if state.stopping == "cycles":
                await _settle(state)
            log.info("demo_stopping", reason=state.stopping, cycles=state.cycles_closed)
            gateways_stop.set()
            await _stop_within(gateway_tasks, GATEWAYS_STOP_TIMEOUT_S)
            for task in physics:
                task.cancel()
        finally:
            # Also when the start failed: no paho thread outlives the demo.
            await _stop_devices(homes)
        coord_stop.set()
        await _stop_within([coord_task], COORDINATOR_STOP_TIMEOUT_S)
        if view_task is not None:
            view_task.cancel()


async def _start_devices(homes: list[DemoHome]) -> None:
    try:
        async with asyncio.timeout(READY_TIMEOUT_S):
            await asyncio.gather(*(h.start_devices() for h in homes))
    except (OSError, TimeoutError) as exc:
        raise DemoError(f"a simulated device could not connect: {exc}") from exc


async def _stop_devices(homes: list[DemoHome]) -> None:
    results = await asyncio.gather(*(h.stop_devices() for h in homes), return_exceptions=True)
    for home, result in zip(homes, results, strict=True):
        if isinstance(result, BaseException):
            log.warning("demo_devices_stop_failed", site=home.site, error=repr(result))


async def _stop_within(tasks: list[asyncio.Task[None]], timeout_s: float) -> None:
    """Wait for ``tasks`` to finish after their stop event; cancel what hangs."""
    _, pending = await asyncio.wait(tasks, timeout=timeout_s)
    for task in pending:
        # Never hang the exit: the task's own ``finally`` still says goodbye.
        log.warning("demo_stop_timeout", task=task.get_name(), timeout_s=timeout_s)
        task.cancel()
    if pending:
        await asyncio.wait(pending, timeout=timeout_s)


async def _until_ready(ready: Any, task: asyncio.Task[None], what: str) -> None:
    """Wait for ``ready`` unless ``task`` ends first (its error then propagates)."""
    waiter = asyncio.ensure_future(ready)
    try:
        done, _ = await asyncio.wait({waiter, task}, timeout=READY_TIMEOUT_S,
                                     return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not waiter.done():
            waiter.cancel()
    if waiter in done:
        return
    if task in done:
        task.result()  # raises the reason it ended
        raise DemoError(f"{what} stopped before it was ready")
    raise DemoError(f"{what} was not ready after {READY_TIMEOUT_S:g} s")


async def _wait_for_end(stop: asyncio.Event, target: asyncio.Event,
                        duration_s: float | None) -> str:
    waits = {
        asyncio.ensure_future(stop.wait()): "stop",
        asyncio.ensure_future(target.wait()): "cycles",
    }
    try:
        done, _ = await asyncio.wait(waits, timeout=duration_s,
                                     return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waits:
            waiter.cancel()
    for waiter, why in waits.items():
        if waiter in done:
            return why
    return "duration"


async def _settle(state: DemoState) -> None:
    """Give the gateways a moment to apply the last cycle's allocations before stopping."""
    record = state.last_closed
    if record is None:
        return
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    while time.monotonic() < deadline:
        missing = [
            d.site for d in record.decisions
            if (home := state.home(d.site)) is not None and not home.settled(record.cycle_id)
        ]
        if not missing:
            return
        await asyncio.sleep(0.02)
    log.warning("demo_settle_timeout", cycle=record.cycle_id, missing=missing)


async def _refresh(view: DemoView, state: DemoState) -> None:
    while True:
        if not state.awaiting_replies():
            view.refresh(state)
        await asyncio.sleep(VIEW_REFRESH_S)


def sqlite_url(path: str | Path) -> str:
    """A recorder url for ``path`` (a plain path or already ``sqlite:///…``)."""
    text = str(path)
    return text if text.startswith("sqlite:///") else f"sqlite:///{text}"


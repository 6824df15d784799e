"""``GridService``: the coordinator's grid-stress signal, from RTE and the admin to MQTT.

It owns the signal's state (RTE's last good answer and the manual overrides),
asks the pure core (``central.core.grid``) what holds now, and publishes:

- ``grid/signal`` (retained) whenever what it says changes: new data, an
  override, and at every hour boundary (the hour moves). When nothing at all
  is known of the current day any more, the retained message is removed (an
  empty retained payload): no ``grid/signal`` means no information.
- ``grid/shed`` (retained) for the window in force or the next one: the
  contiguous hours at or above ``shed_threshold``, published as soon as it is
  known (so a gateway sheds on time even if it loses the coordinator), with
  ``level`` the highest level among its hours not yet ended. When no window
  is left, a retained ``level: 0`` shed with ``from == until`` clears it.

Why a task of its own that publishes directly, and not events on the
coordinator's queue: the allocation consumer must never wait for Ecowatt.
Here, HTTP and disk work run in this task (the cache write in a thread), an
override's SQLite write goes through the recorder's own thread, and
``MqttBus.publish`` never blocks. The only thing the cycle's consumer does for
the grid is hand an ``admin/signal/set`` message over with ``put_nowait``. Its
state is touched only by this task, so it needs no lock.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from datetime import date, datetime, timedelta
from typing import Any, Protocol

import httpx
import structlog

from central.config import EcowattSettings
from central.core.grid import (
    GridSchedule,
    HourKey,
    ShedWindow,
    Signals,
    SignalView,
    hour_start,
    locate,
    override_problem,
)
from central.ecowatt.cache import SignalCache
from central.ecowatt.client import EcowattClient
from central.ecowatt.poller import EcowattPoller, PollPolicy
from central.recorder import Recorder
from protocol import Topics, encode
from protocol.models import AdminSignalSet, GridShed, GridSignal
from runtime.clock import Clock

log = structlog.get_logger("central.grid")

Publish = Callable[..., None]
"""``MqttBus.publish(topic, payload, retain=True)``: never blocks."""
_CLEAR = ("clear",)


class OverrideStore(Protocol):
    """Where manual overrides survive restarts."""

    async def load(self, since: date) -> dict[HourKey, int]: ...

    async def save(self, day: date, hour: int, level: int | None, at: datetime) -> None: ...


class RecorderOverrides:
    """Overrides in the recorder's SQLite, run on the recorder's thread by ``run``."""

    def __init__(self, recorder: Recorder, run: Callable[..., Awaitable[Any]]) -> None:
        self._recorder = recorder
        self._run = run

    async def load(self, since: date) -> dict[HourKey, int]:
        await self._run(self._recorder.prune_grid_overrides, since)
        overrides: dict[HourKey, int] = await self._run(self._recorder.grid_overrides, since)
        return overrides

    async def save(self, day: date, hour: int, level: int | None, at: datetime) -> None:
        await self._run(self._recorder.set_grid_override, day, hour, level, at)


class GridService:
    """RTE's signal plus manual overrides, published on ``grid/signal`` and ``grid/shed``."""

    def __init__(
        self,
        settings: EcowattSettings,
        *,
        clock: Clock,
        topics: Topics,
        publish: Publish,
        store: OverrideStore,
        poller: EcowattPoller | None = None,
        client: EcowattClient | None = None,
    ) -> None:
        self.settings = settings
        self.tz = settings.tz
        self.threshold = settings.shed_threshold
        self.clock = clock
        self.topics = topics
        self.publish = publish
        self.store = store
        self.poller = poller
        self._client = client
        self.signals: Signals | None = None
        self.fetched_at: datetime | None = None
        self.overrides: dict[HourKey, int] = {}
        self.override_at: datetime | None = None
        self._commands: asyncio.Queue[AdminSignalSet] = asyncio.Queue()
        self._signal_view: SignalView | None = None
        self._shed_key: tuple[Any, ...] | None = None
        self.published: list[tuple[str, bytes]] = []
        self.refused = 0
        self.ready = asyncio.Event()
        self._listeners: list[Callable[[], None]] = []

    @classmethod
    def build(
        cls,
        settings: EcowattSettings,
        *,
        clock: Clock,
        topics: Topics,
        publish: Publish,
        store: OverrideStore,
        transport: httpx.AsyncBaseTransport | None = None,
        rng: random.Random | None = None,
    ) -> GridService:
        """The service with an RTE client and poller when ``[ecowatt] enabled``."""
        client = poller = None
        if settings.enabled:
            assert settings.client_id is not None and settings.client_secret is not None
            client = EcowattClient(
                client_id=settings.client_id,
                client_secret=settings.client_secret,
                token_url=settings.token_url,
                signals_url=settings.url,
                timeout_s=settings.timeout_s,
                transport=transport,
                now_s=clock.monotonic,
                wall=clock.now,
            )
            policy = PollPolicy(
                min_interval_s=settings.min_interval_s,
                poll_interval_s=settings.poll_interval_s,
                tz=settings.tz,
            )
            poller = EcowattPoller(
                client, SignalCache(settings.cache_path), clock, settings.tz, policy, rng=rng
            )
        return cls(settings, clock=clock, topics=topics, publish=publish, store=store,
                   poller=poller, client=client)

    def add_listener(self, listener: Callable[[], None]) -> None:
        """Called (no arguments, on this task) whenever the schedule may have changed:
        new RTE data, an override, the hour moving. It must return at once."""
        self._listeners.append(listener)

    # Called by the coordinator's consumer ------------------------------------------
    def submit(self, command: AdminSignalSet) -> None:
        """Queue an ``admin/signal/set``; returns at once."""
        self._commands.put_nowait(command)

    # The task --------------------------------------------------------------------------
    async def run(self) -> None:
        """Load the state, publish it, then poll, tick hourly and apply overrides."""
        try:
            await self._start()
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._apply_commands(), name="grid-commands")
                tg.create_task(self._tick_hourly(), name="grid-hourly")
                if self.poller is not None:
                    tg.create_task(self.poller.run(self._on_signals), name="ecowatt-poller")
        finally:
            if self._client is not None:
                await self._client.aclose()

    async def _start(self) -> None:
        today = self.clock.now().astimezone(self.tz).date()
        try:
            self.overrides = await self.store.load(today - timedelta(days=1))
        except Exception:
            log.exception("grid_overrides_not_loaded")
        if self.poller is not None:
            loaded = await asyncio.to_thread(self.poller.load_cache)
            if loaded is not None:
                self.signals, self.fetched_at = loaded
                log.info("ecowatt_cache_loaded", fetched_at=self.fetched_at.isoformat(),
                         days=[d.day.isoformat() for d in self.signals.days])
        log.info("grid_service_started", ecowatt=self.poller is not None,
                 overrides=len(self.overrides), threshold=self.threshold)
        self._evaluate(force=True)
        self.ready.set()

    def _on_signals(self, signals: Signals, fetched_at: datetime) -> None:
        self.signals = signals
        self.fetched_at = fetched_at
        self._evaluate()

    async def _tick_hourly(self) -> None:
        while True:
            day, hour = locate(self.clock.now(), self.tz)
            boundary = hour_start(day, hour + 1, self.tz)
            await self.clock.sleep_until(boundary + timedelta(milliseconds=50))
            try:
                self._evaluate()
            except Exception:
                log.exception("grid_evaluation_failed")

    async def _apply_commands(self) -> None:
        while True:
            command = await self._commands.get()
            try:
                await self._apply(command)
            except Exception:
                log.exception("grid_override_failed", day=command.day.isoformat(),
                              hour=command.hour, level=command.level)

    async def _apply(self, command: AdminSignalSet) -> None:
        now = self.clock.now()
        key = (command.day, command.hour)
        fields = {"day": command.day.isoformat(), "hour": command.hour, "level": command.level}
        if command.level is not None:
            problem = override_problem(command.day, command.hour, now, self.tz)
            if problem is not None:
                self.refused += 1
                log.warning("grid_override_refused", reason=problem, **fields)
                return
        elif key not in self.overrides:
            log.info("grid_override_absent", **fields)
            return
        try:
            await self.store.save(command.day, command.hour, command.level, now)
        except Exception:
            # Applied anyway: a shed order matters more than its surviving a restart.
            log.exception("grid_override_not_persisted", **fields)
        if command.level is None:
            self.overrides.pop(key, None)
        else:
            self.overrides[key] = command.level
        self.override_at = now
        log.info("grid_override_set" if command.level is not None else "grid_override_cleared",
                 **fields)
        self._evaluate()

    # What to publish -------------------------------------------------------------------
    def schedule(self) -> GridSchedule:
        return GridSchedule(self.signals, self.overrides, tz=self.tz)

    def _evaluate(self, *, force: bool = False) -> None:
        now = self.clock.now()
        schedule = self.schedule()
        view = schedule.signal_at(now)
        if view is not None and (force or view != self._signal_view):
            self._publish_signal(view, now)
        elif view is None and self._signal_view is not None:
            self._send(self.topics.grid_signal(), b"")
            self._signal_view = None
            log.info("grid_signal_cleared", reason="nothing known of the current day")
        window = schedule.shed_window(now, self.threshold)
        if window is not None:
            key: tuple[Any, ...] | None = (
                window.level, window.from_at, window.until_at, window.reason
            )
        elif schedule.days() or (self._shed_key not in (None, _CLEAR)):
            key = _CLEAR
        else:
            key = None  # nothing known, nothing said: leave the retained message alone
        if key is not None and (force or key != self._shed_key):
            self._publish_shed(window, view, now)
            self._shed_key = key
        for listener in self._listeners:
            try:
                listener()
            except Exception:
                log.exception("grid_listener_failed")

    def _updated_at(self, view: SignalView, now: datetime) -> datetime:
        stamps = []
        if self.fetched_at is not None and self.signals is not None and self.signals.day(view.day):
            stamps.append(self.fetched_at)
        if view.source == "manual" and self.override_at is not None:
            stamps.append(self.override_at)
        return max(stamps, default=now).replace(microsecond=0)

    def _publish_signal(self, view: SignalView, now: datetime) -> None:
        payload = GridSignal(
            source=view.source,
            day=view.day,
            hour=view.hour,
            level=view.level,
            day_level=view.day_level,
            hours=view.hours,
            updated=self._updated_at(view, now),
        )
        self._send(self.topics.grid_signal(), encode(payload))
        self._signal_view = view
        log.info("grid_signal_published", day=view.day.isoformat(), hour=view.hour,
                 level=view.level, day_level=view.day_level, source=view.source)

    def _publish_shed(
        self, window: ShedWindow | None, view: SignalView | None, now: datetime
    ) -> None:
        if window is None:
            day, hour = locate(now, self.tz)
            start = hour_start(day, hour, self.tz)
            reason = view.source if view is not None else "ecowatt"
            shed = _shed(0, start, start, reason)
            log.info("grid_shed_cleared", reason=reason)
        else:
            shed = _shed(window.level, window.from_at, window.until_at, window.reason)
            log.info("grid_shed_published", level=window.level,
                     from_at=window.from_at.isoformat(), until_at=window.until_at.isoformat(),
                     reason=window.reason)
        self._send(self.topics.grid_shed(), encode(shed))

    def _send(self, topic: str, payload: bytes) -> None:
        self.published.append((topic, payload))
        del self.published[:-50]
        self.publish(topic, payload, retain=True)


def _shed(level: int, from_at: datetime, until_at: datetime, reason: str) -> GridShed:
    # ``from`` is a Python keyword: the model's field is ``from_``, aliased.
    return GridShed.model_validate(
        {"level": level, "from": from_at, "until": until_at, "reason": reason}
    )

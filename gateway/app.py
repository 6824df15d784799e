"""The gateway service: wires devices, the local EMS and the community topics.

paho's network thread only hands messages to this loop (``PahoBus``); handlers
here are quick and synchronous; relay commands go through one queue to one
worker, which awaits the device and reports failures back to the EMS. The
EMS itself is pure (``gateway/ems``): every decision is taken there.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter, deque
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import structlog

from gateway import __version__
from gateway.bus import PahoBus
from gateway.config import GatewaySettings
from gateway.devices.base import Device, NetMeter, Relay
from gateway.devices.registry import build_device
from gateway.ems import Command, LoadSpec, LocalEms
from gateway.ems.controller import SETTLE_S
from gateway.ems.grid import GridOutlook, Window
from gateway.ems.ledger import PeriodLedger
from gateway.ems.loads import Mode
from gateway.errors import DeviceError
from gateway.hass import FileLedger, HassDiscovery, build_context
from gateway.outbox import Outbox, OutboxError, PendingReport
from protocol import (
    Ack,
    Alloc,
    CoordinatorStatus,
    CycleClosed,
    CycleRequest,
    Flex,
    GridShed,
    GridSignal,
    LoadFlex,
    LoadState,
    NetLoad,
    Rejection,
    Report,
    SiteStatus,
    Topics,
    decode,
    encode,
)
from protocol.codec import Limits
from protocol.models import MAX_ENERGY_KWH, Payload
from protocol.rejections import RejectionLog
from protocol.topics import TopicKind
from runtime.clock import Clock, next_boundary

log = structlog.get_logger("gateway")

UNWRITTEN_MAX = 1000
"""Reports kept in memory while the outbox cannot store them (10 days of 15-min periods)."""
REJECTION_LOG_INTERVAL_S = 60.0
"""At most one ``payload_rejected`` line per topic kind and reason in this long."""


def spec_of(load: Any) -> LoadSpec:
    """The EMS's view of a configured load."""
    return LoadSpec(
        id=load.id,
        kind=load.kind,
        nominal_kw=load.nominal_kw,
        min_kw=load.min_power_kw,
        max_kw=load.max_power_kw,
        min_on_s=load.min_on_s,
        min_off_s=load.min_off_s,
        max_starts_per_hour=load.max_starts_per_hour,
        shed_level=load.shed_level,
        priority=load.priority,
        idle_below_kw=load.idle_below_kw,
        capacity_kwh=load.capacity_kwh,
        soc=load.soc,
        soc_min=load.soc_min,
        soc_max=load.soc_max,
        departure=load.departure,
        energy_need_kwh=load.energy_need_kwh,
        preheat_hours=load.preheat_hours,
        normally_on=load.energized_means == "off",
        modulation=load.modulation,
        steps_kw=load.setpoints_kw,
    )


class Gateway:
    """One home's gateway."""

    def __init__(
        self,
        settings: GatewaySettings,
        clock: Clock,
        *,
        bus: PahoBus | None = None,
        device_options: dict[str, dict[str, Any]] | None = None,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.site = settings.site.id
        self.community = settings.community.id
        self.topics = Topics(self.community, settings.community.topic_root)
        self.limits = Limits(max_site_kw=settings.community.max_site_kw)
        self.log = log.bind(community=self.community, site=self.site)
        offline = encode(SiteStatus(state="offline", version=__version__,
                                    loads=tuple(ld.id for ld in settings.loads)))
        self.bus = bus or PahoBus(
            settings.mqtt,
            settings.mqtt.client_id or f"ems-gw-{self.site}",
            will=(self.topics.site_status(self.site), offline, True),
        )
        self.devices: dict[str, Device] = {}
        for dev in settings.devices:
            extra = dict((device_options or {}).get(dev.id, {}))
            if dev.model.driver in ("shelly_gen2_switch", "shelly_gen2_em"):
                # RPC replies come back on <src>/rpc: unique per home and device.
                extra.setdefault("reply_prefix", f"ems-gw-{self.site}-{dev.id}")
            self.devices[dev.id] = build_device(
                dev, dev.model, self.bus, clock, self._on_device_change, **extra
            )
        self.relay_of_load: dict[str, Relay] = {}
        self.load_of_relay: dict[str, str] = {}
        self.device_of_load = {load.id: load.device for load in settings.loads}
        self._lanes = {dev.id: asyncio.Lock() for dev in settings.devices}
        for load in settings.loads:
            device = self.devices[load.device]
            wiring = getattr(device, "set_wiring", None)
            if wiring is not None:
                wiring(load.channel, load.energized_means)
            relay = device.relays()[load.channel]
            self.relay_of_load[load.id] = relay
            self.load_of_relay[relay.relay_id] = load.id
        self.net_meter: NetMeter | None = (
            self.devices[settings.meter.device].net_meter() if settings.meter.device else None
        )
        self.ems = LocalEms(
            [spec_of(ld) for ld in settings.loads],
            response_check_s=settings.ems.response_check_s,
            response_tolerance=settings.ems.response_tolerance,
            unresponsive_hold_s=settings.ems.unresponsive_hold_s,
            local_self_consumption=settings.ems.local_self_consumption,
            max_flex_kw=settings.community.max_site_kw,
            max_import_kw=settings.ems.max_import_kw,
            allow_import_kw=settings.ems.allow_import_kw,
            # A device's reply latency is real time: on an accelerated clock the
            # window in which a contradicting report is the device catching up
            # spans as many clock seconds as the clock is faster.
            settle_s=SETTLE_S * settings.clock.speed,
        )
        self.grid_tz = ZoneInfo(settings.ems.grid_timezone)
        shed_levels = [ld.shed_level for ld in settings.loads if ld.shed_level is not None]
        self._stress_threshold = min(shed_levels, default=2)
        state_dir = Path(settings.state.dir)
        bounds = settings.outbox
        self.outbox = Outbox(state_dir / f"outbox-{self.site}.sqlite", max_rows=bounds.max_rows,
                             max_bytes=bounds.max_bytes,
                             disk_reserve_bytes=bounds.disk_reserve_bytes)
        # Reports the outbox could not store (disk full): kept in order and
        # written at the next period; beyond UNWRITTEN_MAX the oldest go.
        self._unwritten: deque[tuple[datetime, Callable[[int, int], bytes]]] = deque()
        self.unwritten_dropped = 0
        self._status_dropped = 0
        self.hass = HassDiscovery(
            self.topics, settings.homeassistant, settings.site, settings.loads,
            self.bus.publish, __version__,
            ledger=FileLedger(state_dir / f"hass-{self.site}.json"),
        )
        self.commands: asyncio.Queue[Command] = asyncio.Queue()
        self.coordinator_online = False
        self.bridge_up: bool | None = None  # unknown until the edge broker says
        self.coordinator_heard_s: float | None = None
        self.degraded = True
        self.alloc_kw = 0.0
        self.alloc_until_s: float | None = None
        self.last_alloc: Alloc | None = None
        self.shed: GridShed | None = None
        self.signal: GridSignal | None = None
        # Refused community messages by reason, one log line per topic kind and reason
        # an interval (docs/reliability.md, "Hostile input"); ``errors``: failed ticks.
        self.rejections = RejectionLog(REJECTION_LOG_INTERVAL_S)
        self.accepted: Counter[str] = Counter()
        self.errors = 0
        self._published_states: dict[str, tuple[Any, ...]] = {}
        self._ledger: PeriodLedger | None = None
        self._period_start: datetime | None = None
        self._ready = asyncio.Event()

    # Time helpers ------------------------------------------------------------------------
    def now_s(self) -> float:
        return self.clock.monotonic()

    def to_s(self, at: datetime) -> float:
        """A wall time in the EMS's (monotonic) seconds."""
        return self.now_s() + (at - self.clock.now()).total_seconds()

    # Lifecycle ---------------------------------------------------------------------------
    async def wait_ready(self) -> None:
        await self._ready.wait()

    def attach(self) -> None:
        """Subscribe every handler to the bus (before connecting: it renews them)."""
        t = self.topics
        self.bus.on_reconnect = self._on_reconnect
        handlers = {
            t.cycle_request(): self._on_request,
            t.alloc(self.site): self._on_alloc,
            t.ack(self.site): self._on_ack,
            t.cycle_closed(): self._on_closed,
            t.coordinator_status(): self._on_coordinator_status,
            t.grid_shed(): self._on_shed,
            t.grid_signal(): self._on_signal,
        }
        for topic, handler in handlers.items():
            self.bus.subscribe(topic, self._guarded(handler))
        bridge_topic = self.settings.ems.bridge_state_topic
        if bridge_topic:
            self.bus.subscribe(bridge_topic, self._on_bridge_state)
        self.hass.attach(self.bus.subscribe, self._on_mode_set)

    async def run(self, stop: asyncio.Event) -> None:
        self.attach()
        await self.bus.connect()
        for device in self.devices.values():
            try:
                await device.start()
            except Exception:
                self.log.exception("device_start_failed", device=device.device_id)
        self._announce()
        period = self.settings.ems.period_s
        self._period_start = next_boundary(self.clock.now(), period) - timedelta(seconds=period)
        self._ledger = PeriodLedger(self.to_s(self._period_start))
        self.log.info("gateway_started", version=__version__, loads=len(self.relay_of_load),
                      devices=len(self.devices))
        self._ready.set()
        try:
            async with asyncio.TaskGroup() as tg:
                tasks = [
                    tg.create_task(self._worker(), name="commands"),
                    tg.create_task(self._ticker(), name="ticker"),
                    tg.create_task(self._netload_loop(), name="netload"),
                ]
                await stop.wait()
                for task in tasks:
                    task.cancel()
        finally:
            await self._shutdown()

    async def _shutdown(self) -> None:
        for device in self.devices.values():
            with contextlib.suppress(Exception):
                await device.stop()
        status = SiteStatus(state="offline", version=__version__,
                            loads=tuple(self.relay_of_load))
        self.bus.publish(self.topics.site_status(self.site), encode(status), retain=True)
        await asyncio.sleep(0.1)  # let the offline status leave before DISCONNECT
        await self.bus.disconnect()
        self.outbox.close()
        diag = self.diagnostics()
        self.log.info("gateway_stopped", accepted=diag["accepted"], rejected=diag["rejected"],
                      devices=diag["devices"], errors=diag["errors"])

    def _publish_status(self) -> None:
        """``site/{s}/status`` online, with the outbox's figures (docs/reliability.md)."""
        stats = self.outbox.stats()
        self._status_dropped = stats.dropped + self.unwritten_dropped
        status = SiteStatus(state="online", version=__version__, loads=tuple(self.relay_of_load),
                            outbox_pending=stats.rows + len(self._unwritten),
                            reports_dropped=self._status_dropped)
        self.bus.publish(self.topics.site_status(self.site), encode(status), retain=True)

    def _announce(self) -> None:
        self._publish_status()
        self.hass.announce()
        self._published_states.clear()
        self._publish_states()
        self._send_netload()
        for pending in self.outbox.pending():
            self.bus.publish(self.topics.report(self.site), pending.payload)

    def _on_reconnect(self) -> None:
        if self._ready.is_set():
            self._announce()

    # Community messages ------------------------------------------------------------------
    def _guarded(self, handler: Any) -> Any:
        def run(topic: str, payload: bytes) -> None:
            route = self.topics.parse(topic)
            if route is None:
                self._reject(topic, payload, Rejection("unknown_topic", "not a contract topic"))
                return
            if not payload and route.kind == TopicKind.GRID_SIGNAL:
                # The coordinator removed its retained signal: nothing is known.
                self.accepted[route.kind.value] += 1
                self.signal = None
                self._apply_grid_level()
                return
            msg = decode(route, payload, self.limits)
            if isinstance(msg, Rejection):
                self._reject(topic, payload, msg)
                return
            refused = handler(msg)
            if isinstance(refused, Rejection):
                self._reject(topic, payload, refused)
                return
            self.accepted[route.kind.value] += 1
        return run

    def _reject(self, topic: str, payload: bytes, why: Rejection) -> None:
        """Count a refused message under its reason; log at most one line per topic
        kind and reason an interval, with the number suppressed since."""
        source = why.kind.value if why.kind is not None else None
        line = self.rejections.note(why.reason, source, self.now_s())
        if line is None:
            return
        self.log.warning("payload_rejected", topic=topic[:200], reason=why.reason,
                         detail=why.detail, suppressed=line.suppressed,
                         excerpt=payload[:120].decode("utf-8", "replace"))

    def _log_suppressed(self, now_s: float) -> None:
        for due in self.rejections.due(now_s):
            self.log.warning("payload_rejected_suppressed", kind=due.source, reason=due.reason,
                             count=due.count)

    @property
    def rejected(self) -> int:
        """Community messages refused (all reasons); ``diagnostics()`` has the detail."""
        return self.rejections.total

    def diagnostics(self) -> dict[str, Any]:
        """What this gateway accepted and refused, by reason: community topics, Home
        Assistant commands, every device's payloads; and the handler failures."""
        return {
            "site": self.site,
            "accepted": dict(self.accepted),
            "rejected": dict(self.rejections.counts),
            "log_lines_suppressed": self.rejections.suppressed_total,
            "hass_rejected": self.hass.rejected,
            "devices": {
                dev_id: {
                    "rejected": dict(book.counts),
                    "handler_failures": getattr(dev, "handler_failures", 0),
                }
                for dev_id, dev in self.devices.items()
                # MQTT drivers count what they refuse; a USB board parses no payloads.
                if isinstance(book := getattr(dev, "rejections", None), RejectionLog)
            },
            "handler_errors": getattr(self.bus, "handler_errors", 0),
            "errors": self.errors,
            "outbox": self.outbox_diagnostics(),
        }

    def outbox_diagnostics(self) -> dict[str, int]:
        """The report outbox (docs/reliability.md): also in ``site/{s}/status``."""
        stats = self.outbox.stats()
        return {"pending": stats.rows, "bytes": stats.bytes, "dropped": stats.dropped,
                "dropped_through": stats.dropped_through,
                "write_failures": stats.write_failures,
                "unwritten": len(self._unwritten), "unwritten_dropped": self.unwritten_dropped}

    def _on_mode_set(self, load: str, mode: Mode) -> None:
        """The resident's command from Home Assistant; the EMS applies its precedence."""
        self._enqueue(self.ems.set_mode(load, mode, self.now_s()))
        self.log.info("load_mode_set", load=load, mode=mode, source="home_assistant")
        self._publish_states()
        self._log_events()

    def _on_bridge_state(self, topic: str, payload: bytes) -> None:
        """Mosquitto's bridge notification: "1" connected to the community, "0" not.

        Cut off, nothing from the coordinator can arrive: the gateway is
        autonomous at once instead of after a silence (docs/configuration.md).
        """
        value = payload.strip()
        if value not in (b"0", b"1"):
            self._reject(topic, payload, Rejection("bridge_state_unreadable", "expected 0 or 1"))
            return
        up = value == b"1"
        if up != self.bridge_up:
            if up:
                self.log.info("bridge_up")
            else:
                self.log.warning("bridge_down")
        self.bridge_up = up

    def _heard_coordinator(self) -> None:
        self.coordinator_heard_s = self.now_s()

    def _on_request(self, msg: Payload) -> None:
        assert isinstance(msg, CycleRequest)
        self._heard_coordinator()
        now = self.clock.now()
        offer = self.ems.flex(self.now_s(), now, self.to_s(msg.period_start))
        reply = Flex(
            cycle=msg.cycle,
            flex_kw=offer.flex_kw,
            loads=tuple(
                LoadFlex(id=i.id, kind=i.kind, min_kw=i.min_kw, max_kw=i.max_kw,  # type: ignore[arg-type]
                         priority=i.priority, until=i.until, energy_kwh=i.energy_kwh)
                for i in offer.loads
            ),
        )
        self.bus.publish(self.topics.flex(self.site), encode(reply))
        self.log.info("flex_replied", cycle=msg.cycle.isoformat(), flex_kw=offer.flex_kw,
                      loads=[i.id for i in offer.loads])

    def _on_alloc(self, msg: Payload) -> None:
        assert isinstance(msg, Alloc)
        self._heard_coordinator()
        result = self.ems.accept_allocation(
            msg.cycle, msg.alloc_kw, msg.epoch, self.to_s(msg.valid_until),
            self.now_s(), self.clock.now(),
        )
        if result.accepted:
            self.last_alloc = msg
            self.alloc_kw = msg.alloc_kw
            self.alloc_until_s = self.to_s(msg.valid_until)
            self._enqueue(result.commands)
        self.log.info("allocation_received", cycle=msg.cycle.isoformat(), alloc_kw=msg.alloc_kw,
                      rank=msg.rank, epoch=msg.epoch, accepted=result.accepted, why=result.why,
                      loads=list(result.loads), used_kw=result.used_kw)
        self._log_events()

    def _on_ack(self, msg: Payload) -> None:
        assert isinstance(msg, Ack)
        removed = self.outbox.ack(msg.seq)
        self.log.info("reports_acked", seq=msg.seq, removed=removed, pending=len(self.outbox))

    def _on_closed(self, msg: Payload) -> None:
        assert isinstance(msg, CycleClosed)
        self._heard_coordinator()
        self._enqueue(self.ems.cycle_closed(self.now_s()))

    def _on_coordinator_status(self, msg: Payload) -> None:
        assert isinstance(msg, CoordinatorStatus)
        self.coordinator_online = msg.state == "online"
        self.ems.highest_epoch = max(self.ems.highest_epoch, msg.epoch)
        self._heard_coordinator()
        self.log.info("coordinator_status", state=msg.state, epoch=msg.epoch)

    def _on_shed(self, msg: Payload) -> Rejection | None:
        assert isinstance(msg, GridShed)
        self.shed = msg
        self._apply_grid_level()
        return None

    def _on_signal(self, msg: Payload) -> Rejection | None:
        assert isinstance(msg, GridSignal)
        try:
            # A day whose local hours cannot be computed (year 1 or 9999 overflows
            # datetime) would make every later tick raise: refuse it, keep the last.
            GridOutlook.build(msg.day, msg.hours, None, self.grid_tz)
        except (OverflowError, ValueError) as exc:
            return Rejection("out_of_range", f"day {msg.day.isoformat()}: {exc}",
                             TopicKind.GRID_SIGNAL)
        self.signal = msg
        self._apply_grid_level()
        return None

    def grid_outlook(self) -> GridOutlook:
        """Levels from the retained signal and shed window: kept, so shedding
        happens on time even while the coordinator is silent."""
        sig, shed = self.signal, self.shed
        window = Window(shed.from_, shed.until, shed.level) if shed is not None else None
        return GridOutlook.build(
            sig.day if sig else None, sig.hours if sig else None, window, self.grid_tz
        )

    def _apply_grid_level(self) -> None:
        outlook = self.grid_outlook()
        now = self.clock.now()
        level = outlook.level_at(now)
        if level != self.ems.grid_level:
            self.log.info("grid_level", level=level)
        windows = [
            (self.to_s(w.start), self.to_s(w.end), w.level)
            for w in outlook.windows_from(self._stress_threshold, now)
        ]
        self._enqueue(self.ems.set_grid_outlook(level, windows, self.now_s()))

    # Devices -----------------------------------------------------------------------------
    def _on_device_change(self, relay_id: str) -> None:
        load = self.load_of_relay.get(relay_id)
        if load is None:
            return
        st = self.relay_of_load[load].state
        self._enqueue(self.ems.observe(
            load, self.now_s(), available=st.available, on=st.on,
            power_kw=st.power_kw, energy_kwh=st.energy_kwh,
        ))
        self._publish_states()
        self._log_events()

    def _enqueue(self, commands: Any) -> None:
        for command in commands:
            self.commands.put_nowait(command)

    async def _worker(self) -> None:
        """Take commands in order; each device has its own lane, so a slow RPC on
        one plug does not hold up the relays of another (commands to one device
        keep their order: asyncio.Lock hands over first come, first served)."""
        async with asyncio.TaskGroup() as lanes:
            while True:
                command = await self.commands.get()
                device = self.device_of_load[command.load]
                lanes.create_task(self._execute(command, self._lanes[device]))

    async def _execute(self, command: Command, lane: asyncio.Lock) -> None:
        async with lane:
            relay = self.relay_of_load[command.load]
            try:
                # The power first, so a modulating load starts at its set point
                # (config validation put such a load on a device that takes one).
                set_power = getattr(relay, "set_power", None)
                if command.setpoint_kw is not None and set_power is not None:
                    await set_power(command.setpoint_kw)
                if command.switch:
                    await relay.set(command.on)
                self.log.info("load_switched" if command.switch else "load_setpoint_set",
                              load=command.load, on=command.on, reason=command.reason,
                              setpoint_kw=command.setpoint_kw)
            except DeviceError as exc:
                self.ems.command_failed(command.load, command.on, self.now_s(), str(exc),
                                        switch=command.switch)
                self.log.warning("load_switch_failed", load=command.load, on=command.on,
                                 reason=command.reason, setpoint_kw=command.setpoint_kw,
                                 error=str(exc))
            except Exception:
                self.ems.command_failed(command.load, command.on, self.now_s(), "unexpected",
                                        switch=command.switch)
                self.log.exception("load_switch_crashed", load=command.load)
            self._publish_states()
            self._log_events()

    def _publish_states(self) -> None:
        views = self.ems.views(self.now_s())
        self.hass.publish_modes(views)
        for view in views:
            # The device's own counter (None without a meter, or beyond the model's cap).
            energy = self.relay_of_load[view.id].state.energy_kwh
            if energy is not None and not 0 <= energy <= MAX_ENERGY_KWH:
                energy = None
            key = (view.on, view.reason, round(view.power_kw, 2), view.available,
                   None if energy is None else round(energy, 2))
            if self._published_states.get(view.id) == key:
                continue
            self._published_states[view.id] = key
            state = LoadState(on=view.on, power_kw=min(round(view.power_kw, 3),
                                                       self.limits.max_site_kw),
                              reason=view.reason,
                              energy_kwh=None if energy is None else round(energy, 3))
            self.bus.publish(self.topics.load_state(self.site, view.id), encode(state),
                             retain=True)

    def _log_events(self) -> None:
        for name, fields in self.ems.drain_events():
            self.log.info(name, **fields)

    # Periodic work ---------------------------------------------------------------------
    def net_export_kw(self) -> float | None:
        return self.net_meter.net_export_kw if self.net_meter is not None else None

    def _send_netload(self) -> None:
        kw = self.net_export_kw()
        if kw is None:
            return
        # The coordinator hands the whole surplus out again every period, so the
        # net load it sums must not already be reduced by the loads it allocated:
        # report the export as if they were off (docs/protocol.md, "netload").
        kw += sum(v.power_kw for v in self.ems.views(self.now_s()) if v.reason == "allocation")
        cap = self.limits.max_site_kw
        msg = NetLoad(ts=self.clock.now(), net_export_kw=max(-cap, min(cap, kw)))
        self.bus.publish(self.topics.netload(self.site), encode(msg))

    async def _netload_loop(self) -> None:
        interval = self.clock_real(self.settings.ems.netload_interval_s)
        while True:
            await asyncio.sleep(interval)
            self._send_netload()

    def clock_real(self, clock_s: float) -> float:
        return self.clock.real_seconds(clock_s)

    async def _ticker(self) -> None:
        period = self.settings.ems.period_s
        step = min(1.0, self.clock_real(max(period / 60.0, 0.05)))
        while True:
            await asyncio.sleep(step)
            try:
                self.tick()
            except Exception:
                # One bad tick must not end the task group (the whole gateway): log, count, go on.
                self.errors += 1
                self.log.exception("tick_failed")

    def tick(self) -> None:
        """The periodic work: grid level, the EMS's timers, degraded mode, context, reports."""
        period = self.settings.ems.period_s
        silence = self.settings.ems.coordinator_silence_s or 1.5 * period
        now_s = self.now_s()
        now = self.clock.now()
        self._apply_grid_level()
        net = self.net_export_kw()
        self._enqueue(self.ems.tick(now_s, net))
        if self.alloc_until_s is not None and now_s >= self.alloc_until_s:
            self.alloc_kw = 0.0
            self.alloc_until_s = None
        used = sum(v.power_kw for v in self.ems.views(now_s) if v.reason == "allocation")
        if self._ledger is not None:
            # Within the protocol's physical cap, as the net load it sends: the report's
            # energies must stay representable whatever a meter said.
            cap = self.limits.max_site_kw
            self._ledger.sample(now_s, None if net is None else max(-cap, min(cap, net)),
                                min(used, cap), self.alloc_kw)
        heard = self.coordinator_heard_s
        degraded = (
            not self.coordinator_online
            or self.bridge_up is False
            or heard is None
            or now_s - heard > silence
        )
        if degraded != self.degraded:
            self.degraded = degraded
            if degraded:
                self.log.warning("degraded", coordinator_online=self.coordinator_online)
            else:
                self.log.info("coordinated", coordinator_online=self.coordinator_online)
        self.hass.publish_context(build_context(
            net_export_kw=net,
            alloc=self.last_alloc if self.alloc_until_s is not None else None,
            alloc_kw=self.alloc_kw, grid_level=self.ems.grid_level,
            coordinator_online=self.coordinator_online, degraded=self.degraded,
            max_site_kw=self.limits.max_site_kw,
        ), now_s)
        if self._period_start is not None and now >= self._period_start + timedelta(
            seconds=period
        ):
            self._close_period(now_s)
        self._publish_states()
        self._log_events()
        self._log_suppressed(now_s)

    def _close_period(self, now_s: float) -> None:
        assert self._ledger is not None and self._period_start is not None
        ledger = self._ledger
        period_start = self._period_start
        self._ledger = ledger.close(now_s)
        self._period_start = period_start + timedelta(seconds=self.settings.ems.period_s)

        def build(seq: int, dropped_through: int) -> bytes:
            return encode(Report(
                seq=seq, period=period_start,
                import_kwh=round(ledger.import_kwh, 6), export_kwh=round(ledger.export_kwh, 6),
                allocated_kwh=round(ledger.allocated_kwh, 6), used_kwh=round(ledger.used_kwh, 6),
                dropped_through=dropped_through or None,
            ))

        self._unwritten.append((period_start, build))
        if len(self._unwritten) > UNWRITTEN_MAX:
            self._unwritten.popleft()
            self.unwritten_dropped += 1
        written = self._write_reports()
        for pending in written:
            self.bus.publish(self.topics.report(self.site), pending.payload)
        self.log.info("report_sent" if written else "report_not_stored",
                      seq=written[-1].seq if written else None,
                      period=period_start.isoformat(),
                      import_kwh=round(ledger.import_kwh, 3),
                      export_kwh=round(ledger.export_kwh, 3),
                      allocated_kwh=round(ledger.allocated_kwh, 3),
                      used_kwh=round(ledger.used_kwh, 3), waiting=len(self._unwritten))
        # Resend what the coordinator has not acknowledged yet.
        new = {p.seq for p in written}
        for old in self.outbox.pending():
            if old.seq not in new:
                self.bus.publish(self.topics.report(self.site), old.payload)
        if self.outbox.dropped + self.unwritten_dropped != self._status_dropped:
            self._publish_status()

    def _write_reports(self) -> list[PendingReport]:
        """Store the reports waiting, oldest first; stop at the first that cannot be
        (the outbox said why, once); they are tried again at the next period."""
        written: list[PendingReport] = []
        while self._unwritten:
            period, build = self._unwritten[0]
            try:
                written.append(self.outbox.add(build))
            except OutboxError:
                break
            except Exception:
                # A report that cannot even be encoded would block every later one.
                self.unwritten_dropped += 1
                self.log.exception("report_unbuildable", period=period.isoformat())
            self._unwritten.popleft()
        return written

"""One simulated home of ``ems demo``: the real gateway, simulated devices, a little physics.

A ``DemoHome`` holds, for one ``HomeSpec``:

- the home's **real gateway** (``gateway.app.Gateway``) with the settings a
  ``gateway.toml`` would give it (``ems.demo.plan.gateway_sections``), on the
  coordinator's clock and in the same event loop;
- **simulated Shelly devices**, each its own MQTT client speaking the
  devices' exact topics (``gateway.sim.shelly``): the grid meter (Pro 3EM or
  Gen1 EM) and a switch (Plus Plug S, Gen1 Plug S or Plus 1PM) in front of
  each appliance that is not on a relay board. They run ``speed`` times faster
  than wall time, so their energy counters follow the simulated day;
- a **fake Phidget 1017** (``gateway.sim.phidget.FakeBoard``) for the homes
  with a relay board: it stands in for the USB board only, the gateway's own
  Phidget driver drives it;
- the **physics** (``ems.demo.physics.HomeModel``): every simulated minute
  ``step()`` reads what the appliances draw (a plug's measured power; for a
  board channel the appliance's power when its contact is closed), moves the
  tanks and batteries on, sets a plug's ``SimLoad.satisfied`` when its
  thermostat or charger stops, and sets the meter to household consumption
  minus PV plus that drawn power. So what the gateway switches on shows on
  the home's meter, as on a real grid connection.

The gateway alone decides what to switch: this module only reads its state
for the view (``sync`` records the allocations it applied).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from ems.demo.physics import HomeModel
from ems.demo.plan import BOARD_DEVICE, ApplianceSpec, HomeSpec, gateway_sections
from gateway.app import Gateway
from gateway.config import load_gateway_settings
from gateway.sim.mqtt_device import SimMqttDevice
from gateway.sim.phidget import FakeBoard
from gateway.sim.shelly import (
    SimLoad,
    SimShellyEm,
    SimShellyGen1Plug,
    SimShellyGen2Switch,
    SimShellyPro3Em,
)
from protocol import format_utc
from runtime.clock import Clock

log = structlog.get_logger("ems.demo.home")

STEP_CLOCK_S = 60.0
"""The physics moves on every simulated minute..."""
MIN_STEP_REAL_S = 0.05
"""...but not more often than this (real seconds). The meter drivers take a
reading older than 300 clock seconds as unknown: past speed 6000 a step
spans more than that and net loads go missing."""
MIN_TICK_REAL_S = 1.0
"""The meter's own periodic reports, at most this often (real seconds).

A real meter repeats every 30-60 s; at ×180 that would be 3 to 6 times a real
second, and a Gen1 EM sends 17 messages each time: with 20 homes the broker
and the shared event loop would spend their time on repeats. The meter also
reports every change at once, and ``step`` changes it every simulated minute,
so the gateway's reading stays fresh; 1 real second keeps the repeats within
the drivers' 300 clock seconds up to ×300."""
SWITCH_TICK_REAL_S = 2.0
"""The switches' periodic state reports, at most this often (real seconds).

A real plug repeats its state every 30-60 s. Compressed to a few real
milliseconds, a repeat sent just before a command arrives after it and
contradicts it; the gateway's EMS takes a contradiction more than 5 clock
seconds (14 ms at speed 360) after its command for the resident's hand on the
device and holds the load in manual mode. Switches report every change at
once anyway; the repeats only refresh energy counters.
"""
KEEP_APPLIED = 64
_GEN2_MODEL = {"plus-plug-s": "SNPL-00112EU", "plus-1pm": "SNSW-001P16EU"}

ShellySwitch = SimShellyGen2Switch | SimShellyGen1Plug


@dataclass(frozen=True, slots=True)
class AppliedAlloc:
    """An allocation the gateway applied: what it got and the loads it chose."""

    alloc_kw: float
    rank: int
    used_kw: float
    loads: tuple[str, ...]


class DemoHome:
    """One home: its gateway, its simulated devices and its physics."""

    def __init__(
        self,
        spec: HomeSpec,
        *,
        clock: Clock,
        host: str,
        port: int,
        community: str,
        period_s: float,
        speed: float,
        state_dir: Path,
    ) -> None:
        self.spec = spec
        self.site = spec.site
        self.clock = clock
        self.model = HomeModel(spec)
        self.log = log.bind(site=spec.site)
        self.settings = load_gateway_settings(
            None, env={},  # the demo's own broker, whatever EMS_* variables say
            **gateway_sections(spec, host=host, port=port, community=community,
                               period_s=period_s, speed=speed, state_dir=state_dir),
        )
        # The meter's periodic reports at its real interval in simulated time (``step``
        # sets its power every simulated minute too); the switches' see SWITCH_TICK_REAL_S.
        self.meter: SimShellyPro3Em | SimShellyEm
        if spec.meter == "em":
            self.meter = SimShellyEm(host, port, device_id=spec.gen1_id(0),
                                     update_period_s=max(MIN_TICK_REAL_S, 30.0 / speed),
                                     speed=speed, seed=spec.seed)
        else:
            self.meter = SimShellyPro3Em(host, port, device_id=spec.mac(0),
                                         period_s=max(MIN_TICK_REAL_S, 60.0 / speed),
                                         speed=speed, seed=spec.seed)
        switch_tick_s = max(SWITCH_TICK_REAL_S, 30.0 / speed)
        self.switches: dict[str, ShellySwitch] = {}
        for slot, a in enumerate(spec.appliances, start=1):
            if a.on_board:
                continue
            load = SimLoad(nominal_w=a.nominal_kw * 1000.0,
                           satisfied=self.model.appliances[a.id].satisfied)
            if a.switch == "plug-s":
                self.switches[a.id] = SimShellyGen1Plug(
                    host, port, model="SHPLG-S", device_id=spec.gen1_id(slot), load=load,
                    update_period_s=switch_tick_s, speed=speed, seed=spec.seed + slot)
            else:
                self.switches[a.id] = SimShellyGen2Switch(
                    host, port, model=_GEN2_MODEL[a.switch], device_id=spec.mac(slot),
                    loads=[load], period_s=switch_tick_s, speed=speed, seed=spec.seed + slot)
        self.board = FakeBoard(spec.board_serial, plugged=True) if spec.has_board else None
        options: dict[str, dict[str, Any]] = {}
        if self.board is not None:
            options[BOARD_DEVICE] = {"channel_factory": self.board.digital_output}
        self.gateway = Gateway(self.settings, clock, device_options=options)
        self.applied: dict[str, AppliedAlloc] = {}
        self.steps = 0

    @property
    def devices(self) -> list[SimMqttDevice]:
        """The simulated MQTT devices (meter first)."""
        return [self.meter, *self.switches.values()]

    # Lifecycle ---------------------------------------------------------------------
    async def start_devices(self) -> None:
        """Connect every simulated device (each blocks until its broker says yes)."""
        self.step()  # the meter has a reading to announce
        await asyncio.gather(*(asyncio.to_thread(d.start) for d in self.devices))

    async def stop_devices(self) -> None:
        """Disconnect every simulated device cleanly (no will)."""
        await asyncio.gather(*(asyncio.to_thread(d.stop) for d in self.devices))

    async def run_physics(self) -> None:
        """Step the home every simulated minute until cancelled."""
        interval_s = max(MIN_STEP_REAL_S, self.clock.real_seconds(STEP_CLOCK_S))
        while True:
            await asyncio.sleep(interval_s)
            try:
                self.step()
            except Exception:
                # The demo's own bug must not end the home: log it, try again next minute.
                self.log.exception("physics_step_failed")

    # The physics --------------------------------------------------------------------
    def step(self) -> None:
        """Move the home to now; set thermostats and the meter's power."""
        drawn = self.drawn_kw()
        for appliance in self.model.advance(self.clock.now(), drawn):
            switch = self.switches.get(appliance.spec.id)
            if switch is not None:
                switch.set_satisfied(appliance.satisfied)
            self.log.info("thermostat", load=appliance.spec.id, satisfied=appliance.satisfied,
                          need_kwh=round(appliance.need_kwh, 2))
        import_w = round(1000.0 * self.model.grid_import_kw(self.drawn_kw()), 1)
        self.meter.set_power_w(import_w)
        self.steps += 1
        self.sync()

    def drawn_kw(self) -> dict[str, float]:
        """What each appliance draws now, as its switch measures it (or its nominal power)."""
        return {a.id: self.measured_kw(a) for a in self.spec.appliances}

    def switched_on(self, appliance: ApplianceSpec) -> bool:
        """Whether the appliance's switch powers it now (the device's truth, not the gateway's)."""
        switch = self.switches.get(appliance.id)
        if isinstance(switch, SimShellyGen2Switch):
            return switch.output(0)
        if isinstance(switch, SimShellyGen1Plug):
            return switch.relay_on
        assert self.board is not None
        energised = self.board.energised(appliance.channel)
        return energised if appliance.energized_means == "on" else not energised

    def measured_kw(self, appliance: ApplianceSpec) -> float:
        """A Shelly switch's measured power; for a board channel, what the appliance draws."""
        switch = self.switches.get(appliance.id)
        if isinstance(switch, SimShellyGen2Switch):
            return switch.power_w(0) / 1000.0
        if isinstance(switch, SimShellyGen1Plug):
            return switch.power_w / 1000.0
        return self.model.appliances[appliance.id].draw_kw(self.switched_on(appliance))

    def load_reason(self, appliance: ApplianceSpec) -> str:
        """Why the gateway has the load in its state: its EMS's reason, ``preheat`` told apart.

        The EMS says ``local`` both for local self-consumption and for running
        ahead of a stress window (anticipation); a storing load with
        ``preheat_hours`` that runs for ``local`` while a window reaching its
        shed level starts within those hours is preheating.
        """
        ems = self.gateway.ems
        rt = ems.rt.get(appliance.id)
        if rt is None:
            return "?"
        if rt.reason != "local" or appliance.preheat_hours <= 0 or appliance.shed_level is None:
            return rt.reason
        now_s = self.gateway.now_s()
        ahead_s = appliance.preheat_hours * 3600.0
        if any(level >= appliance.shed_level and now_s < start <= now_s + ahead_s
               for start, _end, level in ems.grid_windows):
            return "preheat"
        return rt.reason

    # What the gateway did ------------------------------------------------------------
    def sync(self) -> None:
        """Record the allocation the gateway applied last (for the view and the runner)."""
        alloc, result = self.gateway.last_alloc, self.gateway.ems.allocation
        if alloc is None or result is None:
            return
        cycle_id = format_utc(alloc.cycle)
        if cycle_id in self.applied:
            return
        self.applied[cycle_id] = AppliedAlloc(alloc.alloc_kw, alloc.rank, result.used_kw,
                                              result.loads)
        while len(self.applied) > KEEP_APPLIED:
            del self.applied[next(iter(self.applied))]

    def settled(self, cycle_id: str) -> bool:
        """The gateway applied this cycle's allocation and its switches followed."""
        self.sync()
        applied = self.applied.get(cycle_id)
        if applied is None:
            return False
        specs = {a.id: a for a in self.spec.appliances}
        return all(self.switched_on(specs[load]) for load in applied.loads)

    @property
    def net_export_kw(self) -> float | None:
        """The net load the gateway reads from its meter (> 0 export)."""
        return self.gateway.net_export_kw()

    @property
    def rejected(self) -> int:
        """Community payloads the gateway refused as invalid."""
        return self.gateway.rejected

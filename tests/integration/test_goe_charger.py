"""A go-eCharger over MQTT (its API v2): the driver, and a gateway running it on an allocation.

A simulated charger (``gateway.sim.goe_charger``, the API's topics and
payloads) on the session's real Mosquitto. The driver sets the current
(``amp``) and starts or stops charging (``frc``), waiting for each write's
``result``; a refused write and a charger gone offline are errors, never a
hang. End to end, the coordinator (``fifo_min_power``) gives a home 3.0 kW:
its gateway runs the EV at the largest whole current within it (13 A on one
phase, 2.99 kW), and the charger draws that.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from pathlib import Path
from typing import Any

import pytest
from simgw import running, until

from central.app import Coordinator
from central.config import load_central_settings
from gateway.app import Gateway
from gateway.config import DeviceSettings, load_gateway_settings
from gateway.devices.goe_charger import GoeCharger
from gateway.devices.registry import build_device
from gateway.errors import DeviceError, DeviceUnavailable
from gateway.sim.goe_charger import SimGoeCharger
from gateway.sim.port import PahoPort
from gateway.sim.shelly import SimShellyPro3Em
from runtime.clock import SystemClock

pytestmark = pytest.mark.integration


class Clock:
    def monotonic(self) -> float:
        return asyncio.get_running_loop().time()


def test_driver_sets_current_and_force_state(mosquitto: Any) -> None:
    serial = uuid.uuid4().hex[:6]
    sim = SimGoeCharger(mosquitto.host, mosquitto.port, serial=serial, phases=1,
                        force_state=1, period_s=0.2)
    sim.start()

    async def body() -> None:
        port = PahoPort(mosquitto.host, mosquitto.port)
        await port.start()
        settings = DeviceSettings(id="wallbox", profile="go-e/home-plus-11kw",
                                  prefix=f"go-eCharger/{serial}", phases=1,
                                  command_timeout_s=0.5)
        dev = build_device(settings, settings.model, port, Clock(), lambda _id: None)
        assert isinstance(dev, GoeCharger)
        await dev.start()
        channel = dev.relays()[0]
        try:
            await until(lambda: channel.state.available and channel.state.on is False, 5)
            await channel.set_power(2.0)  # type: ignore[attr-defined]
            assert sim.current_a == 8 and dev.current_a == 8  # 8 A x 230 V = 1.84 kW <= 2.0
            await channel.set(True)
            assert sim.force_state == 2 and channel.state.on is True
            await until(lambda: (channel.state.power_kw or 0) > 1.8, 5)
            assert channel.state.power_kw == pytest.approx(1.84, rel=0.02)
            await channel.set_power(50.0)  # clamped to the unit's 16 A
            assert sim.current_a == 16
            assert [k for k, _ in sim.writes] == ["amp", "frc", "amp"]

            # Malformed reports are counted and dropped; the state stays as it was.
            before = dev.bad_payloads
            for key, payload in (("nrg", b"[1, 2"), ("frc", b"7"), ("mcc", b"5"),
                                 ("nrg", b"[0, 0]"), ("eto", b"-3")):
                port.publish(f"go-eCharger/{serial}/{key}", payload)
            await until(lambda: dev.bad_payloads == before + 5, 5)
            assert channel.state.on is True and channel.state.available

            sim.read_only = True  # MQTT writes disabled in the app: refused, said why
            with pytest.raises(DeviceError, match="disabled"):
                await channel.set(False)
            assert sim.force_state == 2

            await asyncio.to_thread(sim.go_offline)  # the will: mcc = false
            await until(lambda: not channel.state.available, 5)
            with pytest.raises(DeviceUnavailable):
                await channel.set(False)
        finally:
            await dev.stop()
            await port.stop()

    try:
        asyncio.run(asyncio.wait_for(body(), 30))
    finally:
        sim.stop()


def test_a_gateway_runs_a_wallbox_at_the_set_point_of_its_allocation(
    mosquitto: Any, topic_root: str, tmp_path: Path
) -> None:
    tag = uuid.uuid4().hex[:6]

    async def scenario() -> None:
        host, port = mosquitto.host, mosquitto.port
        charger = SimGoeCharger(host, port, serial=tag, phases=1, force_state=1, period_s=0.3)
        meter = SimShellyPro3Em(host, port, topic_prefix=f"em-{tag}", power_w=-3000.0,
                                period_s=0.5)
        for dev in (charger, meter):
            await asyncio.to_thread(dev.start)
        settings = load_gateway_settings(
            None, env={},
            mqtt={"host": host, "port": port, "protocol": "3.1.1"},
            community={"id": "c1", "topic_root": topic_root},
            site={"id": "home0"},
            meter={"device": "grid"},
            devices=[
                {"id": "grid", "profile": "shelly/pro-3em", "prefix": f"em-{tag}"},
                {"id": "wallbox", "profile": "go-e/home-plus-11kw",
                 "prefix": f"go-eCharger/{tag}", "phases": 1},
            ],
            loads=[{"id": "ev", "kind": "ev_charger", "device": "wallbox", "nominal_kw": 3.68,
                    "modulation": "steps", "min_kw": 1.38, "max_kw": 3.68, "step_kw": 0.23,
                    "min_on_s": 0, "min_off_s": 0}],
            ems={"period_s": 3600, "netload_interval_s": 0.5, "response_check_s": 2.0,
                 "local_self_consumption": False},
            homeassistant={"enabled": False},
            state={"dir": str(tmp_path / "home0")},
        )
        gateway = Gateway(settings, SystemClock())
        central = load_central_settings(
            None, env={},
            mqtt={"host": host, "port": port, "client_id": f"central-{topic_root}"},
            community={"id": "c1", "topic_root": topic_root},
            cycle={"period_s": 3600, "reply_timeout_s": 5.0, "strategy": "fifo_min_power"},
            recorder={"url": f"sqlite:///{tmp_path / 'central.sqlite'}"},
        )
        coordinator = Coordinator(central, SystemClock())
        closed: list[Any] = []
        coordinator.add_listener(
            lambda ev, data: closed.append(data[1]) if ev == "cycle_closed" else None
        )
        async with contextlib.AsyncExitStack() as stack:
            await stack.enter_async_context(running(coordinator))
            await stack.enter_async_context(running(gateway))
            await until(lambda: coordinator.sites.surplus(
                coordinator.clock.now(), 3600).surplus_kw == pytest.approx(3.0, abs=0.1), 30)
            await until(lambda: gateway.ems.rt["ev"].available, 30)
            await coordinator.start_cycle_now()
            await until(lambda: len(closed) == 1, 30)
            assert closed[0].allocated_kw == pytest.approx(3.0, abs=0.1)
            # The largest whole current within 3.0 kW on one phase: 13 A = 2.99 kW.
            await until(lambda: charger.force_state == 2 and charger.current_a == 13, 15)
            assert [k for k, _ in charger.writes][:2] == ["amp", "frc"]  # power, then start
            rt = gateway.ems.rt["ev"]
            assert rt.on and rt.reason == "allocation" and rt.setpoint_kw == pytest.approx(2.99)
            await until(lambda: (rt.measured_kw or 0) > 2.9, 15)
            assert gateway.ems.allocation is not None
            assert gateway.ems.allocation.setpoints_kw == (pytest.approx(2.99),)
        for dev in (charger, meter):
            await asyncio.to_thread(dev.stop)

    asyncio.run(asyncio.wait_for(scenario(), 120))

"""End to end: the coordinator and three real gateways over a real Mosquitto.

Two homes have a simulated Shelly Plus Plug S behind a water heater and a
simulated Shelly Pro 3EM on their grid connection; the third has a Phidget
1017 (the fake stands in for the USB board only) switching a heat pump's
contactor, and a Pro 3EM. The homes export, the coordinator allocates, the
gateways switch their relays, the plugs measure the power, reports arrive.
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
from central.recorder import Recorder
from gateway.app import Gateway
from gateway.config import load_gateway_settings
from gateway.sim.phidget import FakeBoard
from gateway.sim.shelly import SimLoad, SimShellyGen2Switch, SimShellyPro3Em
from runtime.clock import SystemClock

pytestmark = pytest.mark.integration




def gateway_settings(
    broker: Any, root: str, site: str, tmp_path: Path,
    devices: list[dict[str, Any]], loads: list[dict[str, Any]],
) -> Any:
    return load_gateway_settings(
        None,
        env={},
        mqtt={"host": broker.host, "port": broker.port, "protocol": "3.1.1"},
        community={"id": "c1", "topic_root": root},
        site={"id": site},
        meter={"device": "grid"},
        devices=devices,
        loads=loads,
        ems={"period_s": 2.0, "netload_interval_s": 0.5, "response_check_s": 1.0},
        homeassistant={"enabled": True, "discovery_prefix": f"{root}-ha"},
        state={"dir": str(tmp_path / site)},
    )


def test_coordinator_and_three_gateways(mosquitto: Any, topic_root: str, tmp_path: Path) -> None:
    tag = uuid.uuid4().hex[:6]

    async def scenario() -> None:
        host, port = mosquitto.host, mosquitto.port
        plugs = [
            SimShellyGen2Switch(host, port, topic_prefix=f"plug{i}-{tag}",
                                loads=[SimLoad(nominal_w=2200.0)], period_s=0.5)
            for i in range(2)
        ]
        meters = [SimShellyPro3Em(host, port, topic_prefix=f"em{i}-{tag}",
                                  power_w=-6000.0, period_s=0.5) for i in range(3)]
        for dev in plugs + meters:
            await asyncio.to_thread(dev.start)
        board = FakeBoard(5150, plugged=True)

        gateways = []
        for i in range(3):
            devices: list[dict[str, Any]] = [
                {"id": "grid", "profile": "shelly/pro-3em", "prefix": f"em{i}-{tag}"}
            ]
            if i < 2:
                devices.append({"id": "plug", "profile": "shelly/plus-plug-s",
                                "prefix": f"plug{i}-{tag}"})
                loads = [{"id": "wh", "kind": "water_heater", "device": "plug",
                          "nominal_kw": 2.2, "min_on_s": 0, "min_off_s": 0}]
            else:
                devices.append({"id": "board", "profile": "phidget/1017", "serial": 5150,
                                "open_timeout_ms": 500})
                loads = [{"id": "hp", "kind": "heat_pump", "device": "board", "channel": 3,
                          "nominal_kw": 1.5, "min_kw": 1.0, "max_kw": 2.0, "contactor": True,
                          "min_on_s": 0, "min_off_s": 0}]
            settings = gateway_settings(mosquitto, topic_root, f"home{i}", tmp_path,
                                        devices, loads)
            options = {"board": {"channel_factory": board.digital_output}} if i == 2 else None
            gateways.append(Gateway(settings, SystemClock(), device_options=options))

        central_settings = load_central_settings(
            None, env={},
            mqtt={"host": host, "port": port, "client_id": f"central-{topic_root}"},
            community={"id": "c1", "topic_root": topic_root},
            cycle={"period_s": 3600, "reply_timeout_s": 5.0},
            recorder={"url": f"sqlite:///{tmp_path / 'central.sqlite'}"},
        )
        coordinator = Coordinator(central_settings, SystemClock())
        closed: list[Any] = []
        coordinator.add_listener(
            lambda ev, data: closed.append(data[1]) if ev == "cycle_closed" else None
        )
        async with contextlib.AsyncExitStack() as stack:
            await stack.enter_async_context(running(coordinator))
            for gw in gateways:
                await stack.enter_async_context(running(gw))
            # The homes export 6 kW each (the meters count import as positive).
            await until(lambda: len(coordinator.sites.online_sites()) == 3)
            await until(lambda: coordinator.sites.surplus(
                coordinator.clock.now(), 3600).surplus_kw == pytest.approx(18.0, abs=0.5))
            await until(lambda: all(
                rt.available for gw in gateways for rt in gw.ems.rt.values()))
            # Local self-consumption would already run the loads on each home's
            # own export; switch it off to see the coordinator's allocation.
            for gw in gateways:
                gw.ems.local_self_consumption = False
            await asyncio.sleep(0.5)
            await until(lambda: not any(rt.on for gw in gateways for rt in gw.ems.rt.values()))

            await coordinator.start_cycle_now()
            await until(lambda: len(closed) == 1)
            result = closed[0]
            assert result.reason == "all_replied"
            assert result.replies == 3 and result.sites == 3
            # Every home offered its load and got it: 2.2 + 2.2 + 1.5 kW of 18 kW.
            assert result.allocated_kw == pytest.approx(5.9)

            # The relays are on, for the allocation, and the plugs measure it.
            await until(lambda: all(p.output() for p in plugs))
            await until(lambda: all(p.power_w() > 2000 for p in plugs))
            assert board.energised(3) is True  # wired "on": energised = heat pump on
            await until(lambda: all(
                rt.on and rt.reason == "allocation" for gw in gateways
                for rt in gw.ems.rt.values()))
            await until(lambda: all(
                (gw.ems.rt["wh"].measured_kw or 0) > 2.0 for gw in gateways[:2]))

            # Reports: each gateway closes a 2-second period and the coordinator acks.
            reader = Recorder(central_settings.recorder.url)  # its own connection
            await until(lambda: all(len(gw.outbox) == 0 for gw in gateways)
                        and reader.report_count() >= 3)
            reader.close()
            events = [gw.ems.drain_events() for gw in gateways]
        for dev in plugs + meters:
            await asyncio.to_thread(dev.stop)

        assert all(not any(n == "load_unresponsive" for n, _ in ev) for ev in events)
        rec = Recorder(central_settings.recorder.url)
        [row] = rec.last_cycles(1)
        decisions = {d.site: d.alloc_kw for d in rec.decisions(row.cycle)}
        assert decisions == pytest.approx({"home0": 2.2, "home1": 2.2, "home2": 1.5})
        for site in ("home0", "home1", "home2"):
            assert rec.report_count(site) >= 1
        rec.close()

    asyncio.run(scenario())

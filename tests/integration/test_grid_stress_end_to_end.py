"""End to end: RTE says level 3 from 18:00 to 20:00, the homes shed on time.

RTE (the loopback stand-in) publishes four days; today has level 3 at 18:00
and 19:00 Paris time. The coordinator reads it, publishes ``grid/signal`` and
``grid/shed``; two real gateways cut the right relays (a Shelly Plus Plug S
behind a water heater, and a Phidget 1017 channel wired energised = cut for
a radiator) at 18:00 and restore them at 20:00. All services share one
accelerated clock: 10 simulated minutes per real second.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from simgw import running

from central.app import Coordinator
from central.config import load_central_settings
from ems.rte_standin import RteStandIn, make_signals
from gateway.app import Gateway
from gateway.config import load_gateway_settings
from gateway.sim.phidget import FakeBoard
from gateway.sim.shelly import SimLoad, SimShellyGen2Switch
from runtime.clock import AcceleratedClock

pytestmark = pytest.mark.integration
PARIS = ZoneInfo("Europe/Paris")
SPEED = 600.0
SECRET = "e2e-secret"




def test_rte_level_3_at_18_sheds_then_restores(
    mosquitto: Any, topic_root: str, tmp_path: Path
) -> None:
    tag = uuid.uuid4().hex[:6]
    today = datetime.now(PARIS).date()
    origin = datetime(today.year, today.month, today.day, 17, 40, tzinfo=PARIS)
    clock = AcceleratedClock(SPEED, origin)
    hours = [3 if h in (18, 19) else 1 for h in range(24)]

    async def scenario(rte: RteStandIn) -> None:
        host, port = mosquitto.host, mosquitto.port
        plug = SimShellyGen2Switch(host, port, topic_prefix=f"plug-{tag}",
                                   loads=[SimLoad(nominal_w=2000.0)], period_s=0.5, speed=SPEED)
        await asyncio.to_thread(plug.start)
        board = FakeBoard(4242, plugged=True)
        common = {
            "mqtt": {"host": host, "port": port, "protocol": "3.1.1"},
            "community": {"id": "c1", "topic_root": topic_root},
            "ems": {"period_s": 900, "local_self_consumption": False},
            "homeassistant": {"enabled": False},
        }
        home_a = load_gateway_settings(
            None, env={}, **common, site={"id": "home-a"}, state={"dir": str(tmp_path / "a")},
            devices=[{"id": "plug", "profile": "shelly/plus-plug-s", "prefix": f"plug-{tag}"}],
            loads=[{"id": "wh", "kind": "water_heater", "device": "plug", "nominal_kw": 2.0,
                    "shed_level": 2, "min_on_s": 0, "min_off_s": 0}],
        )
        home_b = load_gateway_settings(
            None, env={}, **common, site={"id": "home-b"}, state={"dir": str(tmp_path / "b")},
            devices=[{"id": "board", "profile": "phidget/1017", "serial": 4242}],
            loads=[
                {"id": "radiator", "device": "board", "channel": 2, "nominal_kw": 1.5,
                 "contactor": True, "energized_means": "off", "shed_level": 3,
                 "min_on_s": 0, "min_off_s": 0},
                {"id": "fridge", "device": "board", "channel": 5, "nominal_kw": 0.2,
                 "energized_means": "off", "shed_level": None, "min_on_s": 0, "min_off_s": 0},
            ],
        )
        central = load_central_settings(
            None, env={"EMS_ECOWATT__CLIENT_SECRET": SECRET},
            mqtt={"host": host, "port": port, "client_id": f"central-{topic_root}"},
            community={"id": "c1", "topic_root": topic_root},
            cycle={"period_s": 900, "reply_timeout_s": 60},
            recorder={"url": f"sqlite:///{tmp_path / 'records.sqlite'}"},
            ecowatt={"enabled": True, "client_id": rte.client_id, "token_url": rte.token_url,
                     "signals_url": rte.sandbox_url, "min_interval_s": 1,
                     "poll_interval_s": 600, "timeout_s": 2,
                     "cache_path": str(tmp_path / "ecowatt.json")},
        )
        coordinator = Coordinator(central, clock)
        gw_a = Gateway(home_a, clock)
        gw_b = Gateway(home_b, clock,
                       device_options={"board": {"channel_factory": board.digital_output}})

        async def at(hour: int, minute: int) -> None:
            await clock.sleep_until(
                datetime(today.year, today.month, today.day, hour, minute, tzinfo=PARIS))

        async with contextlib.AsyncExitStack() as stack:
            await stack.enter_async_context(running(coordinator))
            await stack.enter_async_context(running(gw_a))
            await stack.enter_async_context(running(gw_b))
            await at(17, 50)
            wh = gw_a.ems.rt["wh"]
            radiator, fridge = gw_b.ems.rt["radiator"], gw_b.ems.rt["fridge"]
            assert gw_a.signal is not None and gw_a.signal.day == today
            assert list(gw_a.signal.hours) == hours
            assert radiator.on and fridge.on and not board.energised(2)
            await at(18, 10)
            assert gw_a.ems.grid_level == 3 and gw_b.ems.grid_level == 3
            assert wh.reason == "shed" and not plug.output()
            assert radiator.reason == "shed" and not radiator.on
            assert board.energised(2)  # energised = cut, as wired
            assert fridge.on and not board.energised(5)  # never shed
            await at(20, 10)
            assert gw_b.ems.grid_level == 1
            assert radiator.on and not board.energised(2)  # restored
            assert wh.reason == "idle"
        await asyncio.to_thread(plug.stop)
        assert rte.count("sandbox", 200) >= 1  # the coordinator did read RTE

    with RteStandIn(client_id="e2e", client_secret=SECRET) as rte:
        rte.set_signals(make_signals(today, {0: hours}))
        asyncio.run(scenario(rte))

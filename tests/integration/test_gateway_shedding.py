"""A gateway sheds and anticipates from the retained grid signal alone.

No coordinator runs: the retained ``grid/signal`` (as the coordinator would
have left it) says level 3 from 18:00 to 20:00 Paris time. On an accelerated
clock (10 simulated minutes per second) the gateway preheats the water heater
in the hour before, cuts it and the relay-wired loads at 18:00, and restores
them at 20:00.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from gateway.app import Gateway
from gateway.config import load_gateway_settings
from gateway.sim.phidget import FakeBoard
from gateway.sim.shelly import SimLoad, SimShellyGen2Switch
from protocol import GridSignal, Topics, encode
from runtime.clock import AcceleratedClock

pytestmark = pytest.mark.integration
PARIS = ZoneInfo("Europe/Paris")
SPEED = 600.0


def test_shedding_and_anticipation_from_the_retained_signal(
    mosquitto: Any, topic_root: str, tmp_path: Path
) -> None:
    tag = uuid.uuid4().hex[:6]
    today = datetime.now(PARIS).date()
    origin = datetime(today.year, today.month, today.day, 16, 50, tzinfo=PARIS)
    clock = AcceleratedClock(SPEED, origin)
    topics = Topics("c1", topic_root)

    async def scenario() -> None:
        host, port = mosquitto.host, mosquitto.port
        plug = SimShellyGen2Switch(host, port, topic_prefix=f"plug-{tag}",
                                   loads=[SimLoad(nominal_w=2000.0)], period_s=0.5, speed=SPEED)
        await asyncio.to_thread(plug.start)
        board = FakeBoard(777, plugged=True)
        settings = load_gateway_settings(
            None, env={},
            mqtt={"host": host, "port": port, "protocol": "3.1.1"},
            community={"id": "c1", "topic_root": topic_root},
            site={"id": "home"},
            devices=[
                {"id": "plug", "profile": "shelly/plus-plug-s", "prefix": f"plug-{tag}"},
                {"id": "board", "profile": "phidget/1017", "serial": 777},
            ],
            loads=[
                {"id": "wh", "kind": "water_heater", "device": "plug", "nominal_kw": 2.0,
                 "shed_level": 2, "preheat_hours": 1.0, "min_on_s": 0, "min_off_s": 0,
                 "max_starts_per_hour": 60},
                {"id": "radiator", "device": "board", "channel": 0, "nominal_kw": 1.5,
                 "contactor": True, "energized_means": "off", "shed_level": 3,
                 "min_on_s": 0, "min_off_s": 0, "max_starts_per_hour": 60},
            ],
            ems={"period_s": 900, "local_self_consumption": False},
            homeassistant={"enabled": False},
            state={"dir": str(tmp_path)},
        )
        # What the coordinator left retained before going silent.
        hours = [3 if h in (18, 19) else 1 for h in range(24)]
        signal = GridSignal(source="ecowatt", day=today, hour=16, level=1, day_level=3,
                            hours=tuple(hours), updated=origin.astimezone(UTC))
        gateway = Gateway(settings, clock,
                          device_options={"board": {"channel_factory": board.digital_output}})
        gateway.bus.publish(topics.grid_signal(), encode(signal), retain=True)
        stop = asyncio.Event()
        task = asyncio.create_task(gateway.run(stop))
        await asyncio.wait_for(gateway.wait_ready(), 15)

        async def at(hour: int, minute: int) -> None:
            target = datetime(today.year, today.month, today.day, hour, minute, tzinfo=PARIS)
            await clock.sleep_until(target)

        wh, radiator = gateway.ems.rt["wh"], gateway.ems.rt["radiator"]
        try:
            await at(16, 55)
            assert not plug.output() and wh.reason == "idle"
            assert radiator.on and not board.energised(0)  # left alone: runs, relay idle
            await at(17, 20)
            assert plug.output() and wh.on and wh.reason == "local"  # preheating
            await at(18, 10)
            assert gateway.ems.grid_level == 3
            assert not plug.output() and wh.reason == "shed"
            assert not radiator.on and radiator.reason == "shed"
            assert board.energised(0)  # energised = cut, as wired
            await at(20, 10)
            assert gateway.ems.grid_level == 1
            assert radiator.on and not board.energised(0)  # restored
            assert not plug.output() and wh.reason == "idle"  # no window ahead any more
        finally:
            stop.set()
            await asyncio.wait_for(task, 20)
            await asyncio.to_thread(plug.stop)

    asyncio.run(scenario())

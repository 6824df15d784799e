"""The gateway goes autonomous as soon as its edge broker's bridge says it is cut off."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from simgw import running, until

from gateway.app import Gateway
from gateway.config import load_gateway_settings
from protocol import CoordinatorStatus, CycleClosed, Topics, encode
from runtime.clock import SystemClock

pytestmark = pytest.mark.integration


def test_bridge_down_means_degraded_at_once(
    mosquitto: Any, topic_root: str, tmp_path: Path
) -> None:
    bridge_topic = f"{topic_root}/bridge/central/state"
    topics = Topics("c1", topic_root)
    settings = load_gateway_settings(
        None, env={},
        mqtt={"host": mosquitto.host, "port": mosquitto.port, "protocol": "3.1.1"},
        community={"id": "c1", "topic_root": topic_root},
        site={"id": "home"},
        ems={"period_s": 900, "bridge_state_topic": bridge_topic},
        homeassistant={"enabled": False},
        state={"dir": str(tmp_path)},
    )
    admin = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
    admin.connect(mosquitto.host, mosquitto.port)
    admin.loop_start()

    def say(topic: str, payload: bytes, retain: bool = False) -> None:
        admin.publish(topic, payload, qos=1, retain=retain).wait_for_publish(5)

    async def scenario() -> None:
        gateway = Gateway(settings, SystemClock())
        async with running(gateway):
            say(topics.coordinator_status(),
                encode(CoordinatorStatus(state="online", version="t", epoch=1)), retain=True)
            say(topics.cycle_closed(), encode(CycleClosed(
                cycle=datetime(2026, 6, 21, 12, tzinfo=UTC), reason="no_surplus",
                surplus_kw=-3.0, allocated_kw=0.0, replies=0, sites=1)))
            await until(lambda: gateway.degraded is False)
            say(bridge_topic, b"0", retain=True)
            await until(lambda: gateway.degraded is True)
            assert gateway.bridge_up is False
            say(bridge_topic, b"garbage")
            await asyncio.sleep(0.2)
            assert gateway.bridge_up is False and gateway.rejected >= 1
            say(bridge_topic, b"1", retain=True)
            await until(lambda: gateway.bridge_up is True and gateway.degraded is False)

    try:
        asyncio.run(scenario())
    finally:
        say(bridge_topic, b"", retain=True)
        say(topics.coordinator_status(), b"", retain=True)
        admin.loop_stop()
        admin.disconnect()

"""MqttBus keeps gmqtt within a bounded in-flight window and loses nothing."""

from __future__ import annotations

import asyncio
from typing import Any

import gmqtt
import pytest
from gmqtt.mqtt.constants import MQTTv311

from central.bus import MqttBus
from protocol.settings import MqttSettings

pytestmark = pytest.mark.integration


def test_a_burst_flows_through_the_window_without_drain(mosquitto: Any, topic_root: str) -> None:
    async def scenario() -> None:
        received: list[str] = []
        sub = gmqtt.Client(None)
        sub.on_message = lambda c, t, p, q, props: received.append(t) or 0
        await sub.connect(mosquitto.host, mosquitto.port, version=MQTTv311)
        sub.subscribe(gmqtt.Subscription(f"{topic_root}/#", qos=1))
        await asyncio.sleep(0.2)

        bus = MqttBus(MqttSettings(host=mosquitto.host, port=mosquitto.port, max_inflight=50),
                      f"bus-{topic_root}")
        await bus.connect()
        peak = 0
        for i in range(5000):
            bus.publish(f"{topic_root}/m/{i}", b"x")
            peak = max(peak, len(bus._storage))
        assert peak <= 50
        assert bus.pending > 0  # most are waiting in the backlog, in order
        # Without calling drain(): PUBACKs alone must move the backlog along.
        deadline = asyncio.get_running_loop().time() + 20
        while len(received) < 5000 and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
            peak = max(peak, len(bus._storage))
        assert len(received) == 5000
        assert received == [f"{topic_root}/m/{i}" for i in range(5000)]
        assert peak <= 50
        assert bus.pending == 0 and bus.failed == 0
        await bus.disconnect()
        await sub.disconnect()

    asyncio.run(scenario())

"""``ems demo`` end to end: real broker (amqtt and mosquitto), real coordinator, simulated homes.

Each run is observed by an independent MQTT client subscribed to the whole
community, so the assertions are about what went over the wire, not only
what the demo says about itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
import structlog

from central.recorder import Recorder
from ems.broker import EmbeddedBroker, find_mosquitto
from ems.demo.homes import (
    LoadRuntime,
    LoadSpec,
    flex_offer,
    make_homes,
    plan_allocation,
    sun_factor,
)
from ems.demo.runner import DemoOptions, DemoState, default_start, run_demo
from protocol import Topics

REPO = Path(__file__).resolve().parents[2]
COMMUNITY = "demo"
SPEED = 360.0  # a 900 s period every 2.5 s: 3 cycles in about 10 s
RUN_TIMEOUT_S = 40.0
NOON = datetime(2026, 6, 21, 12, 0, tzinfo=UTC)


class Observer:
    """A paho client (MQTT 3.1.1, amqtt speaks nothing else) recording every message."""

    def __init__(self, broker: EmbeddedBroker) -> None:
        self.messages: list[tuple[str, dict[str, Any], bool]] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="test-observer",
                                  protocol=mqtt.MQTTv311)
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *args: self._subscribed.set()
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        self.client.subscribe(Topics(COMMUNITY).everything(), qos=1)
        assert self._subscribed.wait(5), "observer not subscribed"

    def _on_message(self, client: Any, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.messages.append((msg.topic, json.loads(msg.payload), bool(msg.retain)))

    def on(self, topic: str) -> list[dict[str, Any]]:
        with self._lock:
            return [payload for t, payload, _ in self.messages if t == topic]

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def _broker_kinds() -> list[Any]:
    mosquitto = pytest.param(
        "mosquitto",
        marks=pytest.mark.skipif(find_mosquitto() is None, reason="mosquitto is not installed"),
    )
    return ["amqtt", mosquitto]


@pytest.fixture(params=_broker_kinds())
def broker(request: pytest.FixtureRequest) -> Iterator[EmbeddedBroker]:
    with EmbeddedBroker(request.param) as b:
        yield b


def _run(options: DemoOptions, broker: EmbeddedBroker) -> DemoState:
    """Run the demo in this process; a hang fails with every task's stack."""

    async def main() -> DemoState:
        task = asyncio.create_task(run_demo(options, broker=broker), name="demo")
        done, _ = await asyncio.wait({task}, timeout=RUN_TIMEOUT_S)
        if not done:
            stacks = "\n".join(
                f"{t.get_name()}: {t.get_stack(limit=5)}"
                for t in asyncio.all_tasks() if t is not asyncio.current_task()
            )
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
            pytest.fail(f"the demo did not finish in {RUN_TIMEOUT_S} s; tasks:\n{stacks}")
        return task.result()

    return asyncio.run(main())


@pytest.mark.integration
def test_demo_runs_cycles_end_to_end(broker: EmbeddedBroker, tmp_path: Path) -> None:
    db_url = f"sqlite:///{tmp_path / 'demo.sqlite'}"
    options = DemoOptions(db_url=db_url, homes=8, seed=3, speed=SPEED, cycles=3)
    topics = Topics(COMMUNITY)
    observer = Observer(broker)
    logs: list[dict[str, Any]] = []
    try:
        with structlog.testing.capture_logs() as captured:
            logs = captured
            state = _run(options, broker)
    finally:
        observer.close()
        # Shown by pytest only when the test fails.
        print("\n".join(str(event) for event in logs[-80:]))

    # Cycles: three closed, stopped because of --cycles, the first at 11:15 with a surplus.
    assert state.stopping == "cycles"
    assert state.cycles_closed == 3
    records = list(state.history)
    assert [r.closed is not None for r in records] == [True] * 3
    assert records[0].surplus_kw > 0, "the default start (11:00 UTC) must give a surplus"
    requested = {p["cycle"] for p in observer.on(topics.cycle_request())}
    closed = {p["cycle"]: p for p in observer.on(topics.cycle_closed())}
    allocs_by_site: dict[str, list[dict[str, Any]]] = {}
    for home in state.homes:
        allocs_by_site[home.site] = observer.on(topics.alloc(home.site))

    total_allocations = 0
    for record in records:
        assert record.closed is not None
        assert closed[record.cycle_id]["reason"] == record.closed.reason
        if record.surplus_kw > 0:
            # A surplus means a request to all sites and a FIFO close, never no_surplus.
            assert record.requested and record.cycle_id in requested
            assert record.closed.reason in ("exhausted", "all_replied", "deadline")
            assert record.decisions, f"no allocation in {record.cycle_id}"
        else:
            assert record.closed.reason == "no_surplus"
        # Never more than the surplus, never more than a site's offer, ranks in order.
        assert record.allocated_kw <= max(record.surplus_kw, 0.0) + 1e-6
        assert [d.rank for d in record.decisions] == list(range(1, len(record.decisions) + 1))
        for d in record.decisions:
            assert 0.0 <= d.alloc_kw <= d.flex_kw + 1e-9
            # Received by the home, over the wire and as applied.
            home = state.home(d.site)
            assert home is not None
            wire = [a for a in allocs_by_site[d.site] if a["cycle"] == record.cycle_id]
            assert len(wire) == 1 and wire[0]["alloc_kw"] == pytest.approx(d.alloc_kw)
            applied = home.applied[record.cycle_id]
            assert (applied.alloc_kw, applied.rank) == (pytest.approx(d.alloc_kw), d.rank)
            assert applied.used_kw <= d.alloc_kw + 1e-6
            total_allocations += 1
    assert total_allocations == state.allocations > 0

    # Load states: every load a home switched on was published, retained, as on.
    switched_on = 0
    for home in state.homes:
        for applied in home.applied.values():
            for load, kw in applied.loads_on:
                states = [(p["on"], p["power_kw"], p["reason"])
                          for p in observer.on(topics.load_state(home.site, load))]
                assert (True, kw, "allocation") in states
                switched_on += 1
    assert switched_on > 0

    # Clean exit: every home and the coordinator said offline last; nothing refused,
    # nothing logged as an error; the records hold the three closed cycles.
    for home in state.homes:
        assert observer.on(topics.site_status(home.site))[-1]["state"] == "offline"
        assert home.counters.callback_errors == 0
        assert not home.counters.rejected and not home.counters.ignored
    assert observer.on(topics.coordinator_status())[-1]["state"] == "offline"
    assert state.rejected_by_coordinator == 0
    errors = [e for e in logs if e["log_level"] in ("error", "critical")]
    assert errors == []
    recorder = Recorder(db_url)
    try:
        rows = recorder.last_cycles(10)
    finally:
        recorder.close()
    assert [r.cycle for r in rows] == [r.cycle_id for r in records]
    assert all(r.close_reason is not None for r in rows)
    assert broker.is_running()  # the demo left the broker it was given alone


@pytest.mark.integration
def test_demo_command_plain_output(tmp_path: Path) -> None:
    """``python -m ems demo --cycles 2 --broker amqtt`` as an operator runs it, output not a TTY."""
    env = {**os.environ, "TMPDIR": str(tmp_path), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "ems", "demo", "--cycles", "2", "--broker", "amqtt"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=90, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stdout.splitlines()
    cycles = [line for line in lines if line.startswith("cycle ")]
    assert len(cycles) == 2, proc.stdout
    assert "close exhausted" in cycles[0] or "close all_replied" in cycles[0]
    assert any(line.startswith("demo: stopped (cycles) after 2 cycles") for line in lines)
    # The records stay for `ems cycles --db`.
    (db,) = tmp_path.glob("ems-demo-*/demo.sqlite")
    shown = subprocess.run(
        [sys.executable, "-m", "ems", "cycles", "--db", str(db), "--json"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=30, check=True,
    )
    assert len(json.loads(shown.stdout)) == 2


# The homes' pure decisions (no broker) --------------------------------------------

def test_sun_peaks_at_noon_and_sets() -> None:
    assert sun_factor(NOON) == pytest.approx(1.0)
    assert sun_factor(NOON.replace(hour=2)) == 0.0
    assert sun_factor(NOON.replace(hour=22)) == 0.0
    assert 0 < sun_factor(NOON.replace(hour=8)) < sun_factor(NOON.replace(hour=11))


def test_satisfied_loads_offer_nothing() -> None:
    heater = LoadSpec("water-heater", "water_heater", 2.4, 2.4, 0.0, 10.0)
    ev = LoadSpec("ev", "ev_charger", 3.7, 3.7, 10.0, 10.0, until_h=17.0)
    flex_kw, loads = flex_offer([LoadRuntime(heater, 0.0), LoadRuntime(ev, 10.0)], NOON)
    assert flex_kw == pytest.approx(3.7) and [lf.id for lf in loads] == ["ev"]
    gone = NOON.replace(hour=18)  # the EV has left
    assert flex_offer([LoadRuntime(heater, 0.0), LoadRuntime(ev, 10.0)], gone) == (0.0, ())


def test_allocation_runs_whole_loads_only() -> None:
    heater = LoadRuntime(LoadSpec("water-heater", "water_heater", 2.4, 2.4, 5.0, 10.0), 5.0)
    pump = LoadRuntime(LoadSpec("heat-pump", "heat_pump", 0.9, 1.5, 3.0, 8.0), 3.0)
    ev = LoadRuntime(LoadSpec("ev", "ev_charger", 3.7, 3.7, 9.0, 9.0, until_h=17.0), 9.0)
    loads = [heater, pump, ev]
    assert plan_allocation(loads, 2.0, NOON) == {"heat-pump": 1.5}
    assert plan_allocation(loads, 0.5, NOON) == {}
    plan = plan_allocation(loads, 7.0, NOON)
    assert plan == {"ev": 3.7, "water-heater": 2.4, "heat-pump": pytest.approx(0.9)}
    assert sum(plan.values()) <= 7.0 + 1e-9


def test_homes_are_seeded_and_some_have_pv() -> None:
    assert make_homes(8, 5) == make_homes(8, 5)
    homes = make_homes(8, 5)
    assert any(h.pv_kwp > 0 for h in homes) and len({h.site for h in homes}) == 8
    assert default_start(NOON).hour == 11

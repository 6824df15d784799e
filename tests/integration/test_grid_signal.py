"""The coordinator's grid signal through a real Mosquitto, with RTE played on loopback.

Admin overrides over MQTT and from ``ems signal``, the retained ``grid/signal``
and ``grid/shed`` a gateway reads, clearing, and the cached RTE answer served
by a coordinator restarted while RTE is down.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from simgw import Observer

from central.app import Coordinator
from central.config import CentralSettings, load_central_settings
from central.core.grid import day_hours, hour_start, locate
from central.recorder import Recorder
from ems.cli import main
from ems.rte_standin import RteStandIn, make_signals
from protocol import Topics, encode
from protocol.models import AdminSignalSet
from runtime.clock import SystemClock

pytestmark = pytest.mark.integration

PARIS = ZoneInfo("Europe/Paris")
SECRET = "s3cr3t-grid-0a9b8c"


@pytest.fixture
def rte() -> Iterator[RteStandIn]:
    with RteStandIn(client_id="app-grid", client_secret=SECRET) as standin:
        today = datetime.now(UTC).astimezone(PARIS).date()
        standin.set_signals(make_signals(today, {1: [1] * 8 + [2, 3, 2] + [1] * 13}))
        yield standin


def write_config(tmp_path: Path, broker: Any, root: str, rte: RteStandIn | None) -> Path:
    text = f"""
[mqtt]
host = "{broker.host}"
port = {broker.port}
client_id = "central-{root}"
[community]
id = "c1"
topic_root = "{root}"
[cycle]
period_s = 3600
reply_timeout_s = 5
[recorder]
url = "sqlite:///{tmp_path / 'records.sqlite'}"
"""
    if rte is not None:
        text += f"""
[ecowatt]
enabled = true
client_id = "{rte.client_id}"
token_url = "{rte.token_url}"
signals_url = "{rte.sandbox_url}"
min_interval_s = 1
poll_interval_s = 2
timeout_s = 2
cache_path = "{tmp_path / 'ecowatt.json'}"
"""
    path = tmp_path / "central.toml"
    path.write_text(text)
    return path


def settings_of(path: Path) -> CentralSettings:
    return load_central_settings(path, env={"EMS_ECOWATT__CLIENT_SECRET": SECRET})


@contextlib.asynccontextmanager
async def running(settings: CentralSettings) -> AsyncIterator[Coordinator]:
    coordinator = Coordinator(settings, SystemClock())
    stop = asyncio.Event()
    task = asyncio.create_task(coordinator.run(stop))
    await asyncio.wait_for(coordinator.wait_ready(), 10)
    await asyncio.wait_for(coordinator.grid.ready.wait(), 10)
    try:
        yield coordinator
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)


@contextlib.asynccontextmanager
async def observing(topics: Topics, broker: Any) -> AsyncIterator[Observer]:
    observer = Observer(topics, broker.host, broker.port)
    await observer.start()
    try:
        yield observer
    finally:
        await observer.stop()


async def until(predicate: Callable[[], bool], timeout_s: float = 15.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


def latest(observer: Observer, topic: str) -> dict[str, Any] | None:
    seen = observer.on(topic)
    return seen[-1] if seen else None


def holds(observer: Observer, topic: str, **expected: Any) -> Callable[[], bool]:
    def check() -> bool:
        msg = latest(observer, topic)
        return msg is not None and all(msg.get(k) == v for k, v in expected.items())

    return check


def json_in(out: str) -> Any:
    """The indented JSON document in ``out`` (structlog's test output shares stdout)."""
    lines = out.splitlines()
    start = lines.index("{")
    end = lines.index("}", start)
    return json.loads("\n".join(lines[start : end + 1]))


def parse_utc(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


async def clear_of_the_hour_end() -> None:
    """Tests override the current hour: never start one in its last seconds."""
    now = datetime.now(UTC)
    day, hour = locate(now, PARIS)
    left = (hour_start(day, hour + 1, PARIS) - now).total_seconds()
    if left < 20:
        await asyncio.sleep(left + 0.5)


def test_admin_override_publishes_manual_signal_and_shed_then_clears(
    mosquitto: Any, topic_root: str, tmp_path: Path, rte: RteStandIn
) -> None:
    async def scenario() -> None:
        settings = settings_of(write_config(tmp_path, mosquitto, topic_root, rte))
        topics = Topics("c1", topic_root)
        signal_t, shed_t = topics.grid_signal(), topics.grid_shed()
        await clear_of_the_hour_end()
        async with observing(topics, mosquitto) as obs, running(settings) as coordinator:
            now = datetime.now(UTC)
            day, hour = locate(now, PARIS)
            await until(holds(obs, signal_t, source="ecowatt", day=day.isoformat()))
            signal = latest(obs, signal_t)
            assert signal is not None
            assert signal["hour"] == hour and signal["level"] == 1 and signal["day_level"] == 1
            assert signal["hours"] == [1] * day_hours(day, PARIS)
            # Tomorrow 08:00-11:00 (Paris) is tense: that window is published ahead.
            shed = latest(obs, shed_t)
            assert shed is not None and shed["level"] == 3 and shed["reason"] == "ecowatt"
            tomorrow = day + timedelta(days=1)
            assert parse_utc(shed["from"]) == hour_start(tomorrow, 8, PARIS)
            assert parse_utc(shed["until"]) == hour_start(tomorrow, 11, PARIS)

            # The admin makes this hour and the next very tense.
            nxt = locate(now + timedelta(hours=1), PARIS)
            admin = obs.client
            for d, h in ((day, hour), nxt):
                admin.publish(topics.admin_signal_set(),
                              encode(AdminSignalSet(day=d, hour=h, level=3)), qos=1)
            await until(holds(obs, signal_t, source="manual", level=3))
            await until(holds(obs, shed_t, level=3, reason="manual"))
            shed = latest(obs, shed_t)
            assert shed is not None
            assert parse_utc(shed["from"]) == hour_start(day, hour, PARIS) <= now
            assert parse_utc(shed["until"]) == hour_start(*nxt, PARIS) + timedelta(hours=1)
            signal = latest(obs, signal_t)
            assert signal is not None and signal["day_level"] == 3
            records = Recorder(settings.recorder.url)
            assert records.grid_overrides() == {(day, hour): 3, nxt: 3}

            # An hour that has ended is refused, and changes nothing.
            before = len(obs.on(signal_t))
            past = locate(now - timedelta(hours=2), PARIS)
            admin.publish(topics.admin_signal_set(),
                          encode(AdminSignalSet(day=past[0], hour=past[1], level=3)), qos=1)
            await until(lambda: coordinator.grid.refused == 1)
            assert len(obs.on(signal_t)) == before

            # Clearing brings RTE's levels back, and tomorrow's window.
            for d, h in ((day, hour), nxt):
                admin.publish(topics.admin_signal_set(),
                              f'{{"v":1,"day":"{d}","hour":{h},"level":null}}'.encode(), qos=1)
            await until(holds(obs, signal_t, source="ecowatt", level=1))
            await until(holds(obs, shed_t, level=3, reason="ecowatt"))
            assert records.grid_overrides() == {}
            records.close()

    asyncio.run(scenario())


def test_a_restart_while_rte_is_down_serves_the_cached_signal(
    mosquitto: Any, topic_root: str, tmp_path: Path, rte: RteStandIn
) -> None:
    async def scenario() -> None:
        settings = settings_of(write_config(tmp_path, mosquitto, topic_root, rte))
        topics = Topics("c1", topic_root)
        signal_t, shed_t = topics.grid_signal(), topics.grid_shed()
        async with observing(topics, mosquitto) as obs:
            async with running(settings):
                await until(holds(obs, signal_t, source="ecowatt"))
                await until(lambda: latest(obs, shed_t) is not None)
            first_signal, first_shed = latest(obs, signal_t), latest(obs, shed_t)
            assert (tmp_path / "ecowatt.json").exists()
            rte.stop()  # RTE is down: connections refused
            seen = len(obs.on(signal_t))
            async with running(settings) as coordinator:
                await until(lambda: len(obs.on(signal_t)) > seen)
                poller = coordinator.grid.poller
                assert poller is not None
                await until(lambda: poller.state == "unavailable")
            again = latest(obs, signal_t)
        assert again is not None and first_signal is not None
        assert again["hours"] == first_signal["hours"]
        assert again["updated"] == first_signal["updated"]  # the cached answer's time
        assert latest(obs, shed_t) == first_shed

    asyncio.run(scenario())


def test_cli_sets_shows_and_clears_an_override(
    mosquitto: Any, topic_root: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async def scenario() -> None:
        config = write_config(tmp_path, mosquitto, topic_root, None)  # Ecowatt disabled
        settings = settings_of(config)
        topics = Topics("c1", topic_root)
        signal_t, shed_t = topics.grid_signal(), topics.grid_shed()
        await clear_of_the_hour_end()
        async with observing(topics, mosquitto) as obs:
            async with running(settings):
                day, hour = locate(datetime.now(UTC), PARIS)
                status = await asyncio.to_thread(
                    main, ["signal", "set", "-c", str(config), "--hour", str(hour),
                           "--level", "3"])
                assert status == 0
                assert '"level":3' in capsys.readouterr().out
                await until(holds(obs, signal_t, source="manual", level=3))
                await until(holds(obs, shed_t, level=3, reason="manual"))

                assert main(["signal", "show", "-c", str(config), "--json"]) == 0
                shown = json_in(capsys.readouterr().out)
                [today] = [d for d in shown["days"] if d["day"] == day.isoformat()]
                assert today["source"] == "manual" and today["day_level"] == 3
                cell = today["hours"][hour]
                assert cell["level"] == 3 and cell["override"] is True
                assert sum(h["override"] for h in today["hours"]) == 1
                assert shown["now"] == {"day": day.isoformat(), "hour": hour, "level": 3}
                assert main(["signal", "show", "-c", str(config)]) == 0
                assert "3*" in capsys.readouterr().out

                status = await asyncio.to_thread(
                    main, ["signal", "set", "-c", str(config), "--hour", str(hour), "--clear"])
                assert status == 0
                # Nothing is known any more: the retained signal goes, the shed is lifted.
                await until(holds(obs, signal_t, raw=""))
                await until(holds(obs, shed_t, level=0))
                shed = latest(obs, shed_t)
                assert shed is not None and shed["from"] == shed["until"]
            capsys.readouterr()
            status = await asyncio.to_thread(
                main, ["signal", "set", "-c", str(config), "--hour", str(hour), "--level", "2"])
            assert status == 1
            assert "offline" in capsys.readouterr().err

    asyncio.run(scenario())


def test_cli_refuses_an_hour_the_day_does_not_have(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "central.toml"
    config.write_text('[community]\nid = "c1"\n')
    assert main(["signal", "set", "-c", str(config), "--day", "2026-03-29", "--hour", "23",
                 "--level", "3"]) == 2
    assert "23 hours" in capsys.readouterr().err
    assert main(["signal", "set", "-c", str(config), "--day", "someday", "--hour", "1",
                 "--clear"]) == 2
    assert main(["signal", "show", "-c", str(tmp_path / "missing.toml")]) == 78

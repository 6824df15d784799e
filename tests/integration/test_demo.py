"""``ems demo`` end to end: a real broker (mosquitto and amqtt), the real coordinator,
one real gateway per home with simulated Shelly devices and fake Phidget boards.

Each run is observed by an independent MQTT client subscribed to the whole
community, and the simulated devices are asked what they were told to do, so
the assertions are about what went over the wire and reached the devices,
not only what the demo says about itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import itertools
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator, MutableMapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as mqtt
import pytest
import structlog
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from rich.console import Console

from central.recorder import Recorder
from ems.broker import BrokerKind, EmbeddedBroker, find_mosquitto
from ems.commands.demo import OpensPage, display_available
from ems.demo.grid import PARIS, Episode, episode_for, parse_stress, stand_in_signals
from ems.demo.home import DemoHome
from ems.demo.physics import RESTART_KWH, Appliance
from ems.demo.plan import ApplianceSpec, gateway_sections, make_homes
from ems.demo.profiles import sun_factor
from ems.demo.runner import (
    CycleRecord,
    DemoError,
    DemoOptions,
    DemoState,
    default_start,
    run_demo,
)
from ems.demo.view import PlainView, render
from gateway.config import load_gateway_settings
from gateway.sim.shelly import SimShellyGen1Plug, SimShellyGen2Switch
from protocol import Topics

COMMUNITY = "demo"
SPEED = 360.0  # a 900 s period every 2.5 s: 3 cycles in about 8 s
RUN_TIMEOUT_S = 40.0
# The real gateways reply within milliseconds, but at speed 360 the default 60 s
# window is 0.17 real seconds: a loaded test machine can miss it. 300 s (0.8 s)
# costs nothing, every home replies and the cycles close long before.
REPLY_TIMEOUT_S = 300.0
# Seed 5's eight homes: enough PV left after the PV homes' own loads that every
# home that replies is served in full (all_replied), so the Phidget homes' loads
# get power whatever order the replies arrive in.
SEED = 5
START = datetime(2026, 6, 21, 11, 0, tzinfo=UTC)
NOON = datetime(2026, 6, 21, 12, 0, tzinfo=UTC)


class Observer:
    """A paho client (MQTT 3.1.1, amqtt speaks nothing else) recording every message."""

    def __init__(self, broker: EmbeddedBroker) -> None:
        self.messages: list[tuple[str, dict[str, Any], bool]] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="test-observer",
                                  protocol=MQTTProtocolVersion.MQTTv311)
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *args: self._subscribed.set()
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        self.client.subscribe(Topics(COMMUNITY).everything(), qos=1)
        assert self._subscribed.wait(5), "observer not subscribed"

    def _on_message(self, client: Any, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            payload = json.loads(msg.payload)
        except ValueError:
            payload = {"text": msg.payload.decode(errors="replace")}  # a load's mode: "auto"
        with self._lock:
            self.messages.append((msg.topic, payload, bool(msg.retain)))

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


def _run(options: DemoOptions, broker: EmbeddedBroker, view: Any = None) -> DemoState:
    """Run the demo in this process; a hang fails with every task's stack."""

    async def main() -> DemoState:
        task = asyncio.create_task(run_demo(options, broker=broker, view=view), name="demo")
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


def _switched_on_at_device(home: DemoHome, appliance: ApplianceSpec) -> bool:
    """Whether the appliance's switch was ever told to power it (the device's own record)."""
    switch = home.switches.get(appliance.id)
    if isinstance(switch, SimShellyGen2Switch):
        return any(r.get("method") == "Switch.Set" and (r.get("params") or {}).get("on") is True
                   for r in switch.requests)
    if isinstance(switch, SimShellyGen1Plug):
        return (f"{switch.base}/relay/0/command", "on") in switch.commands
    assert home.board is not None
    # Wired "on": energising the coil powers the appliance.
    energise = appliance.energized_means == "on"
    return any(c.method == "setState" and c.channel == appliance.channel and c.args == (energise,)
               for c in home.board.calls)


class PageReader:
    """A view that reads the operator page over 127.0.0.1 while the demo runs.

    After the first closed cycle it asks ``GET /`` and ``GET /api/community``
    from the coordinator's own web server, in the demo's event loop (the
    server runs in it too), and keeps the answers for the test.
    """

    def __init__(self) -> None:
        self.url: str | None = None
        self.task: asyncio.Task[None] | None = None
        self.page: httpx.Response | None = None
        self.community: dict[str, Any] = {}
        self.cycle_seen: str | None = None

    def started(self, state: DemoState) -> None:
        self.url = state.web_url

    def refresh(self, state: DemoState) -> None:
        pass

    def cycle_closed(self, state: DemoState, record: CycleRecord) -> None:
        if self.task is None and self.url is not None:
            self.cycle_seen = record.cycle_id
            self.task = asyncio.get_running_loop().create_task(self._read(self.url))

    async def _read(self, url: str) -> None:
        async with httpx.AsyncClient(base_url=url, timeout=10.0) as client:
            self.page = await client.get("/")
            self.community = (await client.get("/api/community")).json()

    def finished(self, state: DemoState) -> None:
        pass


@pytest.mark.integration
def test_demo_runs_real_gateways_end_to_end(broker: EmbeddedBroker, tmp_path: Path) -> None:
    db_url = f"sqlite:///{tmp_path / 'demo.sqlite'}"
    options = DemoOptions(db_url=db_url, homes=8, seed=SEED, speed=SPEED, cycles=3,
                          reply_timeout_s=REPLY_TIMEOUT_S, start_at=START,
                          state_dir=tmp_path / "gateways")
    topics = Topics(COMMUNITY)
    observer = Observer(broker)
    reader = PageReader()
    logs: list[MutableMapping[str, Any]] = []
    try:
        with structlog.testing.capture_logs() as captured:
            logs = captured
            state = _run(options, broker, reader)
    finally:
        observer.close()
        # Shown by pytest only when the test fails.
        print("\n".join(str(event) for event in logs[-80:]))

    # The operator page, served by the coordinator on loopback, answered during the demo.
    assert state.web_url is not None and state.web_url.startswith("http://127.0.0.1:")
    assert reader.task is not None and reader.task.done() and reader.task.exception() is None
    assert reader.page is not None and reader.page.status_code == 200
    assert "text/html" in reader.page.headers["content-type"]
    community = reader.community
    assert community["community"] == COMMUNITY and community["strategy"] == "fifo"
    assert community["sites_online"] == 8
    assert community["cycle"]["cycle"] >= str(reader.cycle_seen)

    # Cycles: three closed, stopped because of --cycles, the first at 11:15 with a surplus.
    assert state.stopping == "cycles"
    assert state.cycles_closed == 3
    records = list(state.history)
    assert [r.closed is not None for r in records] == [True] * 3
    assert records[0].surplus_kw > 0, "11:00 UTC must give a surplus"
    requested = {p["cycle"] for p in observer.on(topics.cycle_request())}
    closed = {p["cycle"]: p for p in observer.on(topics.cycle_closed())}

    applied_loads: list[tuple[DemoHome, ApplianceSpec]] = []
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
            home = state.home(d.site)
            assert home is not None
            # Over the wire, then applied by the real gateway within what it was given.
            wire = [a for a in observer.on(topics.alloc(d.site)) if a["cycle"] == record.cycle_id]
            assert len(wire) == 1 and wire[0]["alloc_kw"] == pytest.approx(d.alloc_kw)
            applied = home.applied[record.cycle_id]
            assert applied.alloc_kw == pytest.approx(d.alloc_kw) and applied.rank == d.rank
            specs = {a.id: a for a in home.spec.appliances}
            assert sum(specs[load].nominal_kw for load in applied.loads) <= d.alloc_kw + 1e-6
            applied_loads += [(home, specs[load]) for load in applied.loads]
    assert state.allocations == sum(len(r.decisions) for r in records) > 0

    # Applied at the devices: each load the gateways chose was switched on at its
    # Shelly switch or its Phidget relay, and published as on for the allocation.
    assert applied_loads
    for home, appliance in applied_loads:
        assert _switched_on_at_device(home, appliance), (home.site, appliance.id)
        states = observer.on(topics.load_state(home.site, appliance.id))
        assert any(s["on"] and s["reason"] == "allocation" for s in states), (home.site, states)
    assert any(not a.on_board for _, a in applied_loads), "no Shelly switched for an allocation"
    assert any(a.on_board for _, a in applied_loads), "no Phidget relay switched for one"
    # The last cycle's loads are still on at their Shelly switches (the device's
    # state; a stopped board returns its relays to rest, so it is checked above).
    last = records[-1]
    for d in last.decisions:
        home = state.home(d.site)
        assert home is not None
        for load in home.applied[last.cycle_id].loads:
            appliance = next(a for a in home.spec.appliances if a.id == load)
            if not appliance.on_board:
                assert home.switched_on(appliance), (home.site, load)

    # Reports: every gateway closed at least one period and the coordinator recorded it.
    recorder = Recorder(db_url)
    try:
        rows = recorder.last_cycles(10)
        reports = {home.site: recorder.report_count(home.site) for home in state.homes}
    finally:
        recorder.close()
    assert [r.cycle for r in rows] == [r.cycle_id for r in records]
    assert all(r.close_reason is not None for r in rows)
    assert all(n >= 1 for n in reports.values()), reports

    # Clean exit: every gateway and the coordinator said offline last; nothing
    # refused, no device or handler error, nothing logged as an error.
    for home in state.homes:
        assert observer.on(topics.site_status(home.site))[-1]["state"] == "offline", home.site
        assert home.gateway.rejected == 0 and home.gateway.bus.handler_errors == 0
        assert all(device.errors == 0 for device in home.devices)
    assert observer.on(topics.coordinator_status())[-1]["state"] == "offline"
    assert state.rejected_by_coordinator == 0
    errors = [e for e in logs if e["log_level"] in ("error", "critical")]
    assert errors == []
    assert broker.is_running()  # the demo left the broker it was given alone


@pytest.mark.integration
def test_demo_command_plain_output(tmp_path: Path) -> None:
    """``python -m ems demo --cycles 2 --broker amqtt`` as an operator runs it (6 homes at
    twice the default speed to keep it short), output not a TTY, no display (no browser)."""
    env = {**os.environ, "TMPDIR": str(tmp_path), "PYTHONUNBUFFERED": "1"}
    for name in ("DISPLAY", "WAYLAND_DISPLAY"):
        env.pop(name, None)
    proc = subprocess.run(
        [sys.executable, "-m", "ems", "demo", "--cycles", "2", "--broker", "amqtt",
         "--homes", "6", "--speed", "360"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=90, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stdout.splitlines()
    cycles = [line for line in lines if line.startswith("cycle ")]
    assert len(cycles) == 2, proc.stdout
    # The RTE stand-in's episode is announced; its calm noon hour shows once RTE answered.
    assert "grid stress (RTE stand-in): " in lines[0] and "level 3 18:00-20:00 Paris" in lines[0]
    assert lines[0].startswith("demo: 6 homes, broker amqtt")
    # Where the operator page is, on a line of its own.
    assert lines[1].startswith("Operator page: http://127.0.0.1:") and lines[1].endswith("/")
    assert any(line.startswith("grid ") and ": level 1 (green)" in line for line in lines), lines
    # 11:15 UTC has a surplus: a request went out (at speed 360 the 60 s reply
    # window is a sixth of a real second: on a loaded machine it may close on deadline).
    assert "close no_surplus" not in cycles[0]
    assert any(line.startswith("demo: stopped (cycles) after 2 cycles") for line in lines)
    # The records stay for `ems cycles --db`, the gateways' state next to them.
    (run_dir,) = tmp_path.glob("ems-demo-*")
    assert sorted(p.name for p in (run_dir / "gateways").iterdir())[:2] == ["home-01", "home-02"]
    shown = subprocess.run(
        [sys.executable, "-m", "ems", "cycles", "--db", str(run_dir / "demo.sqlite"), "--json"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=30, check=True,
    )
    assert len(json.loads(shown.stdout)) == 2
    # The replay line it prints works, and FIFO replayed over FIFO's records changes nothing.
    (hint,) = [line for line in lines if "ems replay --db" in line]
    replay_args = hint.split("ems replay ", 1)[1].replace("--strategy all", "--strategy fifo")
    replayed = subprocess.run(
        [sys.executable, "-m", "ems", "replay", *replay_args.split(), "--json"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60, check=True,
    )
    result = json.loads(replayed.stdout)
    assert result["recorded"]["metrics"]["cycles"] == 2
    assert result["replays"]["fifo"]["allocations_changed"] == 0
    assert result["recorded"]["allocations_without_loads"] == 0  # the gateways list their loads


STRESS_SPEED = 720.0  # a 900 s period every 1.25 s: 16:40 to 20:15 in about 18 s
STRESS_START = datetime(2026, 6, 21, 16, 40, tzinfo=PARIS)
STRESS_CYCLES = 15  # 16:45 ... 20:15 (Paris): through 17:00 (orange), 18:00 (red), 20:00 (calm)


class RecordingView(PlainView):
    """The plain view, plus the reasons the live view shows per load and its grid header."""

    def __init__(self, stream: io.StringIO) -> None:
        super().__init__(stream)
        self.reasons: set[str] = set()
        self.rendered: list[str] = []

    def refresh(self, state: DemoState) -> None:
        super().refresh(state)
        for home in state.homes:
            self.reasons.update(home.load_reason(a) for a in home.spec.appliances)
        grid = state.grid()
        if grid is not None and grid.level == 3 and not self.rendered:
            console = Console(file=io.StringIO(), width=160, color_system=None)
            console.print(render(state, 160))
            self.rendered.append(console.file.getvalue())  # type: ignore[attr-defined]


def _one_broker_kind() -> BrokerKind:
    return "mosquitto" if find_mosquitto() is not None else "amqtt"


@pytest.mark.integration
def test_demo_grid_stress_episode_sheds_and_restores(tmp_path: Path) -> None:
    """The RTE stand-in's episode reaches the coordinator, then the gateways' relays."""
    options = DemoOptions(
        db_url=f"sqlite:///{tmp_path / 'demo.sqlite'}", homes=8, seed=SEED,
        speed=STRESS_SPEED, cycles=STRESS_CYCLES, reply_timeout_s=REPLY_TIMEOUT_S,
        start_at=STRESS_START, state_dir=tmp_path / "gateways",
        grid_cache=tmp_path / "ecowatt-signals.json",
    )
    topics = Topics(COMMUNITY)
    out = io.StringIO()
    view = RecordingView(out)
    logs: list[MutableMapping[str, Any]] = []
    with EmbeddedBroker(_one_broker_kind()) as broker:
        observer = Observer(broker)
        try:
            with structlog.testing.capture_logs() as captured:
                logs = captured
                state = _run(options, broker, view)
        finally:
            observer.close()
            print(out.getvalue())
            print("\n".join(str(event) for event in logs[-60:]))
    assert state.stopping == "cycles" and state.cycles_closed == STRESS_CYCLES
    assert state.history[-1].period_start >= datetime(2026, 6, 21, 20, 0, tzinfo=PARIS)

    # RTE (the stand-in) was read, and the coordinator published what it said.
    assert state.rte is not None and state.rte.count("sandbox", 200) >= 1
    episode = state.episode
    assert episode == Episode(STRESS_START.date(), 18, 20)
    signals = observer.on(topics.grid_signal())
    assert signals and all(s["hours"] == episode.levels() for s in signals)
    assert {s["level"] for s in signals} >= {1, 2, 3}
    sheds = observer.on(topics.grid_shed())
    red = [s for s in sheds if s["level"] == 3]
    assert red, sheds
    assert red[0]["from"] == "2026-06-21T15:00:00Z" and red[0]["until"] == "2026-06-21T18:00:00Z"
    assert sheds[-1]["level"] == 0  # cleared after 20:00

    # The gateways cut loads for the grid: a load on, then off with reason "shed".
    cut: list[tuple[str, str]] = []
    for home in state.homes:
        for a in home.spec.appliances:
            states = observer.on(topics.load_state(home.site, a.id))
            for before, after in itertools.pairwise(states):
                if before["on"] and not after["on"] and after["reason"] == "shed":
                    cut.append((home.site, a.id))
    assert cut, "no load was cut for the grid"
    print("cut for the grid:", cut)
    # home-03's heat pump, wired energised = cut (the prototype): cut by energising
    # its relay, then restored after 20:00.
    hp = observer.on(topics.load_state("home-03", "heat-pump"))
    shed_at = next(i for i, s in enumerate(hp) if s["reason"] == "shed" and not s["on"])
    assert any(s["on"] for s in hp[shed_at + 1:]), hp
    board = state.home("home-03").board  # type: ignore[union-attr]
    assert board is not None
    assert any(c.method == "setState" and c.channel == 0 and c.args == (True,)
               for c in board.calls)
    assert all(h.gateway.ems.grid_level <= 1 for h in state.homes)
    # Anticipation: water heaters ran ahead of the window (16:40-17:00), shown as preheat.
    assert any(e["event"] == "preheat" for e in logs)
    assert {"preheat", "shed"} <= view.reasons, view.reasons
    (screen,) = view.rendered
    assert "grid level 3 red" in screen and "111111111111111112331111" in screen, screen
    assert f"Operator page: {state.web_url}" in screen, screen
    assert "off shed" in screen, screen

    # The plain output says when the level changes.
    lines = out.getvalue().splitlines()
    assert ("grid stress (RTE stand-in): 2026-06-21 level 2 at 17:00, level 3 18:00-20:00"
            in lines[0])
    levels = [line.split("level ")[1][0] for line in lines if line.startswith("grid ")]
    assert levels[-3:] == ["2", "3", "1"], lines
    errors = [e for e in logs if e["log_level"] in ("error", "critical")]
    assert errors == []


def test_the_stress_episode_is_today_or_tomorrow_and_handles_dst() -> None:
    start = datetime(2026, 6, 21, 11, 0, tzinfo=UTC)
    episode = episode_for(start, (18, 20))
    assert episode is not None and episode.day == start.date()
    assert episode.levels() == [1] * 17 + [2, 3, 3] + [1] * 4
    assert episode.starts_at == datetime(2026, 6, 21, 15, 0, tzinfo=UTC)
    # Past the episode's end: tomorrow's, so the user still sees one.
    late = episode_for(start.replace(hour=19), (18, 20))
    assert late is not None and late.day == start.date() + timedelta(days=1)
    assert episode_for(start, None) is None
    # RTE counts hours from midnight: 23 on the spring DST day, 25 in autumn.
    spring, autumn = Episode(datetime(2026, 3, 29).date(), 18, 20), Episode(
        datetime(2026, 10, 25).date(), 18, 20)
    assert len(spring.levels()) == 23 and spring.levels().index(3) == 17
    assert len(autumn.levels()) == 25 and autumn.levels().index(3) == 19
    body = stand_in_signals(start, late)
    days = {d["jour"][:10]: [v["hvalue"] for v in d["values"]] for d in body["signals"]}
    assert days["2026-06-21"] == [1] * 24 and days["2026-06-22"] == late.levels()
    assert parse_stress("7-9") == (7, 9)
    for bad in ("9-7", "0-2", "18", "a-b", "20-25"):
        with pytest.raises(ValueError):
            parse_stress(bad)


# The homes' plan and physics (no broker) --------------------------------------------

def test_sun_peaks_at_noon_and_sets() -> None:
    assert sun_factor(NOON) == pytest.approx(1.0)
    assert sun_factor(NOON.replace(hour=2)) == 0.0
    assert sun_factor(NOON.replace(hour=22)) == 0.0
    assert 0 < sun_factor(NOON.replace(hour=8)) < sun_factor(NOON.replace(hour=11))
    assert default_start(NOON).hour == 11


def test_homes_are_seeded_and_every_gateway_config_is_valid(tmp_path: Path) -> None:
    assert make_homes(8, 5) == make_homes(8, 5)
    seen_switches: set[str] = set()
    seen_meters: set[str] = set()
    for seed in range(1, 21):
        homes = make_homes(8, seed)
        assert homes[0].pv_kwp > 0 and len({h.site for h in homes}) == 8
        assert [h.site for h in homes if h.has_board] == ["home-03", "home-06"]
        assert all(h.pv_kwp == 0 for h in homes if h.has_board)
        for home in homes:
            # The gateway's own validation: ratings, channels, wiring, references.
            settings = load_gateway_settings(None, env={}, **gateway_sections(
                home, host="127.0.0.1", port=1883, community="demo", period_s=900,
                speed=SPEED, state_dir=tmp_path))
            assert settings.mqtt.protocol == "3.1.1" and settings.clock.speed == SPEED
            seen_meters.add(home.meter)
            seen_switches.update(a.switch for a in home.appliances)
    assert seen_meters == {"pro-3em", "em"}
    assert seen_switches == {"plus-plug-s", "plug-s", "plus-1pm", "phidget-1017"}
    prototype = next(a for a in make_homes(3, 1)[2].appliances if a.kind == "heat_pump")
    assert prototype.energized_means == "off"


def test_a_thermostat_stops_when_full_and_restarts_after_hot_water_is_drawn() -> None:
    spec = ApplianceSpec("water-heater", "water_heater", 2.4, "plug-s", 0, 1.0, 10.0)
    tank = Appliance(spec, need_kwh=1.0)
    assert tank.advance(NOON, 0.5, drawn_kw=2.4)  # half an hour at 2.4 kW fills it
    assert tank.satisfied and tank.draw_kw(switched_on=True) == 0.0
    # Evening showers: the tank needs heat again only past the thermostat's deadband.
    evening = NOON.replace(hour=20)
    assert not tank.advance(evening, 0.1, drawn_kw=0.0) and tank.satisfied
    while tank.need_kwh < RESTART_KWH:
        tank.advance(evening, 0.1, drawn_kw=0.0)
    assert not tank.satisfied and tank.draw_kw(switched_on=True) == 2.4
    ev = Appliance(ApplianceSpec("ev", "ev_charger", 2.3, "plug-s", 0, 10.0, 10.0,
                                 departure_h=17.0), need_kwh=10.0)
    assert not ev.advance(NOON, 0.1, drawn_kw=2.3) and ev.advance(
        NOON.replace(hour=18), 0.1, drawn_kw=0.0)  # gone: the charger draws nothing


# The operator page in a browser, and a port taken (no broker) ----------------------------

def test_a_browser_opens_the_page_only_with_a_display() -> None:
    assert display_available({"DISPLAY": ":0"}, "linux")
    assert display_available({"WAYLAND_DISPLAY": "wayland-0"}, "linux")
    assert display_available({}, "darwin")
    assert not display_available({}, "linux")
    assert not display_available({"DISPLAY": ""}, "linux")

    opened: list[str] = []
    done = threading.Event()

    def browser(url: str) -> bool:
        opened.append(url)
        done.set()
        return True

    inner = PlainView(io.StringIO())
    view = OpensPage(inner, opener=browser)
    state = DemoState(DemoOptions(db_url="sqlite:///unused.sqlite"))
    state.web_url = "http://127.0.0.1:8765/"
    view.started(state)
    view.started(state)  # once only
    assert done.wait(5)
    assert opened == ["http://127.0.0.1:8765/"]
    assert "Operator page: http://127.0.0.1:8765/" in inner.stream.getvalue()  # type: ignore[attr-defined]


def test_a_port_taken_for_the_page_is_a_clear_error(tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        options = DemoOptions(db_url=f"sqlite:///{tmp_path / 'demo.sqlite'}", web_port=port)
        with pytest.raises(DemoError, match=f"cannot serve the operator page on 127.0.0.1:{port}"):
            asyncio.run(run_demo(options))
    with pytest.raises(DemoError, match="port must be 0"):
        asyncio.run(run_demo(DemoOptions(db_url="sqlite:///x.sqlite", web_port=70000)))

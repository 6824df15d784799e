"""``ems replay`` on a day recorded by the real coordinator over a real Mosquitto.

One small day is recorded once per module: three simulated gateways (``simgw``)
that list their loads in their replies and answer in a fixed order (each one
waits until the broker has passed on its predecessor's reply, so the order the
coordinator sees is the order FIFO is checked against), and three cycles:

=========  =======  ====================================================
cycle      surplus  replies, in order: site [min_kw, flex_kw] (one load)
=========  =======  ====================================================
10:00Z     4 kW     a [3, 3] (water heater), b [1.5, 2] (heat pump),
                    c [2.5, 2.5] (EV); FIFO: a 3, b 1, exhausted; c late
10:15Z     10 kW    the same replies: everyone gets its offer (all_replied)
10:30Z     -1 kW    no request (no_surplus)
=========  =======  ====================================================

Replayed by hand, 10:00Z:

- fifo: the recorded decisions, exactly (the identity check);
- proportional (every reply, c's late one included, scaled by 4 / 7.5):
  a 1.6, b 1.0667, c 1.3333. No load can run on those: usable 0;
- milp (x in {0} U [min, flex], sum <= 4, maximise the sum): b 1.5 + c 2.5 is
  the only way to 4 kW. The whole-load rule runs c (2.5) only: usable 2.5;
- fifo's own: a 3 runs, b's 1 kW runs nothing (its load draws 2): usable 3.

10:15Z is the same for every strategy (7.5 kW given, all of it usable), and
10:30Z has no surplus.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import gmqtt
import pytest
from simgw import SimGateway, running, until

from central.app import Coordinator
from central.config import load_central_settings
from central.core import get_strategy
from central.core.metrics import PERIOD_H, jain_index
from central.core.replay import Replayer, replay
from central.recorder import Recorder
from ems.cli import main
from ems.commands.replay import read_day
from protocol import CycleRequest, Flex, Topics, decode, encode, format_utc
from protocol.models import LoadFlex
from protocol.topics import TopicKind
from runtime.clock import SystemClock

pytestmark = pytest.mark.integration

DAY = "2026-06-21"
T0 = datetime(2026, 6, 21, 10, 0, tzinfo=UTC)
T1 = datetime(2026, 6, 21, 10, 15, tzinfo=UTC)
T2 = datetime(2026, 6, 21, 10, 30, tzinfo=UTC)
LOADS = {
    "a": LoadFlex(id="water-heater", kind="water_heater", min_kw=3.0, max_kw=3.0),
    "b": LoadFlex(id="heat-pump", kind="heat_pump", min_kw=1.5, max_kw=2.0),
    "c": LoadFlex(id="ev", kind="ev_charger", min_kw=2.5, max_kw=2.5),
}
AFTER = {"a": None, "b": "a", "c": "b"}


class ChainedGateway(SimGateway):
    """A simulated gateway that lists its load and replies right after ``after`` did."""

    def __init__(self, topics: Topics, site: str, host: str, port: int,
                 after: str | None) -> None:
        load = LOADS[site]
        super().__init__(topics, site, host, port, flex_kw=load.max_kw)
        self.after = after
        self.load = load
        self.waiting: dict[datetime, CycleRequest] = {}
        self.released: set[datetime] = set()

    async def start(self) -> None:
        await super().start()
        if self.after is not None:
            self.client.subscribe(gmqtt.Subscription(self.topics.flex(self.after), qos=1))

    def _reply(self, client: Any, request: CycleRequest) -> None:
        reply = Flex(cycle=request.cycle, flex_kw=self.load.max_kw, loads=(self.load,))
        client.publish(self.topics.flex(self.site), encode(reply), qos=1)

    def _on_message(self, client: Any, topic: str, payload: bytes, qos: int, props: Any) -> int:
        route = self.topics.parse(topic)
        if route is None:
            return 0
        msg = decode(route, payload)
        if route.kind == TopicKind.FLEX and isinstance(msg, Flex):
            # The predecessor's reply has gone through the broker: our turn.
            self.released.add(msg.cycle)
            request = self.waiting.pop(msg.cycle, None)
            if request is not None:
                self._reply(client, request)
            return 0
        if isinstance(msg, CycleRequest):
            self.requests.append(msg)
            if self.after is None or msg.cycle in self.released:
                self._reply(client, msg)
            else:
                self.waiting[msg.cycle] = msg
            return 0
        return super()._on_message(client, topic, payload, qos, props)


@dataclass(frozen=True)
class RecordedDay:
    url: str
    path: Path


def _record_day(broker: Any, path: Path) -> None:
    root = f"t{uuid.uuid4().hex[:10]}"
    settings = load_central_settings(
        None, env={},
        mqtt={"host": broker.host, "port": broker.port, "client_id": f"central-{root}"},
        community={"id": "c1", "topic_root": root},
        # A day-long period: the scheduler stays out of the way; the test opens the cycles.
        cycle={"period_s": 86_400, "reply_timeout_s": 5.0},
        recorder={"url": f"sqlite:///{path}"},
    )
    topics = Topics("c1", root)

    async def scenario() -> None:
        coordinator = Coordinator(settings, SystemClock())
        closed: list[Any] = []
        coordinator.add_listener(lambda e, d: closed.append(d[1]) if e == "cycle_closed" else None)
        async with running(coordinator):
            gateways = {s: ChainedGateway(topics, s, broker.host, broker.port, AFTER[s])
                        for s in ("a", "b", "c")}
            await asyncio.gather(*(g.start() for g in gateways.values()))
            await until(lambda: len(coordinator.sites.online_sites()) == 3, 15)
            for n, (start, surplus) in enumerate(((T0, 4.0), (T1, 10.0), (T2, -1.0)), start=1):
                gateways["a"].send_netload(surplus)
                await until(lambda s=surplus: coordinator.sites.surplus(  # type: ignore[misc]
                    coordinator.clock.now(), 86_400).surplus_kw == pytest.approx(s), 15)
                await coordinator.start_cycle_now(start)
                await until(lambda n=n: len(closed) == n, 15)  # type: ignore[misc]
                if start == T0:
                    # c's reply comes after the close: recorded as such, before the next cycle.
                    await until(lambda: coordinator.stats.ignored.get("closed", 0) == 1, 15)
            await asyncio.gather(*(g.stop() for g in gateways.values()))
        assert [c.reason for c in closed] == ["exhausted", "all_replied", "no_surplus"]

    asyncio.run(scenario())


@pytest.fixture(scope="module")
def day(mosquitto: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RecordedDay]:
    path = tmp_path_factory.mktemp("replay") / "records.sqlite"
    _record_day(mosquitto, path)
    yield RecordedDay(f"sqlite:///{path}", path)


def _read(day: RecordedDay) -> list[Any]:
    recorder = Recorder(day.url)
    try:
        history = recorder.cycle_history(f"{DAY}T00:00:00Z", "2026-06-22T00:00:00Z")
        return list(read_day(recorder, [(h.cycle, h.sites) for h in history]))
    finally:
        recorder.close()


def test_the_recorder_keeps_each_replys_loads(day: RecordedDay) -> None:
    cycles = _read(day)
    assert [c.cycle for c in cycles] == [f"{DAY}T10:00:00Z", f"{DAY}T10:15:00Z",
                                         f"{DAY}T10:30:00Z"]
    first = cycles[0]
    assert [(r.site, r.outcome) for r in first.replies] == [
        ("a", "accepted"), ("b", "accepted"), ("c", "closed")]
    c_reply = first.replies[2]
    assert c_reply.loads is not None and len(c_reply.loads) == 1
    load = c_reply.loads[0]
    assert (load.id, load.kind, load.min_kw, load.max_kw) == ("ev", "ev_charger", 2.5, 2.5)
    assert first.deadline_s == pytest.approx(5.0) and first.sites == 3
    assert cycles[2].replies == () and cycles[2].close_reason == "no_surplus"


def test_fifo_replay_reproduces_the_recorded_decisions_exactly(day: RecordedDay) -> None:
    cycles = _read(day)
    run = replay(cycles, get_strategy("fifo"))
    for recorded, replayed in zip(cycles, run.cycles, strict=True):
        assert list(replayed.decisions) == sorted(recorded.decisions, key=lambda d: d.rank)
    first = run.cycles[0]
    assert [(d.site, d.alloc_kw, d.rank) for d in first.decisions] == [("a", 3.0, 1),
                                                                       ("b", 1.0, 2)]
    assert first.close_reason == "exhausted"
    assert run.cycles[1].close_reason == "all_replied"


def test_replay_one_cycle_at_a_time_matches_the_whole_day(day: RecordedDay) -> None:
    cycles = _read(day)
    stepper = Replayer("milp", get_strategy("milp"))
    for cycle in cycles:
        stepper.step(cycle)
    assert stepper.run.cycles == replay(cycles, get_strategy("milp")).cycles


def _replay_json(day: RecordedDay, capsys: pytest.CaptureFixture[str], *args: str) -> Any:
    code = main(["replay", "--day", DAY, "--db", str(day.path), "--tz", "UTC", "--json", *args])
    out = capsys.readouterr()
    assert code == 0, out.err
    return json.loads(out.out)


def test_proportional_and_milp_differ_from_the_recorded_day_as_worked_by_hand(
    day: RecordedDay, capsys: pytest.CaptureFixture[str]
) -> None:
    data = _replay_json(day, capsys, "--strategy", "all")
    recorded = data["recorded"]
    assert recorded["strategies"] == ["fifo"]
    rec = recorded["metrics"]
    assert rec["cycles"] == 3 and rec["cycles_with_surplus"] == 2
    # Recorded (FIFO): 4 of 4 allocated then 7.5 of 10; usable 3 of 4, then 7.5.
    assert rec["share_allocated"] == pytest.approx((1.0 + 0.75) / 2)
    assert rec["share_usable"] == pytest.approx((0.75 + 0.75) / 2)
    assert rec["injection_without_kwh"] == pytest.approx(14 * PERIOD_H)
    assert rec["injection_with_kwh"] == pytest.approx((1.0 + 2.5) * PERIOD_H)
    assert rec["jain_daily"] == pytest.approx(jain_index([1.5, 0.75, 0.625]))
    assert recorded["allocations_without_loads"] == 0

    fifo = data["replays"]["fifo"]
    assert fifo["allocations_changed"] == 0
    assert all(v in (0, 0.0, None) for v in fifo["difference"].values()), fifo["difference"]

    prop = data["replays"]["proportional"]
    assert prop["metrics"]["share_allocated"] == pytest.approx((1.0 + 0.75) / 2)
    assert prop["metrics"]["share_usable"] == pytest.approx((0.0 + 0.75) / 2)
    assert prop["difference"]["share_usable"] == pytest.approx(-0.75 / 2)
    assert prop["difference"]["injection_avoided_kwh"] == pytest.approx(-3.0 * PERIOD_H)
    assert prop["metrics"]["jain_daily"] == pytest.approx(jain_index(
        [(1.6 + 3.0) * PERIOD_H, (4 / 7.5 * 2 + 2.0) * PERIOD_H, (4 / 7.5 * 2.5 + 2.5) * PERIOD_H]))
    assert prop["allocations_changed"] == 3  # a, b and c all get another share at 10:00
    # Proportional decides at the close: all replied, when c's reply came.
    assert prop["metrics"]["alloc_delay_mean_s"] >= rec["alloc_delay_mean_s"]

    milp = data["replays"]["milp"]
    assert milp["methods"] == {"solver": 1, "all_fit": 1}
    assert milp["metrics"]["share_usable"] == pytest.approx((2.5 / 4 + 0.75) / 2)
    assert milp["metrics"]["share_usable_modulating"] == pytest.approx(1.0 * 0.5 + 0.75 * 0.5)
    assert milp["difference"]["share_usable"] == pytest.approx((2.5 - 3.0) / 4 / 2)
    assert milp["metrics"]["jain_daily"] == pytest.approx(jain_index([0.75, 0.875, 1.25]))
    assert milp["allocations_changed"] == 3
    assert set(data["replays"]) == {"fifo", "fifo_min_power", "proportional", "equal",
                                    "deadline", "fair_rotation", "milp", "window"}


def test_the_table_shows_recorded_and_replayed_side_by_side(
    day: RecordedDay, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["replay", "--day", DAY, "--db", str(day.path), "--tz", "UTC",
                 "--strategy", "proportional"])
    out = capsys.readouterr().out
    assert code == 0
    lines = out.splitlines()
    usable = next(line for line in lines if "usable share (whole loads" in line)
    # recorded 75.00 %, replayed 37.50 %, difference -37.50 points
    assert "75.00 %" in usable and "37.50 %" in usable and "-37.50 pts" in usable
    changed = next(line for line in lines if "allocations changed" in line)
    assert changed.split("│")[3].strip() == "3"
    assert "recorded (fifo)" in out and "replayed" in out
    assert "3 cycles, 2 with a surplus; strategies start the day empty" in out


def test_errors_are_clear(day: RecordedDay, capsys: pytest.CaptureFixture[str],
                          tmp_path: Path) -> None:
    code = main(["replay", "--day", "2026-06-20", "--db", str(day.path), "--tz", "UTC",
                 "--strategy", "fifo"])
    err = capsys.readouterr().err
    assert code == 1
    assert "no recorded cycles on 2026-06-20 (UTC" in err

    with pytest.raises(SystemExit) as exit_:
        main(["replay", "--day", DAY, "--db", str(day.path), "--strategy", "fastest"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2
    assert "unknown strategy 'fastest'; known: deadline, equal, fair_rotation, fifo" in err
    assert "window, all" in err

    missing = tmp_path / "nothing.sqlite"
    assert main(["replay", "--day", DAY, "--db", str(missing), "--strategy", "fifo"]) == 1
    assert f"no records at {missing}" in capsys.readouterr().err
    assert not missing.exists()  # nothing created

    code = main(["replay", "--day", DAY, "--db", str(day.path), "--strategy", "window",
                 "--options", '{"window_s": -1}'])
    assert code == 1
    assert "options for 'window': window_s must be" in capsys.readouterr().err
    code = main(["replay", "--day", DAY, "--db", str(day.path), "--strategy", "all",
                 "--options", '{"fastest": {}}'])
    assert code == 1
    assert "unknown strategy 'fastest'" in capsys.readouterr().err


def test_reply_loads_round_trip_through_the_records(tmp_path: Path) -> None:
    from central.core import Decision
    from central.core.cycle import LoadOffer
    from central.recorder import ReplyRow

    ev = LoadOffer("ev", 1.4, 7.4, "ev_charger", 2, 5400.0, 12.5)
    heater = LoadOffer("wh", 2.0, 2.0, "water_heater")
    recorder = Recorder(f"sqlite:///{tmp_path / 'r.sqlite'}")
    try:
        recorder.open_cycle(T0, "c1", 1, "fifo", T0, 5.0, 3, 3, T1)
        recorder.record_step(T0, 1, [
            ReplyRow("a", 0.5, 9.4, "accepted", (ev, heater)),
            ReplyRow("b", 0.7, 0.0, "accepted", ()),
            ReplyRow("c", 0.9, 1.0, "accepted"),  # loads not known
        ], [Decision("a", 5.0, 1, 9.4, 0.5)])
        rows = recorder.replies(format_utc(T0))
        assert [r.loads for r in rows] == [(ev, heater), (), None]
        assert recorder.accepted_replies(format_utc(T0)) == rows
    finally:
        recorder.close()

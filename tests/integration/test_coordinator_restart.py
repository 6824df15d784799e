"""Reliability, "no allocation doubled": the coordinator killed mid-cycle (SIGKILL).

The first coordinator is a process (``crashable_central.py``) that opens one
cycle; simulated gateways reply one by one; the test kills it with SIGKILL
after some allocations are seen on the broker, then starts the real
``python -m central`` on the same records. It must resume the cycle from the
records (faults §3, "Coordinator crash mid-cycle"): republish the stored
allocations unchanged under epoch + 1, allocate the remaining sites with the
ranks that follow, never give a site a second, different allocation, never
exceed the surplus, and close the cycle once. Restarted after the cycle's
reply-by, it closes the cycle from the records and allocates nothing new. A
decision committed and never published (killed between the two) is published
by the restarted coordinator.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

import pytest
from simgw import Observer, SimGateway, running

from central.app import Coordinator
from central.config import load_central_settings
from central.core.cycle import Decision
from central.recorder import Recorder, ReplyRow
from protocol import Flex, Topics, encode
from runtime.clock import SystemClock

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
RUNNER = Path(__file__).with_name("crashable_central.py")
SITES = 7
FLEX_KW = 2.0
SURPLUS_KW = 11.0  # 5 sites get 2 kW, the 6th 1 kW, the 7th comes too late


def write_config(broker: Any, root: str, tmp: Path, reply_timeout_s: float) -> Path:
    path = tmp / "central.toml"
    path.write_text(
        f'[mqtt]\nhost = "{broker.host}"\nport = {broker.port}\nclient_id = "central-{root}"\n'
        f'[community]\nid = "c1"\ntopic_root = "{root}"\n'
        f"[cycle]\nperiod_s = 3600\nreply_timeout_s = {reply_timeout_s}\n"
        f'[recorder]\nurl = "sqlite:///{tmp / "records.sqlite"}"\n'
    )
    return path


def spawn(args: list[str], log: IO[bytes]) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, *args], cwd=REPO, env=env, stdout=log,
                            stderr=subprocess.STDOUT)


async def until(predicate: Callable[[], object], what: str, timeout_s: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"not in time: {what}")
        await asyncio.sleep(0.02)


async def stop(proc: subprocess.Popen[bytes]) -> int:
    proc.send_signal(signal.SIGTERM)
    for _ in range(500):
        if proc.poll() is not None:
            return proc.returncode
        await asyncio.sleep(0.02)
    proc.kill()
    raise AssertionError("the coordinator did not stop on SIGTERM")


class Community:
    """Seven silent gateways (the test sends their replies), an observer, the first coordinator."""

    def __init__(self, broker: Any, tmp: Path, reply_timeout_s: float) -> None:
        self.broker = broker
        self.root = f"t{uuid.uuid4().hex[:10]}"
        self.topics = Topics("c1", self.root)
        self.tmp = tmp
        self.config = write_config(broker, self.root, tmp, reply_timeout_s)
        self.log = (tmp / "central.log").open("ab")
        self.gateways = [
            SimGateway(self.topics, f"s{i}", broker.host, broker.port, flex_kw=lambda r: None,
                       net_export_kw=SURPLUS_KW if i == 0 else 0.0)
            for i in range(SITES)
        ]
        self.observer = Observer(self.topics, broker.host, broker.port)
        self.procs: list[subprocess.Popen[bytes]] = []

    async def start(self) -> None:
        await self.observer.start()
        self.procs.append(spawn([str(RUNNER), str(self.config), str(SURPLUS_KW)], self.log))
        await until(lambda: self.statuses("online"), "first coordinator online", 20)
        # s0 carries the surplus that opens the cycle: start it last, so every
        # other gateway is online and subscribed when the request goes out.
        await asyncio.gather(*(g.start() for g in self.gateways[1:]))
        await self.gateways[0].start()
        await until(lambda: all(g.requests for g in self.gateways), "cycle request", 30)

    def statuses(self, state: str) -> list[dict[str, Any]]:
        return [m for m in self.observer.on(self.topics.coordinator_status())
                if m["state"] == state]

    def reply(self, i: int) -> None:
        gw = self.gateways[i]
        msg = Flex(cycle=gw.requests[0].cycle, flex_kw=FLEX_KW)
        gw.client.publish(self.topics.flex(gw.site), encode(msg), qos=1)

    def restart(self) -> subprocess.Popen[bytes]:
        proc = spawn(["-m", "central", "--config", str(self.config)], self.log)
        self.procs.append(proc)
        return proc

    def closed(self) -> list[dict[str, Any]]:
        return self.observer.on(self.topics.cycle_closed())

    async def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        await asyncio.gather(*(g.stop(graceful=False) for g in self.gateways))
        await self.observer.stop()
        self.log.close()


def test_sigkill_mid_cycle_never_doubles_an_allocation(mosquitto: Any, tmp_path: Path) -> None:
    async def round_(tmp: Path, kill_after: int, racy: bool) -> None:
        # racy: the last reply is sent and the coordinator killed at once, so it dies
        # before, during or after committing or publishing that decision.
        settled = kill_after - 1 if racy else kill_after
        c = Community(mosquitto, tmp, reply_timeout_s=20.0)
        try:
            await c.start()
            epoch = c.statuses("online")[-1]["epoch"]
            for i in range(kill_after):
                c.reply(i)
                if i < settled:
                    await until(lambda i=i: c.gateways[i].allocs, f"alloc s{i}")
            c.procs[0].send_signal(signal.SIGKILL)
            assert c.procs[0].wait(5) == -signal.SIGKILL
            c.reply(kill_after)  # sent while no coordinator listens: lost (clean session)
            first = {g.site: list(g.allocs) for g in c.gateways}

            proc = c.restart()
            # The request again (the lost reply is sent again), the stored allocations again.
            await until(lambda: all(len(g.requests) == 2 for g in c.gateways),
                        "request republished", 20)
            await until(lambda: all(len(c.gateways[i].allocs) == 2 for i in range(settled)),
                        "allocations republished")
            for i in range(settled):
                old, new = c.gateways[i].allocs
                assert (new.cycle, new.alloc_kw, new.rank, new.valid_until) == (
                    old.cycle, old.alloc_kw, old.rank, old.valid_until)
                assert (old.epoch, new.epoch) == (epoch, epoch + 1)
            c.reply(0)  # a duplicate reply: never allocated again
            for i in range(settled, SITES):  # the racy one again: a duplicate if decided
                c.reply(i)
            await until(lambda: c.closed(), "cycle closed")
            await asyncio.sleep(0.4)  # any stray allocation would arrive now
            assert await stop(proc) == 0
        finally:
            await c.close()

        assert len(c.closed()) == 1
        closed = c.closed()[0]
        assert closed["reason"] == "exhausted"
        assert closed["allocated_kw"] == pytest.approx(SURPLUS_KW)
        granted: dict[str, tuple[float, int]] = {}
        for g in c.gateways:
            distinct = {(a.cycle, a.alloc_kw, a.rank) for a in g.allocs}
            assert len(distinct) <= 1, f"{g.site} got two different allocations: {distinct}"
            if distinct:
                granted[g.site] = next(iter(distinct))[1:]
            # Served before the kill: the allocation and its republication, nothing for the
            # duplicate reply; served after: one allocation.
            assert len(g.allocs) == (2 if first[g.site] else len(distinct))
        assert sum(kw for kw, _ in granted.values()) == pytest.approx(SURPLUS_KW)
        assert sorted(rank for _, rank in granted.values()) == list(range(1, 7))
        assert [granted[f"s{i}"][1] for i in range(kill_after)] == list(range(1, kill_after + 1))
        # The sites served after the restart got the new epoch.
        for g in c.gateways[kill_after:]:
            assert all(a.epoch == epoch + 1 for a in g.allocs)

        rec = Recorder(f"sqlite:///{tmp / 'records.sqlite'}")
        try:
            [row] = rec.last_cycles(5)
            assert row.close_reason == "exhausted" and row.replies == 6
            assert row.allocated_kw == pytest.approx(SURPLUS_KW)
            stored = {d.site: (d.alloc_kw, d.rank) for d in rec.decisions(row.cycle)}
            assert stored == granted
            assert rec.unclosed_cycles() == []
        finally:
            rec.close()

    async def scenario() -> None:
        # After the first allocation, after half, and in the middle of the fifth decision.
        for kill_after, racy in ((1, False), (3, False), (5, True)):
            tmp = tmp_path / f"kill{kill_after}"
            tmp.mkdir()
            await round_(tmp, kill_after, racy)

    asyncio.run(scenario())


def test_restart_after_reply_by_closes_from_the_records(mosquitto: Any, tmp_path: Path) -> None:
    async def scenario() -> None:
        c = Community(mosquitto, tmp_path, reply_timeout_s=2.0)
        try:
            await c.start()
            epoch = c.statuses("online")[-1]["epoch"]
            c.reply(0)
            await until(lambda: c.gateways[0].allocs, "alloc s0")
            c.procs[0].send_signal(signal.SIGKILL)
            c.procs[0].wait(5)
            reply_by = c.gateways[0].requests[0].reply_by
            # Let the reply-by pass while no coordinator runs.
            while datetime.now(UTC) <= reply_by:
                await asyncio.sleep(0.05)
            proc = c.restart()
            await until(lambda: c.closed(), "cycle closed from the records", 20)
            c.reply(1)  # too late: nothing is allocated any more
            await asyncio.sleep(0.5)
            assert await stop(proc) == 0
        finally:
            await c.close()

        [closed] = c.closed()
        assert closed["reason"] == "deadline"
        assert closed["allocated_kw"] == pytest.approx(FLEX_KW) and closed["replies"] == 1
        # No request again, no allocation to anyone else; s0's stored one republished as is.
        assert all(len(g.requests) == 1 for g in c.gateways)
        assert all(not g.allocs for g in c.gateways[1:])
        old, new = c.gateways[0].allocs
        assert (new.alloc_kw, new.rank, new.epoch) == (old.alloc_kw, old.rank, epoch + 1)
        rec = Recorder(f"sqlite:///{tmp_path / 'records.sqlite'}")
        try:
            [row] = rec.last_cycles(5)
            assert row.close_reason == "deadline" and row.allocated_kw == pytest.approx(FLEX_KW)
            assert [(d.site, d.alloc_kw, d.rank) for d in rec.decisions(row.cycle)] == [
                ("s0", FLEX_KW, 1)]
        finally:
            rec.close()

    asyncio.run(scenario())


def test_a_decision_committed_but_never_published_is_published_on_restart(
    mosquitto: Any, tmp_path: Path
) -> None:
    """The crash between the commit and the publish (the window the kill rarely hits)."""

    async def scenario() -> None:
        root = f"t{uuid.uuid4().hex[:10]}"
        topics = Topics("c1", root)
        settings = load_central_settings(write_config(mosquitto, root, tmp_path, 20.0))
        opened_at = datetime.now(UTC)
        rec = Recorder(settings.recorder.url)
        rec.next_epoch()  # the killed run's epoch: 1
        rec.open_cycle(opened_at, "c1", 1, "fifo", opened_at, 5.0, 3, 1,
                       opened_at + timedelta(seconds=20), opened_at + timedelta(hours=1),
                       ["s0", "s1", "s2"])
        rec.record_step(opened_at, 1, [ReplyRow("s1", 0.1, 2.0, "accepted")],
                        [Decision("s1", 2.0, 1, 2.0, 0.1)])
        rec.close()

        gateways = [SimGateway(topics, f"s{i}", mosquitto.host, mosquitto.port,
                               flex_kw=lambda r: None) for i in range(3)]
        await asyncio.gather(*(g.start() for g in gateways))
        try:
            async with running(Coordinator(settings, SystemClock())) as coordinator:
                assert coordinator.epoch == 2
                await until(lambda: gateways[1].allocs and all(g.requests for g in gateways),
                            "stored allocation and request published")
                [alloc] = gateways[1].allocs
                assert (alloc.alloc_kw, alloc.rank, alloc.epoch) == (2.0, 1, 2)
                for i in (0, 1, 2):
                    msg = Flex(cycle=gateways[i].requests[0].cycle, flex_kw=FLEX_KW)
                    gateways[i].client.publish(topics.flex(f"s{i}"), encode(msg), qos=1)
                await until(lambda: coordinator.current is not None
                            and coordinator.current.cycle.closed, "cycle closed")
        finally:
            await asyncio.gather(*(g.stop(graceful=False) for g in gateways))
        got = {g.site: [(a.alloc_kw, a.rank) for a in g.allocs] for g in gateways}
        assert got == {"s0": [(2.0, 2)], "s1": [(2.0, 1)], "s2": [(1.0, 3)]}

    asyncio.run(scenario())

"""The live coordinator against a real Mosquitto, with simulated gateways."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from simgw import Observer, SimGateway

from central.app import Coordinator
from central.config import CentralSettings, load_central_settings
from central.recorder import Recorder
from protocol import CycleRequest, Flex, Report, Topics, encode
from runtime.clock import SystemClock

pytestmark = pytest.mark.integration


def make_settings(broker: Any, root: str, tmp_path: Path, **cycle: Any) -> CentralSettings:
    return load_central_settings(
        None,
        env={},
        mqtt={"host": broker.host, "port": broker.port, "client_id": f"central-{root}"},
        community={"id": "c1", "topic_root": root},
        cycle={"period_s": 3600, "reply_timeout_s": 5.0, **cycle},
        recorder={"url": f"sqlite:///{tmp_path / 'records.sqlite'}"},
    )


@contextlib.asynccontextmanager
async def running(settings: CentralSettings) -> AsyncIterator[Coordinator]:
    coordinator = Coordinator(settings, SystemClock())
    stop = asyncio.Event()
    task = asyncio.create_task(coordinator.run(stop))
    await asyncio.wait_for(coordinator.wait_ready(), 10)
    try:
        yield coordinator
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)


async def until(predicate: Callable[[], bool], timeout_s: float = 30.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


def closed_events(coordinator: Coordinator) -> list[Any]:
    events: list[Any] = []

    def listen(event: str, data: Any) -> None:
        if event == "cycle_closed":
            events.append(data[1])

    coordinator.add_listener(listen)
    return events


def test_whole_cycle_with_50_gateways(mosquitto: Any, topic_root: str, tmp_path: Path) -> None:
    async def scenario() -> None:
        settings = make_settings(mosquitto, topic_root, tmp_path)
        topics = Topics("c1", topic_root)
        async with running(settings) as coordinator:
            closed = closed_events(coordinator)
            gateways = [
                SimGateway(topics, f"s{i:02d}", mosquitto.host, mosquitto.port,
                           flex_kw=2.0, net_export_kw=5.0 if i % 2 == 0 else -2.0)
                for i in range(50)
            ]
            await asyncio.gather(*(g.start() for g in gateways))
            await until(lambda: len(coordinator.sites.online_sites()) == 50)
            await until(lambda: coordinator.sites.surplus(
                coordinator.clock.now(), 3600).surplus_kw == pytest.approx(75.0))
            await coordinator.start_cycle_now()
            await until(lambda: len(closed) == 1)
            # Late replies still reach the record.
            await until(lambda: coordinator.stats.ignored.get("closed", 0)
                        + coordinator.stats.allocations == 50)
            await asyncio.sleep(0.3)
            allocs = {g.site: g.allocs for g in gateways}
            await asyncio.gather(*(g.stop() for g in gateways))

        result = closed[0]
        assert result.reason == "exhausted"
        assert result.surplus_kw == pytest.approx(75.0)
        assert result.allocated_kw == pytest.approx(75.0)
        assert result.sites == 50
        served = {site: a[0] for site, a in allocs.items() if a}
        assert all(len(a) <= 1 for a in allocs.values()), "a site got two allocations"
        ranks = sorted(a.rank for a in served.values())
        assert ranks == list(range(1, len(ranks) + 1))
        kws = [a.alloc_kw for a in served.values()]
        assert sum(kws) == pytest.approx(75.0)
        assert all(0 <= kw <= 2.0 for kw in kws)
        assert sorted(kws).count(1.0) == 1  # the last replier was partly served
        assert len([k for k in kws if k == 2.0]) == 37
        by_rank = sorted(served.values(), key=lambda a: a.rank)
        assert by_rank[-1].alloc_kw == pytest.approx(1.0)
        assert {a.epoch for a in served.values()} == {coordinator.epoch}

        rec = Recorder(settings.recorder.url)
        [row] = rec.last_cycles(5)
        assert row.close_reason == "exhausted" and row.sites == 50
        decisions = rec.decisions(row.cycle)
        assert {d.site: d.alloc_kw for d in decisions} == {
            s: a.alloc_kw for s, a in served.items()
        }
        replies = rec.replies(row.cycle)
        assert len(replies) == 50
        assert {r.outcome for r in replies} <= {"accepted", "closed"}
        rec.close()

    asyncio.run(scenario())


def test_deadline_close_when_sites_stay_silent(
    mosquitto: Any, topic_root: str, tmp_path: Path
) -> None:
    async def scenario() -> None:
        settings = make_settings(mosquitto, topic_root, tmp_path, reply_timeout_s=1.0)
        topics = Topics("c1", topic_root)
        async with running(settings) as coordinator:
            closed = closed_events(coordinator)
            gateways = [
                SimGateway(topics, f"h{i}", mosquitto.host, mosquitto.port,
                           flex_kw=(3.0 if i < 3 else (lambda req: None)), net_export_kw=10.0)
                for i in range(5)
            ]
            await asyncio.gather(*(g.start() for g in gateways))
            await until(lambda: len(coordinator.sites.online_sites()) == 5)
            await until(lambda: coordinator.sites.surplus(
                coordinator.clock.now(), 3600).surplus_kw == pytest.approx(50.0))
            t0 = asyncio.get_running_loop().time()
            await coordinator.start_cycle_now()
            await until(lambda: len(closed) == 1, timeout_s=10)
            waited = asyncio.get_running_loop().time() - t0
            await until(lambda: all(g.closed for g in gateways))
            await asyncio.gather(*(g.stop() for g in gateways))
        result = closed[0]
        assert result.reason == "deadline"
        assert result.replies == 3 and result.sites == 5
        assert result.allocated_kw == pytest.approx(9.0)
        assert waited >= 1.0  # it waited for the deadline, not less
        assert [len(g.allocs) for g in gateways] == [1, 1, 1, 0, 0]
        assert all(len(g.requests) == 1 for g in gateways)
        assert gateways[0].closed[-1].reason == "deadline"

    asyncio.run(scenario())


def test_storm_of_malformed_payloads_changes_nothing(
    mosquitto: Any, topic_root: str, tmp_path: Path
) -> None:
    async def scenario() -> None:
        settings = make_settings(mosquitto, topic_root, tmp_path, reply_timeout_s=2.0)
        topics = Topics("c1", topic_root)
        async with running(settings) as coordinator:
            closed = closed_events(coordinator)
            good = [
                SimGateway(topics, f"g{i}", mosquitto.host, mosquitto.port,
                           flex_kw=4.0, net_export_kw=3.0)
                for i in range(3)
            ]
            await asyncio.gather(*(g.start() for g in good))
            await until(lambda: len(coordinator.sites.online_sites()) == 3)
            await until(lambda: coordinator.sites.surplus(
                coordinator.clock.now(), 3600).surplus_kw == pytest.approx(9.0))
            before = {r.site: (r.online, r.net_export_kw) for r in coordinator.sites.records()}

            attacker = good[0]
            bad: list[tuple[str, bytes]] = []
            for site in ("g0", "g1", "zz"):
                nl = topics.netload(site)
                st = topics.site_status(site)
                bad += [
                    (nl, b"{not json"),
                    (nl, b"[1,2,3]"),
                    (nl, b'"a string"'),
                    (nl, b'{"v":2,"ts":"2026-06-21T12:00:00Z","net_export_kw":1}'),
                    (nl, b'{"ts":"2026-06-21T12:00:00Z","net_export_kw":1}'),
                    (nl, b'{"v":1,"ts":"2026-06-21T12:00:00Z","net_export_kw":NaN}'),
                    (nl, b'{"v":1,"ts":"2026-06-21T12:00:00Z","net_export_kw":1e400}'),
                    (nl, b'{"v":1,"ts":"2026-06-21T12:00:00Z","net_export_kw":"5"}'),
                    (nl, b'{"v":1,"ts":"2026-06-21T12:00:00Z","net_export_kw":5000}'),
                    (nl, b'{"v":1,"ts":"2026-06-21T12:00:00","net_export_kw":1}'),
                    (nl, b'{"v":1,"ts":1750000000,"net_export_kw":1}'),
                    (nl, b'{"v":1,"site":"g2","ts":"2026-06-21T12:00:00Z","net_export_kw":1}'),
                    (nl, b'{"v":1,"ts":"2026-06-21T12:00:00Z","net_export_kw":1,"pad":"'
                     + b"x" * 17000 + b'"}'),
                    (nl, b"\xff\xfe\x00garbage"),
                    (st, b'{"v":1,"state":"maybe"}'),
                    (st, b'{"v":1,"state":"offline","loads":"wh"}'),
                    (topics.flex(site), b'{"v":1,"cycle":"2026-06-21T12:15:00Z","flex_kw":-3}'),
                    (topics.report(site), b'{"v":1,"seq":-1}'),
                ]
            # A topic the coordinator subscribes to but that is not a contract one.
            bad.append((f"{topics.base}/site/BAD!/netload", b"{}"))
            sent = coordinator.stats.received
            for _ in range(5):
                for topic, payload in bad:
                    attacker.publish_raw(topic, payload)
            total = 5 * len(bad)
            await until(lambda: coordinator.stats.received - sent >= total, timeout_s=20)
            assert sum(coordinator.stats.rejected.values()) == total
            assert coordinator.stats.rejected["site_mismatch"] == 15
            assert coordinator.stats.rejected["oversized"] == 15
            after = {r.site: (r.online, r.net_export_kw) for r in coordinator.sites.records()}
            assert after == before, "bad input changed the coordinator's state"

            # A cycle still runs exactly as it would have.
            await coordinator.start_cycle_now()
            await until(lambda: len(closed) == 1)
            await until(lambda: all(g.allocs for g in good[:2]) and len(good[2].closed) == 1)
            await asyncio.gather(*(g.stop() for g in good))
        assert closed[0].surplus_kw == pytest.approx(9.0)
        assert closed[0].allocated_kw == pytest.approx(9.0)
        assert closed[0].reason == "exhausted"
        assert not coordinator.bus.callback_errors

    asyncio.run(scenario())


def test_stale_and_duplicate_replies_are_ignored(
    mosquitto: Any, topic_root: str, tmp_path: Path
) -> None:
    async def scenario() -> None:
        settings = make_settings(mosquitto, topic_root, tmp_path, reply_timeout_s=1.5)
        topics = Topics("c1", topic_root)

        def twice(gw_holder: list[SimGateway]) -> Callable[[CycleRequest], float | None]:
            def reply(req: CycleRequest) -> float | None:
                gw = gw_holder[0]
                stale = req.cycle.replace(year=req.cycle.year - 1)
                gw.publish_raw(topics.flex(gw.site), encode(Flex(cycle=stale, flex_kw=5.0)))
                gw.publish_raw(topics.flex(gw.site), encode(Flex(cycle=req.cycle, flex_kw=1.0)))
                return 4.0  # a duplicate after the real reply
            return reply

        holder: list[SimGateway] = []
        gw = SimGateway(topics, "dup", mosquitto.host, mosquitto.port,
                        flex_kw=twice(holder), net_export_kw=20.0)
        holder.append(gw)
        other = SimGateway(topics, "quiet", mosquitto.host, mosquitto.port,
                           flex_kw=lambda req: None, net_export_kw=0.0)
        async with running(settings) as coordinator:
            closed = closed_events(coordinator)
            await gw.start()
            await other.start()
            await until(lambda: len(coordinator.sites.online_sites()) == 2)
            await until(lambda: coordinator.sites.surplus(
                coordinator.clock.now(), 3600).surplus_kw == pytest.approx(20.0))
            await coordinator.start_cycle_now()
            await until(lambda: len(closed) == 1)
            await asyncio.sleep(0.2)
            await gw.stop()
            await other.stop()
        assert closed[0].reason == "deadline"
        assert [a.alloc_kw for a in gw.allocs] == [1.0]
        assert coordinator.stats.ignored["stale"] == 1
        assert coordinator.stats.ignored["duplicate"] == 1

    asyncio.run(scenario())


def test_status_epoch_and_report_acks(mosquitto: Any, topic_root: str, tmp_path: Path) -> None:
    async def scenario() -> None:
        settings = make_settings(mosquitto, topic_root, tmp_path)
        topics = Topics("c1", topic_root)
        observer = Observer(topics, mosquitto.host, mosquitto.port)
        await observer.start()
        epochs = []
        acks: list[int] = []
        for round_ in range(2):
            async with running(settings) as coordinator:
                epochs.append(coordinator.epoch)
                if round_ == 0:
                    gw = SimGateway(topics, "r1", mosquitto.host, mosquitto.port)
                    await gw.start()
                    for seq in (1, 2, 2, 4):  # a duplicate and a gap
                        rep = Report(seq=seq, period=datetime(2026, 6, 21, 12, 15, tzinfo=UTC),
                                     import_kwh=0.1, export_kwh=0.5, allocated_kwh=0.3,
                                     used_kwh=0.25)
                        gw.publish_raw(topics.report("r1"), encode(rep))
                    await until(lambda gw=gw: len(gw.acks) >= 4)
                    acks = list(gw.acks)
                    await gw.stop()
        await asyncio.sleep(0.2)
        statuses = observer.on(topics.coordinator_status())
        await observer.stop()
        assert epochs[1] == epochs[0] + 1
        # The will may repeat the graceful "offline" if the socket closes before
        # the broker reads DISCONNECT: collapse repeats, the sequence must hold.
        seen = [(s["state"], s["epoch"]) for s in statuses]
        collapsed = [x for i, x in enumerate(seen) if i == 0 or x != seen[i - 1]]
        assert collapsed == [
            ("online", epochs[0]), ("offline", epochs[0]),
            ("online", epochs[1]), ("offline", epochs[1]),
        ]
        rec = Recorder(settings.recorder.url)
        assert rec.report_count("r1") == 3  # 1, 2, 4: the duplicate is stored once
        rec.close()
        # acks: 1, 2, 2 (the duplicate), then still 2 (seq 4 leaves a gap)
        assert acks == [1, 2, 2, 2]

    asyncio.run(scenario())

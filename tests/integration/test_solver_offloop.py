"""A solving strategy runs on the coordinator's solver thread, with unchanged results.

The coordinator executes ``milp`` through a test-only registry entry whose
solver notes the thread it runs on (then solves with HiGHS as usual). Homes
offer whole loads, and a priority weight skips milp's FIFO shortcut, so the
solver is really asked whatever the arrival order.
Every allocation must be recorded before the coordinator tells anyone about it
(a read-only connection checks from the ``allocations`` listener), and the
allocations must be what the pure core decides on the same replies.
"""

from __future__ import annotations

import asyncio
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from simgw import SimGateway, running, until

from central.app import Coordinator
from central.config import load_central_settings
from central.core import STRATEGIES, Offer, get_strategy
from central.core.cycle import LoadOffer
from central.core.shadow import ShadowInputs, run_shadow
from central.core.strategies.milp import Milp
from central.core.strategies.optimum import Problem, solve_with_highs
from central.recorder import Recorder
from protocol import LoadFlex, Topics
from protocol.models import format_utc
from runtime.clock import SystemClock

pytestmark = pytest.mark.integration

LOAD_KW = {"s0": 3.0, "s1": 3.0, "s2": 4.0, "s3": 2.5}
SURPLUS_KW = 7.5


def test_milp_solves_off_the_event_loop_with_the_same_result(
    mosquitto: Any, topic_root: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    solver_threads: list[str] = []

    def noting_solver(problem: Problem, time_limit_s: float) -> list[float]:
        solver_threads.append(threading.current_thread().name)
        return solve_with_highs(problem, time_limit_s)

    monkeypatch.setitem(STRATEGIES, "milp_noted", lambda **o: Milp(solve=noting_solver, **o))
    url = f"sqlite:///{tmp_path / 'records.sqlite'}"
    settings = load_central_settings(
        None, env={},
        mqtt={"host": mosquitto.host, "port": mosquitto.port, "client_id": f"c-{topic_root}"},
        community={"id": "c1", "topic_root": topic_root},
        cycle={"period_s": 3600, "reply_timeout_s": 5.0, "strategy": "milp_noted",
               "strategy_options": {"time_limit_s": 2.0, "priority_weight": 1.0}},
        recorder={"url": url},
    )
    topics = Topics("c1", topic_root)
    unrecorded: list[str] = []
    notified: list[str] = []

    async def scenario() -> tuple[str, dict[str, float]]:
        async with running(Coordinator(settings, SystemClock())) as coordinator:
            reader = Recorder.reader(url)

            def check_recorded(event: str, data: Any) -> None:
                if event != "allocations":
                    return
                oc, decisions = data
                stored = {d.site for d in reader.decisions(oc.cycle_id)}
                unrecorded.extend(d.site for d in decisions if d.site not in stored)
                notified.extend(d.site for d in decisions)

            coordinator.add_listener(check_recorded)
            homes = [
                SimGateway(topics, site, mosquitto.host, mosquitto.port, flex_kw=kw,
                           net_export_kw=SURPLUS_KW if site == "s0" else 0.0,
                           loads=(LoadFlex(id="heater", min_kw=kw, max_kw=kw),))
                for site, kw in LOAD_KW.items()
            ]
            await asyncio.gather(*(g.start() for g in homes))
            await until(lambda: len(coordinator.sites.online_sites()) == len(LOAD_KW), 10)
            await until(lambda: coordinator.sites.surplus(
                coordinator.clock.now(), 3600).surplus_kw == pytest.approx(SURPLUS_KW), 10)
            await coordinator.start_cycle_now(datetime.now(UTC).replace(microsecond=0))
            await until(lambda: all(g.allocs for g in homes) and coordinator.closed_cycles, 15)
            cycle_id = coordinator.closed_cycles[-1].cycle
            sent = {g.site: g.allocs[0].alloc_kw for g in homes}
            await asyncio.gather(*(g.stop() for g in homes))
            reader.close()
            return format_utc(cycle_id), sent

    cycle_id, sent = asyncio.run(scenario())

    assert solver_threads and all(name.startswith("solver") for name in solver_threads)
    assert threading.main_thread().name not in solver_threads
    assert sorted(notified) == sorted(LOAD_KW) and unrecorded == []
    rec = Recorder(url)
    try:
        replies = rec.accepted_replies(cycle_id)
        stored = rec.decisions(cycle_id)
    finally:
        rec.close()
    assert {d.site: d.alloc_kw for d in stored} == pytest.approx(sent)
    # The pure core on the same replies, in the same order, decides the same.
    offers = tuple(
        Offer(r.site, cycle_id, r.flex_kw, r.arrival_s,
              (LoadOffer("heater", r.flex_kw, r.flex_kw),))
        for r in replies
    )
    inputs = ShadowInputs(cycle_id, SURPLUS_KW, frozenset(LOAD_KW), 5.0, offers)
    expected = run_shadow(inputs, "milp", get_strategy("milp", priority_weight=1.0), {})
    assert {t.decision.site: t.decision.alloc_kw for t in expected.decisions} == pytest.approx(sent)
    assert sum(sent.values()) == pytest.approx(7.0)  # 3 + 4: the best whole loads in 7.5

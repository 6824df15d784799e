"""Shadow mode on a live coordinator (real Mosquitto, SQLite records under tmp_path).

The coordinator executes fifo and scores fifo, proportional, milp,
fair_rotation and a strategy that always raises (a test-only registry entry)
on every cycle's replies. Three homes each offer one whole load (3, 3 and
4 kW) on a 7.5 kW surplus: fifo always takes all three replies (no two fill
it) and the strategies really differ.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from simgw import SimGateway, running, until
from structlog.testing import capture_logs

from central.app import Coordinator
from central.config import load_central_settings
from central.core import STRATEGIES
from central.core.cycle import CycleContext
from central.core.strategy import Session, StrategyState
from central.recorder import Recorder
from central.shadow import state_key
from protocol import LoadFlex, Topics
from runtime.clock import SystemClock

pytestmark = pytest.mark.integration

SHADOW = ["fifo", "proportional", "milp", "fair_rotation", "broken"]
LOAD_KW = {"s0": 3.0, "s1": 3.0, "s2": 4.0}
SURPLUS_KW = 7.5


class Broken:
    """A shadow strategy that fails on every cycle."""

    name = "broken"

    def begin(self, context: CycleContext, state: StrategyState) -> Session:
        raise RuntimeError("broken on purpose")


def home(topics: Topics, site: str, broker: Any) -> SimGateway:
    """A home whose reply lists its one whole load (min = max)."""
    kw = LOAD_KW[site]
    return SimGateway(topics, site, broker.host, broker.port, flex_kw=kw,
                      net_export_kw=SURPLUS_KW if site == "s0" else 0.0,
                      loads=(LoadFlex(id="heater", min_kw=kw, max_kw=kw),))


def fifo(replies: list[tuple[str, float]], surplus_kw: float) -> dict[str, float]:
    left, out = surplus_kw, {}
    for site, flex in replies:
        out[site] = min(flex, left)
        left -= out[site]
    return out


def test_shadow_scores_every_cycle_without_touching_it(
    mosquitto: Any, topic_root: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(STRATEGIES, "broken", lambda **options: Broken())
    settings = load_central_settings(
        None, env={},
        mqtt={"host": mosquitto.host, "port": mosquitto.port, "client_id": f"c-{topic_root}"},
        community={"id": "c1", "topic_root": topic_root},
        cycle={"period_s": 3600, "reply_timeout_s": 5.0, "strategy": "fifo", "shadow": SHADOW,
               "shadow_options": {"milp": {"time_limit_s": 1.0}}},
        recorder={"url": f"sqlite:///{tmp_path / 'records.sqlite'}"},
    )
    topics = Topics("c1", topic_root)
    shadow_events: list[tuple[str, list[Any]]] = []
    closed: list[Any] = []

    def listen(event: str, data: Any) -> None:
        if event == "shadow":
            shadow_events.append(data)
        elif event == "cycle_closed":
            closed.append(data[1])

    async def scenario() -> dict[str, list[Any]]:
        async with running(Coordinator(settings, SystemClock())) as coordinator:
            coordinator.add_listener(listen)
            homes = [home(topics, site, mosquitto) for site in LOAD_KW]
            await asyncio.gather(*(g.start() for g in homes))
            await until(lambda: len(coordinator.sites.online_sites()) == 3, 10)
            await until(lambda: coordinator.sites.surplus(
                coordinator.clock.now(), 3600).surplus_kw == pytest.approx(SURPLUS_KW), 10)
            first = datetime.now(UTC).replace(microsecond=0)
            for i in range(2):
                await coordinator.start_cycle_now(first + timedelta(seconds=i))
                await until(lambda n=i: len(shadow_events) == n + 1, 20)
            allocs = {g.site: list(g.allocs) for g in homes}
            await asyncio.gather(*(g.stop() for g in homes))
            return allocs

    with capture_logs() as logs:
        allocs = asyncio.run(scenario())

    assert [c.reason for c in closed] == ["exhausted", "exhausted"]
    rec = Recorder(settings.recorder.url)
    try:
        cycles = rec.last_cycles(5)
        assert len(cycles) == 2
        rows = rec.shadow_scores(cycles[0].cycle, "9999")
        assert len(rows) == 2 * len(SHADOW)  # one row per strategy and cycle
        for cycle in cycles:
            by = {r.strategy: r for r in rows if r.cycle == cycle.cycle}
            assert set(by) == set(SHADOW)
            # The executed allocations are fifo's on the replies as they arrived...
            accepted = [(r.site, r.flex_kw) for r in rec.accepted_replies(cycle.cycle)]
            assert len(accepted) == 3
            expected = fifo(accepted, SURPLUS_KW)
            got = {d.site: d.alloc_kw for d in rec.decisions(cycle.cycle)}
            assert got == pytest.approx(expected)
            sent = {site: a.alloc_kw for site, al in allocs.items() for a in al
                    if a.cycle == datetime.fromisoformat(cycle.cycle)}
            assert sent == pytest.approx(expected)
            assert cycle.allocated_kw == pytest.approx(SURPLUS_KW)
            # ...and fifo's own shadow row says exactly what the live cycle gave.
            assert by["fifo"].status == "ok"
            assert by["fifo"].allocated_kw == pytest.approx(cycle.allocated_kw)
            # The third gets 0.5 kW, too little for its load: usable 3+4 or 3+3.
            assert by["fifo"].usable_kw == pytest.approx(6.0 if accepted[-1][0] == "s2" else 7.0)
            # The others on the same replies.
            assert by["proportional"].allocated_kw == pytest.approx(SURPLUS_KW)
            assert by["proportional"].usable_kw == pytest.approx(0.0)  # 75 % of a whole load
            assert by["proportional"].jain == pytest.approx(
                (2.25 + 2.25 + 3.0) ** 2 / (3 * (2.25**2 * 2 + 9.0)))
            assert by["milp"].allocated_kw == pytest.approx(7.0)  # 3 + 4, whole loads
            assert by["milp"].usable_kw == pytest.approx(7.0) and not by["milp"].fallback
            assert by["fair_rotation"].status == "ok"
            assert by["broken"].status == "error"
            assert "broken on purpose" in (by["broken"].error or "")
            assert all(r.compute_s is not None and r.compute_s >= 0 for r in by.values())
        # fair_rotation's shadow ledger is its own; the executed strategy's state is fifo's.
        ledger = rec.load_strategy_state(state_key("fair_rotation"))["ledger_kwh"]
        assert ledger and set(ledger) <= set(LOAD_KW)
        assert rec.load_strategy_state("fair_rotation") == {}
    finally:
        rec.close()
    events = [e["event"] for e in logs]
    assert events.count("shadow_strategy_failed") == 2
    assert events.count("shadow_recorded") == 2
    assert "batch_failed" not in events

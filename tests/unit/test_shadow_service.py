"""Shadow mode's service side (central/shadow.py) and its records (``shadow_scores``).

The service runs on a thread of its own; a strategy that blocks on a
``threading.Event`` holds a run open, so "the previous run is still going" is
a fact of the test, not a race. SQLite files under tmp_path.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from central.core import Offer, get_strategy
from central.core.cycle import CycleContext
from central.core.shadow import SKIPPED_LATE, ShadowInputs, ShadowRecord
from central.core.strategy import Session, StrategyState
from central.recorder import Recorder
from central.shadow import ShadowService, state_key

AT = datetime(2026, 6, 21, 12, 15, tzinfo=UTC)


def inputs(cycle: str, surplus_kw: float = 3.0) -> ShadowInputs:
    offers = (Offer("a", cycle, 3.0, 1.0), Offer("b", cycle, 3.0, 2.0))
    return ShadowInputs(cycle, surplus_kw, frozenset({"a", "b"}), 10.0, offers)


class Gate:
    """A strategy whose sessions wait for ``open`` before deciding like fifo."""

    name = "gate"

    def __init__(self) -> None:
        self.open = threading.Event()
        self.entered = threading.Event()

    def begin(self, context: CycleContext, state: StrategyState) -> Session:
        self.entered.set()
        if not self.open.wait(10):
            raise TimeoutError("the test never opened the gate")
        return get_strategy("fifo").begin(context, state)


class Broken:
    name = "broken"

    def begin(self, context: CycleContext, state: StrategyState) -> Session:
        raise RuntimeError("solver exploded")


def test_runs_are_recorded_late_ones_skipped_and_failures_kept_apart() -> None:
    gate = Gate()
    written: list[tuple[list[ShadowRecord], dict[str, StrategyState]]] = []
    events: list[tuple[str, Any]] = []

    async def persist(rows: list[ShadowRecord], states: dict[str, StrategyState]) -> None:
        written.append((rows, states))

    async def scenario() -> None:
        service = ShadowService(
            {"gate": gate, "fair_rotation": get_strategy("fair_rotation"), "broken": Broken()},
            {"fair_rotation": {"ledger_kwh": {"b": 1.0}}},
            persist, lambda e, d: events.append((e, d)),
        )
        task = asyncio.create_task(service.run())
        await asyncio.sleep(0)
        service.submit("c1", inputs("c1"))
        await asyncio.to_thread(gate.entered.wait, 10)
        assert service.busy
        service.submit("c2", inputs("c2"))  # c1 still going: c2 is skipped
        gate.open.set()
        while len(written) < 2:
            await asyncio.sleep(0.01)
        assert not service.busy
        service.submit("c3", inputs("c3"))  # c1 done: c3 runs
        while len(written) < 3:
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert service.stopped
        service.submit("c4", inputs("c4"))  # stopped: dropped with a log line, no raise

    with capture_logs() as logs:
        asyncio.run(scenario())
    (c1, c1_states), (c2, c2_states), (c3, _) = written
    by = {r.strategy: r for r in c1}
    assert by["gate"].status == "ok" and by["gate"].allocated_kw == pytest.approx(3.0)
    assert by["broken"].status == "error" and "solver exploded" in (by["broken"].error or "")
    assert by["fair_rotation"].status == "ok"
    # b was ahead in the ledger, so a (owed less) went first and got everything.
    assert c1_states["fair_rotation"]["ledger_kwh"]["a"] == pytest.approx(0.75)
    assert "broken" not in c1_states  # a failed run changes no state
    assert [(r.strategy, r.status, r.error) for r in c2] == [
        ("gate", "skipped", SKIPPED_LATE), ("fair_rotation", "skipped", SKIPPED_LATE),
        ("broken", "skipped", SKIPPED_LATE),
    ]
    assert c2_states == {}
    assert {r.strategy: r.status for r in c3} == {"gate": "ok", "fair_rotation": "ok",
                                                  "broken": "error"}
    assert [d[0] for e, d in events if e == "shadow"] == ["c1", "c2", "c3"]
    names = [entry["event"] for entry in logs]
    assert "shadow_strategy_failed" in names and "shadow_skipped" in names
    assert "shadow_not_run" in names


def test_a_failing_write_is_logged_and_the_service_goes_on() -> None:
    calls = 0

    async def persist(rows: Sequence[ShadowRecord], states: dict[str, StrategyState]) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise OSError("disk full")

    async def scenario() -> ShadowService:
        service = ShadowService({"fifo": get_strategy("fifo")}, {}, persist, lambda e, d: None)
        task = asyncio.create_task(service.run())
        await asyncio.sleep(0)
        for cycle in ("c1", "c2"):
            service.submit(cycle, inputs(cycle))
            while service.busy:
                await asyncio.sleep(0.01)
        task.cancel()
        return service

    with capture_logs() as logs:
        service = asyncio.run(scenario())
    assert calls == 2 and service.recorded == 1
    assert any(e["event"] == "shadow_not_recorded" for e in logs)


def row(cycle: str, strategy: str, allocated: float, surplus: float = 4.0, **kw: Any
        ) -> ShadowRecord:
    base = ShadowRecord(cycle, strategy, "ok", surplus, allocated, allocated * 0.5,
                        allocated / surplus, 2, 0.8, 1.5, False, 0.01, None)
    return base._replace(**kw)


def test_shadow_rows_round_trip_through_the_recorder(tmp_path: Path) -> None:
    rec = Recorder(f"sqlite:///{tmp_path / 'central.db'}")
    c1, c2, c3 = "2026-06-21T12:00:00Z", "2026-06-21T12:15:00Z", "2026-06-22T08:00:00Z"
    rec.record_shadow_scores([row(c1, "milp", 4.0), row(c1, "proportional", 3.0)])
    rec.record_shadow_scores([
        row(c2, "milp", 2.0, fallback=True),
        ShadowRecord.failed(c2, "proportional", 4.0, "error", "ValueError: bad"),
    ])
    rec.record_shadow_scores([row(c3, "milp", 1.0, surplus=2.0),
                              ShadowRecord.failed(c3, "proportional", 2.0, "skipped",
                                                  SKIPPED_LATE)])
    # A cycle scored again is overwritten, not doubled.
    rec.record_shadow_scores([row(c1, "milp", 3.5)])
    rec.record_shadow_scores([])

    day = rec.shadow_scores("2026-06-21T00:00:00Z", "2026-06-22T00:00:00Z")
    assert [(r.cycle, r.strategy) for r in day] == [
        (c1, "milp"), (c1, "proportional"), (c2, "milp"), (c2, "proportional")]
    assert day[0].allocated_kw == 3.5 and day[2].fallback is True and day[0].fallback is False
    assert day[3].status == "error" and day[3].error == "ValueError: bad"
    assert [r.cycle for r in rec.shadow_scores(c1, c3, limit=1)] == [c2]

    last = rec.last_shadow_scores(2)
    assert [(r.cycle, r.strategy) for r in last] == [
        (c2, "milp"), (c2, "proportional"), (c3, "milp"), (c3, "proportional")]

    totals = {t.strategy: t for t in rec.shadow_summary(c1, "2026-06-23T00:00:00Z")}
    milp, prop = totals["milp"], totals["proportional"]
    assert (milp.cycles, milp.errors, milp.skipped, milp.fallbacks) == (3, 0, 0, 1)
    assert milp.surplus_kw == 10.0 and milp.allocated_kw == pytest.approx(6.5)
    assert milp.share == pytest.approx(0.65) and milp.usable_share == pytest.approx(0.325)
    assert milp.sites_served == 6 and milp.jain_mean == pytest.approx(0.8)
    assert (prop.cycles, prop.errors, prop.skipped) == (1, 1, 1)
    assert prop.surplus_kw == 4.0 and prop.share == pytest.approx(0.75)
    assert rec.shadow_summary("2027-01-01T00:00:00Z", "2027-01-02T00:00:00Z") == []
    rec.close()


def test_shadow_states_live_under_their_own_key(tmp_path: Path) -> None:
    rec = Recorder(f"sqlite:///{tmp_path / 'central.db'}")
    rec.save_strategy_state("fair_rotation", {"ledger_kwh": {"x": 1.0}}, AT)
    rec.save_strategy_state(state_key("fair_rotation"), {"ledger_kwh": {"y": 2.0}}, AT)

    async def persist(rows: list[ShadowRecord], states: dict[str, StrategyState]) -> None:
        raise AssertionError("not called")

    service = ShadowService.build(
        ["fair_rotation", "milp"],
        lambda name: {"time_limit_s": 0.5} if name == "milp" else {},
        rec.load_strategy_state, persist, lambda e, d: None,
    )
    assert service.states == {"fair_rotation": {"ledger_kwh": {"y": 2.0}}, "milp": {}}
    assert service.strategies["milp"].time_limit_s == 0.5  # type: ignore[attr-defined]
    assert rec.load_strategy_state("fair_rotation") == {"ledger_kwh": {"x": 1.0}}
    rec.close()

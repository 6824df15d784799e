"""The records a restarted coordinator resumes a cycle from, and the rebuild itself.

The recorder's tests run on both backends (``records_url``: SQLite and PostgreSQL).
"""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from central.core import get_strategy
from central.core.cycle import Decision, Offer
from central.recorder import Recorder, ReplyRow, StoredCycle
from central.resume import rebuild

T0 = datetime(2026, 6, 21, 12, 0, tzinfo=UTC)
CID = "2026-06-21T12:00:00Z"


def open_one(rec: Recorder, *, epoch: int = 1, surplus_kw: float = 5.0) -> bool:
    return rec.open_cycle(
        T0, "c1", epoch, "fifo", T0 + timedelta(seconds=1.5), surplus_kw, 3, 2,
        T0 + timedelta(seconds=61.5), T0 + timedelta(minutes=15), ["s3", "s1", "s2"],
    )


def test_a_cycle_is_recorded_once_and_read_back(records_url: str) -> None:
    rec = Recorder(records_url)
    assert rec.stored_cycle(CID) is None
    assert open_one(rec)
    # Opening the same id again changes nothing (no mixing of two runs).
    assert not open_one(rec, epoch=2, surplus_kw=9.0)
    stored = rec.stored_cycle(CID)
    assert stored == StoredCycle(
        CID, 1, "fifo", T0 + timedelta(seconds=1.5), 5.0, T0 + timedelta(seconds=61.5),
        T0 + timedelta(minutes=15), frozenset({"s1", "s2", "s3"}), None, None,
    )
    assert not stored.closed
    assert [c.cycle for c in rec.unclosed_cycles()] == [CID]
    rec.close()


def test_accepted_replies_in_arrival_order_and_close_once(records_url: str) -> None:
    rec = Recorder(records_url)
    open_one(rec)
    rec.record_step(T0, 1, [ReplyRow("s2", 0.2, 3.0, "accepted"),
                            ReplyRow("s9", 0.3, 1.0, "not_requested")],
                    [Decision("s2", 3.0, 1, 3.0, 0.2)])
    rec.record_step(T0, 1, [ReplyRow("s1", 0.5, 4.0, "accepted"),
                            ReplyRow("s2", 0.6, 3.0, "duplicate")],
                    [Decision("s1", 2.0, 2, 4.0, 0.5)])
    assert [r.site for r in rec.accepted_replies(CID)] == ["s2", "s1"]
    assert [d.site for d in rec.decisions(CID)] == ["s2", "s1"]

    rec.close_cycle(T0, "exhausted", T0 + timedelta(seconds=2), 5.0, 2)
    rec.close_cycle(T0, "deadline", T0 + timedelta(seconds=70), 5.0, 2)  # no second close
    stored = rec.stored_cycle(CID)
    assert stored is not None and stored.closed
    assert stored.close_reason == "exhausted"
    assert stored.site_ids is None  # kept only while open
    assert rec.unclosed_cycles() == []
    rec.close()


def test_an_older_file_gains_the_columns(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    db = sqlite3.connect(path)
    db.execute(
        "CREATE TABLE cycles (cycle TEXT PRIMARY KEY, community TEXT NOT NULL,"
        " epoch INTEGER NOT NULL, strategy TEXT NOT NULL, opened_at TEXT NOT NULL,"
        " surplus_kw REAL NOT NULL, sites INTEGER NOT NULL, contributing INTEGER NOT NULL,"
        " reply_by TEXT, closed_at TEXT, close_reason TEXT, allocated_kw REAL, replies INTEGER)"
    )
    db.execute("INSERT INTO cycles(cycle, community, epoch, strategy, opened_at, surplus_kw,"
               " sites, contributing, reply_by) VALUES (?, 'c1', 3, 'fifo', ?, 4.0, 2, 2, ?)",
               (CID, CID, "2026-06-21T12:01:00Z"))
    db.commit()
    db.close()
    for _ in range(2):  # idempotent
        rec = Recorder(f"sqlite:///{path}")
        stored = rec.stored_cycle(CID)
        assert stored is not None
        assert stored.period_end is None and stored.site_ids is None
        assert stored.reply_by == T0 + timedelta(minutes=1)
        rec.close()


def _stored(**kw: object) -> StoredCycle:
    base: dict[str, object] = {
        "cycle": CID, "epoch": 1, "strategy": "fifo", "opened_at": T0, "surplus_kw": 5.0,
        "reply_by": T0 + timedelta(seconds=60), "period_end": T0 + timedelta(minutes=15),
        "site_ids": frozenset({"s1", "s2", "s3", "s4"}), "closed_at": None,
        "close_reason": None,
    }
    base.update(kw)
    return StoredCycle(**base)  # type: ignore[arg-type]


def test_rebuild_keeps_stored_decisions_and_continues_ranks() -> None:
    replies = [ReplyRow("s2", 0.2, 3.0, "accepted"), ReplyRow("s1", 0.5, 4.0, "accepted")]
    # A stored kW the strategy would not give now (fifo would give s1 min(4, 2) = 2).
    decisions = [Decision("s2", 3.0, 1, 3.0, 0.2), Decision("s1", 1.5, 2, 4.0, 0.5)]
    r = rebuild(_stored(), replies, decisions, get_strategy("fifo"), {}, frozen=False,
                default_deadline_s=60.0)
    assert r.new == [] and r.closed is None
    assert r.mismatched == []
    assert r.cycle.remaining_kw == pytest.approx(0.5)
    assert r.cycle.replies == 2
    assert r.deadline_s == 60.0
    # s2 again (it replies to the request sent again): never decided twice.
    step = r.cycle.offer(Offer("s2", r.period_start, 3.0, 5.0))
    assert [i.reason for i in step.ignored] == ["duplicate"] and step.decisions == []
    step = r.cycle.offer(Offer("s3", r.period_start, 2.0, 6.0))
    assert [(d.site, d.alloc_kw, d.rank) for d in step.decisions] == [("s3", 0.5, 3)]
    assert step.closed == "exhausted"


def test_rebuild_frozen_decides_nothing_new() -> None:
    replies = [ReplyRow("s2", 0.2, 3.0, "accepted"), ReplyRow("s1", 0.5, 1.0, "accepted")]
    decisions = [Decision("s2", 3.0, 1, 3.0, 0.2)]  # s1's decision never committed
    r = rebuild(_stored(), replies, decisions, get_strategy("fifo"), {}, frozen=True,
                default_deadline_s=60.0)
    assert r.new == [] and r.closed is None
    assert r.cycle.allocated_kw == pytest.approx(3.0)
    assert r.cycle.next_wakeup_s() == 60.0
    # Live, the same records decide the reply that has no decision, as on arrival.
    r = rebuild(_stored(), replies, decisions, get_strategy("fifo"), {}, frozen=False,
                default_deadline_s=60.0)
    assert [(d.site, d.alloc_kw, d.rank) for d in r.new] == [("s1", 1.0, 2)]

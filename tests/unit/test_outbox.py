"""The durable report outbox (gateway/outbox.py; PROTOCOL.md: ``report.seq``).

``seq`` increases by one per report and survives restarts; an ``ack`` removes
every report up to its ``seq``; the outbox is bounded and, when full, keeps
the newest reports. Every database lives under ``tmp_path``.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.outbox import Outbox


def payload(seq: int) -> bytes:
    return f'{{"v":1,"seq":{seq}}}'.encode()


def seqs(box: Outbox) -> list[int]:
    return [r.seq for r in box.pending()]


def test_seq_starts_at_one_and_is_handed_to_the_builder(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "outbox.sqlite")
    seen: list[int] = []

    def build(seq: int) -> bytes:
        seen.append(seq)
        return payload(seq)

    first = box.add(build)
    second = box.add(build)
    assert (first.seq, second.seq) == (1, 2)
    assert seen == [1, 2]
    assert [r.payload for r in box.pending()] == [payload(1), payload(2)]
    assert len(box) == 2
    box.close()


def test_seq_and_pending_reports_survive_reopening_the_file(tmp_path: Path) -> None:
    path = tmp_path / "state" / "outbox.sqlite"  # the directory is created
    box = Outbox(path)
    for _ in range(3):
        box.add(payload)
    box.close()
    box = Outbox(path)
    assert seqs(box) == [1, 2, 3]
    assert box.next_seq() == 4
    assert box.add(payload).seq == 4
    box.close()


def test_seq_keeps_increasing_after_everything_was_acknowledged_and_reopened(
    tmp_path: Path,
) -> None:
    path = tmp_path / "outbox.sqlite"
    box = Outbox(path)
    box.add(payload)
    box.add(payload)
    assert box.ack(2) == 2
    assert len(box) == 0
    box.close()
    box = Outbox(path)
    assert box.add(payload).seq == 3  # never reused, even with an empty table
    box.close()


def test_ack_removes_every_report_up_to_its_seq(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite")
    for _ in range(5):
        box.add(payload)
    assert box.ack(3) == 3
    assert seqs(box) == [4, 5]
    assert box.ack(3) == 0  # a repeated ack is harmless
    assert box.ack(0) == 0
    assert box.ack(99) == 2
    assert seqs(box) == []
    box.close()


def test_a_full_outbox_drops_the_oldest_and_keeps_the_newest(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite", max_rows=3)
    for _ in range(7):
        box.add(payload)
    assert seqs(box) == [5, 6, 7]
    assert [r.payload for r in box.pending()] == [payload(5), payload(6), payload(7)]
    assert box.next_seq() == 8
    box.close()


def test_pending_is_in_seq_order_and_honours_its_limit(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite")
    for _ in range(4):
        box.add(payload)
    assert seqs(box)[:2] == [r.seq for r in box.pending(limit=2)] == [1, 2]
    box.close()


def test_a_failing_builder_stores_nothing_and_consumes_no_seq(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite")
    box.add(payload)

    def broken(seq: int) -> bytes:
        raise ValueError(f"cannot encode report {seq}")

    with pytest.raises(ValueError, match="report 2"):
        box.add(broken)
    assert seqs(box) == [1]
    assert box.add(payload).seq == 2
    box.close()


_files = itertools.count()


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.integers(min_value=1, max_value=6),
    st.lists(
        st.one_of(
            st.tuples(st.just("add"), st.integers(1, 3)),
            st.tuples(st.just("ack"), st.integers(0, 30)),
            st.tuples(st.just("reopen"), st.just(0)),
        ),
        max_size=25,
    ),
)
def test_matches_a_model_over_random_adds_acks_and_restarts(
    tmp_path: Path, max_rows: int, ops: list[tuple[str, int]]
) -> None:
    path = tmp_path / f"model-{next(_files)}.sqlite"
    box = Outbox(path, max_rows=max_rows)
    kept: list[int] = []
    last = 0
    for op, n in ops:
        if op == "add":
            for _ in range(n):
                last += 1
                assert box.add(payload).seq == last
                kept = [*kept, last][-max_rows:]
        elif op == "ack":
            removed = box.ack(n)
            assert removed == len([s for s in kept if s <= n])
            kept = [s for s in kept if s > n]
        else:
            box.close()
            box = Outbox(path, max_rows=max_rows)
        assert seqs(box) == kept
        assert box.next_seq() == last + 1
    box.close()

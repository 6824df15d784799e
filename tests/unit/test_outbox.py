"""The durable report outbox (gateway/outbox.py; PROTOCOL.md: ``report.seq``).

``seq`` increases by one per report and survives restarts; an ``ack`` removes
every report up to its ``seq``; the outbox is bounded in rows, bytes and free
disk and, when full, keeps the newest reports, counts the dropped ones and
says so once. Every database lives under ``tmp_path``; the full-disk tests
run on a real 2 MiB tmpfs when root (ids ``[tmpfs]``) and on a simulated
limit otherwise (``[simulated]``: SQLite's ``max_page_count``).
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from central.recorder import Recorder
from gateway.config import load_gateway_settings
from gateway.outbox import QUIET_S, Outbox, OutboxError
from protocol import Report, SiteStatus, Topics, decode, encode
from protocol.settings import ConfigError


def payload(seq: int, dropped_through: int = 0) -> bytes:
    return f'{{"v":1,"seq":{seq},"dropped_through":{dropped_through}}}'.encode()


def seqs(box: Outbox) -> list[int]:
    return [r.seq for r in box.pending()]


def test_seq_starts_at_one_and_is_handed_to_the_builder(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "outbox.sqlite")
    seen: list[int] = []

    def build(seq: int, dropped_through: int) -> bytes:
        seen.append(seq)
        return payload(seq, dropped_through)

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
    # Each report written after a drop carries the highest seq dropped so far.
    assert [r.payload for r in box.pending()] == [payload(5, 2), payload(6, 3), payload(7, 4)]
    assert (box.dropped, box.dropped_through) == (4, 4)
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

    def broken(seq: int, dropped_through: int) -> bytes:
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
    last = dropped = 0
    for op, n in ops:
        if op == "add":
            for _ in range(n):
                last += 1
                assert box.add(payload).seq == last
                dropped += max(0, len(kept) + 1 - max_rows)
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
        assert box.dropped == dropped and len(box) == len(kept)
    box.close()


def test_max_rows_drops_match_the_model_over_random_adds_and_acks(tmp_path: Path) -> None:
    """The drop counter and mark are what a model says, and survive reopening."""
    path = tmp_path / "o.sqlite"
    box = Outbox(path, max_rows=4)
    for _ in range(6):
        box.add(payload)
    box.ack(3)  # 3..6 were kept; 3 is acknowledged, 1-2 were dropped
    assert (seqs(box), box.dropped, box.dropped_through) == ([4, 5, 6], 2, 2)
    box.close()
    box = Outbox(path, max_rows=4)
    assert (box.dropped, box.dropped_through, len(box)) == (2, 2, 3)
    assert box.add(payload).payload == payload(7, 2)
    box.close()


# Bounded by bytes ------------------------------------------------------------------------


def big(seq: int, dropped_through: int) -> bytes:
    return payload(seq, dropped_through) + b" " * 1000


def test_max_bytes_drops_the_oldest_until_the_new_report_fits(tmp_path: Path) -> None:
    size = len(big(10, 0))
    box = Outbox(tmp_path / "o.sqlite", max_rows=1000, max_bytes=5 * size)
    for _ in range(12):
        box.add(big)
        assert box.size_bytes <= 5 * size
    assert len(box) == 5 and seqs(box) == [8, 9, 10, 11, 12]
    assert box.dropped == 7 and box.dropped_through == 7
    stats = box.stats()
    assert (stats.rows, stats.bytes, stats.dropped) == (5, box.size_bytes, 7)
    box.close()
    # The byte count is rebuilt from the file.
    box = Outbox(tmp_path / "o.sqlite", max_rows=1000, max_bytes=5 * size)
    assert box.size_bytes == stats.bytes
    box.close()


def test_one_warning_per_episode_and_one_line_when_it_ends(tmp_path: Path) -> None:
    now = [0.0]
    box = Outbox(tmp_path / "o.sqlite", max_rows=3, monotonic=lambda: now[0])
    with capture_logs() as logs:
        for _ in range(10):
            box.add(payload)  # 7 reports dropped, one at a time
        box.ack(10)
        box.add(payload)  # room again, but too soon to call the episode over
        now[0] += QUIET_S
        box.add(payload)  # an hour without a drop: the episode ends
    events = [(e["event"], e["log_level"]) for e in logs]
    assert events == [("outbox_full_dropping_oldest", "warning"), ("outbox_drops_ended", "info")]
    assert logs[0]["reason"] == "max_rows"
    assert logs[1]["dropped"] == 7 and logs[1]["dropped_total"] == 7
    box.close()


# A file system that fills up ------------------------------------------------------------
# As root the tests mount a real 2 MiB tmpfs (mount -t tmpfs -o size=2m); otherwise
# the full disk is simulated by SQLite's max_page_count (the file cannot grow) and
# the short disk by a reserve larger than the free space of tmp_path.


def _can_mount_tmpfs() -> bool:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    probe = Path(tempfile.mkdtemp(prefix="ems-tmpfs-probe-"))
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(probe)],
                              capture_output=True)
        if done.returncode != 0:
            return False
        subprocess.run(["umount", str(probe)], check=True, capture_output=True)
        return True
    finally:
        probe.rmdir()


# Both when root (the simulation is what a non-root run gets), else the simulation.
SMALL_FS_KINDS = ["tmpfs", "simulated"] if _can_mount_tmpfs() else ["simulated"]


class SmallFs:
    """A 2 MiB file system for the outbox (tmpfs), or the simulated limits."""

    def __init__(self, root: Path, kind: str) -> None:
        self.root = root
        self.kind = kind
        self.ballast = root / "ballast"
        root.mkdir()
        if self.kind == "tmpfs":
            subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(root)],
                           check=True, capture_output=True)

    def leave_free(self, box: Outbox, free_bytes: int) -> None:
        """Fill the file system until about ``free_bytes`` are left."""
        if self.kind == "tmpfs":
            fill = shutil.disk_usage(self.root).free - free_bytes
            with self.ballast.open("ab") as f:
                f.write(b"\0" * max(0, fill))
        else:
            # The file may not grow past its size now, plus free_bytes.
            db = box._db
            pages = db.execute("PRAGMA page_count").fetchone()[0]
            size = db.execute("PRAGMA page_size").fetchone()[0]
            db.execute(f"PRAGMA max_page_count={pages + free_bytes // size}")

    def make_room(self, box: Outbox) -> None:
        if self.kind == "tmpfs":
            self.ballast.unlink()
        else:
            box._db.execute("PRAGMA max_page_count=1073741823")

    def close(self) -> None:
        if self.kind == "tmpfs":
            subprocess.run(["umount", str(self.root)], check=True, capture_output=True)


@pytest.fixture(params=SMALL_FS_KINDS)
def small_fs(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SmallFs]:
    fs = SmallFs(tmp_path / "fs", request.param)
    try:
        yield fs
    finally:
        fs.close()


def test_a_short_disk_keeps_the_outbox_from_growing(small_fs: SmallFs) -> None:
    """Below the reserve each new report takes the oldest one's place."""
    kind = small_fs.kind
    if kind == "tmpfs":
        reserve = 512 * 1024
        box = Outbox(small_fs.root / "o.sqlite", disk_reserve_bytes=reserve)
    else:  # a reserve above what tmp_path's file system has free is always short
        box = Outbox(small_fs.root / "o.sqlite", disk_reserve_bytes=0)
    for _ in range(20):
        box.add(big)
    if kind == "tmpfs":
        small_fs.leave_free(box, reserve // 2)
    else:
        box.disk_reserve_bytes = (box.free_bytes() or 0) + 2**30
    with capture_logs() as logs:
        for _ in range(200):
            box.add(big)
    assert len(box) == 20 and seqs(box) == list(range(201, 221))
    assert box.dropped == 200 and box.dropped_through == 200
    assert [e["event"] for e in logs] == ["outbox_full_dropping_oldest"]
    assert logs[0]["reason"] == "disk_reserve"
    small_fs.make_room(box)
    box.disk_reserve_bytes = 0
    box.add(big)
    assert len(box) == 21
    box.close()


def test_a_full_disk_drops_the_oldest_or_fails_cleanly_and_resumes_with_room(
    small_fs: SmallFs,
) -> None:
    """A write that hits the full disk frees room by dropping the oldest and tries
    again; where even that fails (tmpfs: SQLite's WAL cannot grow, faults §0.4) it
    raises ``OutboxError`` having written nothing."""
    kind = small_fs.kind
    path = small_fs.root / "o.sqlite"
    box = Outbox(path, disk_reserve_bytes=0)
    for _ in range(10):
        box.add(big)
    small_fs.leave_free(box, 0)
    failures = 0
    with capture_logs() as logs:
        for _ in range(300):
            before = box.next_seq()
            try:
                assert box.add(big).seq == before
            except OutboxError as exc:
                failures += 1
                assert exc.reason == "disk_full"
                assert box.next_seq() == before  # nothing written, no seq consumed
    events = [e["event"] for e in logs]
    assert failures or box.dropped, f"the {kind} file system never filled up"
    # One line per episode, whichever way it went.
    assert events.count("outbox_write_failed") == (1 if failures else 0)
    assert events.count("outbox_full_dropping_oldest") == (1 if box.dropped else 0)
    if box.dropped:
        assert next(e for e in logs if e["event"] == "outbox_full_dropping_oldest")[
            "reason"] == "disk_full"
    assert box.write_failures == failures
    assert box._db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    kept = seqs(box)
    assert kept == sorted(kept) and kept[-1] == box.next_seq() - 1
    assert len(kept) + box.dropped == box.next_seq() - 1  # every seq: kept or counted
    small_fs.make_room(box)
    nxt = box.add(big)
    assert nxt.seq == kept[-1] + 1
    box.close()
    box = Outbox(path)
    assert seqs(box)[-1] == nxt.seq
    box.close()


# What the coordinator does with the drop mark ----------------------------------------------


def test_the_recorder_acknowledges_past_the_reports_an_outbox_dropped(tmp_path: Path) -> None:
    rec = Recorder(f"sqlite:///{tmp_path / 'records.sqlite'}")
    period = datetime(2026, 6, 21, 12, tzinfo=UTC)

    def record(seq: int, dropped_through: int | None = None) -> int:
        return rec.record_report("s1", seq, period, 0.0, 0.0, 0.0, 0.0, period, dropped_through)

    assert record(1) == 1
    assert record(2) == 2
    assert record(6) == 2  # 3-5 missing: the ack waits for them
    assert record(7, dropped_through=5) == 7  # 3-5 were dropped at the gateway: past them
    assert record(7, dropped_through=5) == 7  # idempotent
    assert record(9, dropped_through=12) == 7  # a mark at or past its own seq is nonsense
    assert rec.report_count("s1") == 5
    rec.close()


def test_a_report_and_a_status_carry_the_outbox_fields_only_when_set() -> None:
    report = Report(seq=3, period=datetime(2026, 6, 21, 12, tzinfo=UTC), import_kwh=0.0,
                    export_kwh=0.0, allocated_kwh=0.0, used_kwh=0.0)
    assert b"dropped_through" not in encode(report)
    marked = report.model_copy(update={"dropped_through": 2})
    route = Topics("c1").parse(Topics("c1").report("s1"))
    assert route is not None
    assert decode(route, encode(marked)) == marked
    status = SiteStatus(state="online", outbox_pending=4, reports_dropped=2)
    assert orjson.loads(encode(status))["reports_dropped"] == 2
    assert b"outbox" not in encode(SiteStatus(state="offline"))


def test_outbox_bounds_are_configured_with_errors_naming_the_key() -> None:
    base = {"community": {"id": "c1"}, "site": {"id": "s1"}}
    settings = load_gateway_settings(None, env={}, **base)
    assert (settings.outbox.max_rows, settings.outbox.max_bytes,
            settings.outbox.disk_reserve_bytes) == (50_000, 32 * 2**20, 64 * 2**20)
    with pytest.raises(ConfigError) as err:
        load_gateway_settings(None, env={}, **base,
                              outbox={"max_rows": 0, "max_bytes": 10, "reserve": 1})
    keys = [key for key, _ in err.value.problems]
    assert keys == ["[outbox] max_rows", "[outbox] max_bytes", "[outbox] reserve"]

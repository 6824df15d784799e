"""The durable outbox of period reports (SQLite, WAL, synchronous=FULL).

A report must never be lost (PROTOCOL.md): each gets the next ``seq`` (kept in
the database, so it survives restarts), is committed before it is sent, and
is deleted only when the coordinator's ``ack`` covers it.

A box on a small SD card must not fill it, and a full disk must not stop the
gateway (faults §0.3-0.4: a full disk cost Mosquitto its whole queue, and
once SQLite's WAL hits it even a DELETE fails). So the outbox is bounded three
ways, checked before each write:

- ``max_rows`` reports and ``max_bytes`` of stored payloads;
- ``disk_reserve_bytes``: while the file system holding the outbox has less
  free space than this, the outbox does not grow (each new report replaces
  the oldest ones), so the reserve is what SQLite still has for its journal.

Over a bound it drops the OLDEST reports to keep the newest, counts them
(``dropped``, persisted), remembers the highest seq it dropped
(``dropped_through``, which each later report carries so the coordinator can
acknowledge past the gap) and logs one warning per episode, not one per
report (an episode ends after ``QUIET_S`` without a drop). A write that
fails anyway (``SQLITE_FULL``, ``ENOSPC``, an I/O error) drops the oldest and
tries once more; if that fails too it raises
``OutboxError`` and stores nothing: the gateway keeps the report in memory
and tries again at the next period.
"""

from __future__ import annotations

import contextlib
import shutil
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import structlog

from gateway.errors import GatewayError

log = structlog.get_logger(__name__)

MIB = 1024 * 1024
DEFAULT_MAX_ROWS = 50_000
DEFAULT_MAX_BYTES = 32 * MIB
DEFAULT_DISK_RESERVE_BYTES = 64 * MIB
# Rows dropped at once when a write failed without a known cause (a full disk
# that the reserve check did not see coming): enough to free a few pages.
_EMERGENCY_DROP_ROWS = 64

# An episode of drops ends (one info line with its count) at the first report
# stored without a drop this long after the last drop: a disk that fills again
# and again makes one warning, not one per report.
QUIET_S = 3600.0

Builder = Callable[[int, int], bytes]
"""``build(seq, dropped_through) -> payload``: the report with its seq and the drop mark."""


class OutboxError(GatewayError):
    """A report could not be stored (disk full, I/O error); nothing was written."""

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class PendingReport:
    seq: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class OutboxStats:
    """What the gateway shows of its outbox (site status, logs)."""

    rows: int
    bytes: int
    dropped: int
    dropped_through: int
    write_failures: int


class Outbox:
    """Reports waiting for the coordinator's acknowledgement."""

    def __init__(
        self,
        path: Path | str,
        max_rows: int = DEFAULT_MAX_ROWS,
        max_bytes: int = DEFAULT_MAX_BYTES,
        disk_reserve_bytes: int = DEFAULT_DISK_RESERVE_BYTES,
        *,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_rows < 1 or max_bytes < 1 or disk_reserve_bytes < 0:
            raise ValueError("max_rows and max_bytes must be positive, the reserve not negative")
        self.path = str(path)
        self.max_rows = max_rows
        self.max_bytes = max_bytes
        self.disk_reserve_bytes = disk_reserve_bytes
        self._dir = None if self.path == ":memory:" else Path(self.path).resolve().parent
        self.write_failures = 0
        self._episode: str | None = None  # why reports are being dropped, while they are
        self._episode_dropped = 0
        self._last_drop_s = 0.0
        self._monotonic = monotonic
        self._failing = False
        try:
            if self._dir is not None:
                self._dir.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            # A small WAL, cut back after checkpoints: reports are a few hundred
            # bytes, and what the WAL holds on to is taken from the reserve.
            self._db.execute("PRAGMA wal_autocheckpoint=64")
            self._db.execute("PRAGMA journal_size_limit=1048576")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS outbox (seq INTEGER PRIMARY KEY, payload BLOB NOT NULL)"
            )
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL)"
            )
            rows, size = self._db.execute(
                "SELECT COUNT(*), COALESCE(SUM(LENGTH(payload)), 0) FROM outbox"
            ).fetchone()
        except sqlite3.Error as exc:
            raise GatewayError(f"cannot open the report outbox at {self.path}: {exc}") from exc
        self._rows = int(rows)
        self._bytes = int(size)
        self.dropped = self._meta("dropped")
        self.dropped_through = self._meta("dropped_through")

    # Reading -------------------------------------------------------------------------
    def _meta(self, key: str) -> int:
        row = self._db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return int(row[0]) if row else 0

    def next_seq(self) -> int:
        return self._meta("last_seq") + 1

    def pending(self, limit: int = 1000) -> list[PendingReport]:
        rows = self._db.execute(
            "SELECT seq, payload FROM outbox ORDER BY seq LIMIT ?", (limit,)
        ).fetchall()
        return [PendingReport(int(s), bytes(p)) for s, p in rows]

    def __len__(self) -> int:
        return self._rows

    @property
    def size_bytes(self) -> int:
        """Bytes of stored payloads (the file is somewhat larger: pages, index, WAL)."""
        return self._bytes

    def stats(self) -> OutboxStats:
        return OutboxStats(self._rows, self._bytes, self.dropped, self.dropped_through,
                           self.write_failures)

    def free_bytes(self) -> int | None:
        """Free space of the file system holding the outbox (None in memory)."""
        if self._dir is None:
            return None
        try:
            return shutil.disk_usage(self._dir).free
        except OSError:
            return None

    # Writing -------------------------------------------------------------------------
    def add(self, build: Builder) -> PendingReport:
        """Take the next seq, build the payload with it, store it; drop the oldest if need be.

        Raises ``OutboxError`` when the report could not be stored (nothing
        written, no seq consumed); an exception from ``build`` propagates the same way.
        """
        try:
            return self._add(build)
        except sqlite3.Error as first:
            reason = _failure_reason(first)
            # Make room the only way a full disk allows: free pages inside the file.
            try:
                self._drop_oldest_now(_EMERGENCY_DROP_ROWS, reason)
                return self._add(build)
            except sqlite3.Error as second:
                self.write_failures += 1
                if not self._failing:
                    self._failing = True
                    log.warning("outbox_write_failed", reason=reason, error=str(second),
                                path=self.path, rows=self._rows, free_bytes=self.free_bytes())
                raise OutboxError(f"cannot store a report in {self.path}: {second}",
                                  reason=reason) from second

    def _add(self, build: Builder) -> PendingReport:
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            seq = self.next_seq()
            payload = build(seq, self.dropped_through)
            cut, why = self._cut_for(len(payload))
            if cut is not None:
                dropped, freed = self._delete_through(cut)
                payload = build(seq, cut)  # carries the new mark: the coordinator skips the gap
            else:
                dropped = freed = 0
            db.execute("INSERT INTO outbox(seq, payload) VALUES (?, ?)", (seq, payload))
            self._set_meta("last_seq", seq)
            if dropped:
                self._set_meta("dropped", self.dropped + dropped)
                self._set_meta("dropped_through", cut)  # type: ignore[arg-type]
            db.execute("COMMIT")
        except BaseException:
            _rollback(db)
            raise
        self._rows += 1 - dropped
        self._bytes += len(payload) - freed
        if dropped:
            assert cut is not None and why is not None
            self._count_drops(dropped, cut, why)
        elif self._episode is not None and self._monotonic() - self._last_drop_s >= QUIET_S:
            log.info("outbox_drops_ended", reason=self._episode, dropped=self._episode_dropped,
                     dropped_total=self.dropped, rows=self._rows)
            self._episode = None
            self._episode_dropped = 0
        if self._failing:
            self._failing = False
            log.info("outbox_write_recovered", rows=self._rows, failures=self.write_failures)
        return PendingReport(seq, payload)

    def _cut_for(self, size: int) -> tuple[int | None, str | None]:
        """The highest seq to drop so ``size`` more bytes fit, and why (None: nothing)."""
        rows_over = self._rows + 1 - self.max_rows
        bytes_over = self._bytes + size - self.max_bytes
        why = None
        if rows_over > 0:
            why = "max_rows"
        elif bytes_over > 0:
            why = "max_bytes"
        free = self.free_bytes()
        if free is not None and free < self.disk_reserve_bytes and self._rows:
            # The file must not grow: the new report takes the place of the oldest
            # (SQLite reuses the freed page space; reports are about the same size).
            rows_over = max(rows_over, 1)
            why = why or "disk_reserve"
        if why is None or not self._rows:
            return None, None
        cut = None
        freed = 0
        rows = self._db.execute("SELECT seq, LENGTH(payload) FROM outbox ORDER BY seq")
        for dropped, (seq, length) in enumerate(rows):
            if dropped >= rows_over and freed >= bytes_over:
                break
            cut = int(seq)
            freed += int(length)
        return cut, why

    def _delete_through(self, cut: int) -> tuple[int, int]:
        count, size = self._db.execute(
            "SELECT COUNT(*), COALESCE(SUM(LENGTH(payload)), 0) FROM outbox WHERE seq <= ?",
            (cut,),
        ).fetchone()
        self._db.execute("DELETE FROM outbox WHERE seq <= ?", (cut,))
        return int(count), int(size)

    def _drop_oldest_now(self, rows: int, why: str) -> None:
        """After a failed write: drop up to ``rows`` oldest reports in their own transaction."""
        row = self._db.execute(
            "SELECT MAX(seq) FROM (SELECT seq FROM outbox ORDER BY seq LIMIT ?)", (rows,)
        ).fetchone()
        if row is None or row[0] is None:
            return
        cut = int(row[0])
        self._db.execute("BEGIN IMMEDIATE")
        try:
            dropped, freed = self._delete_through(cut)
            self._set_meta("dropped", self.dropped + dropped)
            self._set_meta("dropped_through", max(cut, self.dropped_through))
            self._db.execute("COMMIT")
        except BaseException:
            _rollback(self._db)
            raise
        self._rows -= dropped
        self._bytes -= freed
        self._count_drops(dropped, max(cut, self.dropped_through), why)

    def _count_drops(self, dropped: int, cut: int, why: str) -> None:
        self.dropped += dropped
        self.dropped_through = cut
        self._episode_dropped += dropped
        self._last_drop_s = self._monotonic()
        if self._episode is None:
            # One warning per episode; outbox_drops_ended tells how many it cost.
            self._episode = why
            log.warning("outbox_full_dropping_oldest", reason=why, dropped=dropped,
                        dropped_through=cut, rows=self._rows, bytes=self._bytes,
                        max_rows=self.max_rows, max_bytes=self.max_bytes,
                        free_bytes=self.free_bytes(), disk_reserve_bytes=self.disk_reserve_bytes)

    def _set_meta(self, key: str, value: int) -> None:
        self._db.execute(
            "INSERT INTO meta(key, value) VALUES (?, ?)"
            " ON CONFLICT(key) DO UPDATE SET value=excluded.value",
            (key, value),
        )

    def ack(self, seq: int) -> int:
        """The coordinator recorded everything up to ``seq``: forget it. Returns rows removed.

        On a full disk even a DELETE can fail (faults §0.4): the rows stay and
        the next ack removes them; this never raises.
        """
        try:
            size = self._db.execute(
                "SELECT COUNT(*), COALESCE(SUM(LENGTH(payload)), 0) FROM outbox WHERE seq <= ?",
                (seq,),
            ).fetchone()
            cur = self._db.execute("DELETE FROM outbox WHERE seq <= ?", (seq,))
        except sqlite3.Error as exc:
            log.warning("outbox_ack_not_applied", seq=seq, error=str(exc),
                        reason=_failure_reason(exc))
            return 0
        self._rows -= int(size[0])
        self._bytes -= int(size[1])
        return cur.rowcount

    def close(self) -> None:
        self._db.close()


def _rollback(db: sqlite3.Connection) -> None:
    # SQLite may have rolled back already (SQLITE_FULL can end the transaction).
    with contextlib.suppress(sqlite3.Error):
        db.execute("ROLLBACK")


def _failure_reason(exc: sqlite3.Error) -> str:
    """``disk_full`` for SQLITE_FULL or ENOSPC, ``io_error`` otherwise."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code == sqlite3.SQLITE_FULL or "full" in str(exc).lower():
        return "disk_full"
    return "io_error"

"""The durable outbox of period reports (SQLite, WAL, synchronous=FULL).

A report must never be lost (PROTOCOL.md): each gets the next ``seq`` (kept in
the database, so it survives restarts), is committed before it is sent, and
is deleted only when the coordinator's ``ack`` covers it. The outbox is
bounded in rows; when full it drops the oldest and says so.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path

import structlog

from gateway.errors import GatewayError

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class PendingReport:
    seq: int
    payload: bytes


class Outbox:
    """Reports waiting for the coordinator's acknowledgement."""

    def __init__(self, path: Path | str, max_rows: int = 10_000) -> None:
        self.path = str(path)
        self.max_rows = max_rows
        try:
            if self.path != ":memory:":
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS outbox (seq INTEGER PRIMARY KEY, payload BLOB NOT NULL)"
            )
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL)"
            )
        except sqlite3.Error as exc:
            raise GatewayError(f"cannot open the report outbox at {self.path}: {exc}") from exc

    def next_seq(self) -> int:
        row = self._db.execute("SELECT value FROM meta WHERE key='last_seq'").fetchone()
        return (int(row[0]) if row else 0) + 1

    def add(self, build: object) -> PendingReport:
        """Take the next seq, build the payload with it (``build(seq) -> bytes``), store it."""
        assert callable(build)
        self._db.execute("BEGIN IMMEDIATE")
        try:
            seq = self.next_seq()
            payload = build(seq)
            self._db.execute("INSERT INTO outbox(seq, payload) VALUES (?, ?)", (seq, payload))
            self._db.execute(
                "INSERT INTO meta(key, value) VALUES ('last_seq', ?)"
                " ON CONFLICT(key) DO UPDATE SET value=excluded.value",
                (seq,),
            )
            count = self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
            if count > self.max_rows:
                dropped = count - self.max_rows
                self._db.execute(
                    "DELETE FROM outbox WHERE seq IN (SELECT seq FROM outbox ORDER BY seq LIMIT ?)",
                    (dropped,),
                )
                log.error("outbox_full_dropped_oldest", dropped=dropped, kept=self.max_rows)
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        return PendingReport(seq, payload)

    def ack(self, seq: int) -> int:
        """The coordinator recorded everything up to ``seq``: forget it. Returns rows removed."""
        cur = self._db.execute("DELETE FROM outbox WHERE seq <= ?", (seq,))
        return cur.rowcount

    def pending(self, limit: int = 1000) -> list[PendingReport]:
        rows = self._db.execute(
            "SELECT seq, payload FROM outbox ORDER BY seq LIMIT ?", (limit,)
        ).fetchall()
        return [PendingReport(int(s), bytes(p)) for s, p in rows]

    def __len__(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])

    def close(self) -> None:
        self._db.close()

"""The coordinator's records in SQLite: cycles, replies, decisions, reports, grid overrides.

WAL with ``synchronous=FULL``: a committed decision survives a power cut
(sqlite.org, "pragma synchronous": under NORMAL a WAL commit may roll back
after a power loss). Every decision is committed before its ``alloc`` is
published. Decisions that arrive together (one burst drained from the queue)
share one transaction, so a 100k-reply cycle costs hundreds of fsyncs, not
100k, without publishing anything before it is durable (group commit).

Synchronous on purpose: the coordinator calls it from one dedicated thread
(``asyncio`` never blocks on it); the ``ems`` tool calls it directly.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any

from central.core.cycle import Decision
from central.errors import RecorderError
from protocol.models import format_utc

SCHEMA_VERSION = 1

_SCHEMA = [
    """CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS cycles (
        cycle TEXT PRIMARY KEY,
        community TEXT NOT NULL,
        epoch INTEGER NOT NULL,
        strategy TEXT NOT NULL,
        opened_at TEXT NOT NULL,
        surplus_kw REAL NOT NULL,
        sites INTEGER NOT NULL,
        contributing INTEGER NOT NULL,
        reply_by TEXT,
        closed_at TEXT,
        close_reason TEXT,
        allocated_kw REAL,
        replies INTEGER
    )""",
    """CREATE TABLE IF NOT EXISTS replies (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        cycle TEXT NOT NULL,
        site TEXT NOT NULL,
        arrival_s REAL NOT NULL,
        flex_kw REAL NOT NULL,
        outcome TEXT NOT NULL
    )""",
    """CREATE INDEX IF NOT EXISTS replies_cycle ON replies (cycle)""",
    """CREATE TABLE IF NOT EXISTS decisions (
        cycle TEXT NOT NULL,
        site TEXT NOT NULL,
        alloc_kw REAL NOT NULL,
        rank INTEGER NOT NULL,
        flex_kw REAL NOT NULL,
        arrival_s REAL NOT NULL,
        epoch INTEGER NOT NULL,
        PRIMARY KEY (cycle, site)
    )""",
    """CREATE TABLE IF NOT EXISTS reports (
        site TEXT NOT NULL,
        seq INTEGER NOT NULL,
        period TEXT NOT NULL,
        import_kwh REAL NOT NULL,
        export_kwh REAL NOT NULL,
        allocated_kwh REAL NOT NULL,
        used_kwh REAL NOT NULL,
        received_at TEXT NOT NULL,
        PRIMARY KEY (site, seq)
    )""",
    """CREATE TABLE IF NOT EXISTS report_acks (
        site TEXT PRIMARY KEY,
        acked_seq INTEGER NOT NULL
    )""",
    # Manual overrides of one hour's grid level (admin/signal/set, `ems signal
    # set`). Added after schema 1; CREATE IF NOT EXISTS adds it to older files.
    """CREATE TABLE IF NOT EXISTS grid_overrides (
        day TEXT NOT NULL,
        hour INTEGER NOT NULL,
        level INTEGER NOT NULL,
        set_at TEXT NOT NULL,
        PRIMARY KEY (day, hour)
    )""",
    # What a strategy carries from cycle to cycle (e.g. fair_rotation's ledger), as
    # JSON, one row per strategy name, so a restart does not reset fairness.
    # Added after schema 1; CREATE IF NOT EXISTS adds it to older files.
    """CREATE TABLE IF NOT EXISTS strategy_states (
        strategy TEXT PRIMARY KEY,
        state TEXT NOT NULL,
        saved_at TEXT NOT NULL
    )""",
    # Reports by period: the operator page sums a cycle's measured export, and the
    # CSV export reads a date range. Added after schema 1; IF NOT EXISTS adds it.
    """CREATE INDEX IF NOT EXISTS reports_period ON reports (period)""",
]

# Columns added to ``cycles`` after schema 1 (ALTER TABLE when missing): what a
# restarted coordinator needs to resume a cycle it did not close (faults §3,
# "Coordinator crash mid-cycle"). ``site_ids`` is the JSON list of the sites
# asked; it is kept only while the cycle is open (100k ids are ~1 MB).
_CYCLE_COLUMNS_ADDED = (
    ("period_end", "TEXT"),
    ("site_ids", "TEXT"),
)


@dataclass(frozen=True, slots=True)
class ReplyRow:
    """One reply as received: accepted, or ignored with its reason."""

    site: str
    arrival_s: float
    flex_kw: float
    outcome: str  # "accepted" or the reason it was ignored


@dataclass(frozen=True, slots=True)
class CycleRow:
    """One recorded cycle."""

    cycle: str
    epoch: int
    strategy: str
    opened_at: str
    surplus_kw: float
    sites: int
    contributing: int
    reply_by: str | None
    closed_at: str | None
    close_reason: str | None
    allocated_kw: float | None
    replies: int | None


@dataclass(frozen=True, slots=True)
class StoredCycle:
    """What the records hold of one cycle's inputs: enough to resume it after a crash."""

    cycle: str
    epoch: int
    strategy: str
    opened_at: datetime
    surplus_kw: float
    reply_by: datetime | None  # None: closed at once (no surplus, nobody online)
    period_end: datetime | None  # None: recorded before it was kept
    site_ids: frozenset[str] | None  # None: closed, or recorded before they were kept
    closed_at: str | None
    close_reason: str | None

    @property
    def closed(self) -> bool:
        return self.closed_at is not None


@dataclass(frozen=True, slots=True)
class CycleHistoryRow:
    """One cycle for the operator's charts: surplus, allocated, and reported export."""

    cycle: str
    surplus_kw: float
    allocated_kw: float | None
    replies: int | None
    sites: int
    close_reason: str | None
    export_kwh: float | None  # sum of the sites' reports for this period (None: none yet)
    reports: int


@dataclass(frozen=True, slots=True)
class ExportTable:
    """How one table is exported: its columns, its time column and its unique sort key."""

    columns: tuple[str, ...]
    time_column: str
    key: tuple[str, ...]


# CSV exports (central/web): one table each, a time range on ``time_column``,
# pages in ``key`` order (keyset pagination, so a page costs the same late in a
# large range as early). ``decisions`` has no time of its own: its cycle is one.
EXPORT_TABLES: dict[str, ExportTable] = {
    "cycles": ExportTable(
        ("cycle", "community", "epoch", "strategy", "opened_at", "surplus_kw", "sites",
         "contributing", "reply_by", "closed_at", "close_reason", "allocated_kw", "replies"),
        "cycle",
        ("cycle",),
    ),
    "decisions": ExportTable(
        ("cycle", "site", "alloc_kw", "rank", "flex_kw", "arrival_s", "epoch"),
        "cycle",
        ("cycle", "rank", "site"),
    ),
    "reports": ExportTable(
        ("site", "seq", "period", "import_kwh", "export_kwh", "allocated_kwh", "used_kwh",
         "received_at"),
        "period",
        ("period", "site", "seq"),
    ),
}


def _path_of(url: str) -> Path:
    return Path(url.removeprefix("sqlite:///"))


class Recorder:
    """SQLite records of one coordinator."""

    def __init__(self, url: str) -> None:
        self.url = url
        path = _path_of(url)
        try:
            if str(path) != ":memory:":
                path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA busy_timeout=5000")
            with self._tx():
                for stmt in _SCHEMA:
                    self._db.execute(stmt)
                have = {row[1] for row in self._db.execute("PRAGMA table_info(cycles)")}
                for column, kind in _CYCLE_COLUMNS_ADDED:
                    if column not in have:
                        self._db.execute(f"ALTER TABLE cycles ADD COLUMN {column} {kind}")
                self._db.execute(
                    "INSERT OR IGNORE INTO meta(key, value) VALUES ('schema_version', ?)",
                    (str(SCHEMA_VERSION),),
                )
        except sqlite3.Error as exc:
            raise RecorderError(f"cannot open records at {path}: {exc}", url) from exc

    # Plumbing ----------------------------------------------------------------
    def _tx(self) -> _Tx:
        return _Tx(self._db, self.url)

    def close(self) -> None:
        self._db.close()

    @classmethod
    def reader(cls, url: str) -> Recorder:
        """A read-only connection to the same file (WAL: reads never wait for the writer).

        For readers off the coordinator's recorder thread (the operator page); it
        creates nothing, so the file must exist (the coordinator opened it first).
        """
        self = cls.__new__(cls)
        self.url = url
        path = _path_of(url)
        try:
            self._db = sqlite3.connect(
                f"{path.resolve().as_uri()}?mode=ro", uri=True, check_same_thread=False,
                isolation_level=None,
            )
            self._db.execute("PRAGMA busy_timeout=5000")
            self._db.execute("PRAGMA query_only=1")
        except sqlite3.Error as exc:
            raise RecorderError(f"cannot read records at {path}: {exc}", url) from exc
        return self

    @property
    def in_memory(self) -> bool:
        return str(_path_of(self.url)) == ":memory:"

    # Epoch -------------------------------------------------------------------
    def next_epoch(self) -> int:
        """Raise and return the coordinator's epoch (+1 per start)."""
        with self._tx():
            row = self._db.execute("SELECT value FROM meta WHERE key='epoch'").fetchone()
            epoch = int(row[0]) + 1 if row else 1
            self._db.execute(
                "INSERT INTO meta(key, value) VALUES ('epoch', ?) "
                "ON CONFLICT(key) DO UPDATE SET value=excluded.value",
                (str(epoch),),
            )
        return epoch

    # Cycles ------------------------------------------------------------------
    def open_cycle(
        self,
        cycle: datetime,
        community: str,
        epoch: int,
        strategy: str,
        opened_at: datetime,
        surplus_kw: float,
        sites: int,
        contributing: int,
        reply_by: datetime | None,
        period_end: datetime | None = None,
        site_ids: Iterable[str] | None = None,
    ) -> bool:
        """Record a new cycle; False (and nothing written) if ``cycle`` is already recorded.

        One cycle id is one run: a restarted coordinator resumes or skips a
        recorded cycle (``stored_cycle``), it never opens it again over the old
        row (that would mix two runs' replies and decisions).
        """
        ids = json.dumps(sorted(site_ids), separators=(",", ":")) if site_ids is not None else None
        with self._tx():
            cur = self._db.execute(
                "INSERT INTO cycles(cycle, community, epoch, strategy, opened_at, surplus_kw,"
                " sites, contributing, reply_by, period_end, site_ids)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?) ON CONFLICT(cycle) DO NOTHING",
                (
                    format_utc(cycle),
                    community,
                    epoch,
                    strategy,
                    format_utc(opened_at),
                    surplus_kw,
                    sites,
                    contributing,
                    format_utc(reply_by) if reply_by else None,
                    format_utc(period_end) if period_end else None,
                    ids,
                ),
            )
        return cur.rowcount == 1

    def stored_cycle(self, cycle: str) -> StoredCycle | None:
        """The recorded inputs and state of ``cycle`` (a ``format_utc`` id), if recorded."""
        row = self._db.execute(
            "SELECT cycle, epoch, strategy, opened_at, surplus_kw, reply_by, period_end,"
            " site_ids, closed_at, close_reason FROM cycles WHERE cycle=?",
            (cycle,),
        ).fetchone()
        return _stored_cycle(row) if row is not None else None

    def unclosed_cycles(self) -> list[StoredCycle]:
        """Cycles opened and never closed (the coordinator died), oldest first."""
        rows = self._db.execute(
            "SELECT cycle, epoch, strategy, opened_at, surplus_kw, reply_by, period_end,"
            " site_ids, closed_at, close_reason FROM cycles WHERE closed_at IS NULL"
            " ORDER BY cycle"
        ).fetchall()
        return [_stored_cycle(row) for row in rows]

    def accepted_replies(self, cycle: str) -> list[ReplyRow]:
        """The replies the cycle accepted, in arrival order (= rank order)."""
        rows = self._db.execute(
            "SELECT site, arrival_s, flex_kw, outcome FROM replies"
            " WHERE cycle=? AND outcome='accepted' ORDER BY id",
            (cycle,),
        ).fetchall()
        return [ReplyRow(*row) for row in rows]

    def record_step(
        self,
        cycle: datetime,
        epoch: int,
        replies: Sequence[ReplyRow],
        decisions: Sequence[Decision],
    ) -> None:
        """Replies and decisions of one burst, in one transaction."""
        if not replies and not decisions:
            return
        cid = format_utc(cycle)
        with self._tx():
            if replies:
                self._db.executemany(
                    "INSERT INTO replies(cycle, site, arrival_s, flex_kw, outcome)"
                    " VALUES (?,?,?,?,?)",
                    [(cid, r.site, r.arrival_s, r.flex_kw, r.outcome) for r in replies],
                )
            if decisions:
                self._db.executemany(
                    "INSERT OR IGNORE INTO decisions(cycle, site, alloc_kw, rank, flex_kw,"
                    " arrival_s, epoch) VALUES (?,?,?,?,?,?,?)",
                    [
                        (cid, d.site, d.alloc_kw, d.rank, d.flex_kw, d.elapsed_s, epoch)
                        for d in decisions
                    ],
                )

    def close_cycle(
        self,
        cycle: datetime,
        reason: str,
        closed_at: datetime,
        allocated_kw: float,
        replies: int,
    ) -> None:
        with self._tx():
            self._db.execute(
                "UPDATE cycles SET closed_at=?, close_reason=?, allocated_kw=?, replies=?,"
                " site_ids=NULL WHERE cycle=? AND closed_at IS NULL",
                (format_utc(closed_at), reason, allocated_kw, replies, format_utc(cycle)),
            )

    def last_cycles(self, n: int) -> list[CycleRow]:
        rows = self._db.execute(
            "SELECT cycle, epoch, strategy, opened_at, surplus_kw, sites, contributing,"
            " reply_by, closed_at, close_reason, allocated_kw, replies"
            " FROM cycles ORDER BY cycle DESC LIMIT ?",
            (n,),
        ).fetchall()
        return [CycleRow(*row) for row in reversed(rows)]

    def cycle_history(self, since: str, until: str, limit: int = 5000) -> list[CycleHistoryRow]:
        """Cycles with ``since <= cycle < until`` (``format_utc`` strings), the latest
        ``limit`` of them, oldest first, each with the export its sites reported."""
        rows = self._db.execute(
            "SELECT c.cycle, c.surplus_kw, c.allocated_kw, c.replies, c.sites, c.close_reason,"
            " r.export_kwh, COALESCE(r.n, 0)"
            " FROM (SELECT * FROM cycles WHERE cycle >= ? AND cycle < ?"
            "       ORDER BY cycle DESC LIMIT ?) AS c"
            " LEFT JOIN (SELECT period, SUM(export_kwh) AS export_kwh, COUNT(*) AS n"
            "            FROM reports WHERE period >= ? AND period < ? GROUP BY period) AS r"
            " ON r.period = c.cycle ORDER BY c.cycle",
            (since, until, limit, since, until),
        ).fetchall()
        return [CycleHistoryRow(*row) for row in rows]

    def export_page(
        self,
        table: str,
        since: str,
        until: str,
        after: Sequence[Any] | None = None,
        limit: int = 5000,
    ) -> list[tuple[Any, ...]]:
        """One page of ``table`` (a key of ``EXPORT_TABLES``) with ``since <= time < until``,
        in key order, after the key ``after`` (the last row's key of the previous page)."""
        spec = EXPORT_TABLES[table]  # KeyError for anything else: never SQL from a caller
        cols = ", ".join(spec.columns)
        key = ", ".join(spec.key)
        sql = f"SELECT {cols} FROM {table} WHERE {spec.time_column} >= ? AND {spec.time_column} < ?"
        args: list[Any] = [since, until]
        if after is not None:
            sql += f" AND ({key}) > ({', '.join('?' * len(spec.key))})"
            args.extend(after)
        sql += f" ORDER BY {key} LIMIT ?"
        args.append(limit)
        return self._db.execute(sql, args).fetchall()

    def decisions(self, cycle: str) -> list[Decision]:
        rows = self._db.execute(
            "SELECT site, alloc_kw, rank, flex_kw, arrival_s FROM decisions"
            " WHERE cycle=? ORDER BY rank",
            (cycle,),
        ).fetchall()
        return [Decision(*row) for row in rows]

    def replies(self, cycle: str) -> list[ReplyRow]:
        rows = self._db.execute(
            "SELECT site, arrival_s, flex_kw, outcome FROM replies WHERE cycle=? ORDER BY id",
            (cycle,),
        ).fetchall()
        return [ReplyRow(*row) for row in rows]

    # Reports -----------------------------------------------------------------
    def record_report(
        self,
        site: str,
        seq: int,
        period: datetime,
        import_kwh: float,
        export_kwh: float,
        allocated_kwh: float,
        used_kwh: float,
        received_at: datetime,
    ) -> int:
        """Store a report once (idempotent by site and seq); return the site's acked seq.

        The acked seq is the highest contiguous one, counted from the first
        report ever seen from the site.
        """
        with self._tx():
            self._db.execute(
                "INSERT OR IGNORE INTO reports(site, seq, period, import_kwh, export_kwh,"
                " allocated_kwh, used_kwh, received_at) VALUES (?,?,?,?,?,?,?,?)",
                (
                    site,
                    seq,
                    format_utc(period),
                    import_kwh,
                    export_kwh,
                    allocated_kwh,
                    used_kwh,
                    format_utc(received_at),
                ),
            )
            row = self._db.execute(
                "SELECT acked_seq FROM report_acks WHERE site=?", (site,)
            ).fetchone()
            acked = int(row[0]) if row else seq - 1
            while self._db.execute(
                "SELECT 1 FROM reports WHERE site=? AND seq=?", (site, acked + 1)
            ).fetchone():
                acked += 1
            self._db.execute(
                "INSERT INTO report_acks(site, acked_seq) VALUES (?, ?)"
                " ON CONFLICT(site) DO UPDATE SET acked_seq=excluded.acked_seq",
                (site, acked),
            )
        return acked

    def report_count(self, site: str | None = None) -> int:
        if site is None:
            return int(self._db.execute("SELECT COUNT(*) FROM reports").fetchone()[0])
        return int(
            self._db.execute("SELECT COUNT(*) FROM reports WHERE site=?", (site,)).fetchone()[0]
        )


    # Strategy state ----------------------------------------------------------
    def save_strategy_state(
        self, strategy: str, state: Mapping[str, Any], saved_at: datetime
    ) -> None:
        """Keep ``strategy``'s carried state (JSON values only) for the next start."""
        try:
            text = json.dumps(state, sort_keys=True, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise RecorderError(
                f"strategy {strategy!r} state is not plain JSON: {exc}", self.url
            ) from exc
        with self._tx():
            self._db.execute(
                "INSERT INTO strategy_states(strategy, state, saved_at) VALUES (?,?,?)"
                " ON CONFLICT(strategy) DO UPDATE SET state=excluded.state,"
                " saved_at=excluded.saved_at",
                (strategy, text, format_utc(saved_at)),
            )

    def load_strategy_state(self, strategy: str) -> dict[str, Any]:
        """The state last saved for ``strategy``; ``{}`` if none (or unreadable)."""
        row = self._db.execute(
            "SELECT state FROM strategy_states WHERE strategy=?", (strategy,)
        ).fetchone()
        if row is None:
            return {}
        try:
            state = json.loads(row[0])
        except ValueError:
            return {}
        return state if isinstance(state, dict) else {}

    # Grid overrides ----------------------------------------------------------
    def set_grid_override(
        self, day: date, hour: int, level: int | None, set_at: datetime
    ) -> None:
        """Override one hour's grid level (local day, hour since its midnight); None clears."""
        with self._tx():
            if level is None:
                self._db.execute(
                    "DELETE FROM grid_overrides WHERE day=? AND hour=?", (day.isoformat(), hour)
                )
            else:
                self._db.execute(
                    "INSERT INTO grid_overrides(day, hour, level, set_at) VALUES (?,?,?,?)"
                    " ON CONFLICT(day, hour) DO UPDATE SET level=excluded.level,"
                    " set_at=excluded.set_at",
                    (day.isoformat(), hour, level, format_utc(set_at)),
                )

    def grid_overrides(self, since: date | None = None) -> dict[tuple[date, int], int]:
        """Every override of ``since`` and later (all without it), by ``(day, hour)``."""
        rows = self._db.execute(
            "SELECT day, hour, level FROM grid_overrides WHERE day >= ? ORDER BY day, hour",
            ((since.isoformat() if since else ""),),
        ).fetchall()
        return {(date.fromisoformat(d), int(h)): int(lv) for d, h, lv in rows}

    def prune_grid_overrides(self, before: date) -> int:
        """Forget overrides of days before ``before``; return how many went."""
        with self._tx():
            cur = self._db.execute(
                "DELETE FROM grid_overrides WHERE day < ?", (before.isoformat(),)
            )
        return int(cur.rowcount)


def _parse_utc(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def _stored_cycle(row: Sequence[Any]) -> StoredCycle:
    cycle, epoch, strategy, opened_at, surplus_kw, reply_by, period_end, ids, closed_at, why = row
    opened = _parse_utc(opened_at)
    assert opened is not None
    return StoredCycle(
        cycle, int(epoch), strategy, opened, float(surplus_kw), _parse_utc(reply_by),
        _parse_utc(period_end), frozenset(json.loads(ids)) if ids is not None else None,
        closed_at, why,
    )


class _Tx:
    """``BEGIN IMMEDIATE`` … ``COMMIT``; rolls back and raises ``RecorderError`` on failure."""

    __slots__ = ("_db", "_url")

    def __init__(self, db: sqlite3.Connection, url: str) -> None:
        self._db = db
        self._url = url

    def __enter__(self) -> None:
        try:
            self._db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise RecorderError(f"cannot begin a transaction: {exc}", self._url) from exc

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        if exc is None:
            try:
                self._db.execute("COMMIT")
                return
            except sqlite3.Error as err:
                self._db.execute("ROLLBACK")
                raise RecorderError(f"commit failed: {err}", self._url) from err
        self._db.execute("ROLLBACK")
        if isinstance(exc, sqlite3.Error):
            raise RecorderError(f"write failed: {exc}", self._url) from exc


def rows_to_table(rows: Iterable[CycleRow]) -> list[list[str]]:
    """Cycle rows as strings for a terminal table."""
    table = []
    for r in rows:
        share = (
            f"{100 * (r.allocated_kw or 0) / r.surplus_kw:.1f}%" if r.surplus_kw > 0 else "-"
        )
        table.append(
            [
                r.cycle,
                f"{r.surplus_kw:.2f}",
                f"{(r.allocated_kw or 0):.2f}",
                share,
                f"{r.replies if r.replies is not None else '-'}/{r.sites}",
                r.close_reason or "open",
                r.strategy,
                str(r.epoch),
            ]
        )
    return table

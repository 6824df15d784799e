"""The coordinator's records: cycles, replies, decisions, reports, grid overrides, shadow scores.

In SQLite (the default, one file: ``sqlite:///PATH``) or PostgreSQL
(``postgresql://USER:PASSWORD@HOST:PORT/DB``, for communities whose records
outgrow one file or must live on a managed server): the same API, the same
schema, one SQL text per query (``central.db`` holds the two backends and the
little that differs). The schema is a numbered list of migrations
(``central.db_schema``), applied in one transaction when a writer opens the
records; records written by a newer release are refused with a
``RecorderError``.

Durability: every decision is committed before its ``alloc`` is published.
SQLite runs WAL with ``synchronous=FULL`` (under NORMAL a WAL commit may roll
back after a power loss); PostgreSQL runs with ``synchronous_commit=on``.
Decisions that arrive together (one burst drained from the queue) share one
transaction, so a 100k-reply cycle costs hundreds of commits, not 100k,
without publishing anything before it is durable (group commit).

Errors are ``RecorderError`` naming the store, never its password. A lost
PostgreSQL connection fails the call in flight (the coordinator logs it and
goes on, as for any recorder error) and is opened again by the next call.

Synchronous on purpose: the coordinator calls it from one dedicated thread
(``asyncio`` never blocks on it); the ``ems`` tool calls it directly.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

import orjson

from central.core.cycle import Decision, LoadOffer
from central.core.shadow import ShadowRecord, ShadowTotals
from central.db import Database, connect, scheme_of, sqlite_path
from central.db_schema import check_not_newer, migrate, stored_version
from central.errors import RecorderError
from protocol.models import format_utc

# The schema (tables, indexes, columns) is a numbered list of migrations shared by
# both databases: add to it in central/db_schema.py, not here.


@dataclass(frozen=True, slots=True)
class ReplyRow:
    """One reply as received: accepted, or ignored with its reason."""

    site: str
    arrival_s: float
    flex_kw: float
    outcome: str  # "accepted" or the reason it was ignored
    # The loads behind the reply, with their minimum powers (what `ems replay` needs
    # to tell what a split could really run); None: recorded before they were kept.
    loads: tuple[LoadOffer, ...] | None = None


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


class Recorder:
    """The records of one coordinator, in SQLite or PostgreSQL (``url``)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._db: Database = connect(url)
        try:
            migrate(self._db)
        except BaseException:
            self._db.close()
            raise

    # Plumbing ----------------------------------------------------------------
    def _tx(self) -> _Tx:
        return _Tx(self._db)

    def close(self) -> None:
        self._db.close()

    @classmethod
    def reader(cls, url: str) -> Recorder:
        """A read-only connection to the same records (the writer opened them first).

        For readers off the coordinator's recorder thread (the operator page):
        SQLite in WAL mode never makes them wait for the writer; PostgreSQL runs
        every statement in a read-only transaction. It creates nothing.
        """
        self = cls.__new__(cls)
        self.url = url
        self._db = connect(url, readonly=True)
        try:
            check_not_newer(self._db, stored_version(self._db))
        except BaseException:
            self._db.close()
            raise
        return self

    @property
    def backend(self) -> str:
        """``sqlite`` or ``postgresql``."""
        return self._db.kind

    @property
    def in_memory(self) -> bool:
        return scheme_of(self.url) == "sqlite" and str(sqlite_path(self.url)) == ":memory:"

    # Epoch -------------------------------------------------------------------
    def next_epoch(self) -> int:
        """Raise and return the coordinator's epoch (+1 per start)."""
        with self._tx():
            # One atomic upsert: two processes starting at once get two epochs.
            self._db.execute(
                "INSERT INTO meta(key, value) VALUES ('epoch', '1') ON CONFLICT(key)"
                " DO UPDATE SET value=CAST(CAST(meta.value AS INTEGER) + 1 AS TEXT)"
            )
            row = self._db.execute("SELECT value FROM meta WHERE key='epoch'").fetchone()
        assert row is not None
        return int(row[0])

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
            "SELECT site, arrival_s, flex_kw, outcome, loads FROM replies"
            " WHERE cycle=? AND outcome='accepted' ORDER BY id",
            (cycle,),
        ).fetchall()
        return [_reply_row(row) for row in rows]

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
                    "INSERT INTO replies(cycle, site, arrival_s, flex_kw, outcome, loads)"
                    " VALUES (?,?,?,?,?,?)",
                    [(cid, r.site, r.arrival_s, r.flex_kw, r.outcome, _loads_json(r.loads))
                     for r in replies],
                )
            if decisions:
                self._db.executemany(
                    "INSERT INTO decisions(cycle, site, alloc_kw, rank, flex_kw,"
                    " arrival_s, epoch) VALUES (?,?,?,?,?,?,?) ON CONFLICT DO NOTHING",
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

    def allocated_kw_by_site(self, before_epoch: int) -> dict[str, float]:
        """Each site's summed allocation (kW, one term per cycle) over the decisions of the
        runs before epoch ``before_epoch``: the operator page's long-run share starts
        from it, and this run's own decisions (its epoch) add to it live."""
        rows = self._db.execute(
            "SELECT site, SUM(alloc_kw) FROM decisions WHERE epoch < ? AND alloc_kw > 0"
            " GROUP BY site",
            (before_epoch,),
        ).fetchall()
        return {site: float(total) for site, total in rows}

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
            "SELECT site, arrival_s, flex_kw, outcome, loads FROM replies WHERE cycle=?"
            " ORDER BY id",
            (cycle,),
        ).fetchall()
        return [_reply_row(row) for row in rows]

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
        dropped_through: int | None = None,
    ) -> int:
        """Store a report once (idempotent by site and seq); return the site's acked seq.

        The acked seq is the highest contiguous one, counted from the first
        report ever seen from the site. ``dropped_through``: the gateway's full
        outbox dropped every report up to it unsent, so none of them will come
        (docs/reliability.md): the acked seq moves past that gap.
        """
        with self._tx():
            self._db.execute(
                "INSERT INTO reports(site, seq, period, import_kwh, export_kwh,"
                " allocated_kwh, used_kwh, received_at) VALUES (?,?,?,?,?,?,?,?)"
                " ON CONFLICT DO NOTHING",
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
            if dropped_through is not None and dropped_through < seq:
                acked = max(acked, dropped_through)
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
            return int(self._db.execute("SELECT COUNT(*) FROM reports").rows[0][0])
        rows = self._db.execute("SELECT COUNT(*) FROM reports WHERE site=?", (site,)).rows
        return int(rows[0][0])


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

    # Shadow scores -----------------------------------------------------------
    def record_shadow_scores(self, rows: Sequence[ShadowRecord]) -> None:
        """One cycle's shadow rows, in one transaction; a cycle scored again is overwritten."""
        if not rows:
            return
        with self._tx():
            self._db.executemany(
                "INSERT INTO shadow_scores(cycle, strategy, status, surplus_kw, allocated_kw,"
                " usable_kw, share, sites_served, jain, elapsed_s, fallback, compute_s, error)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?) ON CONFLICT (cycle, strategy) DO UPDATE SET"
                " status=excluded.status, surplus_kw=excluded.surplus_kw,"
                " allocated_kw=excluded.allocated_kw, usable_kw=excluded.usable_kw,"
                " share=excluded.share, sites_served=excluded.sites_served,"
                " jain=excluded.jain, elapsed_s=excluded.elapsed_s,"
                " fallback=excluded.fallback, compute_s=excluded.compute_s,"
                " error=excluded.error",
                [
                    (r.cycle, r.strategy, r.status, r.surplus_kw, r.allocated_kw, r.usable_kw,
                     r.share, r.sites_served, r.jain, r.elapsed_s, int(r.fallback),
                     r.compute_s, r.error)
                    for r in rows
                ],
            )

    def shadow_scores(self, since: str, until: str, limit: int = 50_000) -> list[ShadowRecord]:
        """Shadow rows of the cycles with ``since <= cycle < until`` (``format_utc``
        strings), the latest ``limit`` rows, by cycle then strategy."""
        rows = self._db.execute(
            "SELECT * FROM (SELECT " + self._SHADOW_COLUMNS + " FROM shadow_scores"
            " WHERE cycle >= ? AND cycle < ? ORDER BY cycle DESC, strategy DESC LIMIT ?) AS s"
            " ORDER BY cycle, strategy",
            (since, until, limit),
        ).fetchall()
        return [self._shadow_record(row) for row in rows]

    def last_shadow_scores(self, cycles: int) -> list[ShadowRecord]:
        """Shadow rows of the last ``cycles`` cycles scored, by cycle then strategy."""
        rows = self._db.execute(
            "SELECT " + self._SHADOW_COLUMNS + " FROM shadow_scores WHERE cycle IN"
            " (SELECT DISTINCT cycle FROM shadow_scores ORDER BY cycle DESC LIMIT ?)"
            " ORDER BY cycle, strategy",
            (cycles,),
        ).fetchall()
        return [self._shadow_record(row) for row in rows]

    def shadow_summary(self, since: str, until: str) -> list[ShadowTotals]:
        """Per strategy over the cycles with ``since <= cycle < until``: sums of surplus,
        allocated and usable power over the cycles scored, mean Jain's index, counts."""
        rows = self._db.execute(
            "SELECT strategy,"
            " SUM(CASE WHEN status='ok' THEN 1 ELSE 0 END),"
            " SUM(CASE WHEN status='error' THEN 1 ELSE 0 END),"
            " SUM(CASE WHEN status='skipped' THEN 1 ELSE 0 END),"
            " SUM(CASE WHEN status='ok' THEN surplus_kw ELSE 0 END),"
            " SUM(CASE WHEN status='ok' THEN allocated_kw ELSE 0 END),"
            " SUM(CASE WHEN status='ok' THEN usable_kw ELSE 0 END),"
            " SUM(CASE WHEN status='ok' THEN sites_served ELSE 0 END),"
            " AVG(CASE WHEN status='ok' THEN jain END),"
            " AVG(CASE WHEN status='ok' THEN elapsed_s END),"
            " SUM(fallback), AVG(compute_s), MAX(compute_s)"
            " FROM shadow_scores WHERE cycle >= ? AND cycle < ?"
            " GROUP BY strategy ORDER BY strategy",
            (since, until),
        ).fetchall()
        return [
            ShadowTotals(
                strategy, int(ok), int(err), int(skipped), float(surplus or 0.0),
                float(alloc or 0.0), float(usable or 0.0), int(served or 0), jain, elapsed,
                int(fallbacks or 0), compute_mean, compute_max,
            )
            for (strategy, ok, err, skipped, surplus, alloc, usable, served, jain, elapsed,
                 fallbacks, compute_mean, compute_max) in rows
        ]

    _SHADOW_COLUMNS = (
        "cycle, strategy, status, surplus_kw, allocated_kw, usable_kw, share, sites_served,"
        " jain, elapsed_s, fallback, compute_s, error"
    )

    @staticmethod
    def _shadow_record(row: Sequence[Any]) -> ShadowRecord:
        (cycle, strategy, status, surplus_kw, allocated_kw, usable_kw, share, served, jain,
         elapsed_s, fallback, compute_s, error) = row
        return ShadowRecord(cycle, strategy, status, surplus_kw, allocated_kw, usable_kw, share,
                            served, jain, elapsed_s, bool(fallback), compute_s, error)


def _parse_utc(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def _loads_json(loads: Sequence[LoadOffer] | None) -> str | None:
    # [[id, kind, min_kw, max_kw, priority, until_s, energy_kwh], ...]: positional
    # lists, not objects, trailing nulls left out, since a 100k-reply burst
    # writes 100k of these (about 1.2 us a reply to encode and insert).
    if loads is None:
        return None
    out = []
    for load in loads:
        item = list(load)
        while item[-1] is None:
            item.pop()
        out.append(item)
    return orjson.dumps(out).decode()


def _reply_row(row: Sequence[Any]) -> ReplyRow:
    site, arrival_s, flex_kw, outcome, loads = row
    parsed = None
    if loads is not None:
        try:
            parsed = tuple(LoadOffer(*item) for item in orjson.loads(loads))
        except (orjson.JSONDecodeError, TypeError, ValueError):
            parsed = None  # unreadable: as if not recorded
    return ReplyRow(site, arrival_s, flex_kw, outcome, parsed)


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
    """``BEGIN`` (SQLite: ``IMMEDIATE``) … ``COMMIT``; rolls back on any failure.

    Driver errors arrive as ``RecorderError`` already (``central.db``).
    """

    __slots__ = ("_db",)

    def __init__(self, db: Database) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.begin()

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        if exc is None:
            try:
                self._db.commit()
            except BaseException:
                self._db.rollback()
                raise
            return
        self._db.rollback()


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

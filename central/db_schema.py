"""The recorder's schema as numbered migrations, the same list for SQLite and PostgreSQL.

``migrate(db)`` runs, in one transaction at start, every migration above the
``schema_version`` kept in the ``meta`` table, then stores the new version; a
failure leaves the database as it was. A database whose version is above
``SCHEMA_VERSION`` was written by a newer release: ``RecorderError``, nothing
touched. Types are written ``{text}``, ``{int}``, ``{real}``, ``{id}``
(``central.db``): ``{text}`` sorts and compares by code point on both (SQLite's
BINARY, PostgreSQL's "C" collation), so ISO times, site ids and keyset pages
come out in the same order whatever the PostgreSQL database's locale.

Files of the releases before these migrations say ``schema_version`` 1 and hold
any subset of what migrations 2-5 add (each was then an ad-hoc "CREATE IF NOT
EXISTS" or "ADD COLUMN when missing" at every start): those migrations are
idempotent for that reason. From migration 7 on a plain statement will do.
A new table, index or column is a new ``Migration`` at the end; a released one
is never edited.
"""

from __future__ import annotations

from dataclasses import dataclass

from central.db import Database, fill_types
from central.errors import RecorderError


@dataclass(frozen=True, slots=True)
class Migration:
    """One step of the schema: statements, then columns added where missing."""

    version: int
    about: str
    statements: tuple[str, ...] = ()
    columns: tuple[tuple[str, str, str], ...] = ()  # (table, column, type)


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "cycles, replies, decisions, reports and report acks", (
        """CREATE TABLE IF NOT EXISTS meta (key {text} PRIMARY KEY, value {text} NOT NULL)""",
        """CREATE TABLE IF NOT EXISTS cycles (
            cycle {text} PRIMARY KEY,
            community {text} NOT NULL,
            epoch {int} NOT NULL,
            strategy {text} NOT NULL,
            opened_at {text} NOT NULL,
            surplus_kw {real} NOT NULL,
            sites {int} NOT NULL,
            contributing {int} NOT NULL,
            reply_by {text},
            closed_at {text},
            close_reason {text},
            allocated_kw {real},
            replies {int}
        )""",
        """CREATE TABLE IF NOT EXISTS replies (
            id {id},
            cycle {text} NOT NULL,
            site {text} NOT NULL,
            arrival_s {real} NOT NULL,
            flex_kw {real} NOT NULL,
            outcome {text} NOT NULL
        )""",
        """CREATE INDEX IF NOT EXISTS replies_cycle ON replies (cycle)""",
        """CREATE TABLE IF NOT EXISTS decisions (
            cycle {text} NOT NULL,
            site {text} NOT NULL,
            alloc_kw {real} NOT NULL,
            rank {int} NOT NULL,
            flex_kw {real} NOT NULL,
            arrival_s {real} NOT NULL,
            epoch {int} NOT NULL,
            PRIMARY KEY (cycle, site)
        )""",
        """CREATE TABLE IF NOT EXISTS reports (
            site {text} NOT NULL,
            seq {int} NOT NULL,
            period {text} NOT NULL,
            import_kwh {real} NOT NULL,
            export_kwh {real} NOT NULL,
            allocated_kwh {real} NOT NULL,
            used_kwh {real} NOT NULL,
            received_at {text} NOT NULL,
            PRIMARY KEY (site, seq)
        )""",
        """CREATE TABLE IF NOT EXISTS report_acks (
            site {text} PRIMARY KEY,
            acked_seq {int} NOT NULL
        )""",
    )),
    # Manual overrides of one hour's grid level (admin/signal/set, `ems signal set`).
    Migration(2, "grid level overrides", (
        """CREATE TABLE IF NOT EXISTS grid_overrides (
            day {text} NOT NULL,
            hour {int} NOT NULL,
            level {int} NOT NULL,
            set_at {text} NOT NULL,
            PRIMARY KEY (day, hour)
        )""",
    )),
    # What a strategy carries from cycle to cycle (e.g. fair_rotation's ledger), as
    # JSON, one row per strategy name, so a restart does not reset fairness.
    Migration(3, "strategies' carried state", (
        """CREATE TABLE IF NOT EXISTS strategy_states (
            strategy {text} PRIMARY KEY,
            state {text} NOT NULL,
            saved_at {text} NOT NULL
        )""",
    )),
    # The operator page sums a cycle's measured export; the CSV export reads a range.
    Migration(4, "reports by period", (
        """CREATE INDEX IF NOT EXISTS reports_period ON reports (period)""",
    )),
    # What a restarted coordinator needs to resume a cycle it did not close (faults
    # §3, "Coordinator crash mid-cycle"). ``site_ids`` is the JSON list of the sites
    # asked, kept only while the cycle is open (100k ids are ~1 MB).
    Migration(5, "what a cycle is resumed from", columns=(
        ("cycles", "period_end", "{text}"),
        ("cycles", "site_ids", "{text}"),
    )),
    # Shadow mode (central/core/shadow.py): per cycle and shadow strategy, what it
    # would have given on the cycle's replies; status "ok", "error" or "skipped".
    Migration(6, "shadow strategies' scores", (
        """CREATE TABLE IF NOT EXISTS shadow_scores (
            cycle {text} NOT NULL,
            strategy {text} NOT NULL,
            status {text} NOT NULL,
            surplus_kw {real} NOT NULL,
            allocated_kw {real},
            usable_kw {real},
            share {real},
            sites_served {int},
            jain {real},
            elapsed_s {real},
            fallback {int} NOT NULL,
            compute_s {real},
            error {text},
            PRIMARY KEY (cycle, strategy)
        )""",
    )),
    # A reply's loads (JSON [[id, kind, min_kw, max_kw, priority, until_s, energy_kwh]]),
    # so `ems replay` knows the minimum powers a split must respect; NULL before.
    Migration(7, "the loads behind each reply", columns=(("replies", "loads", "TEXT"),)),
)

SCHEMA_VERSION = MIGRATIONS[-1].version


def stored_version(db: Database) -> int:
    """The ``schema_version`` the database says it has; 0 for an empty database."""
    if not db.has_table("meta"):
        return 0
    row = db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
    if row is None:
        return 0
    try:
        return int(row[0])
    except ValueError:
        raise RecorderError(
            f"{db.where}: meta.schema_version is {row[0]!r}, not a number", db.safe_url
        ) from None


def check_not_newer(db: Database, version: int) -> None:
    if version > SCHEMA_VERSION:
        raise RecorderError(
            f"{db.where}: the records have schema version {version}, newer than the "
            f"{SCHEMA_VERSION} this release knows: run the release that wrote them, or newer",
            db.safe_url,
        )


def migrate(db: Database) -> tuple[int, int]:
    """Bring ``db`` to ``SCHEMA_VERSION`` in one transaction; return (before, after)."""
    db.begin()
    try:
        db.lock_schema()
        before = stored_version(db)
        check_not_newer(db, before)
        for step in MIGRATIONS:
            if step.version <= before:
                continue
            for sql in step.statements:
                db.execute(fill_types(sql, db))
            for table, column, kind in step.columns:
                if column not in db.columns(table):
                    db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {fill_types(kind, db)}")
        if before != SCHEMA_VERSION:
            db.execute(
                "INSERT INTO meta(key, value) VALUES ('schema_version', ?)"
                " ON CONFLICT(key) DO UPDATE SET value=excluded.value",
                (str(SCHEMA_VERSION),),
            )
        db.commit()
    except BaseException:
        db.rollback()
        raise
    return before, SCHEMA_VERSION

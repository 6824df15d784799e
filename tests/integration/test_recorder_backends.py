"""The recorder on both backends (SQLite, PostgreSQL): same answers, schema migrations,
durability settings, failures and the url check.

PostgreSQL is a real server (``tests/pg.py``), each test with its own database.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from pg import TempPostgres

from central.core.cycle import Decision
from central.db import PostgresDatabase, connect, fill_types, redact_url
from central.db_schema import MIGRATIONS, SCHEMA_VERSION, stored_version
from central.errors import RecorderError
from central.recorder import Recorder, ReplyRow
from ems.cli import main

T0 = datetime(2026, 6, 21, 12, 0, tzinfo=UTC)


def cid(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


@pytest.fixture
def rec(records_url: str) -> Iterator[Recorder]:
    recorder = Recorder(records_url)
    yield recorder
    recorder.close()


def sql(url: str, text: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """One statement straight through the driver, outside the recorder."""
    if url.startswith("sqlite:///"):
        db = sqlite3.connect(url.removeprefix("sqlite:///"))
        try:
            rows = db.execute(text, args).fetchall()
            db.commit()
            return rows
        finally:
            db.close()
    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.execute(text.replace("?", "%s"), args or None)
        return cur.fetchall() if cur.description is not None else []


# Same answers on both --------------------------------------------------------------
def exercise(rec: Recorder) -> dict[str, Any]:
    """Every public query once, on a small community; returns what each answered."""
    out: dict[str, Any] = {"epochs": [rec.next_epoch(), rec.next_epoch()]}
    epoch = out["epochs"][-1]
    for hour in range(3):
        t = T0 + timedelta(hours=hour)
        out[f"open{hour}"] = rec.open_cycle(
            t, "c1", epoch, "fifo", t + timedelta(seconds=1), 6.0 + hour, 3, 2,
            t + timedelta(seconds=60), t + timedelta(hours=1), ["s2", "s1", "s3"])
        rec.record_step(t, epoch, [ReplyRow("s1", 0.25, 4.0, "accepted"),
                                   ReplyRow("s2", 0.5, 3.0, "accepted"),
                                   ReplyRow("s9", 0.75, 1.0, "unknown_site")],
                        [Decision("s1", 4.0, 1, 4.0, 0.25),
                         Decision("s2", 2.0 + hour, 2, 3.0, 0.5)])
        rec.record_step(t, epoch, [], [Decision("s1", 9.0, 1, 9.0, 9.0)])  # a repeat: ignored
        rec.close_cycle(t, "exhausted", t + timedelta(seconds=2), 6.0 + hour, 2)
    out["reopen"] = rec.open_cycle(T0, "c1", epoch, "fifo", T0, 1.0, 1, 1, None)
    out["last"] = rec.last_cycles(2)
    out["stored"] = rec.stored_cycle(cid(T0))
    out["unclosed"] = rec.unclosed_cycles()
    out["decisions"] = rec.decisions(cid(T0))
    out["replies"] = rec.replies(cid(T0))
    out["accepted"] = rec.accepted_replies(cid(T0))
    out["acks"] = [
        rec.record_report(site, seq, T0 + timedelta(hours=h), 0.1, 0.5 * seq, 1.0, 0.9,
                          T0 + timedelta(hours=h, minutes=20))
        for site, seq, h in (("s1", 1, 0), ("s1", 3, 2), ("s1", 2, 1), ("s1", 2, 1), ("s2", 5, 0))
    ]
    out["counts"] = (rec.report_count(), rec.report_count("s1"), rec.report_count("nobody"))
    out["history"] = rec.cycle_history(cid(T0), cid(T0 + timedelta(hours=3)), limit=2)
    pages, after = [], None
    while True:
        page = rec.export_page("decisions", cid(T0), cid(T0 + timedelta(days=1)), after, 2)
        if not page:
            break
        pages.append(page)
        after = (page[-1][0], page[-1][3], page[-1][1])  # key: cycle, rank, site
    out["pages"] = pages
    out["reports_csv"] = rec.export_page("reports", cid(T0), cid(T0 + timedelta(days=1)))
    rec.save_strategy_state("fair_rotation", {"ledger_kwh": {"s1": 0.75, "s2": 1.5}}, T0)
    rec.save_strategy_state("fair_rotation", {"ledger_kwh": {"s1": 1.0}}, T0)
    out["state"] = rec.load_strategy_state("fair_rotation")
    day = date(2026, 6, 21)
    rec.set_grid_override(day, 18, 3, T0)
    rec.set_grid_override(day, 18, 2, T0)
    rec.set_grid_override(day, 19, 3, T0)
    rec.set_grid_override(day + timedelta(days=1), 7, 1, T0)
    rec.set_grid_override(day, 19, None, T0)
    out["overrides"] = rec.grid_overrides()
    out["pruned"] = rec.prune_grid_overrides(day + timedelta(days=1))
    out["overrides_after"] = rec.grid_overrides(day)
    return out


def test_both_backends_give_the_same_answers(tmp_path: Path, pg_url: str) -> None:
    answers = []
    for url in (f"sqlite:///{tmp_path / 'records.sqlite'}", pg_url):
        rec = Recorder(url)
        answers.append(exercise(rec))
        rec.close()
    lite, pg = answers
    assert set(lite) == set(pg)
    for key in lite:
        assert pg[key] == lite[key], key
    # And they are right, not merely alike.
    assert lite["epochs"] == [1, 2]
    assert [lite[f"open{h}"] for h in range(3)] == [True] * 3 and lite["reopen"] is False
    assert [c.cycle for c in lite["last"]] == [cid(T0 + timedelta(hours=1)),
                                                 cid(T0 + timedelta(hours=2))]
    assert lite["stored"].closed and lite["stored"].site_ids is None
    assert lite["unclosed"] == []
    assert lite["decisions"] == [Decision("s1", 4.0, 1, 4.0, 0.25),
                                 Decision("s2", 2.0, 2, 3.0, 0.5)]
    assert [r.outcome for r in lite["replies"]] == ["accepted", "accepted", "unknown_site"]
    assert [r.site for r in lite["accepted"]] == ["s1", "s2"]
    assert lite["acks"] == [1, 1, 3, 3, 5]
    assert lite["counts"] == (4, 3, 0)
    [h1, h2] = lite["history"]
    assert h1.cycle == cid(T0 + timedelta(hours=1)) and h1.export_kwh == 1.0 and h1.reports == 1
    assert h2.export_kwh == 1.5 and isinstance(h2.reports, int)
    flat = [row for page in lite["pages"] for row in page]
    assert len(flat) == 6 and [len(p) for p in lite["pages"]] == [2, 2, 2]
    assert [(r[0], r[3]) for r in flat] == sorted((r[0], r[3]) for r in flat)
    assert len(lite["reports_csv"]) == 4
    assert lite["state"] == {"ledger_kwh": {"s1": 1.0}}
    assert lite["overrides"] == {(date(2026, 6, 21), 18): 2, (date(2026, 6, 22), 7): 1}
    assert lite["pruned"] == 1
    assert lite["overrides_after"] == {(date(2026, 6, 22), 7): 1}


def test_a_burst_is_one_transaction(rec: Recorder) -> None:
    """Group commit: if any row of a burst fails, none of it is recorded."""
    rec.open_cycle(T0, "c1", 1, "fifo", T0, 5.0, 2, 2, None)
    bad = Decision("s2", None, 2, 3.0, 0.5)  # type: ignore[arg-type]  # NOT NULL alloc_kw
    with pytest.raises(RecorderError, match="failed"):
        rec.record_step(T0, 1, [ReplyRow("s1", 0.1, 2.0, "accepted")],
                        [Decision("s1", 2.0, 1, 2.0, 0.1), bad])
    assert rec.replies(cid(T0)) == [] and rec.decisions(cid(T0)) == []
    # The recorder goes on after the failure.
    rec.record_step(T0, 1, [ReplyRow("s1", 0.1, 2.0, "accepted")],
                    [Decision("s1", 2.0, 1, 2.0, 0.1)])
    assert [d.site for d in rec.decisions(cid(T0))] == ["s1"]


def test_the_reader_sees_commits_and_cannot_write(rec: Recorder) -> None:
    reader = Recorder.reader(rec.url)
    try:
        assert reader.last_cycles(5) == []
        rec.open_cycle(T0, "c1", 1, "fifo", T0, 5.0, 2, 2, None)
        assert [c.cycle for c in reader.last_cycles(5)] == [cid(T0)]
        with pytest.raises(RecorderError):
            reader.next_epoch()
        with pytest.raises(RecorderError):
            reader.record_step(T0, 1, [ReplyRow("s1", 0.1, 2.0, "accepted")], [])
        assert rec.replies(cid(T0)) == []
        assert reader.backend == rec.backend
    finally:
        reader.close()


# Migrations ------------------------------------------------------------------------
def test_fresh_records_are_at_the_latest_version(records_url: str) -> None:
    for _ in range(2):  # opening again changes nothing
        Recorder(records_url).close()
        assert sql(records_url, "SELECT value FROM meta WHERE key='schema_version'") == [
            (str(SCHEMA_VERSION),)]
    assert [m.version for m in MIGRATIONS] == list(range(1, SCHEMA_VERSION + 1))


def test_processes_opening_empty_records_at_once_all_succeed(records_url: str) -> None:
    """Migrations are serialised (SQLite's write lock, a PostgreSQL advisory lock), and
    each start gets its own epoch."""
    def start(_: int) -> int:
        rec = Recorder(records_url)
        try:
            return rec.next_epoch()
        finally:
            rec.close()

    with ThreadPoolExecutor(4) as pool:
        epochs = sorted(pool.map(start, range(4)))
    assert epochs == [1, 2, 3, 4]


def test_records_of_a_newer_release_are_refused(records_url: str) -> None:
    Recorder(records_url).close()
    newer = str(SCHEMA_VERSION + 1)
    sql(records_url, "UPDATE meta SET value=? WHERE key='schema_version'", (newer,))
    for opener in (Recorder, Recorder.reader):
        with pytest.raises(RecorderError, match=f"schema version {newer}, newer than the "
                           f"{SCHEMA_VERSION} this release knows"):
            opener(records_url)
    assert sql(records_url, "SELECT value FROM meta WHERE key='schema_version'") == [(newer,)]


# The DDL of the releases before numbered migrations, verbatim (central/recorder.py at
# the commits named): files they wrote say schema_version 1.
FIRST_RELEASE = [  # 19d9ff1
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    """CREATE TABLE IF NOT EXISTS cycles (
        cycle TEXT PRIMARY KEY, community TEXT NOT NULL, epoch INTEGER NOT NULL,
        strategy TEXT NOT NULL, opened_at TEXT NOT NULL, surplus_kw REAL NOT NULL,
        sites INTEGER NOT NULL, contributing INTEGER NOT NULL, reply_by TEXT, closed_at TEXT,
        close_reason TEXT, allocated_kw REAL, replies INTEGER)""",
    """CREATE TABLE IF NOT EXISTS replies (
        id INTEGER PRIMARY KEY AUTOINCREMENT, cycle TEXT NOT NULL, site TEXT NOT NULL,
        arrival_s REAL NOT NULL, flex_kw REAL NOT NULL, outcome TEXT NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS replies_cycle ON replies (cycle)",
    """CREATE TABLE IF NOT EXISTS decisions (
        cycle TEXT NOT NULL, site TEXT NOT NULL, alloc_kw REAL NOT NULL, rank INTEGER NOT NULL,
        flex_kw REAL NOT NULL, arrival_s REAL NOT NULL, epoch INTEGER NOT NULL,
        PRIMARY KEY (cycle, site))""",
    """CREATE TABLE IF NOT EXISTS reports (
        site TEXT NOT NULL, seq INTEGER NOT NULL, period TEXT NOT NULL,
        import_kwh REAL NOT NULL, export_kwh REAL NOT NULL, allocated_kwh REAL NOT NULL,
        used_kwh REAL NOT NULL, received_at TEXT NOT NULL, PRIMARY KEY (site, seq))""",
    "CREATE TABLE IF NOT EXISTS report_acks (site TEXT PRIMARY KEY, acked_seq INTEGER NOT NULL)",
]
LAST_RELEASE = [*FIRST_RELEASE,  # b6e6c15
    """CREATE TABLE IF NOT EXISTS grid_overrides (
        day TEXT NOT NULL, hour INTEGER NOT NULL, level INTEGER NOT NULL, set_at TEXT NOT NULL,
        PRIMARY KEY (day, hour))""",
    """CREATE TABLE IF NOT EXISTS strategy_states (
        strategy TEXT PRIMARY KEY, state TEXT NOT NULL, saved_at TEXT NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS reports_period ON reports (period)",
    "ALTER TABLE cycles ADD COLUMN period_end TEXT",
    "ALTER TABLE cycles ADD COLUMN site_ids TEXT",
]


def sqlite_shape(path: Path) -> dict[str, Any]:
    """Tables with their columns (name, type, not null, default, pk) and index names."""
    db = sqlite3.connect(path)
    try:
        names = [r[0] for r in db.execute(
            "SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%'")]
        shape: dict[str, Any] = {
            name: [tuple(c[1:]) for c in db.execute(f"PRAGMA table_info({name})")]
            for name in names
        }
        shape["indexes"] = sorted(r[0] for r in db.execute(
            "SELECT name FROM sqlite_master WHERE type='index' AND sql IS NOT NULL"))
        return shape
    finally:
        db.close()


@pytest.mark.parametrize("release", [FIRST_RELEASE, LAST_RELEASE], ids=["first", "last"])
def test_a_file_of_an_earlier_release_upgrades(tmp_path: Path, release: list[str]) -> None:
    old = tmp_path / "old.sqlite"
    db = sqlite3.connect(old)
    for stmt in release:
        db.execute(stmt)
    db.execute("INSERT INTO meta VALUES ('schema_version', '1'), ('epoch', '41')")
    db.execute("INSERT INTO cycles(cycle, community, epoch, strategy, opened_at, surplus_kw,"
               " sites, contributing, reply_by, closed_at, close_reason, allocated_kw, replies)"
               " VALUES (?, 'c1', 41, 'fifo', ?, 4.0, 2, 2, NULL, ?, 'exhausted', 4.0, 2)",
               (cid(T0), cid(T0), cid(T0 + timedelta(seconds=3))))
    db.execute("INSERT INTO decisions VALUES (?, 's1', 4.0, 1, 5.0, 0.3, 41)", (cid(T0),))
    db.commit()
    db.close()

    rec = Recorder(f"sqlite:///{old}")
    assert rec.next_epoch() == 42
    assert rec.decisions(cid(T0)) == [Decision("s1", 4.0, 1, 5.0, 0.3)]
    stored = rec.stored_cycle(cid(T0))
    assert stored is not None and stored.closed and stored.period_end is None
    rec.set_grid_override(date(2026, 6, 21), 18, 3, T0)  # tables of later migrations work
    rec.save_strategy_state("fifo", {"n": 1}, T0)
    rec.close()
    assert sql(f"sqlite:///{old}", "SELECT value FROM meta WHERE key='schema_version'") == [
        (str(SCHEMA_VERSION),)]
    fresh = tmp_path / "fresh.sqlite"
    Recorder(f"sqlite:///{fresh}").close()
    assert sqlite_shape(old) == sqlite_shape(fresh)


def test_a_failed_migration_changes_nothing(records_url: str) -> None:
    """Migrations run in one transaction: here 5 fails (``cycles`` is a view)."""
    db = connect(records_url)
    db.begin()
    for stmt in MIGRATIONS[0].statements:
        if "TABLE IF NOT EXISTS cycles" not in stmt:
            db.execute(fill_types(stmt, db))
    db.execute("CREATE VIEW cycles AS SELECT 'x' AS cycle")
    db.execute("INSERT INTO meta(key, value) VALUES ('schema_version', '1')")
    db.commit()
    db.close()
    with pytest.raises(RecorderError):
        Recorder(records_url)
    db = connect(records_url)
    try:
        assert stored_version(db) == 1
        assert not db.has_table("grid_overrides") and not db.has_table("shadow_scores")
    finally:
        db.close()


def test_a_postgres_database_at_version_1_upgrades(pg_url: str) -> None:
    db = connect(pg_url)
    for stmt in MIGRATIONS[0].statements:
        db.execute(fill_types(stmt, db))
    db.execute("INSERT INTO meta(key, value) VALUES ('schema_version', '1')")
    assert "site_ids" not in db.columns("cycles")
    db.close()
    rec = Recorder(pg_url)
    assert rec.open_cycle(T0, "c1", 1, "fifo", T0, 5.0, 2, 2, None, T0 + timedelta(hours=1),
                          ["s1"])
    stored = rec.stored_cycle(cid(T0))
    assert stored is not None and stored.site_ids == frozenset({"s1"})
    rec.close()
    types = dict(sql(pg_url, "SELECT column_name, data_type FROM information_schema.columns"
                             " WHERE table_name = 'replies'"))
    assert {k: types[k] for k in ("id", "cycle", "arrival_s", "flex_kw")} == {
        "id": "bigint", "cycle": "text", "arrival_s": "double precision",
        "flex_kw": "double precision"}
    # Text compares by code point, as in SQLite, whatever the database's locale.
    assert sql(pg_url, "SELECT DISTINCT collation_name FROM information_schema.columns"
                       " WHERE table_name IN ('cycles', 'decisions', 'reports')"
                       " AND data_type = 'text'") == [("C",)]


# PostgreSQL: durability, read-only, failures ------------------------------------------
def show(rec: Recorder, setting: str) -> str:
    row = rec._db.execute(f"SHOW {setting}").fetchone()
    assert row is not None
    return str(row[0])


def test_postgres_commits_are_durable_and_the_reader_read_only(
    postgres: TempPostgres, pg_url: str
) -> None:
    dbname = pg_url.rsplit("/", 1)[1]
    postgres.admin(f"ALTER DATABASE {dbname} SET synchronous_commit = off")
    rec = Recorder(pg_url)
    reader = Recorder.reader(pg_url)
    try:
        assert show(rec, "synchronous_commit") == "on"
        assert show(rec, "default_transaction_read_only") == "off"
        assert show(reader, "default_transaction_read_only") == "on"
    finally:
        reader.close()
        rec.close()


def test_a_lost_connection_is_a_clear_error_then_the_next_call_reconnects(
    postgres: TempPostgres, pg_url: str
) -> None:
    rec = Recorder(pg_url)
    rec.open_cycle(T0, "c1", 1, "fifo", T0, 5.0, 2, 2, None)
    dbname = pg_url.rsplit("/", 1)[1]
    postgres.admin("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                   f" WHERE datname = '{dbname}' AND application_name = 'ems-central'")
    with pytest.raises(RecorderError) as lost:
        rec.record_step(T0, 1, [ReplyRow("s1", 0.1, 2.0, "accepted")],
                        [Decision("s1", 2.0, 1, 2.0, 0.1)])
    text = str(lost.value)
    assert f"PostgreSQL at 127.0.0.1:{postgres.port}/{dbname}" in text
    assert "connection lost" in text
    assert postgres.password not in text and postgres.password not in lost.value.url
    assert lost.value.url == redact_url(pg_url)
    # The next call connects again; the failed burst left nothing behind.
    assert rec.replies(cid(T0)) == []
    rec.record_step(T0, 1, [ReplyRow("s1", 0.1, 2.0, "accepted")],
                    [Decision("s1", 2.0, 1, 2.0, 0.1)])
    assert [d.site for d in rec.decisions(cid(T0))] == ["s1"]
    rec.close()


def test_connection_failures_name_the_server_not_the_password(
    postgres: TempPostgres, pg_url: str
) -> None:
    dbname = pg_url.rsplit("/", 1)[1]
    wrong = postgres.url(dbname, password="not-the-password-42")
    with pytest.raises(RecorderError, match="password authentication failed") as bad:
        Recorder(wrong)
    assert "not-the-password-42" not in str(bad.value) + bad.value.url
    assert f"127.0.0.1:{postgres.port}/{dbname}" in str(bad.value)

    with TempPostgres() as gone:  # a server that was there, and is not any more
        port, secret = gone.port, gone.password
    url = f"postgresql://ems:{secret}@127.0.0.1:{port}/records?connect_timeout=3"
    with pytest.raises(RecorderError, match="cannot connect") as down:
        Recorder(url)
    assert f"PostgreSQL at 127.0.0.1:{port}/records" in str(down.value)
    assert secret not in str(down.value) + down.value.url


def test_a_server_restart_is_survived(postgres: TempPostgres) -> None:
    """A whole server going away and coming back (not only one connection)."""
    with TempPostgres() as own:
        name = own.create_database()
        rec = Recorder(own.url(name))
        rec.open_cycle(T0, "c1", 1, "fifo", T0, 5.0, 2, 2, None)
        assert isinstance(rec._db, PostgresDatabase)
        own.restart()
        with pytest.raises(RecorderError, match="connection lost"):
            rec.last_cycles(1)
        assert [c.cycle for c in rec.last_cycles(1)] == [cid(T0)]
        rec.close()


# Configuration ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("sqlite:///var/lib/ems/records.sqlite", None),
        ("records.sqlite", None),
        ("postgresql://ems:s3cret-pw@db.example.org:5432/ems", None),
        ("postgres://ems@127.0.0.1/ems?sslmode=require", None),
        ("mysql://ems:s3cret-pw@db/ems", "unsupported scheme 'mysql'"),
        ("sqlite://records.sqlite", "sqlite:///PATH"),
        ("postgresql://ems:s3cret-pw@db:54x2/ems", "port '54x2'"),
        ("postgresql://ems:s3cret-pw@db/ems?colour=blue", "invalid URI query parameter"),
    ],
)
def test_check_config_validates_the_recorder_url(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], url: str, problem: str | None
) -> None:
    path = tmp_path / "central.toml"
    path.write_text(f'[community]\nid = "c1"\n[recorder]\nurl = "{url}"\n')
    code = main(["check-config", str(path)])
    out, err = capsys.readouterr()
    if problem is None:
        assert code == 0 and "valid central configuration" in out
        return
    assert code == 78
    assert "[recorder] url" in err and problem in err
    assert "s3cret-pw" not in err

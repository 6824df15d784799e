"""The recorder's two databases behind one small seam: SQLite (the default) and PostgreSQL.

``connect(url)`` opens either; the recorder then speaks to a ``Database``:
``execute(sql, args)`` returns a ``Result`` (its rows already fetched, and
``rowcount``), ``executemany(sql, rows)``, ``begin()``, ``commit()``,
``rollback()``. Outside ``begin()``/``commit()`` each statement commits alone.

One SQL text per query, in the SQL both accept: ``?`` placeholders (given to
PostgreSQL as ``%s``), ``INSERT ... ON CONFLICT`` (SQLite >= 3.24) instead of
``INSERT OR IGNORE/REPLACE``, ISO-8601 UTC text for every time, so both sort
and compare times alike. DDL names its types as ``{int}``, ``{real}`` and
``{id}`` (the auto-numbered key), ``{text}``, filled in from ``Database.types``:
SQLite keeps the exact types of its first schema, PostgreSQL gets ``BIGINT``
(SQLite's INTEGER is 64-bit), ``DOUBLE PRECISION``, an identity column and
``TEXT COLLATE "C"`` (byte order, as SQLite's BINARY, whatever the locale).

Durability. SQLite: WAL with ``synchronous=FULL`` (sqlite.org, "pragma
synchronous": under NORMAL a WAL commit may roll back after a power loss).
PostgreSQL: ``synchronous_commit=on`` is set for the session, so a database
whose default was turned off still flushes our commits to its WAL before
COMMIT returns. Readers: SQLite ``mode=ro`` with ``query_only``; PostgreSQL
``default_transaction_read_only=on``.

Errors. Every driver error leaves as ``RecorderError`` naming the store:
``SQLite file PATH`` or ``PostgreSQL at HOST:PORT/DB``, never a password (the
error's ``url`` is ``redact_url``'s). A PostgreSQL connection that breaks
(server restart, network) fails the call in flight; the next call connects
again.
"""

from __future__ import annotations

import contextlib
import re
import sqlite3
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from central.errors import RecorderError

if TYPE_CHECKING:
    import psycopg

Row = tuple[Any, ...]

SQLITE_SCHEMES = ("sqlite",)
POSTGRES_SCHEMES = ("postgresql", "postgres")  # libpq's two URI forms
CONNECT_TIMEOUT_S = 10
_BUSY_TIMEOUT_MS = 5000
_KEEPALIVES = {"keepalives_idle": 30, "keepalives_interval": 10, "keepalives_count": 3}


def scheme_of(url: str) -> str:
    """``sqlite`` or ``postgresql`` for a recorder URL; a plain path is a SQLite file.

    Raises ``ValueError`` for any other scheme.
    """
    if "://" not in url:
        return "sqlite"
    scheme = url.split("://", 1)[0].lower()
    if scheme in SQLITE_SCHEMES:
        if not url.startswith("sqlite:///"):
            raise ValueError("a SQLite url is sqlite:///PATH (three slashes, then the path)")
        return "sqlite"
    if scheme in POSTGRES_SCHEMES:
        return "postgresql"
    raise ValueError(
        f"unsupported scheme {scheme!r}: use sqlite:///PATH or "
        "postgresql://USER:PASSWORD@HOST:PORT/DATABASE"
    )


def sqlite_path(url: str) -> Path:
    """The file of a ``sqlite:///PATH`` url (or a plain path)."""
    return Path(url.removeprefix("sqlite:///"))


def redact_url(url: str) -> str:
    """``url`` with any password replaced by ``***`` (for logs, errors, titles)."""
    if "://" not in url or url.split("://", 1)[0].lower() in SQLITE_SCHEMES:
        return url  # a SQLite url or path holds no secret
    try:
        parts = urlsplit(url)
    except ValueError:
        return f"{url.split('://', 1)[0]}://***"  # unreadable: show nothing of it
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        if ":" in userinfo:
            netloc = f"{userinfo.split(':', 1)[0]}:***@{host}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode([(k, "***" if k.lower() == "password" else v) for k, v in pairs],
                          safe="*/")
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def postgres_conninfo(url: str) -> dict[str, Any]:
    """libpq's reading of a ``postgresql://`` url; ``ValueError`` (password-free) if it has none."""
    import psycopg
    from psycopg.conninfo import conninfo_to_dict

    try:
        info = conninfo_to_dict(url)
    except psycopg.Error as exc:
        # libpq quotes the whole url, password included.
        text = str(exc).strip().splitlines()[0].replace(url, redact_url(url))
        raise ValueError(f"not a PostgreSQL url: {text}") from None
    for port in str(info.get("port") or "5432").split(","):  # one per host of a host list
        if not (port.isdigit() and 0 < int(port) < 65536):
            raise ValueError(f"port {port!r} is not a number from 1 to 65535")
    return info


def check_url(url: str) -> str:
    """``sqlite`` or ``postgresql`` if ``url`` is a recorder url; ``ValueError`` saying why not."""
    scheme = scheme_of(url)
    if scheme == "sqlite" and not url.removeprefix("sqlite:///").strip():
        raise ValueError("the SQLite path is empty")
    if scheme == "postgresql":
        postgres_conninfo(url)
    return scheme


def connect(url: str, *, readonly: bool = False) -> Database:
    """Open the database of ``url``; a reader (``readonly``) creates nothing."""
    try:
        scheme = check_url(url)
    except ValueError as exc:
        raise RecorderError(f"bad recorder url {redact_url(url)!r}: {exc}",
                            redact_url(url)) from None
    if scheme == "postgresql":
        return PostgresDatabase(url, readonly=readonly)
    return SqliteDatabase(url, readonly=readonly)


class Result:
    """A statement's outcome: its rows (fetched at once) and how many rows it changed."""

    __slots__ = ("rowcount", "rows")

    def __init__(self, rows: list[Row], rowcount: int) -> None:
        self.rows = rows
        self.rowcount = rowcount

    def fetchone(self) -> Row | None:
        return self.rows[0] if self.rows else None

    def fetchall(self) -> list[Row]:
        return self.rows

    def __iter__(self) -> Iterator[Row]:
        return iter(self.rows)


class Database(Protocol):
    """What the recorder needs of a database; see the module docstring."""

    kind: str
    types: Mapping[str, str]  # {text}, {int}, {real}, {id} of the DDL
    where: str  # "SQLite file PATH" or "PostgreSQL at HOST:PORT/DB": for errors
    safe_url: str  # the url without its password

    def execute(self, sql: str, args: Sequence[Any] = ()) -> Result: ...
    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None: ...
    def begin(self) -> None: ...
    def commit(self) -> None: ...

    def rollback(self) -> None:
        """Roll back the open transaction, if any; never raises (the connection may be gone)."""

    def close(self) -> None: ...
    def has_table(self, table: str) -> bool: ...
    def columns(self, table: str) -> set[str]: ...

    def lock_schema(self) -> None:
        """Inside a transaction: keep other processes out of the migrations until it ends."""


def fill_types(sql: str, db: Database) -> str:
    """DDL ``sql`` with its ``{text}``, ``{int}``, ``{real}``, ``{id}`` types filled in."""
    return sql.format_map(db.types)


def _switch_to_wal(db: sqlite3.Connection) -> None:
    """``journal_mode=WAL``, retried while another opener holds the file.

    Switching the journal mode takes an exclusive lock and SQLite answers
    "database is locked" at once, without its busy handler, when another
    process is creating or switching the same file: two coordinators (or the
    coordinator and ``ems``) opening fresh records together hit it.
    """
    deadline = time.monotonic() + _BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            db.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(0.02)


class SqliteDatabase:
    """One SQLite file (or ``:memory:``), opened for the recorder's one thread."""

    kind = "sqlite"
    types: Mapping[str, str] = {
        "text": "TEXT", "int": "INTEGER", "real": "REAL",
        "id": "INTEGER PRIMARY KEY AUTOINCREMENT",
    }

    def __init__(self, url: str, *, readonly: bool = False) -> None:
        self.safe_url = redact_url(url)
        path = sqlite_path(url)
        self.where = f"SQLite file {path}"
        try:
            if readonly:
                # The file must exist (the coordinator opened it first); WAL readers
                # never wait for the writer.
                self._db = sqlite3.connect(
                    f"{path.resolve().as_uri()}?mode=ro", uri=True, check_same_thread=False,
                    isolation_level=None,
                )
                self._db.execute(f"PRAGMA busy_timeout={_BUSY_TIMEOUT_MS}")
                self._db.execute("PRAGMA query_only=1")
            else:
                if str(path) != ":memory:":
                    path.parent.mkdir(parents=True, exist_ok=True)
                self._db = sqlite3.connect(str(path), check_same_thread=False,
                                           isolation_level=None)
                self._db.execute(f"PRAGMA busy_timeout={_BUSY_TIMEOUT_MS}")
                _switch_to_wal(self._db)
                self._db.execute("PRAGMA synchronous=FULL")
        except (sqlite3.Error, OSError) as exc:
            raise self.error("cannot read" if readonly else "cannot open", exc) from exc

    def execute(self, sql: str, args: Sequence[Any] = ()) -> Result:
        try:
            cur = self._db.execute(sql, args)
            return Result(cur.fetchall(), cur.rowcount)
        except sqlite3.Error as exc:
            raise self.error("statement failed", exc) from exc

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        try:
            self._db.executemany(sql, rows)
        except sqlite3.Error as exc:
            raise self.error("write failed", exc) from exc

    def begin(self) -> None:
        try:
            self._db.execute("BEGIN IMMEDIATE")  # the write lock now, not at the first write
        except sqlite3.Error as exc:
            raise self.error("cannot begin a transaction", exc) from exc

    def commit(self) -> None:
        try:
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            raise self.error("commit failed", exc) from exc

    def rollback(self) -> None:
        # SQLite rolls back by itself when it cannot go on; the error is raised already.
        if self._db.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("ROLLBACK")

    def close(self) -> None:
        self._db.close()

    def lock_schema(self) -> None:
        pass  # BEGIN IMMEDIATE already holds the only write lock

    def error(self, doing: str, exc: BaseException) -> RecorderError:
        return RecorderError(f"{self.where}: {doing}: {exc}", self.safe_url)

    def has_table(self, table: str) -> bool:
        return bool(self.execute(
            "SELECT 1 FROM sqlite_master WHERE type='table' AND name=?", (table,)).rows)

    def columns(self, table: str) -> set[str]:
        return {str(row[1]) for row in self.execute(f"PRAGMA table_info({table})").rows}


_PLACEHOLDER = re.compile(r"'[^']*'|\?|%")


@lru_cache(maxsize=256)
def to_pyformat(sql: str) -> str:
    """``?`` placeholders as psycopg's ``%s`` (a literal ``%`` doubled), quotes left alone."""

    def swap(m: re.Match[str]) -> str:
        token = m.group(0)
        if token == "?":
            return "%s"
        return token.replace("%", "%%")

    return _PLACEHOLDER.sub(swap, sql)


class PostgresDatabase:
    """One PostgreSQL connection (psycopg 3, autocommit, explicit transactions)."""

    kind = "postgresql"
    types: Mapping[str, str] = {
        "text": 'TEXT COLLATE "C"', "int": "BIGINT", "real": "DOUBLE PRECISION",
        "id": "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY",
    }
    # pg_advisory_xact_lock key of the migrations: any constant the product owns.
    _SCHEMA_LOCK = 0x656D735F7265  # "ems_re"

    def __init__(self, url: str, *, readonly: bool = False) -> None:
        import psycopg

        self._psycopg = psycopg
        self.safe_url = redact_url(url)
        self._readonly = readonly
        self._conn: psycopg.Connection[Row] | None = None
        info = postgres_conninfo(url)  # connect() checked it
        host = str(info.get("host") or "localhost")
        port = str(info.get("port") or "5432")
        self.where = f"PostgreSQL at {host}:{port}/{info.get('dbname') or info.get('user') or ''}"
        self._password = str(info.get("password") or "")
        options = " ".join(filter(None, [
            str(info.get("options") or ""),
            "-c synchronous_commit=on",
            "-c default_transaction_read_only=on" if readonly else "",
        ]))
        self._kwargs: dict[str, Any] = {
            "autocommit": True,
            "options": options,
            # What pg_stat_activity shows: the recorder, or a reader (page, tools).
            "application_name": str(info.get("application_name")
                                    or ("ems-central-reader" if readonly else "ems-central")),
            "connect_timeout": int(info.get("connect_timeout") or CONNECT_TIMEOUT_S),
        }
        # A server that vanishes without a word (power, network) is noticed in about
        # a minute instead of TCP's two hours; the url may say otherwise.
        for key, value in _KEEPALIVES.items():
            self._kwargs[key] = info.get(key) or value
        self._url = url
        self._cx()

    # Connection ---------------------------------------------------------------
    def _cx(self) -> psycopg.Connection[Row]:
        conn = self._conn
        if conn is not None and not conn.closed:
            return conn
        self._conn = None
        try:
            conn = self._psycopg.connect(self._url, **self._kwargs)
        except self._psycopg.Error as exc:
            raise self.error("cannot connect", exc) from None
        self._conn = conn
        return conn

    def error(self, doing: str, exc: BaseException) -> RecorderError:
        text = str(exc).strip().replace(self._url, self.safe_url)
        if self._password:
            text = text.replace(self._password, "***")
        conn = self._conn
        if conn is not None and conn.closed:
            self._conn = None  # connect again on the next call
            doing = f"{doing} (connection lost)"
        return RecorderError(f"{self.where}: {doing}: {text}", self.safe_url)

    # Statements ---------------------------------------------------------------
    def execute(self, sql: str, args: Sequence[Any] = ()) -> Result:
        try:
            cur = self._cx().execute(to_pyformat(sql), args)
            return Result(cur.fetchall() if cur.description is not None else [], cur.rowcount)
        except self._psycopg.Error as exc:
            raise self.error("statement failed", exc) from None

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        try:
            with self._cx().cursor() as cur:
                cur.executemany(to_pyformat(sql), rows)  # pipelined: one round trip
        except self._psycopg.Error as exc:
            raise self.error("write failed", exc) from None

    def begin(self) -> None:
        try:
            self._cx().execute("BEGIN")
        except self._psycopg.Error as exc:
            raise self.error("cannot begin a transaction", exc) from None

    def commit(self) -> None:
        try:
            self._cx().execute("COMMIT")
        except self._psycopg.Error as exc:
            raise self.error("commit failed", exc) from None

    def rollback(self) -> None:
        conn = self._conn
        if conn is None or conn.closed:
            return
        try:
            conn.execute("ROLLBACK")
        except self._psycopg.Error:
            # Only a broken connection gets here: the server ends its transaction.
            if conn.closed:
                self._conn = None

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def has_table(self, table: str) -> bool:
        return self.execute("SELECT to_regclass(?) IS NOT NULL", (table,)).fetchone() == (True,)

    def columns(self, table: str) -> set[str]:
        rows = self.execute(
            "SELECT column_name FROM information_schema.columns"
            " WHERE table_schema = current_schema() AND table_name = ?",
            (table,),
        ).rows
        return {str(r[0]) for r in rows}

    def lock_schema(self) -> None:
        # Two processes starting on one empty database would both CREATE TABLE
        # IF NOT EXISTS and one would fail on the catalog's unique index.
        self.execute("SELECT pg_advisory_xact_lock(?)", (self._SCHEMA_LOCK,))

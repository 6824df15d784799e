"""A throwaway PostgreSQL server on 127.0.0.1 for the recorder's tests and its benchmark.

``TempPostgres`` runs Debian's own binaries (``/usr/lib/postgresql/<major>/bin``,
then ``PATH``): ``initdb`` into a temporary directory, then ``postgres -D dir -k
sockdir -p PORT -h 127.0.0.1``, stopped by its own process handle. ``initdb``
refuses to run as root, so as root both run as the ``postgres`` user (``Popen``'s
``user=``, so the server is our direct child and gets our signals). Host
connections need a password (scram-sha-256): the tests' URLs carry a real one,
which is how they check that no error or log line ever shows it.

Fixtures (imported by ``tests/conftest.py``):

``postgres``: one server for the session; the tests skip, saying why, only
where the PostgreSQL binaries cannot be found (``scripts/system-deps`` installs
them).
``pg_url``: a fresh database for one test, owned by the unprivileged role
``ems``, dropped afterwards: ``postgresql://ems:PASSWORD@127.0.0.1:PORT/DB``.
``records_url``: parametrised over both recorder backends, a SQLite file under
``tmp_path`` or ``pg_url``.
"""

from __future__ import annotations

import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import pytest

ROLE = "ems"
_STARTUP_S = 30.0


class PostgresNotFoundError(RuntimeError):
    """No ``initdb``/``postgres`` binaries on this machine."""


def find_bindir() -> Path:
    """The newest ``/usr/lib/postgresql/<major>/bin`` with both binaries, else ``PATH``'s."""

    def major(path: Path) -> float:
        try:
            return float(path.parent.name)
        except ValueError:
            return 0.0

    for bindir in sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=major, reverse=True):
        if (bindir / "initdb").is_file() and (bindir / "postgres").is_file():
            return bindir
    initdb, server = shutil.which("initdb"), shutil.which("postgres")
    if initdb and server:
        return Path(os.path.realpath(initdb)).parent
    raise PostgresNotFoundError(
        "no PostgreSQL binaries (initdb, postgres) under /usr/lib/postgresql/*/bin or on PATH; "
        "install them with scripts/system-deps (Debian package postgresql)"
    )


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class TempPostgres:
    """One PostgreSQL server in a temporary directory, on a loopback address and a free port.

    ``fsync=False`` (the tests) trades crash safety of the throwaway cluster for
    speed; the benchmark keeps PostgreSQL's durable defaults.
    """

    def __init__(self, *, host: str = "127.0.0.1", fsync: bool = False) -> None:
        self.bindir = find_bindir()
        self.host = host
        self.fsync = fsync
        self.port = 0
        self.password = secrets.token_urlsafe(12)  # the ``ems`` role's and the superuser's
        self._dir: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._as: dict[str, Any] = {}

    # Life cycle ---------------------------------------------------------------
    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        # Not under pytest's tmp dirs: they are private to root, and the server may
        # run as ``postgres``.
        self._dir = Path(tempfile.mkdtemp(prefix="ems-pg-"))
        if os.geteuid() == 0:
            try:
                pw = pwd.getpwnam("postgres")
            except KeyError as exc:
                raise RuntimeError(
                    "running as root, and there is no 'postgres' user to run PostgreSQL as "
                    "(initdb refuses root): install the Debian package postgresql"
                ) from exc
            self._as = {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}
            os.chown(self._dir, pw.pw_uid, pw.pw_gid)
        data, sock = self._dir / "data", self._dir / "sock"
        pwfile = self._dir / "pwfile"
        pwfile.write_text(self.password + "\n")
        sock.mkdir()
        if self._as:
            for path in (pwfile, sock):
                os.chown(path, self._as["user"], self._as["group"])
        env = {**os.environ, "LC_ALL": "C", "TZ": "UTC"}
        init = subprocess.run(
            [str(self.bindir / "initdb"), "-D", str(data), "-U", "postgres", "-E", "UTF8",
             "--locale=C", "--no-sync", "--auth-local=trust", "--auth-host=scram-sha-256",
             f"--pwfile={pwfile}"],
            capture_output=True, env=env, cwd=self._dir, timeout=120, check=False, **self._as,
        )
        if init.returncode != 0:
            self._cleanup()
            raise RuntimeError(f"initdb failed: {init.stderr.decode(errors='replace')[-2000:]}")
        self.port = _free_port(self.host)
        self._launch()
        self.admin(f"CREATE ROLE {ROLE} LOGIN PASSWORD '{self.password}' CREATEDB")

    def restart(self) -> None:
        """Stop the server (fast shutdown) and start it again on the same port and data."""
        self._halt()
        self._launch()

    def _launch(self) -> None:
        assert self._dir is not None
        data, sock = self._dir / "data", self._dir / "sock"
        env = {**os.environ, "LC_ALL": "C", "TZ": "UTC"}
        options = [
            "-c", "max_connections=40", "-c", "shared_buffers=32MB",
            "-c", "dynamic_shared_memory_type=mmap",  # containers often have a tiny /dev/shm
            "-c", f"fsync={'on' if self.fsync else 'off'}",
            "-c", "logging_collector=off",
        ]
        log = (self._dir / "server.log").open("ab")
        self._proc = subprocess.Popen(
            [str(self.bindir / "postgres"), "-D", str(data), "-k", str(sock),
             "-p", str(self.port), "-h", self.host, *options],
            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=self._dir, **self._as,
        )
        log.close()
        self._wait_ready()

    def _wait_ready(self) -> None:
        import psycopg

        deadline = time.monotonic() + _STARTUP_S
        while True:
            assert self._proc is not None
            if self._proc.poll() is not None:
                tail = self.log_tail()
                self._cleanup()
                raise RuntimeError(f"postgres exited at start-up:\n{tail}")
            try:
                psycopg.connect(self.admin_url, connect_timeout=2).close()
                return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    tail = self.log_tail()
                    self.stop()
                    raise RuntimeError(f"postgres did not accept connections:\n{tail}") from None
                time.sleep(0.05)

    def stop(self) -> None:
        """Stop the server and remove its directory."""
        self._halt()
        self._cleanup()

    def _halt(self) -> None:
        """Fast shutdown (SIGINT: clients are disconnected), then SIGKILL."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)

    def _cleanup(self) -> None:
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def log_tail(self, size: int = 2000) -> str:
        if self._dir is None:
            return ""
        try:
            return (self._dir / "server.log").read_bytes()[-size:].decode(errors="replace")
        except OSError:
            return ""

    # Databases ----------------------------------------------------------------
    @property
    def admin_url(self) -> str:
        return f"postgresql://postgres:{self.password}@{self.host}:{self.port}/postgres"

    def url(self, dbname: str, *, user: str = ROLE, password: str | None = None) -> str:
        secret = self.password if password is None else password
        return f"postgresql://{user}:{secret}@{self.host}:{self.port}/{dbname}"

    def admin(self, sql: str, dbname: str = "postgres") -> list[tuple[Any, ...]]:
        """Run one statement as the superuser (autocommit), return its rows if any."""
        import psycopg

        url = self.admin_url.rsplit("/", 1)[0] + f"/{dbname}"
        with psycopg.connect(url, autocommit=True, connect_timeout=5) as conn:
            cur = conn.execute(sql.encode())
            return cur.fetchall() if cur.description is not None else []

    def create_database(self, name: str | None = None) -> str:
        """A new empty database owned by ``ems``; returns its name."""
        name = name or f"t_{uuid.uuid4().hex[:12]}"
        if not re.fullmatch(r"[a-z_][a-z0-9_]*", name):
            raise ValueError(f"not a plain database name: {name!r}")
        self.admin(f"CREATE DATABASE {name} OWNER {ROLE}")
        return name

    def drop_database(self, name: str) -> None:
        self.admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


# Fixtures ---------------------------------------------------------------------
@pytest.fixture(scope="session")
def postgres() -> Iterator[TempPostgres]:
    """A real PostgreSQL on 127.0.0.1 and a free port for the whole session."""
    try:
        server = TempPostgres()
    except PostgresNotFoundError as exc:
        pytest.skip(str(exc))
    with server:
        yield server


@pytest.fixture
def pg_url(postgres: TempPostgres) -> Iterator[str]:
    """A fresh database for this test (dropped after it), as a recorder URL."""
    name = postgres.create_database()
    try:
        yield postgres.url(name)
    finally:
        postgres.drop_database(name)


@pytest.fixture(params=["sqlite", "postgresql"])
def records_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A recorder URL on each backend: a SQLite file, or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'records.sqlite'}"
    return str(request.getfixturevalue("pg_url"))

"""Group-commit throughput of the recorder, SQLite next to PostgreSQL.

``python -m bench.recorder`` records bursts of decisions exactly as the
coordinator does (``Recorder.record_step``: the burst's replies and decisions in
one transaction, committed durably before any ``alloc`` would be published) and
prints, per burst size, decisions per second and commits per second on each
backend, SQLite (the default, the baseline) first. Burst 1 is the worst case
(one commit per reply); the coordinator drains up to its queue's burst at once.

Both stores sit in the same temporary directory's file system: SQLite in WAL
with ``synchronous=FULL``; PostgreSQL is a throwaway server started from the
Debian binaries (``tests/pg.py``) with its durable defaults (``fsync=on``,
``synchronous_commit=on``), unless ``--postgres URL`` names an existing one
(an empty database: the bench writes a few tables' worth of rows).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from bench.common import machine_info, machine_line, progress
from central.core.cycle import Decision
from central.db import redact_url
from central.recorder import Recorder, ReplyRow

BURSTS = (1, 10, 100, 1000)
T0 = datetime(2026, 6, 21, 12, 0, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class Row:
    backend: str
    burst: int
    commits: int
    decisions: int
    seconds: float

    @property
    def decisions_per_s(self) -> float:
        return self.decisions / self.seconds

    @property
    def commits_per_s(self) -> float:
        return self.commits / self.seconds


def measure(rec: Recorder, burst: int, cycle: datetime, seconds: float, min_commits: int) -> Row:
    """Bursts of ``burst`` replies + decisions into one fresh cycle for about ``seconds``."""
    rec.open_cycle(cycle, "bench", 1, "fifo", cycle, 1e9, 10**6, 10**6,
                   cycle + timedelta(seconds=60))
    commits = done = 0
    start = time.perf_counter()
    while True:
        sites = [f"s{done + i:07d}" for i in range(burst)]
        rec.record_step(
            cycle, 1,
            [ReplyRow(s, 0.001 * (done + i), 2.0, "accepted") for i, s in enumerate(sites)],
            [Decision(s, 2.0, done + i + 1, 2.0, 0.001 * (done + i))
             for i, s in enumerate(sites)],
        )
        commits += 1
        done += burst
        elapsed = time.perf_counter() - start
        if elapsed >= seconds and commits >= min_commits:
            break
    rec.close_cycle(cycle, "exhausted", cycle + timedelta(seconds=1), 2.0 * done, done)
    return Row(rec.backend, burst, commits, done, elapsed)


@contextlib.contextmanager
def postgres_url(given: str | None) -> Iterator[str]:
    if given is not None:
        yield given
        return
    tests = str(Path(__file__).resolve().parents[1] / "tests")
    if tests not in sys.path:
        sys.path.insert(0, tests)
    from pg import TempPostgres  # the tests' throwaway server (Debian's binaries)

    with TempPostgres(fsync=True) as server:
        yield server.url(server.create_database("bench"))


def run_benchmark(
    sqlite_url: str, pg_url: str, bursts: Sequence[int] = BURSTS, seconds: float = 1.0,
    min_commits: int = 5,
) -> list[Row]:
    rows = []
    for url in (sqlite_url, pg_url):
        rec = Recorder(url)
        try:
            for n, burst in enumerate(bursts):
                progress(f"{rec.backend}: bursts of {burst}")
                rows.append(measure(rec, burst, T0 + timedelta(hours=n), seconds, min_commits))
        finally:
            rec.close()
    return rows


def format_table(rows: Sequence[Row]) -> str:
    by = {(r.backend, r.burst): r for r in rows}
    bursts = sorted({r.burst for r in rows})
    lines = [
        f"{'burst':>6} | {'SQLite dec/s':>13} {'commits/s':>10} | "
        f"{'PostgreSQL dec/s':>17} {'commits/s':>10} | {'PG/SQLite':>9}",
        "-" * 80,
    ]
    for b in bursts:
        lite, pg = by[("sqlite", b)], by[("postgresql", b)]
        lines.append(
            f"{b:>6} | {lite.decisions_per_s:>13,.0f} {lite.commits_per_s:>10,.0f} | "
            f"{pg.decisions_per_s:>17,.0f} {pg.commits_per_s:>10,.0f} | "
            f"{pg.decisions_per_s / lite.decisions_per_s:>8.2f}x"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.recorder", description=__doc__)
    parser.add_argument("--postgres", metavar="URL",
                        help="an existing, empty PostgreSQL database (default: a throwaway "
                             "server on 127.0.0.1)")
    parser.add_argument("--seconds", type=float, default=1.0,
                        help="time per burst size and backend (default 1)")
    parser.add_argument("--bursts", default=",".join(map(str, BURSTS)),
                        help="burst sizes, comma-separated (default 1,10,100,1000)")
    parser.add_argument("--json", action="store_true", help="JSON on stdout")
    args = parser.parse_args(argv)
    bursts = [int(b) for b in args.bursts.split(",")]
    with tempfile.TemporaryDirectory(prefix="ems-bench-rec-") as tmp, \
            postgres_url(args.postgres) as pg_url:
        progress(f"SQLite in {tmp}; PostgreSQL at {redact_url(pg_url)}")
        rows = run_benchmark(f"sqlite:///{Path(tmp) / 'records.sqlite'}", pg_url, bursts,
                             args.seconds)
    machine = machine_info()
    if args.json:
        print(json.dumps({"machine": machine, "rows": [
            {**asdict(r), "decisions_per_s": r.decisions_per_s,
             "commits_per_s": r.commits_per_s} for r in rows]}, indent=2))
    else:
        print(machine_line(machine))
        print(format_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Smoke test of the recorder benchmark (bench/recorder.py): tiny bursts, structure only.

No speed thresholds: it checks that both backends are measured, that every
decision it counts is in the records, and that the table comes out.
"""

from __future__ import annotations

import sys
from datetime import timedelta
from pathlib import Path

_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from bench.recorder import T0, format_table, run_benchmark  # noqa: E402
from central.recorder import Recorder  # noqa: E402
from protocol.models import format_utc  # noqa: E402


def test_both_backends_are_measured_and_every_decision_is_recorded(
    tmp_path: Path, pg_url: str
) -> None:
    lite = f"sqlite:///{tmp_path / 'bench.sqlite'}"
    rows = run_benchmark(lite, pg_url, bursts=(1, 5), seconds=0.0, min_commits=3)
    assert [(r.backend, r.burst, r.commits, r.decisions) for r in rows] == [
        ("sqlite", 1, 3, 3), ("sqlite", 5, 3, 15),
        ("postgresql", 1, 3, 3), ("postgresql", 5, 3, 15),
    ]
    assert all(r.seconds > 0 and r.decisions_per_s > 0 for r in rows)
    for url in (lite, pg_url):
        rec = Recorder(url)
        for n, burst in enumerate((1, 5)):
            cycle = format_utc(T0 + timedelta(hours=n))
            decisions = rec.decisions(cycle)
            assert len(decisions) == 3 * burst
            assert [d.rank for d in decisions] == list(range(1, 3 * burst + 1))
            assert len(rec.replies(cycle)) == 3 * burst
        rec.close()
    table = format_table(rows).splitlines()
    assert "SQLite dec/s" in table[0] and "PostgreSQL dec/s" in table[0]
    assert [line.split("|")[0].strip() for line in table[2:]] == ["1", "5"]

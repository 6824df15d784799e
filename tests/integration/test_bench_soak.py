"""Smoke test of the soak (bench/soak.py): 50 sites, 4 cycles of a compressed day.

No wall-clock thresholds: it checks that the run is complete and consistent (no
report lost, at most one decision per site and cycle, night without requests)
and that the table, the JSON and the plot come out.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import pytest

# bench/ sits at the repository root and is not an installed package; the
# coordinator's process it spawns inherits this sys.path.
_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from bench.soak import main, run_soak  # noqa: E402
from bench.soak_report import format_table, write_plot  # noqa: E402

pytestmark = pytest.mark.integration

SITES, CYCLES = 50, 4


def test_soak_loses_nothing_and_reports_every_cycle(
    mosquitto: Any, topic_root: str, tmp_path: Path
) -> None:
    seen: list[int] = []
    result = asyncio.run(run_soak(SITES, CYCLES, period_s=1.0, broker=mosquitto,
                                  root=topic_root, on_cycle=lambda row: seen.append(row.index)))

    assert seen == list(range(CYCLES))
    assert [r.cycle[11:16] for r in result.rows] == ["00:00", "06:00", "12:00", "18:00"]
    # Every site reports every period, and every report is recorded and acknowledged.
    assert result.reports_sent == SITES * CYCLES
    assert result.reports_recorded == result.reports_sent
    assert result.acks_missing_at_end == 0
    # At most one decision per site and cycle, and each reached its site.
    assert result.decisions_duplicated == 0
    assert result.decisions_recorded == result.allocations_received
    # The day's shape: the first cycle closes at night without a request; later ones ask.
    assert not result.rows[0].request
    assert result.rows[0].reason == "no_surplus"
    asked = [r for r in result.rows if r.request]
    assert asked
    for row in result.rows:
        assert row.reason is not None
        assert row.duplicate_allocations == 0
        assert row.rss_mb is not None and row.rss_mb > 0
        assert row.heap_blocks is not None and row.heap_blocks > 0
        assert row.recorder_mb is not None and row.recorder_mb > 0
    for row in asked:
        assert row.replies is not None and 0 < row.replies <= SITES
        assert row.allocations <= row.replies
        assert row.cycle_s is not None and row.cycle_s > 0
        assert row.allocated_kw is not None and row.surplus_kw is not None
        assert 0 < row.allocated_kw <= row.surplus_kw + 1e-6
    assert result.ok, result.checks
    assert set(result.growth) == {"rss", "cycle_time", "heap_blocks", "recorder"}
    assert "slope" in result.growth["rss"]
    assert result.growth["rss"]["verdict"] in ("no growth", "grows", "shrinks")

    table = format_table(result)
    assert "checks: all passed" in table
    assert "RSS:" in table and "12:00" in table
    summary = json.loads(json.dumps(result.as_dict()))
    assert summary["reports_recorded"] == SITES * CYCLES
    assert len(summary["rows"]) == CYCLES
    assert all(summary["checks"].values())
    assert write_plot(result, tmp_path).stat().st_size > 0


@pytest.mark.parametrize("argv", [["--sites", "0"], ["--cycles", "2"], ["--period-s", "-1"]])
def test_soak_refuses_bad_arguments(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2

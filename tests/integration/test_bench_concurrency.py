"""Smoke test of the concurrency experiment (bench/concurrency.py): N = 100 and 300.

No wall-clock thresholds: it checks that every method ran at both sizes, that
none beat the latency floor it cannot beat, that the broker variant served every
site, and that the table shows our slopes next to the study's.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

# bench/ sits at the repository root and is not an installed package; the
# processes it spawns inherit this sys.path.
_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from bench.concurrency import (  # noqa: E402
    Allocator,
    draw_latencies,
    ems_answer,
    format_table,
    run_experiment,
    write_plot,
)

pytestmark = pytest.mark.integration

SIZES = [100, 300]
LATENCY_S = 0.05


def test_every_method_runs_and_the_table_prints_slopes(
    mosquitto: Any, topic_root: str, tmp_path: Path
) -> None:
    result = run_experiment(SIZES, 1, latency_s=LATENCY_S, max_threads=50, workers=2,
                            broker=mosquitto, root=topic_root)

    assert result.methods == ["threads", "pool", "asyncio", "broker"]
    for method in result.methods:
        for n in SIZES:
            measured = result.get(method, n)
            assert measured is not None and measured.complete, (method, n)
            assert len(measured.seconds) == 1
            # The slowest EMS answers after the largest latency drawn: nobody is faster.
            assert measured.seconds[0] >= measured.floor_s > 0
        assert result.slope(method) is not None

    table = format_table(result)
    assert "slope k" in table
    for label in ("threads", "process pool", "asyncio (one task per EMS)", "over Mosquitto"):
        assert label in table
    assert "0.59" in table and "0.47" in table and "0.20" in table  # the study's slopes
    assert f"{result.slope('asyncio'):.2f}" in table
    summary = json.loads(json.dumps(result.as_dict()))
    assert set(summary["slopes"]) == set(result.methods)
    assert summary["study"]["slopes_least_squares"]["threads"] == pytest.approx(0.59, abs=0.01)
    assert write_plot(result, tmp_path).stat().st_size > 0


def test_the_allocator_serves_every_reply_first_come_first_served() -> None:
    n = 20
    alloc = Allocator(n, seed=3)
    for i in reversed(range(n)):
        alloc.take(ems_answer(i, seed=3))
    alloc.check()
    ranks = {d.site: d.rank for d in alloc.cycle.decisions}
    assert ranks["s000019"] < ranks["s000000"]  # arrival order, not site order
    assert draw_latencies(5, 1, 2.0) == draw_latencies(5, 1, 2.0)
    assert all(0 <= x <= 2.0 for x in draw_latencies(100, 1, 2.0))

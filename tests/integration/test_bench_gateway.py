"""Smoke test of the gateway benchmark (bench/gateway.py): 3 cycles, structure only.

No wall-clock thresholds: the figures depend on the machine. It checks that the
gateway ran in its own process, that every relay command of every cycle was
seen and timed, that memory and CPU were read, and that the table and the JSON
come out.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import pytest

# bench/ sits at the repository root and is not an installed package; the gateway
# process it starts runs from the root too.
_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from bench.gateway import LOADS, format_table, run_benchmark, stats  # noqa: E402

pytestmark = pytest.mark.integration

CYCLES = 3


def test_benchmark_times_every_command(mosquitto: Any, topic_root: str) -> None:
    bench = asyncio.run(run_benchmark(CYCLES, 1.0, pause_s=0.2, settle_s=0.5,
                                      broker=mosquitto, root=topic_root))

    assert bench.complete
    assert [c.on for c in bench.cycles] == [True, False, True]
    for cycle in bench.cycles:
        assert cycle.flex_ms is not None and cycle.flex_ms > 0
        assert sorted(cycle.offered) == sorted(ld.id for ld in LOADS)
        assert set(cycle.command_ms) == {ld.id for ld in LOADS}
        assert all(ms is not None and ms > 0 for ms in cycle.command_ms.values())

    summary = bench.summary()
    assert summary["latency_ms"]["all"]["n"] == CYCLES * len(LOADS)
    assert summary["latency_ms"]["last_of_cycle"]["n"] == CYCLES
    assert summary["bare_python_rss_mb"] > 0
    assert set(summary["stages_rss_mb"]) == {"entry", "imported", "ready"}
    assert all(mb > 0 for mb in summary["stages_rss_mb"].values())
    assert summary["idle"]["rss_mb_n"] >= 1 and summary["idle"]["rss_mb_max"] > 0
    assert summary["cycles_phase"]["rss_mb_max"] > 0
    assert summary["end_status"]["VmHWM"] >= summary["end_status"]["VmRSS"] > 0
    assert summary["cycles_phase"]["cpu_s"] >= 0 and summary["idle"]["cpu_s"] >= 0
    assert bench.farewell.get("event") == "bye" and bench.farewell.get("error") is None

    table = format_table(bench)
    assert "alloc -> last command of the cycle" in table
    assert "bare Python interpreter" in table
    as_json = json.loads(json.dumps(bench.as_dict()))
    assert as_json["complete"] is True
    assert len(as_json["cycles"]) == CYCLES


def test_stats_nearest_rank() -> None:
    assert stats([]) == {"n": 0, "min": None, "median": None, "p95": None, "max": None}
    values = [float(v) for v in range(1, 21)]  # 1..20: the 95th percentile is the 19th
    assert stats(values) == {"n": 20, "min": 1.0, "median": 10.5, "p95": 19.0, "max": 20.0}

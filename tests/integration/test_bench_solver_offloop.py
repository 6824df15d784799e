"""Smoke test of bench/solver_offloop.py: N=300, structure only, no wall-clock threshold.

It checks that both ways of running milp's core calls complete the cycle, give
the same allocations, and that the loop's gaps were sampled and tabulated.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import pytest

_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from bench.solver_offloop import MODES, measure, medians, table  # noqa: E402

pytestmark = pytest.mark.integration

N = 300


def test_both_modes_run_the_same_cycle(mosquitto: Any, topic_root: str, tmp_path: Path) -> None:
    runs = asyncio.run(measure(mosquitto, N, 1, 2.0, tmp_path, "milp", MODES, topic_root))
    assert [r.mode for r in runs] == list(MODES)
    on_loop, threaded = runs
    assert on_loop.allocated_kw == pytest.approx(threaded.allocated_kw)
    assert on_loop.allocated_kw > 0 and on_loop.method == threaded.method
    for r in runs:
        assert r.sites == N and r.strategy == "milp" and r.ticks > 0
        assert r.max_gap_ms >= r.p99_gap_ms >= 0 and r.cycle_s > 0
    text = table(medians(runs))
    assert "solver_thread" in text and "on_loop" in text

"""Smoke test of the cycle benchmark (bench/cycle.py): N=200, one run, structure only.

No wall-clock thresholds: the figures depend on the machine. It checks that every
column is measured, that the coordinator served every site, and that the table and
the JSON come out.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import pytest

# bench/ sits at the repository root and is not an installed package; the hub
# processes it spawns inherit this sys.path.
_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from bench.cycle import CORE_RUNS, format_table, parse_sizes, run_benchmark  # noqa: E402

pytestmark = pytest.mark.integration

N = 200


def test_benchmark_measures_every_column(mosquitto: Any, topic_root: str) -> None:
    bench = asyncio.run(run_benchmark([N], 1, broker=mosquitto, root=topic_root))

    (size,) = bench.sizes
    assert size.n == N
    assert size.complete
    assert size.allocations_received == [N]
    assert size.round_trip_allocations == [N]
    assert size.close_reasons == ["all_replied"]
    for column in ("broker_replies_s", "broker_round_trip_s", "coordinator_s",
                   "coordinator_internal_s", "coordinator_cpu_s"):
        values = getattr(size, column)
        assert len(values) == 1, column
        assert values[0] > 0, column
    assert size.ratio_round_trip is not None and size.ratio_round_trip > 0
    assert size.ratio_replies is not None and size.ratio_replies > 0
    for rates in (size.core_offer_many_rps, size.core_offer_many_frozen_rps, size.core_offer_rps):
        assert len(rates) == CORE_RUNS
        assert all(r > 0 for r in rates)
    assert size.coordinator_peak_rss_mb is not None and size.coordinator_peak_rss_mb > 0
    assert size.announce_s is not None and size.announce_s >= 0

    table = format_table(bench)
    assert f"N={N}" in table
    assert "fair floor" in table
    summary = json.loads(json.dumps(bench.as_dict()))
    assert summary["sizes"][0]["ratio_coordinator_to_round_trip"] == size.ratio_round_trip


def test_sizes_accept_thousands() -> None:
    assert parse_sizes("1000, 10k,100K") == [1_000, 10_000, 100_000]

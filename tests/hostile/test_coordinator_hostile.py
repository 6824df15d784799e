"""The coordinator's message handling under hostile input, in-process (no broker).

The bulk: 100,000 cases of the versioned corpus (bench/fuzz/corpus.py) through
the real consumer (``_handle_batch``: flood control, decoding, the core cycle,
the SQLite recorder), every message checked by the harness (counted once, a
refused one changes nothing, the cycle's contract holds). Then hypothesis, on
a small budget, for shrinking: arbitrary bytes and arbitrary JSON objects on
every topic the coordinator reads. Then the findings, one regression each.
"""

from __future__ import annotations

import asyncio
import math
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from bench.fuzz.corpus import dumps, generate
from bench.fuzz.harness import CoordinatorHarness, coordinator_harness, errors_in

BULK = 100_000


@pytest.mark.timeout(240)
def test_100k_hostile_inputs_change_nothing_they_should_not(fast_tmp: Path) -> None:
    async def scenario() -> tuple[CoordinatorHarness, list[dict[str, Any]]]:
        with capture_logs() as logs:
            async with coordinator_harness(fast_tmp) as h:
                await h.feed(generate(h.targets, BULK, seed=1))
        return h, logs

    h, logs = asyncio.run(scenario())
    stats = h.coordinator.stats
    assert errors_in(logs) == []
    assert stats.errors == 0
    # Every message counted exactly once (the harness checked each one as well).
    honest = stats.received - BULK
    assert stats.received == (sum(stats.accepted.values()) + stats.rejections.total
                              + stats.ignored["not_handled"])
    assert 0 < honest < BULK // 100
    # The corpus reaches every refusal the coordinator has, and the cycle's ignores.
    assert set(stats.rejected) >= {
        "malformed_json", "not_an_object", "bad_version", "invalid", "oversized",
        "site_mismatch", "unknown_site", "unknown_topic", "out_of_range",
    }
    assert {"stale", "duplicate", "closed"} <= set(stats.ignored)
    assert h.run.cycles >= 5 and h.run.decisions > 0
    # Rate-limited logs: at most one line per (site, reason) per interval (+ the first).
    interval = h.settings.flood.log_interval_s
    span_s = BULK * 0.01
    lines = Counter((e.get("site"), e["reason"]) for e in logs if e["event"] == "payload_rejected")
    bound = math.ceil(span_s / interval) + 1
    assert max(lines.values()) <= bound
    assert sum(lines.values()) < stats.rejections.total / 10
    assert stats.rejections.suppressed_total == stats.rejections.total - sum(lines.values())


# Hypothesis: a small budget, for shrinking -----------------------------------------------
@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, CoordinatorHarness]]:
    """One coordinator and its event loop for every example (a harness costs ~0.5 s)."""
    loop = asyncio.new_event_loop()
    manager = coordinator_harness(tmp_path_factory.mktemp("hyp"), allow_list=False)
    h = loop.run_until_complete(manager.__aenter__())
    try:
        yield loop, h
    finally:
        loop.run_until_complete(manager.__aexit__(None, None, None))
        loop.close()


def run_one(live: tuple[Any, CoordinatorHarness], topic: str, payload: bytes) -> None:
    loop, h = live
    h.clock.advance(0.5)
    before = h.coordinator.stats.received
    with capture_logs() as logs:
        loop.run_until_complete(h.batch([("m", topic, payload, h.clock.monotonic())]))
    assert h.coordinator.stats.received == before + 1
    assert errors_in(logs) == []
    assert h.coordinator.stats.errors == 0


SITES = st.from_regex(r"[a-z0-9][a-z0-9_-]{0,31}", fullmatch=True) | st.sampled_from(
    ["s00", "s01", "S01", "", "x" * 40, "é", "s01/x"])
LEAVES = st.sampled_from(["status", "netload", "flex", "report", "load/wh/state", "other"])
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=12), inner,
                                                                 max_size=6),
    max_leaves=12,
)
FIELDS = st.fixed_dictionaries(
    {"v": st.sampled_from([1, 1, 1, 2, True, "1"])},
    optional={
        "state": st.sampled_from(["online", "offline", "x"]) | JSON,
        "ts": st.datetimes().map(lambda d: d.isoformat() + "Z") | JSON,
        "net_export_kw": st.floats() | JSON,
        "cycle": st.sampled_from(["2026-06-21T12:15:00Z", "9999-12-31T23:59:59Z"]) | JSON,
        "flex_kw": st.floats() | JSON,
        "loads": st.lists(st.dictionaries(
            st.sampled_from(["id", "kind", "min_kw", "max_kw", "priority", "until"]), JSON,
            max_size=6), max_size=4) | JSON,
        "seq": st.integers() | JSON,
        "period": JSON,
        "day": st.dates().map(str) | JSON,
        "hour": st.integers() | JSON,
        "level": st.integers(-1, 4) | st.none() | JSON,
        "site": SITES,
    },
)


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(site=SITES, leaf=LEAVES, payload=st.binary(max_size=300))
def test_arbitrary_bytes_on_any_site_topic(live: Any, site: str, leaf: str, payload: bytes) -> None:
    run_one(live, f"{live[1].topics.base}/site/{site}/{leaf}", payload)


@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
@given(site=SITES, leaf=LEAVES, data=FIELDS)
def test_arbitrary_json_objects_on_any_site_topic(live: Any, site: str, leaf: str,
                                                  data: dict[str, Any]) -> None:
    run_one(live, f"{live[1].topics.base}/site/{site}/{leaf}", dumps(data))
    live[1].check_cycle()


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=FIELDS, tail=st.sampled_from(["signal/set", "signal", "x/y", "signal/set/z"]))
def test_arbitrary_admin_commands(live: Any, data: dict[str, Any], tail: str) -> None:
    run_one(live, f"{live[1].topics.base}/admin/{tail}", dumps(data))


# Findings --------------------------------------------------------------------------------
def test_an_override_for_a_day_out_of_reach_is_refused_not_a_traceback(tmp_path: Path) -> None:
    """Found by the corpus: ``admin/signal/set`` with day 9999-12-31 (or 0001-01-01) made
    the grid service's hour arithmetic overflow: ``grid_override_failed`` with a
    traceback per message. Now refused at the door as ``out_of_range``."""

    async def scenario() -> tuple[CoordinatorHarness, list[dict[str, Any]]]:
        with capture_logs() as logs:
            async with coordinator_harness(tmp_path) as h:
                topic = h.topics.admin_signal_set()
                for day in ("9999-12-31", "0001-01-01"):
                    payload = orjson.dumps({"v": 1, "day": day, "hour": 3, "level": 2})
                    await h.batch([("m", topic, payload, h.clock.monotonic())])
                await asyncio.sleep(0.05)  # the grid service's turn
        return h, logs

    h, logs = asyncio.run(scenario())
    assert h.coordinator.stats.rejected["out_of_range"] == 2
    assert errors_in(logs) == []
    assert not [e for e in logs if e["event"] == "grid_override_failed"]

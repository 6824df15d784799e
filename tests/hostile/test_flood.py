"""Per-site flood control (central/core/flood.py) and rate-limited refusal logs
(protocol/rejections.py): the pure parts with hypothesis, then in the coordinator."""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from bench.fuzz.harness import CoordinatorHarness, coordinator_harness
from central.config import load_central_settings
from central.core.flood import FloodGuard, FloodPolicy, Transition, Verdict
from protocol.rejections import OTHER_SOURCES, RejectionLog
from protocol.settings import ConfigError

# Token bucket ---------------------------------------------------------------------------
GAPS = st.lists(st.floats(min_value=0.0, max_value=2.0), min_size=1, max_size=400)


@settings(max_examples=200, deadline=None)
@given(gaps=GAPS, rate=st.floats(0.5, 50.0), burst=st.integers(1, 100))
def test_a_site_never_gets_more_than_its_burst_plus_its_rate(
    gaps: list[float], rate: float, burst: int
) -> None:
    guard = FloodGuard(FloodPolicy(rate_per_s=rate, burst=float(burst), quarantine_after=10**9))
    now = 0.0
    admitted = 0
    for gap in gaps:
        now += gap
        admitted += guard.admit("s1", now).verdict is Verdict.ADMIT
    assert admitted <= burst + rate * now + 1e-6
    assert admitted + guard.dropped("s1") == len(gaps)


def test_an_honest_rate_is_never_throttled() -> None:
    guard = FloodGuard(FloodPolicy(rate_per_s=10.0, burst=1000.0))
    # A reconnecting gateway resends 960 reports at once (10 days of periods), then
    # one message a second for a day.
    assert all(guard.admit("s1", 0.0).verdict is Verdict.ADMIT for _ in range(960))
    assert all(guard.admit("s1", float(t)).verdict is Verdict.ADMIT for t in range(1, 86_400))
    assert guard.dropped("s1") == 0


def test_a_sustained_flood_is_quarantined_then_released() -> None:
    policy = FloodPolicy(rate_per_s=10.0, burst=100.0, quarantine_after=500,
                         quarantine_window_s=60.0, quarantine_s=300.0)
    guard = FloodGuard(policy)
    verdicts = [guard.admit("bad", i * 0.001) for i in range(1000)]
    # The burst, plus 6 tokens refilled in the 0.6 s before the 500th drop quarantined it.
    assert sum(v.verdict is Verdict.ADMIT for v in verdicts) == 106
    quarantined = [v for v in verdicts if v.transition is Transition.QUARANTINED]
    assert len(quarantined) == 1 and quarantined[0].until_s == pytest.approx(300.605, abs=0.002)
    assert verdicts[-1].verdict is Verdict.QUARANTINED
    assert guard.quarantined(1.0) == {"bad": pytest.approx(300.605, abs=0.002)}
    # Another site is untouched, at once.
    assert guard.admit("good", 1.0).verdict is Verdict.ADMIT
    assert guard.admit("bad", 299.0).verdict is Verdict.QUARANTINED
    back = guard.admit("bad", 301.0)
    assert back.verdict is Verdict.ADMIT and back.transition is Transition.RELEASED
    assert guard.quarantined(301.0) == {}


def test_a_slow_trickle_of_drops_is_not_a_flood() -> None:
    guard = FloodGuard(FloodPolicy(rate_per_s=1.0, burst=1.0, quarantine_after=50,
                                   quarantine_window_s=10.0))
    now = 0.0
    for _ in range(2000):  # two messages a second: one dropped a second, 10 a window
        now += 0.5
        assert guard.admit("s1", now).verdict is not Verdict.QUARANTINED
    assert guard.dropped("s1") > 900


def test_bad_policies_are_refused() -> None:
    for bad in ({"rate_per_s": 0.0}, {"burst": 0.5}, {"quarantine_after": 0},
                {"quarantine_window_s": 0.0}, {"quarantine_s": -1.0}):
        with pytest.raises(ValueError):
            FloodPolicy(**bad)


def test_flood_config_keys_have_defaults_and_bad_ones_are_named() -> None:
    settings = load_central_settings(None, env={}, community={"id": "c1"})
    assert settings.flood.policy() == FloodPolicy()
    assert settings.flood.enabled and settings.flood.log_interval_s == 60.0
    with pytest.raises(ConfigError) as err:
        load_central_settings(None, env={}, community={"id": "c1"},
                              flood={"rate_per_s": -1, "brust": 10})
    text = str(err.value)
    assert "[flood] rate_per_s" in text and "[flood] brust: unknown key" in text


# Rate-limited logs ----------------------------------------------------------------------
@settings(max_examples=200, deadline=None)
@given(events=st.lists(st.tuples(st.sampled_from(["a", "b", "c", None]),
                                 st.sampled_from(["r1", "r2"]),
                                 st.floats(0.0, 5.0)), max_size=300),
       interval=st.floats(0.5, 10.0))
def test_one_line_per_source_and_reason_per_interval(
    events: list[tuple[str | None, str, float]], interval: float
) -> None:
    book = RejectionLog(interval)
    now = 0.0
    lines: dict[tuple[str | None, str], list[float]] = {}
    logged = suppressed_reported = 0
    for source, reason, gap in events:
        now += gap
        line = book.note(reason, source, now)
        if line is not None:
            lines.setdefault((source, reason), []).append(now)
            logged += 1
            suppressed_reported += line.suppressed
    for times in lines.values():
        assert all(b - a >= interval for a, b in itertools.pairwise(times))
    pending = sum(d.count for d in book.due(now + 2 * interval))
    assert logged + suppressed_reported + pending == len(events) == book.total
    assert book.suppressed_total == len(events) - logged


def test_the_key_table_is_bounded() -> None:
    book = RejectionLog(60.0, max_keys=100)
    for i in range(10_000):
        book.note("unknown_site", f"site{i}", 0.0)
    assert len(book) <= 101
    assert book.total == 10_000
    assert book.note("unknown_site", "fresh", 1.0) is None  # "*" logged at 0.0 already
    # An interval later the quiet keys are forgotten: room again, and "*" sums up the rest.
    assert book.note("unknown_site", "fresh", 61.0) == ("fresh", 0)
    [other] = book.due(61.0)
    assert (other.source, other.count) == (OTHER_SOURCES, 9_900)


# In the coordinator ----------------------------------------------------------------------
FLOOD = {"rate_per_s": 10.0, "burst": 50, "quarantine_after": 2000,
         "quarantine_window_s": 60.0, "quarantine_s": 600.0, "log_interval_s": 60.0}


def test_a_flooding_site_is_throttled_then_quarantined_others_go_on(fast_tmp: Path) -> None:
    """50,000 messages from one site in 5 s of its arrival clock, while 19 honest sites
    reply: the honest allocations are exactly their offers, the flooder's excess is
    dropped before decoding and counted, it is quarantined once (one log line), shown so
    in the page's row, and left out of the next cycle."""

    async def scenario() -> tuple[CoordinatorHarness, list[dict[str, Any]], dict[str, Any]]:
        with capture_logs() as logs:
            async with coordinator_harness(fast_tmp, flood=FLOOD) as h:
                c = h.coordinator
                flooder, honest = h.site_ids[0], h.site_ids[1:]
                cycle = h.scene.cycle_id()
                flood_payloads = [
                    orjson.dumps({"v": 1, "cycle": cycle, "flex_kw": 5.0}),
                    orjson.dumps({"v": 1, "ts": "2026-06-21T12:00:00Z", "net_export_kw": 1}),
                    orjson.dumps({"v": 1, "seq": 1, "period": "2026-06-21T12:00:00Z",
                                  "import_kwh": 0, "export_kwh": 0, "allocated_kwh": 0,
                                  "used_kwh": 0}),
                ]
                leaves = (h.topics.flex, h.topics.netload, h.topics.report)
                items: list[tuple[Any, ...]] = []
                for i in range(50_000):
                    h.clock.advance(0.0001)
                    items.append(("m", leaves[i % 3](flooder), flood_payloads[i % 3],
                                  h.clock.monotonic()))
                    if i % 2500 == 0 and i // 2500 < len(honest):
                        site = honest[i // 2500]
                        items.append(("m", h.topics.flex(site), orjson.dumps(
                            {"v": 1, "cycle": cycle, "flex_kw": 1.0 + i / 50_000}),
                            h.clock.monotonic()))
                    if len(items) >= 2000:
                        await h.batch(items)
                        items = []
                await h.batch(items)
                from central.web.live import sites_view

                row = sites_view(c, h._live, 0, 1)["sites"][0]
                await h.open_cycle()
                return h, logs, row

    h, logs, row = asyncio.run(scenario())
    c = h.coordinator
    flooder = h.site_ids[0]
    # The honest sites were served exactly their offers (surplus 50 kW > their sum).
    served = {site: a["alloc_kw"] for site, a in h.bus.allocs if site != flooder}
    assert served == {s: pytest.approx(1.0 + i * 2500 / 50_000)
                      for i, s in enumerate(h.site_ids[1:])}
    # Dropped before decoding, counted by reason; the rest went through and was refused
    # or ignored for what it was (a duplicate reply).
    rejected = c.stats.rejected
    assert rejected["flood_throttled"] + rejected["quarantined"] >= 49_000
    assert rejected["flood_throttled"] >= 2000 - 1
    assert c.flood is not None and c.flood.dropped(flooder) == (
        rejected["flood_throttled"] + rejected["quarantined"])
    quarantined = [e for e in logs if e["event"] == "site_quarantined"]
    assert len(quarantined) == 1 and quarantined[0]["site"] == flooder
    flood_lines = [e for e in logs if e["event"] == "payload_rejected" and e.get("site") == flooder]
    assert len(flood_lines) <= 6  # one per reason and interval, not 49,000
    assert row["site"] == flooder and row["quarantined"] and row["quarantined_until"]
    assert flooder in c.health()["quarantined"]
    # The next cycle does not wait for it.
    assert flooder not in c.current.cycle.context.sites
    assert len(c.current.cycle.context.sites) == len(h.site_ids) - 1
    # Its one admitted reply (the first message) was served like any other: 5 kW.
    assert c.closed_cycles[-1].allocated_kw == pytest.approx(sum(served.values()) + 5.0)

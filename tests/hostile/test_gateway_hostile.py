"""The gateway's handlers and its device drivers under hostile input, in-process.

The bulk: 100,000 cases of the corpus on every topic a gateway reads (the
community's, Home Assistant's, the bridge's) and every device topic its real
drivers parse (Shelly Gen1 plug and EM, Gen2 Plus Plug S, Pro 4PM, Pro 3EM
with RPC replies to their own requests, a generic P1 meter), with the
gateway's periodic work (``tick``) in between. The harness checks each
message: no handler raises, a community message is counted once, a refused
one (community or device) changes nothing, at most one allocation a cycle,
commands only for configured loads. Then hypothesis for shrinking, then the
findings, one regression each.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from bench.fuzz.corpus import dumps, generate
from bench.fuzz.harness import GatewayHarness, errors_in, gateway_harness

BULK = 100_000


@pytest.mark.timeout(240)
def test_100k_hostile_inputs_to_the_gateway_and_its_drivers(fast_tmp: Path) -> None:
    async def scenario() -> tuple[GatewayHarness, list[dict[str, Any]]]:
        with capture_logs() as logs:
            async with gateway_harness(fast_tmp) as h:
                await h.feed(generate(h.targets, BULK, seed=1))
        return h, logs

    h, logs = asyncio.run(scenario())
    g = h.gateway
    diag = g.diagnostics()
    assert errors_in(logs) == []
    assert diag["errors"] == 0 and diag["handler_errors"] == 0
    assert all(d["handler_failures"] == 0 for d in diag["devices"].values())
    # Every target was reached, and refused for each reason the corpus aims at.
    assert set(h.run.by_target) == {t.name for t in h.targets}
    assert set(diag["rejected"]) >= {"malformed_json", "not_an_object", "bad_version",
                                     "invalid", "oversized", "site_mismatch",
                                     "bridge_state_unreadable"}
    device_reasons = set().union(*(d["rejected"] for d in diag["devices"].values()))
    assert device_reasons >= {"malformed_json", "not_a_number", "not_finite", "not_a_flag",
                              "invalid", "oversized"}
    assert diag["hass_rejected"] > 0
    # The gateway kept working: it replied, applied allocations, switched loads.
    assert g.accepted["cycle_request"] > 0 and h.run.allocations and h.run.commands > 0
    # Rate-limited logs: a fraction of the refusals became lines.
    lines = sum(1 for e in logs if e["event"] in ("payload_rejected", "bad_payload"))
    refused = g.rejections.total + sum(sum(d["rejected"].values())
                                       for d in diag["devices"].values())
    assert lines < refused / 5


# Hypothesis -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, GatewayHarness]]:
    loop = asyncio.new_event_loop()
    manager = gateway_harness(tmp_path_factory.mktemp("hyp-gw"))
    h = loop.run_until_complete(manager.__aenter__())
    try:
        yield loop, h
    finally:
        loop.run_until_complete(manager.__aexit__(None, None, None))
        loop.close()


def topics_of(h: GatewayHarness) -> list[str]:
    return sorted({topic for t in h.targets for topic in t.topics})


TOPIC_INDEX = st.integers(min_value=0, max_value=10_000)


@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
@given(index=TOPIC_INDEX, payload=st.binary(max_size=200))
def test_arbitrary_bytes_on_every_topic(live: Any, index: int, payload: bytes) -> None:
    loop, h = live
    topics = topics_of(h)
    run(loop, h, topics[index % len(topics)], payload)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner,
                                                                max_size=5),
    max_leaves=10,
)
KEYS = st.sampled_from(["v", "cycle", "alloc_kw", "epoch", "rank", "valid_until", "day", "hours",
                        "level", "from", "until", "id", "method", "params", "result", "output",
                        "apower", "aenergy", "total_act_power", "switch:0", "em:0", "relays",
                        "meters", "emeters", "power", "grid"])


@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
@given(index=TOPIC_INDEX, data=st.dictionaries(KEYS, JSON, max_size=8))
def test_arbitrary_json_on_every_topic(live: Any, index: int, data: dict[str, Any]) -> None:
    loop, h = live
    topics = topics_of(h)
    run(loop, h, topics[index % len(topics)], dumps(data))


def run(loop: Any, h: GatewayHarness, topic: str, payload: bytes) -> None:
    from bench.fuzz.corpus import Case

    h.clock.advance(1.0)
    with capture_logs() as logs:
        h.handle(Case(topic, payload, "hypothesis", "hypothesis"))
        h.gateway.tick()
        loop.run_until_complete(asyncio.sleep(0))
    assert errors_in(logs) == []


# Findings -------------------------------------------------------------------------------
def test_a_grid_signal_for_a_day_out_of_reach_is_refused_and_ticks_go_on(tmp_path: Path) -> None:
    """Found by the corpus: a retained ``grid/signal`` with ``"day": "9999-12-31"`` passed
    validation, was stored, then every tick's hour arithmetic raised OverflowError:
    the ticker task died and took the gateway's task group (the whole service) with it,
    at every restart while the message stayed retained."""

    async def scenario() -> tuple[GatewayHarness, list[dict[str, Any]]]:
        with capture_logs() as logs:
            async with gateway_harness(tmp_path) as h:
                good = {"v": 1, "source": "ecowatt", "day": "2026-06-21", "hour": 12,
                        "level": 2, "day_level": 2, "hours": [2] * 24,
                        "updated": "2026-06-21T12:00:00Z"}
                h.port.dispatch(h.topics.grid_signal(), orjson.dumps(good))
                for day in ("9999-12-31", "0001-01-01"):
                    h.port.dispatch(h.topics.grid_signal(), orjson.dumps({**good, "day": day}))
                    h.gateway.tick()
        return h, logs

    h, logs = asyncio.run(scenario())
    assert h.gateway.rejections.counts["out_of_range"] == 2
    assert h.gateway.signal is not None and str(h.gateway.signal.day) == "2026-06-21"
    assert errors_in(logs) == [] and h.gateway.errors == 0


def test_a_tick_that_raises_is_logged_and_the_gateway_goes_on(tmp_path: Path) -> None:
    """Defence in depth for the finding above: the ticker survives a failing tick."""

    async def scenario() -> tuple[GatewayHarness, list[dict[str, Any]]]:
        with capture_logs() as logs:
            async with gateway_harness(tmp_path) as h:
                g = h.gateway
                calls = 0

                def broken() -> None:
                    nonlocal calls
                    calls += 1
                    raise OverflowError("date value out of range")

                g.tick = broken  # type: ignore[method-assign]
                g.settings.ems.period_s  # noqa: B018 - the ticker reads it
                task = asyncio.create_task(g._ticker())
                while calls < 2:
                    await asyncio.sleep(0.05)
                task.cancel()
        return h, logs

    h, logs = asyncio.run(scenario())
    assert h.gateway.errors >= 2
    assert [e["event"] for e in logs if e.get("exc_info")][:2] == ["tick_failed", "tick_failed"]


def test_garbage_on_a_gen2_status_topic_is_no_sign_of_life(tmp_path: Path) -> None:
    """Found by the corpus: ``em3/status/em:0`` with binary garbage marked a silent Pro 3EM
    online (its meter available) before the payload was even parsed."""

    async def scenario() -> GatewayHarness:
        async with gateway_harness(tmp_path) as h:
            meter = h.gateway.devices["grid"]
            assert meter.online is None
            h.port.dispatch("em3/status/em:0", b"\xe8\x02.\xff,d\xdd")
            h.port.dispatch("em3/status/em:0", b'{"id":0,"total_act_power":"lots"}')
            assert meter.online is None and meter.net_meter()._export_kw is None
            h.port.dispatch("em3/status/em:0", b'{"id":0,"total_act_power":-1500.0}')
            assert meter.online is True and meter.net_meter().net_export_kw == 1.5
            return h

    h = asyncio.run(scenario())
    assert h.gateway.devices["grid"].rejections.counts == {"malformed_json": 1, "not_a_number": 1}


def test_a_gen2_frame_applies_whole_or_not_at_all(tmp_path: Path) -> None:
    """Found by the corpus: a Pro 4PM ``NotifyStatus`` whose ``switch:1`` was not an object
    applied ``switch:0`` before refusing the frame (a refused payload changed state); and
    a key ``switch:²`` (a digit int() refuses) escaped as a handler failure."""

    async def scenario() -> GatewayHarness:
        async with gateway_harness(tmp_path) as h:
            pro4 = h.gateway.devices["pro4"]
            relay0 = pro4.relays()[0]
            frame = {"src": "pro4", "method": "NotifyStatus",
                     "params": {"switch:0": {"id": 0, "output": True}, "switch:1": 7}}
            h.port.dispatch("pro4/events/rpc", orjson.dumps(frame))
            assert relay0.state.on is None and pro4.online is None
            odd = {"src": "pro4", "method": "NotifyStatus",
                   "params": {"switch:²": {"output": True}, "switch:0": {"output": False}}}
            h.port.dispatch("pro4/events/rpc", orjson.dumps(odd))
            assert relay0.state.on is False
            return h

    h = asyncio.run(scenario())
    pro4 = h.gateway.devices["pro4"]
    assert pro4.handler_failures == 0 and pro4.rejections.counts == {"invalid": 1}


def test_a_flood_of_bad_device_payloads_logs_a_line_an_interval(tmp_path: Path) -> None:
    """A plug spewing garbage: every payload counted, one ``bad_payload`` line per reason
    and interval, the next line saying how many were suppressed."""

    async def scenario() -> tuple[GatewayHarness, list[dict[str, Any]]]:
        with capture_logs() as logs:
            async with gateway_harness(tmp_path) as h:
                for _ in range(5000):
                    h.clock.advance(0.01)
                    h.port.dispatch("shellies/plug1/relay/0/power", b"lots")
                h.clock.advance(60.0)
                h.port.dispatch("shellies/plug1/relay/0/power", b"lots")
        return h, logs

    h, logs = asyncio.run(scenario())
    plug = h.gateway.devices["plug"]
    assert plug.rejections.counts["not_a_number"] == 5001
    lines = [e for e in logs if e["event"] == "bad_payload"]
    assert [e["suppressed"] for e in lines] == [0, 4999]


def test_the_community_context_survives_a_far_future_shed(tmp_path: Path) -> None:
    """A shed window to the end of time is the coordinator's word: applied, no crash."""

    async def scenario() -> GatewayHarness:
        async with gateway_harness(tmp_path) as h:
            shed = {"v": 1, "level": 3, "from": "0001-01-01T00:00:00Z",
                    "until": "9999-12-31T23:59:59Z", "reason": "manual"}
            h.port.dispatch(h.topics.grid_shed(), orjson.dumps(shed))
            for _ in range(3):
                h.clock.advance(timedelta(hours=1).total_seconds())
                h.gateway.tick()
            return h

    h = asyncio.run(scenario())
    assert h.gateway.ems.grid_level == 3 and h.gateway.errors == 0

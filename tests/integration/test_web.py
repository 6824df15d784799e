"""The operator page and REST API on a live coordinator (real Mosquitto, real HTTP)."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import socket
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import orjson
import pytest
from simgw import SimGateway, running, until
from structlog.testing import capture_logs

from central.app import Coordinator
from central.config import CentralSettings, load_central_settings
from protocol import Report, Topics, encode
from protocol.settings import ConfigError
from runtime.clock import SystemClock

pytestmark = pytest.mark.integration

TOKEN = "test-admin-token-0123456789"


def make_settings(broker: Any, root: str, tmp_path: Path) -> CentralSettings:
    return load_central_settings(
        None,
        env={},
        mqtt={"host": broker.host, "port": broker.port, "client_id": f"central-{root}"},
        community={"id": "c1", "topic_root": root},
        cycle={"period_s": 3600, "reply_timeout_s": 5.0},
        recorder={"url": f"sqlite:///{tmp_path / 'records.sqlite'}"},
        web={"enabled": True, "host": "127.0.0.1", "port": 0, "admin_token": TOKEN},
    )


async def sse_events(client: httpx.AsyncClient, seen: list[tuple[str, Any]]) -> None:
    """Collect ``(event, data)`` from /api/events until cancelled."""
    async with client.stream("GET", "/api/events") as res:
        assert res.status_code == 200
        assert res.headers["content-type"].startswith("text/event-stream")
        event = None
        async for line in res.aiter_lines():
            if line.startswith("event: "):
                event = line.removeprefix("event: ")
            elif line.startswith("data: "):
                seen.append((event, orjson.loads(line.removeprefix("data: "))))


def test_operator_page_and_api(mosquitto: Any, topic_root: str, tmp_path: Path) -> None:
    async def scenario() -> None:
        settings = make_settings(mosquitto, topic_root, tmp_path)
        topics = Topics("c1", topic_root)
        async with running(Coordinator(settings, SystemClock())) as coordinator:
            assert coordinator.web is not None
            await asyncio.wait_for(coordinator.web.started.wait(), 10)
            base = f"http://127.0.0.1:{coordinator.web.port}"
            async with httpx.AsyncClient(base_url=base, timeout=10) as http:
                # The page and its script.
                page = await http.get("/")
                assert page.status_code == 200 and 'id="app"' in page.text
                assert (await http.get("/static/app.js")).status_code == 200
                spec = (await http.get("/openapi.json")).json()
                assert {"/api/community", "/api/sites", "/api/grid/override"} <= set(spec["paths"])

                gateways = [
                    SimGateway(topics, f"s{i}", mosquitto.host, mosquitto.port,
                               flex_kw=2.0, net_export_kw=3.0)
                    for i in range(2)
                ]
                await asyncio.gather(*(g.start() for g in gateways))
                await until(lambda: coordinator.sites.surplus(
                    coordinator.clock.now(), 3600).surplus_kw == pytest.approx(6.0), 10)

                seen: list[tuple[str, Any]] = []
                listener = asyncio.create_task(sse_events(http, seen))
                await until(lambda: any(e == "hello" for e, _ in seen), 10)
                period = datetime.now(UTC).replace(microsecond=0)
                await coordinator.start_cycle_now(period)
                await until(lambda: any(e == "cycle_closed" for e, _ in seen), 10)
                closed = next(d for e, d in seen if e == "cycle_closed")
                assert closed["allocated_kw"] == pytest.approx(4.0)
                assert [e for e, _ in seen].index("cycle_opened") < [e for e, _ in seen].index(
                    "cycle_closed")
                assert any(e == "allocations" for e, _ in seen)

                for g in gateways:
                    g.publish_raw(topics.report(g.site), encode(Report(
                        seq=1, period=period, import_kwh=0.0, export_kwh=0.5,
                        allocated_kwh=2.0, used_kwh=1.9)))
                await until(lambda: all(g.acks for g in gateways), 10)

                community = (await http.get("/api/community")).json()
                assert community["sites_online"] == 2 and community["sites_degraded"] == 0
                assert community["cycle"]["state"] == "closed"
                assert community["cycle"]["surplus_kw"] == pytest.approx(6.0)
                assert community["allocated_kw"] == pytest.approx(4.0)
                assert community["injected_kw"] == pytest.approx(6.0)
                assert community["epoch"] == coordinator.epoch
                assert community["strategy"] == "fifo"

                sites = (await http.get("/api/sites")).json()
                assert sites["total"] == 2
                rows = {r["site"]: r for r in sites["sites"]}
                assert set(rows) == {"s0", "s1"}
                assert sorted(r["rank"] for r in rows.values()) == [1, 2]
                for r in rows.values():
                    assert r["alloc_kw"] == pytest.approx(2.0)
                    assert r["flex_kw"] == pytest.approx(2.0)
                    assert r["net_export_kw"] == pytest.approx(3.0)
                    assert r["reply_s"] >= 0 and r["netload_age_s"] >= 0
                    assert r["share_since_start"] == pytest.approx(0.5)

                history = (await http.get("/api/cycles")).json()
                [cycle] = history["cycles"]
                assert cycle["allocated_kw"] == pytest.approx(4.0)
                assert cycle["export_kwh"] == pytest.approx(1.0) and cycle["reports"] == 2
                assert cycle["injected_kw"] == pytest.approx(1.0)  # 1 kWh over one hour

                # The override: refused without the token (401) or with a wrong one (403).
                tz = ZoneInfo(settings.ecowatt.timezone)
                tomorrow = (datetime.now(tz) + timedelta(days=1)).date().isoformat()
                body = {"day": tomorrow, "hour": 18, "level": 3}
                assert (await http.post("/api/grid/override", json=body)).status_code == 401
                wrong = {"Authorization": "Bearer not-the-token"}
                res = await http.post("/api/grid/override", json=body, headers=wrong)
                assert res.status_code == 403
                admin = {"Authorization": f"Bearer {TOKEN}"}
                bad = await http.post("/api/grid/override", headers=admin,
                                      json={**body, "hour": 99})
                assert bad.status_code == 422
                res = await http.post("/api/grid/override", json=body, headers=admin)
                assert res.status_code == 202, res.text

                async def overridden() -> bool:
                    grid = (await http.get("/api/grid")).json()
                    [day] = [d for d in grid["days"] if d["day"] == tomorrow]
                    hour = day["hours"][18]
                    return bool(hour["override"] and hour["level"] == 3)

                for _ in range(100):
                    if await overridden():
                        break
                    await asyncio.sleep(0.05)
                else:
                    raise AssertionError("the override never showed in /api/grid")
                await until(lambda: any(e == "grid" for e, _ in seen), 10)

                # CSV exports.
                def table(res: httpx.Response) -> list[list[str]]:
                    assert res.status_code == 200
                    assert res.headers["content-type"].startswith("text/csv")
                    return list(csv.reader(io.StringIO(res.text)))

                cycles = table(await http.get("/api/export/cycles.csv"))
                assert cycles[0][:2] == ["cycle", "community"] and len(cycles) == 2
                decisions = table(await http.get(
                    "/api/export/decisions.csv",
                    params={"since": (period - timedelta(hours=1)).isoformat(),
                            "until": (period + timedelta(hours=1)).isoformat()}))
                assert decisions[0][:3] == ["cycle", "site", "alloc_kw"]
                assert sorted(r[1] for r in decisions[1:]) == ["s0", "s1"]
                reports = table(await http.get("/api/export/reports.csv"))
                assert reports[0][:3] == ["site", "seq", "period"] and len(reports) == 3
                empty = table(await http.get("/api/export/decisions.csv",
                                             params={"since": "2020-01-01", "until": "2020-01-02"}))
                assert len(empty) == 1
                assert (await http.get("/api/export/replies.csv")).status_code == 422

                listener.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await listener
                await asyncio.gather(*(g.stop() for g in gateways))

    asyncio.run(scenario())


def test_sse_stream_ends_when_the_coordinator_stops(
    mosquitto: Any, topic_root: str, tmp_path: Path
) -> None:
    """An open event stream does not hold the coordinator's shutdown."""

    async def scenario() -> None:
        settings = make_settings(mosquitto, topic_root, tmp_path)
        seen: list[tuple[str, Any]] = []
        async with running(Coordinator(settings, SystemClock())) as coordinator:
            assert coordinator.web is not None
            await asyncio.wait_for(coordinator.web.started.wait(), 10)
            http = httpx.AsyncClient(base_url=f"http://127.0.0.1:{coordinator.web.port}")
            listener = asyncio.create_task(sse_events(http, seen))
            await until(lambda: bool(seen), 10)
        # The stream ended by itself when the server stopped (no cancel needed).
        await asyncio.wait_for(listener, 5)
        await http.aclose()

    asyncio.run(scenario())


def test_port_in_use_leaves_the_coordinator_running(
    mosquitto: Any, topic_root: str, tmp_path: Path
) -> None:
    async def scenario() -> None:
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            settings = make_settings(mosquitto, topic_root, tmp_path)
            settings.web.port = taken.getsockname()[1]
            closed: list[Any] = []
            coordinator = Coordinator(settings, SystemClock())
            coordinator.add_listener(lambda e, d: closed.append(d) if e == "cycle_closed" else 0)
            with capture_logs() as logs:
                async with running(coordinator):
                    await coordinator.start_cycle_now()
                    await until(lambda: bool(closed), 10)  # cycles go on without the page
            assert coordinator.web is not None and not coordinator.web.started.is_set()
            assert any(e["event"] == "web_not_started" for e in logs)

    asyncio.run(scenario())


def test_admin_token_must_be_long() -> None:
    with pytest.raises(ConfigError, match="admin_token"):
        load_central_settings(None, env={}, community={"id": "c1"}, web={"admin_token": "short"})

"""Shadow mode on the operator API and page (real Mosquitto, real HTTP, SQLite records)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from simgw import SimGateway, running, until

from central.app import Coordinator
from central.config import load_central_settings
from protocol import Topics
from runtime.clock import SystemClock

pytestmark = pytest.mark.integration


async def sse_events(client: httpx.AsyncClient, seen: list[tuple[str, Any]]) -> None:
    async with client.stream("GET", "/api/events") as res:
        event = None
        async for line in res.aiter_lines():
            if line.startswith("event: "):
                event = line.removeprefix("event: ")
            elif line.startswith("data: "):
                seen.append((event, orjson.loads(line.removeprefix("data: "))))


def test_shadow_endpoints_and_live_event(mosquitto: Any, topic_root: str, tmp_path: Path) -> None:
    settings = load_central_settings(
        None, env={},
        mqtt={"host": mosquitto.host, "port": mosquitto.port, "client_id": f"c-{topic_root}"},
        community={"id": "c1", "topic_root": topic_root},
        cycle={"period_s": 3600, "reply_timeout_s": 5.0, "shadow": ["proportional", "milp"]},
        recorder={"url": f"sqlite:///{tmp_path / 'records.sqlite'}"},
        web={"enabled": True, "host": "127.0.0.1", "port": 0},
    )
    topics = Topics("c1", topic_root)

    async def scenario() -> None:
        async with running(Coordinator(settings, SystemClock())) as coordinator:
            assert coordinator.web is not None
            await asyncio.wait_for(coordinator.web.started.wait(), 10)
            base = f"http://127.0.0.1:{coordinator.web.port}"
            async with httpx.AsyncClient(base_url=base, timeout=10) as http:
                page = (await http.get("/")).text
                assert 'id="shadow"' in page and "Strategies (shadow)" in page
                assert "loadShadow" in (await http.get("/static/app.js")).text
                spec = (await http.get("/openapi.json")).json()
                assert {"/api/shadow", "/api/shadow/summary"} <= set(spec["paths"])
                schemas = spec["components"]["schemas"]
                assert {"ShadowScores", "ShadowScoreOut", "ShadowSummary"} <= set(schemas)
                assert "jain" in schemas["ShadowScoreOut"]["properties"]

                empty = (await http.get("/api/shadow/summary")).json()
                assert [s["strategy"] for s in empty["strategies"]] == ["proportional", "milp"]
                assert all(s["cycles"] == 0 and s["share"] is None for s in empty["strategies"])

                homes = [SimGateway(topics, f"s{i}", mosquitto.host, mosquitto.port,
                                    flex_kw=kw, net_export_kw=2.0)
                         for i, kw in enumerate([3.0, 1.0])]
                await asyncio.gather(*(g.start() for g in homes))
                await until(lambda: len(coordinator.sites.online_sites()) == 2, 10)
                await until(lambda: coordinator.sites.surplus(
                    coordinator.clock.now(), 3600).surplus_kw == pytest.approx(4.0), 10)
                seen: list[tuple[str, Any]] = []
                listener = asyncio.create_task(sse_events(http, seen))
                await until(lambda: any(e == "hello" for e, _ in seen), 10)
                await coordinator.start_cycle_now(datetime.now(UTC).replace(microsecond=0))
                await until(lambda: any(e == "shadow" for e, _ in seen), 20)
                event = next(d for e, d in seen if e == "shadow")
                assert [s["strategy"] for s in event["scores"]] == ["proportional", "milp"]
                assert all(s["status"] == "ok" for s in event["scores"])

                scores = (await http.get("/api/shadow")).json()
                assert scores["executed"] == "fifo"
                assert scores["strategies"] == ["proportional", "milp"]
                rows = {r["strategy"]: r for r in scores["scores"]}
                assert set(rows) == {"proportional", "milp"}
                for r in rows.values():
                    assert r["status"] == "ok" and r["surplus_kw"] == pytest.approx(4.0)
                    assert r["allocated_kw"] == pytest.approx(4.0)  # 3 + 1 fit exactly
                    assert r["share"] == pytest.approx(1.0)
                    assert r["sites_served"] == 2 and r["jain"] == pytest.approx(0.8)
                last = (await http.get("/api/shadow", params={"last": 1})).json()
                assert len(last["scores"]) == 2 and last["since"] is None

                summary = (await http.get("/api/shadow/summary")).json()
                totals = {s["strategy"]: s for s in summary["strategies"]}
                assert totals["milp"]["cycles"] == 1 and totals["milp"]["errors"] == 0
                assert totals["milp"]["share"] == pytest.approx(1.0)
                assert totals["milp"]["allocated_kwh"] == pytest.approx(4.0)  # 1 h period
                assert totals["proportional"]["jain_mean"] == pytest.approx(0.8)
                assert not totals["milp"]["executed"]

                old = await http.get("/api/shadow/summary",
                                     params={"since": "2020-01-01", "until": "2020-01-02"})
                assert all(s["cycles"] == 0 for s in old.json()["strategies"])
                bad = await http.get("/api/shadow", params={"since": "yesterday"})
                assert bad.status_code == 422
                assert (await http.get("/api/shadow", params={"last": 0})).status_code == 422
                listener.cancel()
            await asyncio.gather(*(g.stop() for g in homes))

    asyncio.run(scenario())

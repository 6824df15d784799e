"""The sites' long-run share survives a restart of the coordinator, counted once.

Two runs of a coordinator on the same records (real Mosquitto, real HTTP):
the second reads the first's allocations once and adds its own live, so
``share_long_run`` covers both runs while ``share_since_start`` covers the
second only.
"""

from __future__ import annotations

import asyncio
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "integration"))
from simgw import SimGateway, running, until

from central.app import Coordinator
from central.config import CentralSettings, load_central_settings
from protocol import Topics
from runtime.clock import SystemClock

pytestmark = pytest.mark.integration


def settings_of(broker: Any, root: str, tmp_path: Path) -> CentralSettings:
    return load_central_settings(
        None,
        env={},
        mqtt={"host": broker.host, "port": broker.port, "client_id": f"central-{root}"},
        community={"id": "c1", "topic_root": root},
        cycle={"period_s": 3600, "reply_timeout_s": 5.0},
        recorder={"url": f"sqlite:///{tmp_path / 'records.sqlite'}"},
        web={"enabled": True, "host": "127.0.0.1", "port": 0},
    )


async def one_run(
    settings: CentralSettings, topics: Topics, broker: Any, flex: dict[str, float],
    period: datetime,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Start a coordinator, read the sites, run one cycle, read them again."""
    async with running(Coordinator(settings, SystemClock())) as coordinator:
        assert coordinator.web is not None
        await asyncio.wait_for(coordinator.web.started.wait(), 10)
        gateways = [SimGateway(topics, site, broker.host, broker.port, flex_kw=kw,
                               net_export_kw=3.0) for site, kw in flex.items()]
        await asyncio.gather(*(g.start() for g in gateways))
        try:
            await until(lambda: coordinator.sites.surplus(
                coordinator.clock.now(), 3600).surplus_kw == 6.0, 10)
            base = f"http://127.0.0.1:{coordinator.web.port}"
            async with httpx.AsyncClient(base_url=base, timeout=10) as http:
                before = {r["site"]: r for r in (await http.get("/api/sites")).json()["sites"]}
                closed: list[Any] = []
                coordinator.add_listener(
                    lambda e, d: closed.append(d) if e == "cycle_closed" else None)
                await coordinator.start_cycle_now(period)
                await until(lambda: bool(closed), 10)
                after = {r["site"]: r for r in (await http.get("/api/sites")).json()["sites"]}
        finally:
            await asyncio.gather(*(g.stop() for g in gateways))
    return before, after


def test_long_run_share_spans_restarts(mosquitto: Any, topic_root: str, tmp_path: Path) -> None:
    async def scenario() -> None:
        settings = settings_of(mosquitto, topic_root, tmp_path)
        topics = Topics("c1", topic_root)
        first = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=2)
        # Run 1: both homes take 2 kW.
        before, after = await one_run(settings, topics, mosquitto, {"s0": 2.0, "s1": 2.0},
                                      first)
        # Read from the (empty) records: nothing yet, no share to give.
        assert all(r["alloc_kwh_long_run"] == 0.0 and r["share_long_run"] is None
                   for r in before.values())
        assert after["s0"]["share_long_run"] == pytest.approx(0.5)
        assert after["s0"]["alloc_kwh_long_run"] == pytest.approx(2.0)  # 2 kW for 1 h
        # Run 2, restarted on the same records: only s0 takes anything.
        before, after = await one_run(settings, topics, mosquitto, {"s0": 2.0, "s1": 0.0},
                                      first + timedelta(hours=1))
        assert before["s0"]["share_long_run"] == pytest.approx(0.5)  # read from the records
        assert before["s0"]["share_since_start"] is None
        assert after["s0"]["alloc_kwh_long_run"] == pytest.approx(4.0)  # counted once
        assert after["s1"]["alloc_kwh_long_run"] == pytest.approx(2.0)
        assert after["s0"]["share_long_run"] == pytest.approx(4.0 / 6.0, abs=1e-6)
        assert after["s1"]["share_long_run"] == pytest.approx(2.0 / 6.0, abs=1e-6)
        assert after["s0"]["share_since_start"] == pytest.approx(1.0)
        assert after["s1"]["share_since_start"] == pytest.approx(0.0)

    asyncio.run(scenario())

"""The live coordinator keeping its records in PostgreSQL: real Mosquitto, real PostgreSQL.

Cycles run end to end; the operator page (its own read-only connection) and
``ems cycles`` read them back; a connection the server drops fails one step,
is logged, and the next cycle is recorded on a new connection.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from pg import TempPostgres
from simgw import SimGateway, running, until

from central.app import Coordinator
from central.config import load_central_settings
from ems.cli import main
from protocol import Report, Topics, encode
from protocol.models import format_utc
from runtime.clock import SystemClock

pytestmark = pytest.mark.integration

TOKEN = "test-admin-token-0123456789"


def test_cycles_recorded_in_postgres_read_by_the_page_and_ems_cycles(
    mosquitto: Any, postgres: TempPostgres, pg_url: str, topic_root: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    settings = load_central_settings(
        None,
        env={},
        mqtt={"host": mosquitto.host, "port": mosquitto.port, "client_id": f"c-{topic_root}"},
        community={"id": "c1", "topic_root": topic_root},
        cycle={"period_s": 3600, "reply_timeout_s": 5.0},
        recorder={"url": pg_url},
        web={"enabled": True, "host": "127.0.0.1", "port": 0, "admin_token": TOKEN},
    )
    topics = Topics("c1", topic_root)
    dbname = pg_url.rsplit("/", 1)[1]
    now = datetime.now(UTC).replace(microsecond=0)
    first, lost, second = (now - timedelta(minutes=m) for m in (3, 2, 1))

    out: list[str] = []

    def logged() -> str:  # what the services logged so far (structlog, to stdout)
        out.append(capsys.readouterr().out)
        return "".join(out)

    async def scenario() -> list[dict[str, Any]]:
        async with running(Coordinator(settings, SystemClock())) as coordinator:
            assert coordinator.recorder.backend == "postgresql"
            assert coordinator.web is not None
            await asyncio.wait_for(coordinator.web.started.wait(), 10)
            closed: list[Any] = []
            coordinator.add_listener(
                lambda event, data: closed.append(data[1]) if event == "cycle_closed" else None)
            gateways = [SimGateway(topics, f"s{i}", mosquitto.host, mosquitto.port,
                                   flex_kw=2.0, net_export_kw=2.0) for i in range(2)]
            await asyncio.gather(*(g.start() for g in gateways))
            await until(lambda: coordinator.sites.surplus(
                coordinator.clock.now(), 3600).surplus_kw == pytest.approx(4.0), 10)

            await coordinator.start_cycle_now(first)
            await until(lambda: len(closed) == 1, 15)
            for g in gateways:
                g.publish_raw(topics.report(g.site), encode(Report(
                    seq=1, period=first, import_kwh=0.0, export_kwh=0.5,
                    allocated_kwh=2.0, used_kwh=1.9)))
            await until(lambda: all(g.acks == [1] for g in gateways), 10)

            # The server drops the recorder's connection: the next cycle cannot be
            # recorded, which the coordinator logs, and it goes on.
            postgres.admin("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                           f" WHERE datname = '{dbname}' AND application_name = 'ems-central'")
            await coordinator.start_cycle_now(lost)
            await until(lambda: "batch_failed" in logged(), 10)
            await asyncio.sleep(0.3)
            assert len(closed) == 1 and not any(g.allocs[1:] for g in gateways)

            await coordinator.start_cycle_now(second)  # a new connection
            await until(lambda: len(closed) == 2, 15)
            await until(lambda: all(len(g.allocs) == 2 for g in gateways), 10)

            async with httpx.AsyncClient(
                base_url=f"http://127.0.0.1:{coordinator.web.port}", timeout=10
            ) as http:
                history = (await http.get("/api/cycles")).json()["cycles"]
                res = await http.get("/api/export/decisions.csv", params={
                    "since": (first - timedelta(hours=1)).isoformat(),
                    "until": (second + timedelta(hours=1)).isoformat()})
                assert res.status_code == 200
                decisions_csv = res.text.splitlines()
            await asyncio.gather(*(g.stop() for g in gateways))
        assert decisions_csv[0].startswith("cycle,site,alloc_kw")
        assert len(decisions_csv) == 1 + 4  # two sites, two recorded cycles
        return list(history)

    history = asyncio.run(scenario())
    logs = logged()
    assert f"PostgreSQL at 127.0.0.1:{postgres.port}/{dbname}" in logs
    assert "connection lost" in logs and postgres.password not in logs
    assert [c["cycle"] for c in history] == [format_utc(first), format_utc(second)]
    assert history[0]["allocated_kw"] == pytest.approx(4.0)
    assert history[0]["export_kwh"] == pytest.approx(1.0) and history[0]["reports"] == 2
    assert history[1]["reports"] == 0

    assert main(["cycles", "--db", pg_url, "--last", "5", "--json", "--decisions"]) == 0
    cycles = json.loads(capsys.readouterr().out)
    assert [c["cycle"] for c in cycles] == [format_utc(first), format_utc(second)]
    for c in cycles:
        assert c["allocated kW"] == "4.00" and c["replies/sites"] == "2/2"
        assert sorted(d["site"] for d in c["decisions"]) == ["s0", "s1"]
    assert main(["cycles", "--db", pg_url]) == 0
    table = capsys.readouterr().out
    assert format_utc(second) in table and postgres.password not in table

"""A live community for the operator page's tests: a real coordinator and its page.

``Community`` runs a coordinator with its web page on 127.0.0.1, a real
Mosquitto (the session's ``mosquitto``), RTE played by ``ems.rte_standin`` on
loopback, and three simulated gateways, all on an event loop of their own in a
background thread, so the tests can drive a synchronous browser (Playwright)
while the coordinator runs. One cycle has run and been reported when it is
ready.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import threading
from collections.abc import Callable, Coroutine
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

# The simulated gateways of the integration tests (tests/integration/simgw.py).
sys.path.insert(0, str(Path(__file__).parents[1] / "integration"))
from simgw import SimGateway, running, until

from central.app import Coordinator
from central.config import CentralSettings, load_central_settings
from ems.rte_standin import RteStandIn
from protocol import LoadState, Report, SiteStatus, Topics, encode
from runtime.clock import SystemClock

T = TypeVar("T")
TOKEN = "browser-admin-token-0123456789"
RTE_SECRET = "rte-secret-browser-0a9b"
PARIS = ZoneInfo("Europe/Paris")
# Today's RTE levels (hours since the local midnight): a tense morning, a red 9 o'clock.
TODAY_LEVELS = [1] * 8 + [2, 3, 2] + [1] * 13
# The flags this machine needs: no sandbox (root in a container), no GPU, and nothing
# that phones home (QUIC, component updates, sync, background networking).
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
LOOPBACK = {"127.0.0.1", "localhost", "::1", "[::1]"}
SHADOW = ("proportional", "equal")


def chromium_path() -> str | None:
    """Debian's chromium (``EMS_CHROMIUM`` overrides), or None when there is none."""
    for candidate in (os.environ.get("EMS_CHROMIUM"), "/usr/bin/chromium",
                      shutil.which("chromium"), shutil.which("chromium-browser")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def settings_of(broker: Any, root: str, tmp: Path, rte: RteStandIn) -> CentralSettings:
    return load_central_settings(
        None,
        env={"EMS_ECOWATT__CLIENT_SECRET": RTE_SECRET},
        mqtt={"host": broker.host, "port": broker.port, "client_id": f"central-{root}"},
        community={"id": "c1", "topic_root": root},
        # Shadow mode on: the page's "Strategies (shadow)" section has rows to show.
        cycle={"period_s": 3600, "reply_timeout_s": 5.0, "shadow": list(SHADOW)},
        recorder={"url": f"sqlite:///{tmp / 'records.sqlite'}"},
        ecowatt={
            "enabled": True, "client_id": rte.client_id, "token_url": rte.token_url,
            "signals_url": rte.sandbox_url, "min_interval_s": 1, "poll_interval_s": 3600,
            "timeout_s": 2, "cache_path": str(tmp / "ecowatt.json"),
        },
        web={"enabled": True, "host": "127.0.0.1", "port": 0, "admin_token": TOKEN},
    )


class Community:
    """A coordinator, its page and three homes on an event loop in a thread of their own."""

    def __init__(self, broker: Any, root: str, tmp: Path, rte: RteStandIn) -> None:
        self.settings = settings_of(broker, root, tmp, rte)
        self.topics = Topics("c1", root)
        self.broker = broker
        self.loop = asyncio.new_event_loop()
        self.coordinator: Coordinator | None = None
        self.gateways: list[SimGateway] = []
        self.first_cycle = ""
        self.base_url = ""
        self._last_period: datetime | None = None
        self.cycles_run = 0
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._failure: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="community", daemon=True)

    # The test thread's side ------------------------------------------------------
    def __enter__(self) -> Community:
        self._thread.start()
        if not self._ready.wait(60) or self._failure is not None:
            self.__exit__(None, None, None)
            raise RuntimeError("the community did not start") from self._failure
        return self

    def __exit__(self, *exc: object) -> None:
        if self._stop is not None and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(60)

    def run(self, fn: Callable[[Coordinator], Coroutine[Any, Any, T]], timeout_s: float = 30) -> T:
        """``await fn(coordinator)`` on the community's loop; its result."""
        assert self.coordinator is not None
        future: Future[T] = asyncio.run_coroutine_threadsafe(fn(self.coordinator), self.loop)
        return future.result(timeout_s)

    def cycle(self, flex_kw: float, reported_export_kwh: float) -> str:
        """Run one whole cycle with every flexible home offering ``flex_kw``; its id."""
        return self.run(lambda c: self._cycle(c, flex_kw, reported_export_kwh))

    # The community's loop ---------------------------------------------------------
    def _main(self) -> None:
        try:
            self.loop.run_until_complete(self._serve())
        except BaseException as exc:  # reported to __enter__ or the test that waits
            self._failure = exc
            self._ready.set()
        finally:
            self.loop.close()

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        async with running(Coordinator(self.settings, SystemClock())) as coordinator:
            self.coordinator = coordinator
            assert coordinator.web is not None
            await asyncio.wait_for(coordinator.web.started.wait(), 10)
            self.base_url = f"http://127.0.0.1:{coordinator.web.port}"
            await until(lambda: coordinator.grid.fetched_at is not None, 15)
            # Two homes export 3 kW and can take 2 kW more; one draws 1 kW, takes nothing.
            self.gateways = [
                SimGateway(self.topics, "s0", self.broker.host, self.broker.port,
                           flex_kw=2.0, net_export_kw=3.0),
                SimGateway(self.topics, "s1", self.broker.host, self.broker.port,
                           flex_kw=2.0, net_export_kw=3.0),
                SimGateway(self.topics, "s2", self.broker.host, self.broker.port,
                           flex_kw=0.0, net_export_kw=-1.0),
            ]
            await asyncio.gather(*(g.start() for g in self.gateways))
            s0, s1 = self.gateways[0], self.gateways[1]
            for gw, loads in ((s0, ("wh", "ev")), (s1, ("heatpump",))):
                gw.client.publish(self.topics.site_status(gw.site), encode(SiteStatus(
                    state="online", version="sim", loads=loads)), qos=1, retain=True)
            s0.client.publish(self.topics.load_state("s0", "wh"), encode(LoadState(
                on=True, power_kw=1.5, reason="allocation")), qos=1, retain=True)
            s1.client.publish(self.topics.load_state("s1", "heatpump"), encode(LoadState(
                on=False, power_kw=0.0, reason="idle")), qos=1, retain=True)
            web = coordinator.web.app.state.web
            await until(lambda: len(coordinator.sites.online_sites()) == 3
                        and coordinator.sites.surplus(coordinator.clock.now(), 3600)
                        .surplus_kw == 5.0 and len(web.live.loads) == 2, 15)
            self.first_cycle = await self._cycle(coordinator, 2.0, 0.5)
            self._ready.set()
            try:
                await self._stop.wait()
            finally:
                await asyncio.gather(*(g.stop() for g in self.gateways))

    async def _cycle(self, coordinator: Coordinator, flex_kw: float, export_kwh: float) -> str:
        closed: list[Any] = []
        coordinator.add_listener(
            lambda e, d: closed.append(d[0].cycle_id) if e == "cycle_closed" else None)
        for gw in self.gateways[:2]:
            gw.flex_kw = flex_kw
            gw.send_netload()
        period = datetime.now(UTC).replace(microsecond=0)
        if self._last_period is not None and period <= self._last_period:
            period = self._last_period + timedelta(seconds=1)  # cycle ids are unique
        self._last_period = period
        await coordinator.start_cycle_now(period)
        await until(lambda: bool(closed), 15)
        self.cycles_run += 1
        cycle_id: str = closed[0]
        acked = [len(g.acks) for g in self.gateways]
        for gw in self.gateways:
            gw.publish_raw(self.topics.report(gw.site), encode(Report(
                seq=len(gw.acks) + 1, period=period, import_kwh=0.0,
                export_kwh=export_kwh if gw.site != "s2" else 0.0,
                allocated_kwh=flex_kw, used_kwh=flex_kw)))
        await until(lambda: all(len(g.acks) > n for g, n in zip(
            self.gateways, acked, strict=True)), 15)
        return cycle_id


def paris_today() -> date:
    return datetime.now(PARIS).date()


@dataclass
class PageWatch:
    """What a page did that a test must see: console errors, requests off loopback."""

    errors: list[str] = field(default_factory=list)
    off_loopback: list[str] = field(default_factory=list)

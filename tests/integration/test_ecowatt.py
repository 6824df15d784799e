"""The Ecowatt client, poller and cache against a real loopback HTTP server playing RTE.

No mock of httpx: ``ems.rte_standin`` answers over real sockets on 127.0.0.1.
Time is a ``ManualClock`` shared by the stand-in (token expiry, quota) and the
client and poller (token refresh, schedule), so a 15-minute window or a
2-hour token costs nothing; every call to RTE is counted.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import random
from collections.abc import Coroutine, Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

import httpx
import pytest
from structlog.testing import capture_logs

from central.core.grid import Signals
from central.ecowatt.cache import CachedAnswer, SignalCache
from central.ecowatt.client import EcowattClient
from central.ecowatt.errors import (
    EcowattAuthError,
    EcowattBadResponse,
    EcowattRateLimited,
    EcowattUnavailable,
)
from central.ecowatt.poller import EcowattPoller, PollPolicy
from ems.rte_standin import ManualClock, RteStandIn, make_signals

PARIS = ZoneInfo("Europe/Paris")
CLIENT_ID = "app-5f1e0c2d"
SECRET = "s3cr3t-Ecowatt-9d8c7b"
START = datetime(2026, 1, 15, 8, 0, tzinfo=UTC)  # 09:00 in Paris
T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(START)


@pytest.fixture
def rte(clock: ManualClock) -> Iterator[RteStandIn]:
    with RteStandIn(client_id=CLIENT_ID, client_secret=SECRET, clock=clock) as standin:
        standin.set_signals(make_signals(date(2026, 1, 15), {1: [1] * 18 + [3, 3] + [1] * 4}))
        yield standin


def client_for(rte: RteStandIn, clock: ManualClock, *, secret: str = SECRET,
               url: str | None = None, timeout_s: float = 2.0) -> EcowattClient:
    return EcowattClient(
        client_id=CLIENT_ID, client_secret=secret, token_url=rte.token_url,
        signals_url=url or rte.signals_url, timeout_s=timeout_s,
        now_s=clock.monotonic, wall=clock.now,
    )


# The stand-in itself -------------------------------------------------------------------


def test_standin_speaks_rtes_token_dialect(rte: RteStandIn) -> None:
    with httpx.Client() as http:
        ok = http.post(rte.token_url, auth=(CLIENT_ID, SECRET),
                       data={"grant_type": "client_credentials"})
        assert ok.status_code == 200
        assert ok.text.startswith('{\n  "access_token" : "')
        assert '"token_type" : "Bearer"' in ok.text and '"expires_in" : 7199' in ok.text
        assert http.post(rte.token_url, auth=(CLIENT_ID, SECRET)).status_code == 400
        assert http.post(rte.token_url, auth=(CLIENT_ID, "wrong"),
                         data={"grant_type": "client_credentials"}).status_code == 401
        assert http.get(rte.signals_url).status_code == 401
        token = ok.json()["access_token"]
        answer = http.get(rte.signals_url, headers={"Authorization": f"Bearer {token}"})
        days = answer.json()["signals"]
        assert [d["jour"][:10] for d in days] != sorted(d["jour"][:10] for d in days)
        assert all(len(d["values"]) == 24 for d in days)


def test_standin_serves_a_dst_day_with_23_entries(rte: RteStandIn) -> None:
    rte.set_signals(make_signals(date(2026, 3, 27)))
    with httpx.Client() as http:
        token = http.post(rte.token_url, auth=(CLIENT_ID, SECRET),
                          data={"grant_type": "client_credentials"}).json()["access_token"]
        days = http.get(rte.sandbox_url, headers={"Authorization": f"Bearer {token}"}).json()
    lengths = {d["jour"][:10]: len(d["values"]) for d in days["signals"]}
    assert lengths["2026-03-29"] == 23 and lengths["2026-03-28"] == 24


def test_standin_listens_on_loopback_only() -> None:
    with pytest.raises(ValueError):
        RteStandIn(host="0.0.0.0")


# Token ---------------------------------------------------------------------------------


def test_token_is_cached_then_refreshed_before_expiry(rte: RteStandIn, clock: ManualClock) -> None:
    async def scenario() -> None:
        async with client_for(rte, clock) as client:
            await client.fetch_signals()
            clock.advance(901)
            await client.fetch_signals()
            assert (rte.count("token"), rte.count("signals")) == (1, 2)
            # 7199 s tokens are refreshed 5 min early, before RTE would refuse them.
            clock.advance(6899 - 901)
            await client.fetch_signals()
            assert (rte.count("token"), rte.count("signals")) == (2, 3)
            assert rte.count(status=401) == 0

    run(scenario())


def test_token_fetch_is_single_flight(rte: RteStandIn, clock: ManualClock) -> None:
    async def scenario() -> None:
        async with client_for(rte, clock) as client:
            tokens = await asyncio.gather(*(client.token() for _ in range(8)))
        assert len(set(tokens)) == 1
        assert rte.count("token") == 1

    run(scenario())


def test_a_401_fetches_a_new_token_once(rte: RteStandIn, clock: ManualClock) -> None:
    async def scenario() -> None:
        async with client_for(rte, clock) as client:
            await client.token()
            rte.expire_tokens()
            body = await client.fetch_signals()
        assert len(body["signals"]) == 4
        assert (rte.count("token"), rte.count("signals", 401), rte.count("signals", 200)) == (
            2, 1, 1)

    run(scenario())


def test_a_second_401_is_an_alarm_and_never_a_loop(rte: RteStandIn, clock: ManualClock) -> None:
    rte.reject_tokens = True

    async def scenario() -> None:
        async with client_for(rte, clock) as client:
            with pytest.raises(EcowattAuthError) as info:
                await client.fetch_signals()
            assert info.value.status == 401
            assert (rte.count("token"), rte.count("signals")) == (2, 2)
            with pytest.raises(EcowattAuthError):
                await client.fetch_signals()
            assert (rte.count("token"), rte.count("signals")) == (4, 4)

    run(scenario())


def test_refused_credentials(rte: RteStandIn, clock: ManualClock) -> None:
    async def scenario() -> None:
        async with client_for(rte, clock, secret="not-the-secret") as client:
            with pytest.raises(EcowattAuthError) as info:
                await client.fetch_signals()
        assert info.value.status == 401 and "invalid_client" in info.value.detail
        assert (rte.count("token"), rte.count("signals")) == (1, 0)

    run(scenario())


def test_403_is_an_auth_error_without_token_churn(rte: RteStandIn, clock: ManualClock) -> None:
    rte.fail_next(403, body={"error": "FORBIDDEN"})

    async def scenario() -> None:
        async with client_for(rte, clock) as client:
            with pytest.raises(EcowattAuthError) as info:
                await client.fetch_signals()
        assert info.value.status == 403
        assert (rte.count("token"), rte.count("signals")) == (1, 1)

    run(scenario())


# 429, 5xx, timeouts, garbage -----------------------------------------------------------------


@pytest.mark.parametrize("retry_after", [True, False])
def test_429_with_and_without_retry_after(rte: RteStandIn, clock: ManualClock,
                                          retry_after: bool) -> None:
    rte.retry_after = retry_after

    async def scenario() -> None:
        async with client_for(rte, clock) as client:
            await client.fetch_signals()
            clock.advance(300)
            with pytest.raises(EcowattRateLimited) as info:
                await client.fetch_signals()
        # Next call allowed at +15 min + 1 s, i.e. 601 s from now.
        assert info.value.retry_after_s == (601.0 if retry_after else None)
        assert "TOO_MANY_REQUESTS" in info.value.detail

    run(scenario())


@pytest.mark.parametrize("status", [500, 502, 503])
def test_5xx_is_unavailable_with_rtes_envelope(rte: RteStandIn, clock: ManualClock,
                                               status: int) -> None:
    rte.fail_next(status)

    async def scenario() -> None:
        async with client_for(rte, clock) as client:
            with pytest.raises(EcowattUnavailable) as info:
                await client.fetch_signals()
        assert info.value.status == status
        assert "COMMON_ERROR_T03" in info.value.detail and "transaction Id-" in info.value.detail

    run(scenario())


def test_timeouts_and_refused_connections_are_translated(rte: RteStandIn,
                                                          clock: ManualClock) -> None:
    async def scenario() -> None:
        async with client_for(rte, clock, timeout_s=0.2) as client:
            await client.token()
            rte.hang_next(1.0)
            with pytest.raises(EcowattUnavailable) as info:
                await client.fetch_signals()
            assert isinstance(info.value.__cause__, httpx.TimeoutException)
            assert info.value.status is None
            rte.stop()
            with pytest.raises(EcowattUnavailable) as refused:
                await client.fetch_signals()
            assert isinstance(refused.value.__cause__, httpx.TransportError)

    run(scenario())


@pytest.mark.parametrize("body", [b"<html>maintenance</html>", b"[1, 2]", b'{"signals": "x'])
def test_garbage_is_a_bad_response(rte: RteStandIn, clock: ManualClock, body: bytes) -> None:
    rte.fail_next(200, body=body)

    async def scenario() -> None:
        async with client_for(rte, clock) as client:
            with pytest.raises(EcowattBadResponse):
                await client.fetch_signals()

    run(scenario())


def test_credentials_and_tokens_never_reach_a_log(
    rte: RteStandIn, clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    errors: list[str] = []

    async def scenario() -> None:
        async with client_for(rte, clock) as client:
            errors.append(repr(client))
            await client.fetch_signals()
            rte.expire_tokens()
            clock.advance(901)
            await client.fetch_signals()
            for fault in (500, 429):
                rte.fail_next(fault, retry_after=60)
                try:
                    await client.fetch_signals()
                except Exception as exc:
                    errors.append(f"{exc!r} {exc}")
            rte.reject_tokens = True
            try:
                await client.fetch_signals()
            except EcowattAuthError as exc:
                errors.append(f"{exc!r} {exc}")
        async with client_for(rte, clock, secret=SECRET + "x") as bad:
            try:
                await bad.fetch_signals()
            except EcowattAuthError as exc:
                errors.append(f"{exc!r} {exc}")

    with capture_logs() as logs:
        run(scenario())
    assert rte.issued_tokens and len(errors) == 5
    text = json.dumps(logs, default=str) + caplog.text + " ".join(errors)
    assert any(e["event"] == "ecowatt_token_fetched" for e in logs)
    for secret in (SECRET, CLIENT_ID, *rte.issued_tokens):
        assert secret not in text


def test_an_error_body_echoing_credentials_is_masked(rte: RteStandIn, clock: ManualClock) -> None:
    rte.fail_next(502, body={"error": "BAD_GATEWAY",
                             "error_description": f"upstream saw {CLIENT_ID}:{SECRET}"})

    async def scenario() -> None:
        async with client_for(rte, clock) as client:
            with pytest.raises(EcowattUnavailable) as info:
                await client.fetch_signals()
        assert SECRET not in str(info.value) and CLIENT_ID not in str(info.value)
        assert "***" in info.value.detail

    run(scenario())


# The poller ----------------------------------------------------------------------------


def poller_for(rte: RteStandIn, clock: ManualClock, tmp_path: Path, *,
               url: str | None = None, **policy: Any) -> EcowattPoller:
    client = client_for(rte, clock, url=url)
    return EcowattPoller(client, SignalCache(tmp_path / "ecowatt.json"), clock, PARIS,
                         PollPolicy(tz=PARIS, **policy), rng=random.Random(7))


class Gate:
    """The manual clock, but the sleep after ``calls`` calls never ends: exactly that many."""

    def __init__(self, clock: ManualClock, calls: int) -> None:
        self.clock = clock
        self.left = calls

    def now(self) -> datetime:
        return self.clock.now()

    def monotonic(self) -> float:
        return self.clock.monotonic()

    def real_seconds(self, clock_s: float) -> float:
        return 0.0

    async def sleep_until(self, at: datetime) -> None:
        if self.left <= 0:
            await asyncio.Event().wait()
        self.left -= 1
        await self.clock.sleep_until(at)


async def run_until_calls(poller: EcowattPoller, calls: int,
                          got: list[tuple[Signals, datetime]]) -> None:
    assert isinstance(poller.clock, ManualClock)
    poller.clock = Gate(poller.clock, calls)
    task = asyncio.create_task(poller.run(lambda s, at: got.append((s, at))))
    for _ in range(5000):
        if poller.completed >= calls:
            break
        await asyncio.sleep(0.002)
    assert poller.completed == calls
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await poller.client.aclose()  # type: ignore[attr-defined]


def signal_call_times(rte: RteStandIn) -> list[float]:
    return [r.at_s for r in rte.requests if r.kind == "signals"]


def test_poller_calls_hourly_and_after_the_17h_publication(
    rte: RteStandIn, clock: ManualClock, tmp_path: Path
) -> None:
    poller = poller_for(rte, clock, tmp_path)
    got: list[tuple[Signals, datetime]] = []
    run(run_until_calls(poller, 10, got))
    times = signal_call_times(rte)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert rte.count("signals", 429) == 0 and len(got) >= 9
    assert all(g >= 900 for g in gaps)
    assert all(g <= 3600 + 300 for g in gaps)
    # One call lands 5-20 minutes after 17:00 Paris (16:00Z) on the first day.
    after_pub = [START + timedelta(seconds=t) for t in times]
    assert any(datetime(2026, 1, 15, 16, 5, tzinfo=UTC) <= at
               <= datetime(2026, 1, 15, 16, 20, tzinfo=UTC) for at in after_pub)
    assert poller.state == "ok"


@pytest.mark.parametrize("retry_after", [2000, None])
def test_poller_waits_out_a_429(rte: RteStandIn, clock: ManualClock, tmp_path: Path,
                                retry_after: int | None) -> None:
    rte.fail_next(429, retry_after=retry_after)
    poller = poller_for(rte, clock, tmp_path)
    run(run_until_calls(poller, 2, []))
    first, second = [r for r in rte.requests if r.kind == "signals"][:2]
    assert first.status == 429 and second.status == 200
    gap = second.at_s - first.at_s
    if retry_after:
        assert 2000 + 1 <= gap <= 2000 + 30  # RTE's Retry-After, plus a little jitter
    else:
        assert 900 + 1 <= gap <= 900 + 30  # at least a quota window


def test_poller_never_calls_before_a_retry_after_it_did_not_cause(
    rte: RteStandIn, clock: ManualClock, tmp_path: Path
) -> None:
    async def scenario() -> None:
        async with client_for(rte, clock) as other:
            await other.fetch_signals()  # someone else spent this quarter's call
        clock.advance(100)
        poller = poller_for(rte, clock, tmp_path)
        await run_until_calls(poller, 2, [])

    run(scenario())
    first, second = [r for r in rte.requests if r.kind == "signals"][1:3]
    assert first.status == 429 and second.status == 200
    # RTE said 801 s; our own quota floor (900 s from our last call) is later.
    assert 900 <= second.at_s - first.at_s <= 931
    assert rte.count("signals", 429) == 1


def test_poller_backs_off_on_5xx_then_recovers(rte: RteStandIn, clock: ManualClock,
                                               tmp_path: Path) -> None:
    rte.fail_next(503, times=5)
    rte.rate_limit_s = 0
    poller = poller_for(rte, clock, tmp_path, min_interval_s=60, backoff_cap_s=600)
    got: list[tuple[Signals, datetime]] = []
    with capture_logs() as logs:
        run(run_until_calls(poller, 6, got))
    times = signal_call_times(rte)[:6]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert all(60 <= g <= 600 for g in gaps)
    assert len(set(gaps)) > 1  # jittered
    assert [r.status for r in rte.requests if r.kind == "signals"][:6] == [503] * 5 + [200]
    assert len(got) == 1 and poller.state == "ok" and poller.backoff.failures == 0
    assert sum(e["event"] == "ecowatt_unavailable" for e in logs) == 5


def test_poller_raises_the_alarm_on_auth_failure_and_waits(
    rte: RteStandIn, clock: ManualClock, tmp_path: Path
) -> None:
    rte.reject_tokens = True
    poller = poller_for(rte, clock, tmp_path)
    with capture_logs() as logs:
        run(run_until_calls(poller, 2, []))
    alarms = [e for e in logs if e["event"] == "ecowatt_auth_failed"]
    assert alarms and alarms[0]["alarm"] is True and alarms[0]["log_level"] == "error"
    times = signal_call_times(rte)
    # Two calls per attempt (one fresh token), then an hour of silence.
    assert len(times) == 4 and times[2] - times[1] >= 3600
    assert rte.count("token") == 4


def test_cache_is_written_atomically_and_served_after_a_restart(
    rte: RteStandIn, clock: ManualClock, tmp_path: Path
) -> None:
    poller = poller_for(rte, clock, tmp_path)
    got: list[tuple[Signals, datetime]] = []
    run(run_until_calls(poller, 1, got))
    cache_file = tmp_path / "ecowatt.json"
    saved = json.loads(cache_file.read_text())
    assert saved["v"] == 1 and saved["url"] == rte.signals_url
    assert saved["fetched_at"] == "2026-01-15T08:00:00Z"
    assert len(saved["body"]["signals"]) == 4
    assert [p.name for p in tmp_path.iterdir()] == ["ecowatt.json"]  # no temp file left
    # RTE is gone; a new process serves the cached answer and keeps the quota.
    rte.stop()
    clock.advance(60)
    again = poller_for(rte, clock, tmp_path)
    loaded = again.load_cache()
    assert loaded is not None
    signals, fetched_at = loaded
    assert signals == got[0][0] and fetched_at == START
    assert again.first_call_at(clock.now()) >= START + timedelta(seconds=3600)
    run(again.client.aclose())  # type: ignore[attr-defined]


def test_a_foreign_or_corrupt_cache_is_no_cache(tmp_path: Path) -> None:
    cache = SignalCache(tmp_path / "sub" / "c.json")
    assert cache.load() is None
    cache.save(CachedAnswer({"signals": []}, START, "https://a/signals"))
    assert cache.load("https://a/signals") is not None
    assert cache.load("https://b/signals") is None
    (tmp_path / "sub" / "c.json").write_text('{"v":1,"fetched_at":')
    assert cache.load() is None

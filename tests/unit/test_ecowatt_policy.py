"""The Ecowatt shell's pure parts: call schedule, backoff, Retry-After, error bodies, config."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import httpx
import pytest

from central.config import load_central_settings
from central.ecowatt import PRODUCTION_SIGNALS_URL, SANDBOX_SIGNALS_URL
from central.ecowatt.client import error_detail, parse_retry_after
from central.ecowatt.errors import (
    EcowattAuthError,
    EcowattBadResponse,
    EcowattError,
    EcowattRateLimited,
    EcowattUnavailable,
)
from central.ecowatt.poller import Backoff, PollPolicy, next_after_success
from central.errors import CentralError
from protocol.settings import ConfigError

PARIS = ZoneInfo("Europe/Paris")


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def test_error_tree() -> None:
    for cls in (EcowattAuthError, EcowattRateLimited, EcowattUnavailable, EcowattBadResponse):
        assert issubclass(cls, EcowattError)
    assert issubclass(EcowattError, CentralError)
    err = EcowattRateLimited("slow down", retry_after_s=12.0, detail="x")
    assert (err.status, err.retry_after_s, str(err)) == (429, 12.0, "slow down: x")


# Schedule ----------------------------------------------------------------------------


def test_hourly_with_jitter_after_a_good_answer() -> None:
    policy = PollPolicy(tz=PARIS)
    rng = random.Random(1)
    at = utc(2026, 1, 15, 8)  # 09:00 Paris
    for _ in range(50):
        nxt = next_after_success(at, at, policy, rng)
        assert timedelta(hours=1) <= nxt - at <= timedelta(hours=1, minutes=5)


def test_soon_after_rtes_17h_publication() -> None:
    policy = PollPolicy(tz=PARIS)
    rng = random.Random(2)
    at = utc(2026, 1, 15, 15, 30)  # 16:30 Paris: the hourly call would come after 17:00
    for _ in range(50):
        nxt = next_after_success(at, at, policy, rng)
        assert utc(2026, 1, 15, 16, 5) <= nxt <= utc(2026, 1, 15, 16, 20)
    # Already fetched after the publication: back to hourly.
    later = utc(2026, 1, 15, 16, 10)
    assert next_after_success(later, later, policy, rng) - later >= timedelta(hours=1)


def test_startup_after_a_missed_publication_calls_at_once() -> None:
    policy = PollPolicy(tz=PARIS)
    cached, now = utc(2026, 1, 15, 9), utc(2026, 1, 15, 19)  # cache from 10:00, now 20:00
    assert next_after_success(cached, now, policy, random.Random(3)) <= now + timedelta(hours=1)


def test_backoff_is_capped_jittered_and_resets() -> None:
    b = Backoff(900.0, 3600.0, random.Random(4))
    delays = [b.next_s() for _ in range(20)]
    assert all(900.0 <= d <= 3600.0 for d in delays)
    assert max(delays) == 3600.0 or len(set(delays)) > 5
    assert b.failures == 20
    b.reset()
    assert b.failures == 0 and b.next_s() <= 2700.0


# Retry-After and error bodies -----------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        ("", None),
        ("120", 120.0),
        (" 7 ", 7.0),
        ("Thu, 15 Jan 2026 09:15:00 GMT", 900.0),
        ("Thu, 15 Jan 2026 08:00:00 GMT", 0.0),
        ("soon", None),
        ("-5", None),
    ],
)
def test_retry_after(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value, utc(2026, 1, 15, 9)) == expected


@pytest.mark.parametrize(
    ("body", "content_type", "expected"),
    [
        (b'{"error":"COMMON_ERROR_T03","error_description":"Error code unknown","error_uri":"",'
         b'"error_details":{"transaction_id":"Id-42dc9769c6dbcb3789bcf0ec"}}', "application/json",
         "COMMON_ERROR_T03 - Error code unknown - transaction Id-42dc9769c6dbcb3789bcf0ec"),
        (b'{"error":"invalid_token"}', "application/json", "invalid_token"),
        (b"<html><body>Bad\n gateway</body></html>", "text/html",
         "<html><body>Bad gateway</body></html>"),
        (b"", "application/json", ""),
        (b"[1,2]", "application/json", "[1,2]"),
        (b"\xff\xfe\x00garbage", "application/json", None),
        (b"x" * 5000, "text/plain", "x" * 200),
    ],
)
def test_error_detail_never_parses_strictly(body: bytes, content_type: str,
                                            expected: str | None) -> None:
    response = httpx.Response(500, content=body, headers={"Content-Type": content_type})
    detail = error_detail(response)
    assert isinstance(detail, str) and len(detail) <= 200
    if expected is not None:
        assert detail == expected


# Config ------------------------------------------------------------------------------


def load(env: dict[str, str] | None = None, **ecowatt: object) -> object:
    return load_central_settings(None, env=env or {}, community={"id": "c1"}, ecowatt=ecowatt)


def test_ecowatt_defaults() -> None:
    eco = load_central_settings(None, env={}, community={"id": "c1"}).ecowatt
    assert not eco.enabled and eco.url == PRODUCTION_SIGNALS_URL and eco.is_production
    assert (eco.min_interval_s, eco.shed_threshold, eco.timezone) == (900.0, 2, "Europe/Paris")


def test_ecowatt_secret_from_the_environment_and_never_shown() -> None:
    settings = load_central_settings(
        None, env={"EMS_ECOWATT__CLIENT_SECRET": "s3cr3t-value"}, community={"id": "c1"},
        ecowatt={"enabled": True, "client_id": "app"},
    )
    secret = settings.ecowatt.client_secret
    assert secret is not None and secret.get_secret_value() == "s3cr3t-value"
    assert "s3cr3t-value" not in repr(settings) and "s3cr3t-value" not in str(settings)


@pytest.mark.parametrize(
    ("ecowatt", "key"),
    [
        ({"enabled": True, "client_id": "a"}, "[ecowatt] client_secret"),
        ({"enabled": True, "client_secret": "b"}, "[ecowatt] client_id"),
        ({"min_interval_s": 60}, "[ecowatt] min_interval_s"),
        ({"poll_interval_s": 600, "signals_url": "http://127.0.0.1:1/s", "min_interval_s": 900},
         "[ecowatt] poll_interval_s"),
        ({"sandbox": True, "signals_url": "http://127.0.0.1:1/s"}, "[ecowatt] sandbox"),
        ({"timezone": "Mars/Olympus"}, "[ecowatt] timezone"),
        ({"shed_threshold": 0}, "[ecowatt] shed_threshold"),
        ({"signals_url": "ftp://x"}, "[ecowatt] signals_url"),
        ({"client_sercet": "x"}, "[ecowatt] client_sercet"),
    ],
)
def test_ecowatt_bad_keys_are_named(ecowatt: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(**ecowatt)
    assert key in str(info.value)


def test_sandbox_and_loopback_may_poll_faster() -> None:
    eco = load(sandbox=True, min_interval_s=60, poll_interval_s=60).ecowatt  # type: ignore[attr-defined]
    assert eco.url == SANDBOX_SIGNALS_URL and not eco.is_production
    eco = load(signals_url="http://127.0.0.1:8/x", min_interval_s=1,  # type: ignore[attr-defined]
               poll_interval_s=1).ecowatt
    assert not eco.is_production


def test_an_accelerated_clock_may_not_poll_rte_production() -> None:
    with pytest.raises(ConfigError) as info:
        load_central_settings(None, env={}, community={"id": "c1"}, clock={"speed": 180},
                              ecowatt={"enabled": True, "client_id": "a", "client_secret": "b"})
    assert "[clock] speed" in str(info.value)

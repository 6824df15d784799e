"""``EcowattClient``: RTE's Ecowatt v5 API over async httpx.

Follows /work/shared/reference/devices-and-apis.md §4 and
mosquitto-and-faults.md §3 "Ecowatt outages, 401 and 429":

- token: ``POST`` the token URL with ``Authorization: Basic
  base64(client_id:client_secret)`` and the form body
  ``grant_type=client_credentials`` (OAuth 2.0 client credentials, RFC 6749
  §4.4). The answer (spaced JSON) carries ``access_token`` and
  ``expires_in`` (~7200 s). The token is cached until ``TOKEN_MARGIN_S``
  before it expires, and fetched by one caller at a time (single-flight:
  concurrent callers wait for the same fetch).
- signals: ``GET`` the signals URL with ``Authorization: Bearer <token>``.
  On 401 the token is dropped and a new one fetched **once**; a second 401
  raises ``EcowattAuthError`` (RFC 6750 §3.1): an alarm, never a loop.
- errors: 429 → ``EcowattRateLimited`` with ``Retry-After`` (seconds or an
  HTTP date, RFC 9110 §10.2.3) when present; 5xx, timeouts and network
  failures → ``EcowattUnavailable``; anything unusable → ``EcowattBadResponse``.
  Error bodies are read for a short detail only, never strictly: RTE's 500
  envelope, an OAuth ``{"error": …}``, HTML or nothing are all fine.

The transport is a seam: pass an ``httpx.AsyncBaseTransport`` (or point the
URLs at a loopback server such as ``ems.rte_standin``). The time source for
token expiry is injectable (``now_s``, monotonic seconds) so tests control it.
Credentials and tokens never reach a log, an exception or a ``repr``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import time
from collections.abc import Callable
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from types import TracebackType
from typing import Any, Self

import httpx
import structlog
from pydantic import SecretStr

from central import __version__
from central.ecowatt import PRODUCTION_SIGNALS_URL, PRODUCTION_TOKEN_URL
from central.ecowatt.errors import (
    EcowattAuthError,
    EcowattBadResponse,
    EcowattError,
    EcowattRateLimited,
    EcowattUnavailable,
)

TOKEN_MARGIN_S = 300.0
"""Refresh this long before the token expires (reference §3: ~5 min)."""
DEFAULT_EXPIRES_IN_S = 3600.0
"""Assumed when the token answer has no usable ``expires_in`` (RTE says ~7200)."""
_DETAIL_MAX = 200

log = structlog.get_logger("central.ecowatt")


def parse_retry_after(value: str | None, now: datetime) -> float | None:
    """``Retry-After`` as seconds from ``now``: delta-seconds or an HTTP date; None if absent."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    if text.isdigit():
        return float(int(text))
    try:
        at = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    return max(0.0, (at - now).total_seconds())


def _seconds(value: object) -> float | None:
    """A positive number of seconds from a JSON number or a numeric string, else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, int | float) and value > 0:
        return float(value)
    return None


def error_detail(response: httpx.Response) -> str:
    """A short, single-line summary of an error body, whatever its shape (never raises)."""
    try:
        body: Any = response.json()
    except ValueError:
        body = None
    parts: list[str] = []
    if isinstance(body, dict):
        for key in ("error", "error_description"):
            value = body.get(key)
            if isinstance(value, str | int) and str(value):
                parts.append(str(value))
        details = body.get("error_details")
        if isinstance(details, dict) and isinstance(details.get("transaction_id"), str):
            parts.append(f"transaction {details['transaction_id']}")
    if not parts:
        try:
            text = response.text
        except Exception:  # an undecodable body says nothing useful
            text = ""
        parts.append(text)
    detail = " ".join(" - ".join(p for p in parts if p).split())
    return detail[:_DETAIL_MAX]


class EcowattClient:
    """An async client of RTE's Ecowatt v5 signals (one per coordinator)."""

    def __init__(
        self,
        *,
        client_id: str,
        client_secret: SecretStr | str,
        token_url: str = PRODUCTION_TOKEN_URL,
        signals_url: str = PRODUCTION_SIGNALS_URL,
        timeout_s: float = 10.0,
        transport: httpx.AsyncBaseTransport | None = None,
        now_s: Callable[[], float] = time.monotonic,
        wall: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        if not client_id:
            raise ValueError("client_id must not be empty")
        self._client_id = client_id
        self._secret = (
            client_secret if isinstance(client_secret, SecretStr) else SecretStr(client_secret)
        )
        if not self._secret.get_secret_value():
            raise ValueError("client_secret must not be empty")
        self.token_url = token_url
        self.signals_url = signals_url
        self._now_s = now_s
        self._wall = wall
        self._http = httpx.AsyncClient(
            transport=transport,
            timeout=httpx.Timeout(timeout_s),
            follow_redirects=False,
            headers={"Accept": "application/json", "User-Agent": f"ems-community/{__version__}"},
        )
        self._token: str | None = None
        self._token_expires_at = 0.0
        self._lock = asyncio.Lock()
        self.token_fetches = 0
        self.signal_fetches = 0

    def __repr__(self) -> str:
        return f"<EcowattClient {self.signals_url}>"

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    # Token -----------------------------------------------------------------------
    def _token_valid(self) -> bool:
        return self._token is not None and self._now_s() < self._token_expires_at

    async def token(self, *, stale: str | None = None) -> str:
        """A valid access token, fetched only when needed; ``stale`` is one RTE refused."""
        if self._token_valid() and self._token != stale:
            assert self._token is not None
            return self._token
        async with self._lock:
            # Single-flight: whoever waited here reuses the token just fetched.
            if self._token_valid() and self._token != stale:
                assert self._token is not None
                return self._token
            self._token = None
            return await self._fetch_token()

    async def _fetch_token(self) -> str:
        auth = httpx.BasicAuth(self._client_id, self._secret.get_secret_value())
        self.token_fetches += 1
        response = await self._send(
            "POST", self.token_url, auth=auth, data={"grant_type": "client_credentials"}
        )
        status = response.status_code
        if status in (400, 401, 403):
            raise EcowattAuthError(
                f"RTE refused the client credentials (HTTP {status})",
                status=status,
                detail=self._detail(response),
            )
        self._raise_for_status(response, "token")
        try:
            body = response.json()
        except ValueError as exc:
            # Never quote a token answer: it may hold a token.
            raise EcowattBadResponse("the token answer is not JSON", status=status) from exc
        token = body.get("access_token") if isinstance(body, dict) else None
        if not isinstance(token, str) or not token:
            raise EcowattBadResponse("the token answer has no access_token", status=status)
        token_type = body.get("token_type", "Bearer")
        if isinstance(token_type, str) and token_type.lower() != "bearer":
            raise EcowattBadResponse(f"unexpected token_type {token_type[:20]!r}", status=status)
        lifetime = _seconds(body.get("expires_in")) or DEFAULT_EXPIRES_IN_S
        margin = min(TOKEN_MARGIN_S, lifetime / 10.0)
        self._token = token
        self._token_expires_at = self._now_s() + lifetime - margin
        log.info("ecowatt_token_fetched", expires_in_s=lifetime, refresh_in_s=lifetime - margin)
        return token

    # Signals ---------------------------------------------------------------------
    async def fetch_signals(self) -> dict[str, Any]:
        """RTE's current signals, the JSON object as received (parse it with the core)."""
        token = await self.token()
        response = await self._get_signals(token)
        if response.status_code == 401:
            log.warning("ecowatt_token_refused", action="fetching a new token once")
            token = await self.token(stale=token)
            response = await self._get_signals(token)
            if response.status_code == 401:
                self._token = None
                raise EcowattAuthError(
                    "RTE refused a freshly issued token (HTTP 401 twice)",
                    status=401,
                    detail=self._detail(response),
                )
        if response.status_code == 403:
            # A key subscribed to another API version gets 403 (reference §4).
            raise EcowattAuthError(
                "RTE forbids these signals to this application (HTTP 403: is it "
                "subscribed to Ecowatt v5?)",
                status=403,
                detail=self._detail(response),
            )
        self._raise_for_status(response, "signals")
        try:
            body = response.json()
        except ValueError as exc:
            raise EcowattBadResponse(
                "the signals answer is not JSON", status=response.status_code,
                detail=self._detail(response),
            ) from exc
        if not isinstance(body, dict):
            raise EcowattBadResponse(
                f"the signals answer is a JSON {type(body).__name__}, not an object",
                status=response.status_code,
            )
        log.info("ecowatt_signals_fetched", status=response.status_code,
                 size_bytes=len(response.content))
        return body

    async def _get_signals(self, token: str) -> httpx.Response:
        self.signal_fetches += 1
        return await self._send(
            "GET", self.signals_url, headers={"Authorization": f"Bearer {token}"}
        )

    # Plumbing --------------------------------------------------------------------
    def _detail(self, response: httpx.Response) -> str:
        """``error_detail`` with our credentials masked, should a server ever echo them."""
        detail = error_detail(response)
        secret = self._secret.get_secret_value()
        basic = base64.b64encode(f"{self._client_id}:{secret}".encode()).decode()
        for value in (secret, basic, self._client_id, self._token):
            if value:
                detail = detail.replace(value, "***")
        return detail

    async def _send(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        """One request; httpx's exceptions become ours here, and only here."""
        try:
            return await self._http.request(method, url, **kwargs)
        except httpx.TimeoutException as exc:
            raise EcowattUnavailable(
                f"RTE did not answer in time ({type(exc).__name__})"
            ) from exc
        except httpx.TransportError as exc:
            raise EcowattUnavailable(
                f"cannot reach RTE ({type(exc).__name__}: {str(exc)[:_DETAIL_MAX]})"
            ) from exc
        except httpx.HTTPError as exc:
            raise EcowattError(f"HTTP error talking to RTE ({type(exc).__name__})") from exc

    def _raise_for_status(self, response: httpx.Response, what: str) -> None:
        status = response.status_code
        if 200 <= status < 300:
            return
        detail = self._detail(response)
        if status == 429:
            server_now = self._wall()
            date = response.headers.get("Date")
            if date:
                # An HTTP-date Retry-After is relative to the server's clock.
                with contextlib.suppress(TypeError, ValueError, IndexError):
                    server_now = parsedate_to_datetime(date)
                if server_now.tzinfo is None:
                    server_now = server_now.replace(tzinfo=UTC)
            retry = parse_retry_after(response.headers.get("Retry-After"), server_now)
            raise EcowattRateLimited(
                f"RTE rate-limited the {what} request (HTTP 429)",
                retry_after_s=retry,
                detail=detail,
            )
        if status >= 500:
            raise EcowattUnavailable(
                f"RTE failed the {what} request (HTTP {status})", status=status, detail=detail
            )
        raise EcowattBadResponse(
            f"unexpected HTTP {status} to the {what} request", status=status, detail=detail
        )

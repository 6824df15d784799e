"""A stand-in for RTE's Ecowatt v5 API on loopback, for the tests and the demo.

It behaves like RTE as /work/shared/reference/devices-and-apis.md §4 describes
it, over real HTTP (stdlib ``http.server`` in a thread, HTTP/1.1):

- ``POST /token/oauth/``: checks ``Authorization: Basic
  base64(client_id:client_secret)`` (401 ``invalid_client`` otherwise) and the
  form body ``grant_type=client_credentials`` (400 ``unsupported_grant_type``),
  and answers RTE's spaced JSON ``{"access_token" : …, "token_type" :
  "Bearer", "expires_in" : 7199}``. Tokens expire ``token_ttl_s`` after issue.
- ``GET /open_api/ecowatt/v5/signals`` (and ``…/v5/sandbox/signals``): 401
  with an OAuth ``invalid_token`` body for a missing, unknown or expired
  token; on the production path one call per ``rate_limit_s`` (the window
  counts from the last call answered 200, and the next call is allowed one
  second after it, as RTE's "H+15 + 1s"), else 429, with a ``Retry-After``
  in seconds when ``retry_after`` is on. The sandbox path is not limited.
  The body is RTE's compact JSON: four days J..J+3 **not in order**, each
  with one ``{"pas", "hvalue"}`` per hour, so a DST day has 23 or 25 entries.
- faults on demand: ``fail_next`` (e.g. 500 with RTE's error envelope, or a
  429 / 503), ``hang_next`` (answer late, to exercise client timeouts),
  ``expire_tokens`` (every issued token becomes stale), ``reject_tokens``
  (every bearer token is refused, even a fresh one).

Time is injectable: ``clock`` gives monotonic seconds for token expiry and the
rate limit, and a UTC ``now()`` for the default days; ``ManualClock`` moves
only when told, so a test crosses a 15-minute window without sleeping. Every
request is recorded (``requests``, ``count``) so tests can assert how many
calls a client made. It listens on loopback only.

``python -m ems.rte_standin --port 8765`` runs one in the foreground.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import ipaddress
import json
import math
import secrets
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, tzinfo
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Protocol, Self
from urllib.parse import parse_qs, urlsplit
from zoneinfo import ZoneInfo

import structlog

from central.core.grid import day_hours

log = structlog.get_logger(__name__)

PARIS = ZoneInfo("Europe/Paris")
TOKEN_PATH = "/token/oauth/"
SIGNALS_PATH = "/open_api/ecowatt/v5/signals"
SANDBOX_PATH = "/open_api/ecowatt/v5/sandbox/signals"
DEFAULT_MESSAGE = "Pas d\u2019alerte."
# The order of the four days in an answer: RTE's are not sorted (the openHAB
# fixture lists J+3, J+1, J+2, J).
DAY_ORDER = (3, 1, 2, 0)


class StandInClock(Protocol):
    """What the stand-in needs of time."""

    def monotonic(self) -> float: ...

    def now(self) -> datetime: ...


class SystemTime:
    """Wall time and the process's monotonic clock."""

    def monotonic(self) -> float:
        return time.monotonic()

    def now(self) -> datetime:
        return datetime.now(UTC)


class ManualClock:
    """Time that moves only when told; shareable between threads and with a client.

    It also satisfies ``runtime.clock.Clock``: ``sleep_until`` jumps to the
    instant at once (and yields to the event loop), so a poller sleeping 15
    minutes costs a test nothing. ``sleeps`` records every requested sleep.
    """

    def __init__(self, start: datetime | None = None) -> None:
        self._origin = (start or datetime(2026, 1, 15, 9, 0, tzinfo=UTC)).astimezone(UTC)
        self._elapsed = 0.0
        self._lock = threading.Lock()
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        with self._lock:
            return self._elapsed

    def __call__(self) -> float:
        return self.monotonic()

    def now(self) -> datetime:
        with self._lock:
            return self._origin + timedelta(seconds=self._elapsed)

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("time does not go back")
        with self._lock:
            self._elapsed += seconds

    async def sleep_until(self, at: datetime) -> None:
        delay = (at - self.now()).total_seconds()
        self.sleeps.append(max(0.0, delay))
        if delay > 0:
            self.advance(delay)
        await asyncio.sleep(0)

    def real_seconds(self, clock_s: float) -> float:
        return 0.0


# The answers' shapes ---------------------------------------------------------


def make_day(
    day: date,
    levels: Sequence[int] | None = None,
    *,
    tz: tzinfo = PARIS,
    generated_at: datetime | None = None,
    dvalue: int | None = None,
    message: str = DEFAULT_MESSAGE,
) -> dict[str, Any]:
    """One day as RTE writes it; ``levels`` defaults to 1 for each of the day's hours."""
    n = day_hours(day, tz)
    hours = list(levels) if levels is not None else [1] * n
    midnight = datetime(day.year, day.month, day.day, tzinfo=tz)
    generated = generated_at or (midnight - timedelta(hours=1))
    return {
        "GenerationFichier": generated.astimezone(tz).isoformat(),
        "jour": midnight.isoformat(),
        "dvalue": dvalue if dvalue is not None else max(1, max(hours, default=1)),
        "message": message,
        "values": [{"pas": i, "hvalue": lv} for i, lv in enumerate(hours)],
    }


def make_signals(
    first_day: date,
    levels: Mapping[int, Sequence[int]] | None = None,
    *,
    tz: tzinfo = PARIS,
    generated_at: datetime | None = None,
    order: Sequence[int] = DAY_ORDER,
) -> dict[str, Any]:
    """Four days J..J+3 from ``first_day``, listed in ``order``; ``levels[i]`` for day J+i."""
    levels = levels or {}
    # One file, one GenerationFichier for the four days (the evening before J).
    midnight = datetime(first_day.year, first_day.month, first_day.day, tzinfo=tz)
    generated_at = generated_at or (midnight - timedelta(hours=1))
    days = [
        make_day(first_day + timedelta(days=i), levels.get(i), tz=tz, generated_at=generated_at)
        for i in range(4)
    ]
    return {"signals": [days[i] for i in order]}


def token_json(token: str, expires_in: int) -> bytes:
    """RTE's token answer, spaced exactly as the real one."""
    return (
        "{\n"
        f'  "access_token" : "{token}",\n'
        '  "token_type" : "Bearer",\n'
        f'  "expires_in" : {expires_in}\n'
        "}"
    ).encode()


def error_envelope(code: str = "COMMON_ERROR_T03", description: str = "Error code unknown") -> dict[
    str, Any
]:
    """RTE's gateway error envelope, as seen on a 500."""
    return {
        "error": code,
        "error_description": description,
        "error_uri": "",
        "error_details": {"transaction_id": f"Id-{secrets.token_hex(12)}"},
    }


# The server ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    """One request the stand-in answered."""

    method: str
    path: str
    kind: str  # "token", "signals", "sandbox" or "other"
    status: int
    at_s: float


@dataclass(slots=True)
class _Fault:
    status: int
    retry_after: str | None = None
    body: bytes | None = None
    hang_s: float = 0.0


def _kind(path: str) -> str:
    return {TOKEN_PATH: "token", SIGNALS_PATH: "signals", SANDBOX_PATH: "sandbox"}.get(
        path, "other"
    )


class RteStandIn:
    """RTE's token and Ecowatt v5 signals endpoints on ``127.0.0.1``."""

    def __init__(
        self,
        *,
        client_id: str = "standin-client",
        client_secret: str = "standin-secret",
        host: str = "127.0.0.1",
        port: int = 0,
        clock: StandInClock | None = None,
        token_ttl_s: float = 7200.0,
        rate_limit_s: float = 900.0,
        retry_after: bool = True,
        require_grant_type: bool = True,
        tz: tzinfo = PARIS,
    ) -> None:
        if not ipaddress.ip_address(host).is_loopback:
            raise ValueError(f"the RTE stand-in listens on loopback only, not {host!r}")
        self.client_id = client_id
        self.client_secret = client_secret
        self.host = host
        self._port = port
        self.clock: StandInClock = clock or SystemTime()
        self.token_ttl_s = token_ttl_s
        self.rate_limit_s = rate_limit_s
        self.retry_after = retry_after
        self.require_grant_type = require_grant_type
        self.tz = tz
        self.reject_tokens = False
        self._signals: dict[str, Any] | None = None
        self._tokens: dict[str, float] = {}
        self._faults: dict[str, deque[_Fault]] = {"token": deque(), "signals": deque()}
        self._last_ok_s: float | None = None
        self._lock = threading.Lock()
        self.requests: list[RecordedRequest] = []
        self.issued_tokens: list[str] = []
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # Lifecycle -------------------------------------------------------------------
    @property
    def port(self) -> int:
        """The TCP port; kept after ``stop()`` (RTE "down": connections refused there)."""
        if self._server is not None:
            return int(self._server.server_address[1])
        if self._port:
            return self._port
        raise RuntimeError("the stand-in has not started yet")

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def token_url(self) -> str:
        return self.base_url + TOKEN_PATH

    @property
    def signals_url(self) -> str:
        return self.base_url + SIGNALS_PATH

    @property
    def sandbox_url(self) -> str:
        return self.base_url + SANDBOX_PATH

    def start(self) -> Self:
        if self._server is not None:
            raise RuntimeError("the stand-in is already running")
        server = _Server((self.host, self._port), _Handler)
        server.standin = self
        self._server = server
        self._port = self.port  # keep the port: a restart comes back on it
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="rte-standin",
            daemon=True,
        )
        self._thread.start()
        log.info("rte_standin_started", url=self.base_url)
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        log.info("rte_standin_stopped")

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # What it serves ----------------------------------------------------------------
    def set_signals(self, body: dict[str, Any] | None) -> None:
        """Serve ``body`` (see ``make_signals``); None: four normal days from today."""
        with self._lock:
            self._signals = body

    def signals_body(self) -> dict[str, Any]:
        with self._lock:
            if self._signals is not None:
                return self._signals
        return make_signals(self.clock.now().astimezone(self.tz).date(), tz=self.tz)

    # Faults ----------------------------------------------------------------------
    def fail_next(
        self,
        status: int = 500,
        *,
        times: int = 1,
        kind: str = "signals",
        retry_after: str | int | None = None,
        body: dict[str, Any] | bytes | None = None,
    ) -> None:
        """Answer the next ``times`` requests of ``kind`` ("signals" or "token") with ``status``."""
        raw = body if isinstance(body, bytes | None) else json.dumps(body).encode()
        with self._lock:
            for _ in range(times):
                self._faults[kind].append(
                    _Fault(status, None if retry_after is None else str(retry_after), raw)
                )

    def hang_next(self, seconds: float, *, times: int = 1, kind: str = "signals") -> None:
        """Hold the next answers ``seconds`` (real time) before a normal reply."""
        with self._lock:
            for _ in range(times):
                self._faults[kind].append(_Fault(0, hang_s=seconds))

    def expire_tokens(self) -> None:
        """Every token issued so far becomes stale (RTE restarted its gateway, say)."""
        with self._lock:
            self._tokens.clear()

    def count(self, kind: str | None = None, status: int | None = None) -> int:
        with self._lock:
            return sum(
                1
                for r in self.requests
                if (kind is None or r.kind == kind) and (status is None or r.status == status)
            )

    # Request handling (the server's threads) ------------------------------------------
    def _record(self, method: str, path: str, status: int) -> None:
        with self._lock:
            self.requests.append(
                RecordedRequest(method, path, _kind(path), status, self.clock.monotonic())
            )

    def _next_fault(self, kind: str) -> _Fault | None:
        with self._lock:
            queue = self._faults.get(kind)
            return queue.popleft() if queue else None

    def handle(
        self, method: str, path: str, headers: Mapping[str, str], body: bytes
    ) -> tuple[int, dict[str, str], bytes]:
        """One request to ``(status, headers, body)``; thread-safe."""
        kind = _kind(path)
        if kind == "other":
            return 404, {}, json.dumps({"error": "NOT_FOUND"}).encode()
        fault = self._next_fault("token" if kind == "token" else "signals")
        if fault is not None and fault.hang_s > 0:
            time.sleep(fault.hang_s)
            fault = None
        if fault is not None:
            extra = {"Retry-After": fault.retry_after} if fault.retry_after else {}
            raw = fault.body if fault.body is not None else json.dumps(
                error_envelope() if fault.status >= 500 else {"error": f"HTTP_{fault.status}"}
            ).encode()
            return fault.status, extra, raw
        if kind == "token":
            return self._token(method, headers, body)
        return self._signals_answer(method, kind, headers)

    def _token(
        self, method: str, headers: Mapping[str, str], body: bytes
    ) -> tuple[int, dict[str, str], bytes]:
        if method != "POST":
            return 405, {"Allow": "POST"}, b'{"error":"method_not_allowed"}'
        expected = base64.b64encode(f"{self.client_id}:{self.client_secret}".encode()).decode()
        if headers.get("authorization", "") != f"Basic {expected}":
            raw = {"error": "invalid_client", "error_description": "Client authentication failed"}
            return 401, {"WWW-Authenticate": 'Basic realm="RTE"'}, json.dumps(raw).encode()
        form = parse_qs(body.decode("utf-8", "replace"))
        grant = form.get("grant_type", [None])[0]
        if grant != "client_credentials" and (self.require_grant_type or grant is not None):
            raw = {"error": "unsupported_grant_type",
                   "error_description": "grant_type must be client_credentials"}
            return 400, {}, json.dumps(raw).encode()
        token = secrets.token_urlsafe(39)
        with self._lock:
            self._tokens[token] = self.clock.monotonic() + self.token_ttl_s
            self.issued_tokens.append(token)
        return 200, {}, token_json(token, max(1, int(self.token_ttl_s) - 1))

    def _signals_answer(
        self, method: str, kind: str, headers: Mapping[str, str]
    ) -> tuple[int, dict[str, str], bytes]:
        if method != "GET":
            return 405, {"Allow": "GET"}, b'{"error":"method_not_allowed"}'
        now = self.clock.monotonic()
        auth = headers.get("authorization", "")
        token = auth.removeprefix("Bearer ") if auth.startswith("Bearer ") else ""
        with self._lock:
            expires = self._tokens.get(token)
            valid = expires is not None and now < expires and not self.reject_tokens
        if not valid:
            raw = {"error": "invalid_token",
                   "error_description": "The access token is missing, invalid or expired"}
            return 401, {"WWW-Authenticate": 'Bearer error="invalid_token"'}, json.dumps(
                raw).encode()
        if kind == "signals":
            with self._lock:
                last = self._last_ok_s
                allowed_at = None if last is None else last + self.rate_limit_s + 1.0
                if allowed_at is not None and now < allowed_at:
                    extra = (
                        {"Retry-After": str(math.ceil(allowed_at - now))}
                        if self.retry_after else {}
                    )
                    raw = error_envelope("TOO_MANY_REQUESTS", "One call per quarter is allowed")
                    return 429, extra, json.dumps(raw).encode()
                self._last_ok_s = now
        body = json.dumps(self.signals_body(), separators=(",", ":")).encode()
        return 200, {}, body


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    standin: RteStandIn

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that timed out and hung up is not the stand-in's fault.
        log.debug("rte_standin_connection_error", client=str(client_address))


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # One segment per answer, sent at once: without these, Nagle and delayed ACKs
    # add ~40 ms to every request on a kept-alive connection.
    disable_nagle_algorithm = True
    wbufsize = 64 * 1024
    server: _Server

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length > 0 else b""
        path = urlsplit(self.path).path
        headers = {k.lower(): v for k, v in self.headers.items()}
        standin = self.server.standin
        status, extra, raw = standin.handle(self.command, path, headers, body)
        standin._record(self.command, path, status)
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.send_header("Date", format_datetime(standin.clock.now(), usegmt=True))
        for key, value in extra.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(raw)

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("rte_standin_request", line=format % args)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ems.rte_standin",
                                     description="RTE Ecowatt v5 stand-in on loopback")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--client-id", default="standin-client")
    parser.add_argument("--client-secret", default="standin-secret")
    parser.add_argument("--rate-limit-s", type=float, default=900.0)
    args = parser.parse_args(argv)
    standin = RteStandIn(client_id=args.client_id, client_secret=args.client_secret,
                         port=args.port, rate_limit_s=args.rate_limit_s)
    with standin:
        print(f"token_url = {standin.token_url!r}\nsignals_url = {standin.signals_url!r}",
              flush=True)
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            return 0
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

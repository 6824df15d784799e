"""``WebServer``: the operator app under uvicorn, as a task of the coordinator.

Run in the coordinator's own event loop (its ``TaskGroup``), so handlers read
the live state directly. The socket is bound here, not by uvicorn: a port in
use is then an ``OSError`` we log, where uvicorn would call ``sys.exit``.
uvicorn's signal capture is turned off: the service (``runtime.service``)
owns SIGINT and SIGTERM and stops the server through ``stop()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Generator

import structlog
import uvicorn
from fastapi import FastAPI

from central.config import WebSettings

log = structlog.get_logger("central.web")
GRACEFUL_S = 3


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        # The coordinator handles signals; uvicorn would replace its handlers.
        yield


class WebServer:
    """Serves ``app`` on ``settings.host:settings.port`` until ``stop()``."""

    def __init__(self, app: FastAPI, settings: WebSettings) -> None:
        self.app = app
        self.settings = settings
        self.port: int | None = None
        self.started = asyncio.Event()
        config = uvicorn.Config(
            app,
            log_config=None,
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=GRACEFUL_S,
            server_header=False,
        )
        self._server = _Server(config)

    def _bind(self) -> socket.socket:
        host, port = self.settings.host, self.settings.port
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            sock.close()
            raise
        sock.setblocking(False)
        return sock

    async def serve(self) -> None:
        """Bind, serve until ``stop()``; logs and returns on failure (never raises)."""
        host = self.settings.host
        try:
            sock = self._bind()
        except OSError as exc:
            log.error("web_not_started", host=host, port=self.settings.port, error=str(exc))
            self.app.state.web.close()
            return
        self.port = sock.getsockname()[1]
        # serve() is awaited here, not in a task of its own: a SystemExit raised
        # in a task escapes the event loop and ends the process.
        announce = asyncio.create_task(self._announce(), name="web-announce")
        try:
            await self._server.serve(sockets=[sock])
        except (Exception, SystemExit):
            # uvicorn may sys.exit() on a failed start-up: the coordinator goes on.
            log.exception("web_failed")
        finally:
            announce.cancel()
            sock.close()
            self.app.state.web.close()
            log.info("web_stopped")

    async def _announce(self) -> None:
        while not self._server.started:
            await asyncio.sleep(0.01)
        log.info("web_started", url=f"http://{self.settings.host}:{self.port}/",
                 admin=self.settings.admin_token is not None)
        self.started.set()

    def stop(self) -> None:
        """End the event streams and ask the server to stop (it finishes open requests)."""
        self.app.state.web.close_streams()
        self._server.should_exit = True

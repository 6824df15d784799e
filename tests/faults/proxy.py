"""An asyncio TCP proxy that breaks the link between two brokers on purpose.

``TcpProxy(target_port)`` listens on 127.0.0.1 and a free port and forwards
each connection to ``127.0.0.1:target_port``. ``set_mode`` changes what the
link does, for the connections open and those to come:

- ``pass``: forward both ways;
- ``drop``: close both sides (FIN), and close every new connection at once;
- ``reset``: abort both sides with an RST (``SO_LINGER`` 0), and new ones too;
- ``delay``: forward each chunk ``delay_ms`` late (order kept per direction);
- ``blackhole``: accept and read, forward nothing (a silent partition: only
  MQTT keepalive notices it). A connection that lost bytes this way is reset
  when the link passes again, as its stream is no longer whole.

Loopback only, and it stops by itself with the test's event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from dataclasses import dataclass, field
from enum import StrEnum

HOST = "127.0.0.1"


class Mode(StrEnum):
    PASS = "pass"
    DROP = "drop"
    RESET = "reset"
    DELAY = "delay"
    BLACKHOLE = "blackhole"


@dataclass(eq=False)
class _Link:
    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter | None = None
    lossy: bool = False  # bytes were swallowed: the stream is broken for good
    tasks: list[asyncio.Task[None]] = field(default_factory=list)


def _abort(writer: asyncio.StreamWriter | None) -> None:
    """Close with an RST instead of a FIN."""
    if writer is None:
        return
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


def _close(writer: asyncio.StreamWriter | None) -> None:
    if writer is not None:
        writer.close()


class TcpProxy:
    """One listening port in front of ``127.0.0.1:target_port``."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.mode = Mode.PASS
        self.delay_s = 0.0
        self.port = 0
        self.accepted = 0
        self.forwarded_bytes = 0
        self.swallowed_bytes = 0
        self._links: set[_Link] = set()
        self._server: asyncio.Server | None = None

    async def start(self) -> TcpProxy:
        self._server = await asyncio.start_server(self._accept, HOST, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for link in list(self._links):
            self._end(link, abort=True)

    def set_mode(self, mode: Mode | str, delay_ms: float = 0.0) -> None:
        mode = Mode(mode)
        self.mode = mode
        self.delay_s = delay_ms / 1000.0
        for link in list(self._links):
            if mode is Mode.DROP:
                self._end(link, abort=False)
            elif mode is Mode.RESET or (mode is Mode.PASS and link.lossy):
                self._end(link, abort=True)

    @property
    def connections(self) -> int:
        return len(self._links)

    def _end(self, link: _Link, *, abort: bool) -> None:
        for writer in (link.client, link.upstream):
            (_abort if abort else _close)(writer)
        for task in link.tasks:
            task.cancel()
        self._links.discard(link)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        link = _Link(writer)
        mode = self.mode
        if mode is Mode.DROP:
            _close(writer)
            return
        if mode is Mode.RESET:
            _abort(writer)
            return
        self._links.add(link)
        try:
            if mode is Mode.BLACKHOLE:
                link.lossy = True
                await self._swallow(reader)
                return
            try:
                up_reader, link.upstream = await asyncio.open_connection(HOST, self.target_port)
            except OSError:
                _abort(writer)
                return
            link.tasks = [
                asyncio.create_task(self._pump(reader, link.upstream, link)),
                asyncio.create_task(self._pump(up_reader, writer, link)),
            ]
            await asyncio.gather(*link.tasks, return_exceptions=True)
        finally:
            if link in self._links:
                self._end(link, abort=False)

    async def _swallow(self, reader: asyncio.StreamReader) -> None:
        with contextlib.suppress(OSError, asyncio.CancelledError):
            while chunk := await reader.read(65536):
                self.swallowed_bytes += len(chunk)

    async def _pump(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter,
                    link: _Link) -> None:
        try:
            while chunk := await src.read(65536):
                mode = self.mode
                if mode is Mode.BLACKHOLE:
                    link.lossy = True
                    self.swallowed_bytes += len(chunk)
                    continue
                if mode is Mode.DELAY and self.delay_s > 0:
                    await asyncio.sleep(self.delay_s)
                dst.write(chunk)
                await dst.drain()
                self.forwarded_bytes += len(chunk)
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            # One side is done: so is the link (MQTT has no half-closed use).
            if link in self._links:
                self._end(link, abort=False)

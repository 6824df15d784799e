"""``EventHub``: the coordinator's events to the operator page, as server-sent events.

The coordinator calls its listeners synchronously from its consumer, so the
hub's listener only builds one small summary, encodes it once and offers the
same bytes to every client with ``put_nowait``. Each client has a bounded
queue: a client that does not keep up is dropped (its queue is emptied and its
stream ends; a browser's ``EventSource`` reconnects and re-reads the state), so
no client can make the coordinator wait or grow its memory. Per-site
decisions are never pushed (a cycle may have 100k): the page re-reads
``/api/sites`` when a cycle closes.

Frames follow the WHATWG HTML "server-sent events" format: ``event:``,
``data:`` (one line of JSON), a blank line; ``:`` lines are comments, sent as
keep-alives so proxies do not close an idle stream.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
import structlog

from protocol.models import dump, format_utc

log = structlog.get_logger("central.web")

RETRY_MS = 3000
KEEPALIVE_S = 15.0


class _Client:
    __slots__ = ("gone", "queue")

    def __init__(self, size: int) -> None:
        self.queue: asyncio.Queue[bytes | None] = asyncio.Queue(size)
        self.gone = False


def frame(event: str, data: Any) -> bytes:
    """One SSE frame (JSON never contains a raw newline, so one ``data:`` line)."""
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


class EventHub:
    """Fans coordinator and grid events out to the connected pages."""

    def __init__(self, queue_size: int, *, keepalive_s: float = KEEPALIVE_S) -> None:
        self.queue_size = queue_size
        self.keepalive_s = keepalive_s
        self._clients: set[_Client] = set()
        self.closed = False
        self.sent = 0
        self.dropped = 0

    @property
    def clients(self) -> int:
        return len(self._clients)

    # Producers (on the coordinator's loop, must return at once) -----------------
    def publish(self, event: str, data: Any) -> None:
        if not self._clients:
            return
        payload = frame(event, data)
        for client in list(self._clients):
            try:
                client.queue.put_nowait(payload)
            except asyncio.QueueFull:
                self.dropped += 1
                log.warning("web_client_dropped", reason="slow", queue=self.queue_size)
                self._end(client)
        self.sent += 1

    def on_coordinator_event(self, event: str, data: Any) -> None:
        """The coordinator's listener (``add_listener``)."""
        if not self._clients:
            return
        if event == "cycle_opened":
            oc = data
            self.publish(event, {
                "cycle": oc.cycle_id,
                "surplus_kw": oc.cycle.context.surplus_kw,
                "sites": len(oc.cycle.context.sites),
                "reply_by": format_utc(oc.reply_by),
            })
        elif event == "allocations":
            oc, decisions = data
            self.publish(event, {
                "cycle": oc.cycle_id,
                "decisions": len(decisions),
                "alloc_kw": round(sum(d.alloc_kw for d in decisions), 6),
                "allocated_kw": round(oc.cycle.allocated_kw, 6),
                "replies": oc.cycle.replies,
            })
        elif event == "cycle_closed":
            oc, closed = data
            self.publish(event, {"cycle_id": oc.cycle_id, **dump(closed)})
        elif event == "shadow":
            # One cycle's shadow rows (central/shadow.py): a few strategies, small.
            cycle_id, rows = data
            self.publish(event, {"cycle": cycle_id, "scores": [
                {"strategy": r.strategy, "status": r.status, "share": r.share,
                 "usable_share": r.usable_share, "jain": r.jain, "fallback": r.fallback}
                for r in rows
            ]})

    def grid_listener(self, now: Callable[[], Any]) -> Callable[[], None]:
        """The grid service's listener: tells the pages to re-read ``/api/grid``."""

        def changed() -> None:
            if self._clients:
                self.publish("grid", {"at": format_utc(now())})

        return changed

    # Consumers ------------------------------------------------------------------
    async def stream(self) -> AsyncIterator[bytes]:
        """One client's stream, until it goes, is dropped, or the hub closes."""
        if self.closed:
            return
        client = _Client(self.queue_size)
        self._clients.add(client)
        log.info("web_client_connected", clients=len(self._clients))
        try:
            yield f"retry: {RETRY_MS}\n\n".encode()
            yield frame("hello", {"clients": len(self._clients)})
            while not client.gone:
                try:
                    item = await asyncio.wait_for(client.queue.get(), self.keepalive_s)
                except TimeoutError:
                    yield b": keep-alive\n\n"
                    continue
                if item is None:
                    break
                yield item
        finally:
            self._clients.discard(client)
            log.info("web_client_disconnected", clients=len(self._clients))

    def _end(self, client: _Client) -> None:
        self._clients.discard(client)
        client.gone = True
        while not client.queue.empty():
            client.queue.get_nowait()
        client.queue.put_nowait(None)

    def close(self) -> None:
        """End every stream (the server is stopping: it waits for open responses)."""
        self.closed = True
        for client in list(self._clients):
            self._end(client)

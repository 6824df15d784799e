"""The operator page's event hub: bounded per client, a slow client is dropped."""

from __future__ import annotations

import asyncio

import orjson

from central.web.events import EventHub, frame


def test_frame_is_one_sse_event() -> None:
    data = frame("cycle_closed", {"cycle": "2026-06-21T12:00:00Z", "text": "a\nb"})
    event, payload, end = data.split(b"\n", 2)
    assert event == b"event: cycle_closed"
    assert orjson.loads(payload.removeprefix(b"data: "))["text"] == "a\nb"
    assert end == b"\n"


def test_slow_client_is_dropped_and_the_producer_never_waits() -> None:
    async def scenario() -> None:
        hub = EventHub(queue_size=3, keepalive_s=60)
        slow = hub.stream()
        assert (await anext(slow)).startswith(b"retry:")
        assert b"hello" in await anext(slow)
        assert hub.clients == 1
        for i in range(10):  # never blocks, never raises
            hub.publish("grid", {"i": i})
        assert hub.dropped == 1 and hub.clients == 0
        # The dropped client's stream ends at its next read.
        rest = [chunk async for chunk in slow]
        assert rest == []

    asyncio.run(scenario())


def test_close_ends_every_stream() -> None:
    async def scenario() -> None:
        hub = EventHub(queue_size=8, keepalive_s=60)
        streams = [hub.stream() for _ in range(3)]
        for s in streams:
            await anext(s)
            await anext(s)
        hub.publish("grid", {"i": 1})
        hub.close()
        for s in streams:
            assert [chunk async for chunk in s] == []  # queued events are discarded
        assert hub.clients == 0

    asyncio.run(scenario())

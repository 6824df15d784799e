"""``RecordReader``: the operator page's reads of the records, off the event loop.

A read-only connection of its own (``Recorder.reader``: SQLite in WAL mode,
whose readers never wait for the writer, or a PostgreSQL session with
``default_transaction_read_only``), used from one thread of its own, so a slow
export never delays a cycle's commit, and the coordinator's recorder thread (which every decision
goes through before its ``alloc`` is published) never queues behind a page.
An in-memory database cannot be opened twice: then reads share the
coordinator's recorder and its thread.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from central.recorder import Recorder

T = TypeVar("T")


class RecordReader:
    """Runs ``fn(recorder, *args)`` on a read-only recorder in its own thread."""

    def __init__(
        self, recorder: Recorder, shared_run: Callable[..., Awaitable[Any]] | None = None
    ) -> None:
        self._shared = recorder.in_memory
        self._shared_run = shared_run
        self._recorder = recorder if self._shared else Recorder.reader(recorder.url)
        self._thread = (
            None if self._shared else ThreadPoolExecutor(1, thread_name_prefix="web-reader")
        )

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(recorder, *args)``, e.g. ``run(Recorder.cycle_history, since, until)``."""
        if self._thread is None:
            assert self._shared_run is not None, "an in-memory recorder needs its runner"
            result: T = await self._shared_run(fn, self._recorder, *args)
            return result
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._thread, fn, self._recorder, *args)

    def close(self) -> None:
        if self._thread is not None:
            self._thread.shutdown(wait=True)
            self._recorder.close()

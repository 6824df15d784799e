"""The last good Ecowatt answer on disk, served across restarts and RTE outages.

RTE publishes four days (J..J+3), so one good answer covers outages of hours
to days (reference/mosquitto-and-faults.md §3). The file holds RTE's body as
received, when it was fetched and from which URL::

    {"v": 1, "fetched_at": "2026-01-15T10:00:00Z", "url": "https://…/signals",
     "body": {"signals": [...]}}

Written atomically: a temporary file in the same directory, fsync, then
``os.replace`` over the old one and an fsync of the directory, so a crash or
a power cut leaves the old answer or the new one, never half of one. A
missing, unreadable or foreign (another URL) file is no cache, never an error.

Synchronous on purpose: the poller calls it through ``asyncio.to_thread``.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog

from protocol.models import format_utc

log = structlog.get_logger("central.ecowatt")


@dataclass(frozen=True, slots=True)
class CachedAnswer:
    """One good answer of RTE's and when it came."""

    body: dict[str, Any]
    fetched_at: datetime
    url: str


class SignalCache:
    """The cache file at ``path``."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)

    def load(self, url: str | None = None) -> CachedAnswer | None:
        """The cached answer, or None (missing, unreadable, or fetched from another URL)."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.warning("ecowatt_cache_unreadable", path=str(self.path), error=str(exc))
            return None
        try:
            data = json.loads(raw)
            body = data["body"]
            fetched_at = datetime.fromisoformat(data["fetched_at"]).astimezone(UTC)
            cached_url = str(data.get("url", ""))
            if not isinstance(body, dict):
                raise TypeError("body is not an object")
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("ecowatt_cache_corrupt", path=str(self.path), error=str(exc)[:200])
            return None
        if url is not None and cached_url != url:
            # Sandbox data must never be served as production data, nor the reverse.
            log.warning("ecowatt_cache_ignored", path=str(self.path), reason="another url",
                        cached_url=cached_url)
            return None
        return CachedAnswer(body, fetched_at, cached_url)

    def save(self, answer: CachedAnswer) -> None:
        """Replace the cache with ``answer``, atomically and durably."""
        data = {
            "v": 1,
            "fetched_at": format_utc(answer.fetched_at),
            "url": answer.url,
            "body": answer.body,
        }
        raw = json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        directory = self.path.parent
        directory.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=directory)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(raw)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        # The rename itself is durable only once the directory is synced.
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

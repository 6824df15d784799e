"""Hostile-input tests: the corpus and harnesses live in ``bench/fuzz`` (shared with the
long fuzz runs), so the repository root goes on ``sys.path`` as for the bench smoke tests."""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)


@pytest.fixture
def fast_tmp(tmp_path: Path) -> Iterator[Path]:
    """A directory in RAM when the machine has one (/dev/shm), else ``tmp_path``.

    The bulk runs commit to SQLite (synchronous=FULL) a few thousand times; on a
    tmpfs the commits are the same, only the disk's fsync is not paid.
    """
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        with tempfile.TemporaryDirectory(dir=shm, prefix="ems-hostile-") as tmp:
            yield Path(tmp)
    else:
        yield tmp_path

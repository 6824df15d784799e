"""Fixtures shared by every test directory.

``mosquitto``: one real Mosquitto for the whole session, on 127.0.0.1 and a free
port, from ``mosquitto/dev.conf`` (see ``ems.broker.EmbeddedBroker``), stopped by
its own process handle at the end. Integration tests need the real broker, so a
missing binary fails the run instead of skipping it.

``topic_root``: a fresh topic root per test, so no test sees another's retained
messages on the shared broker. Use it as ``protocol.Topics(community, root=...)``.

``postgres``, ``pg_url``, ``records_url``: a real PostgreSQL server for the
session, a fresh database per test, and a recorder URL on each backend (SQLite
and PostgreSQL); see ``tests/pg.py``.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from pg import pg_url, postgres, records_url  # noqa: F401  (PostgreSQL fixtures: tests/pg.py)

from ems.broker import BrokerNotFoundError, EmbeddedBroker


@pytest.fixture(scope="session")
def mosquitto() -> Iterator[EmbeddedBroker]:
    """A real mosquitto on 127.0.0.1 and a free port for the whole session."""
    try:
        broker = EmbeddedBroker(kind="mosquitto", host="127.0.0.1")
    except BrokerNotFoundError as exc:
        pytest.fail(
            f"integration tests need a real mosquitto broker: {exc}. "
            "Install it with `apt-get install mosquitto`.",
            pytrace=False,
        )
    with broker:
        yield broker


@pytest.fixture
def topic_root() -> str:
    """A topic root unique to this test, e.g. ``t3f9c01a2b4``."""
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture
def community_id() -> str:
    """The community id the tests use."""
    return "c1"

"""Fixtures of the fault tests (docs/reliability.md).

Each test starts its own real processes (harness.py) and, where it breaks a
broker, its own Mosquitto with persistence on in a temporary directory
(``central_broker``). Random fault points come from ``fault_rng``: its seed
is printed (pytest shows it with a failure) and can be replayed with
``EMS_FAULT_SEED=<seed>``.
"""

from __future__ import annotations

import os
import random
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from ems.broker import EmbeddedBroker

# The coordinator tests' simulated gateways (tests/integration/simgw.py).
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))

# Persistence on, saved every second: a SIGTERM saves everything, a SIGKILL
# loses what changed since the last save (faults §0.2).
PERSISTENT = "persistence true\nautosave_interval 1\n"


@pytest.fixture
def fault_rng(request: pytest.FixtureRequest) -> random.Random:
    seed = int(os.environ.get("EMS_FAULT_SEED") or random.SystemRandom().randrange(2**32))
    print(f"fault points: EMS_FAULT_SEED={seed} ({request.node.name})")
    return random.Random(seed)


@pytest.fixture
def central_broker() -> Iterator[EmbeddedBroker]:
    """The community's broker, this test's own: it may be restarted or killed."""
    broker = EmbeddedBroker(kind="mosquitto", host="127.0.0.1", extra_config=PERSISTENT)
    with broker:
        yield broker

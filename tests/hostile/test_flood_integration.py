"""One site floods 50,000 messages through a real Mosquitto while a cycle runs with 20
honest simulated sites (bench/fuzz/flood.py, the flooder in a process of its own).

Checked: the honest allocations are exactly what they are without the flood, the
coordinator stays alive and keeps counting, the flooder is throttled, quarantined
and its excess counted. The delays and rates are printed side by side with the run
without the flood (``-s`` shows them), never asserted."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from bench.fuzz.flood import FLOOD_SITE, compare, format_table

pytestmark = pytest.mark.integration

FLOOD = 50_000
HONEST = 20


@pytest.mark.timeout(300)
def test_a_flooding_site_does_not_change_the_honest_allocations(
    mosquitto: Any, topic_root: str, tmp_path: Path
) -> None:
    quiet, loud = asyncio.run(compare(mosquitto.host, mosquitto.port, tmp_path,
                                      flood_messages=FLOOD, honest=HONEST, root=topic_root))
    print("\n" + format_table(quiet, loud))
    expected = {f"h{i:02d}": pytest.approx(1.0 + 0.05 * i) for i in range(HONEST)}
    assert quiet.allocations == expected
    assert loud.allocations == quiet.allocations
    assert len(loud.delays_ms) == HONEST
    # Alive and consistent: nothing raised, every message counted.
    assert loud.errors == 0 and loud.callback_errors == 0
    assert loud.received >= FLOOD + 2 * (HONEST + 1)
    assert loud.close_reason in ("all_replied", "deadline")
    # The flood was dropped before decoding, counted, and the site quarantined.
    assert loud.dropped >= FLOOD - 1000
    assert loud.rejected["flood_throttled"] + loud.rejected["quarantined"] == loud.dropped
    assert loud.quarantined
    assert quiet.dropped == 0 and not quiet.quarantined
    assert FLOOD_SITE not in loud.allocations

"""A strategy's carried state survives a coordinator restart (recorder table ``strategy_states``).

fair_rotation's ledger decides who goes first; losing it at each restart would
hand the surplus back to the fastest responders. On both recorder backends.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from central.config import CycleSettings
from central.core import Cycle, Offer, get_strategy
from central.errors import RecorderError
from central.recorder import Recorder

AT = datetime(2026, 6, 21, 12, 15, tzinfo=UTC)


def test_fair_rotation_ledger_round_trips_through_the_recorder(records_url: str) -> None:
    url = records_url
    strategy = get_strategy("fair_rotation")
    cycle, _ = Cycle.open("c1", 3.0, ["a"], strategy, deadline_s=30.0)
    cycle.offer(Offer("a", "c1", 3.0, 1.0))
    state = cycle.settle({})
    assert state == {"ledger_kwh": {"a": 0.75}}
    rec = Recorder(url)
    assert rec.load_strategy_state("fair_rotation") == {}
    rec.save_strategy_state("fair_rotation", state, AT)
    rec.close()
    again = Recorder(url)  # a restart
    assert again.load_strategy_state("fair_rotation") == state
    assert again.load_strategy_state("milp") == {}
    with pytest.raises(RecorderError, match="not plain JSON"):
        again.save_strategy_state("x", {"bad": object()}, AT)
    again.close()


def test_strategy_options_are_checked_against_the_strategy() -> None:
    assert CycleSettings(strategy="milp", strategy_options={"time_limit_s": 0.5})
    with pytest.raises(ValueError, match="window_s"):
        CycleSettings(strategy="window", strategy_options={"window_s": -1.0})
    with pytest.raises(ValueError, match=r"strategy_options for .fifo."):
        CycleSettings(strategy="fifo", strategy_options={"window_s": 1.0})

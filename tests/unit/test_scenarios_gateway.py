"""The strategy benchmark's homes act as gateways do (ems/simulation/scenarios.py).

A simulated home replies and runs its loads with the gateway's own code
(``gateway.ems``): the same loads and allocation give the same set points in
``Reply.run`` as in a ``LocalEms``; ``gateway="switching"`` reproduces the
gateway before modulation (whole loads, replies with the configured min).
"""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime

import pytest

from ems.cli import main
from ems.simulation.scenarios import (
    Home,
    gateway_view,
    home_loads,
    load_spec,
    make_reply,
)
from gateway.ems import LocalEms

NOW = datetime(2026, 6, 21, 12, 0, tzinfo=UTC)
HOME = Home("home-01", pv_kwp=6.0, base_kw=0.3, water_heater_kw=2.4,
            heat_pump_kw=(1.2, 2.5), ev_kw=(1.4, 7.4))


def test_a_home_runs_what_its_local_ems_would_run() -> None:
    loads = [s for s in home_loads(HOME) if s is not None]
    reply = make_reply("home-01", 3.0, 1.0, [gateway_view(s, "modulating") for s in loads])
    for alloc_kw in (0.5, 1.3, 2.4, 3.0, 4.1, 6.66, 9.9, 20.0):
        ems = LocalEms(loads)
        for s in loads:
            ems.observe(s.id, 0.0, available=True, on=False)
        result = ems.accept_allocation(f"c{alloc_kw}", alloc_kw, 1, 900.0, 1.0, NOW)
        expected = dict(zip(result.loads, result.setpoints_kw, strict=True))
        assert reply.run(alloc_kw) == pytest.approx(expected), alloc_kw


def test_the_equipment_is_driven_as_configured_in_real_homes() -> None:
    loads = home_loads(HOME)
    assert loads.water_heater is not None and loads.water_heater.modulation == "none"
    assert loads.heat_pump is not None and loads.heat_pump.modulation == "continuous"
    assert loads.ev_charger is not None and loads.ev_charger.modulation == "steps"
    assert loads.ev_charger.steps_kw[:3] == (1.4, 1.63, 1.86)  # 1 A steps on one phase
    cable = home_loads(replace(HOME, ev_kw=(1.4, 3.7))).ev_charger
    assert cable is not None and cable.modulation == "none"  # a portable cable on a relay


def test_switching_gateways_offered_a_range_they_could_not_run() -> None:
    ev = load_spec("ev", "ev_charger", 1.4, 7.4, "steps", priority=1)
    before = make_reply("h", 0.0, 1.0, [gateway_view(ev, "switching")])
    after = make_reply("h", 0.0, 1.0, [gateway_view(ev, "modulating")])
    assert (before.loads[0].min_kw, before.loads[0].max_kw) == (1.4, 7.4)
    assert before.run(3.0) == {}  # a share between min and max ran nothing
    assert after.run(3.0) == pytest.approx({"ev": 2.78})  # the largest step within 3.0
    cable = load_spec("ev", "ev_charger", 1.4, 3.7)
    offer, _ = gateway_view(cable, "modulating")
    assert (offer.min_kw, offer.max_kw) == (3.7, 3.7)  # honest: whole, at its power


def test_the_bench_says_which_gateway_it_simulated(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["bench", "strategies", "--days", "1", "--json", "--scenario", "realistic",
            "--homes", "6", "--strategies", "fifo_min_power"]
    assert main([*argv, "--gateway", "switching"]) == 0
    before = json.loads(capsys.readouterr().out)
    assert main(argv) == 0
    after = json.loads(capsys.readouterr().out)
    assert (before["params"]["gateway"], after["params"]["gateway"]) == ("switching",
                                                                         "modulating")
    for data in (before, after):
        row = data["scenarios"]["realistic"]["strategies"]["fifo_min_power"]
        assert 0.0 <= row["share_usable"] <= row["share_usable_modulating"] + 1e-9

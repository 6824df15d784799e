"""Shedding and anticipation in the local EMS (pure)."""

from __future__ import annotations

from datetime import UTC, datetime

from gateway.ems import LoadSpec, LocalEms

NOW = datetime(2026, 1, 15, 16, 0, tzinfo=UTC)
H = 3600.0


def ems(*specs: LoadSpec, max_import_kw: float | None = None) -> LocalEms:
    e = LocalEms(list(specs), local_self_consumption=False, max_import_kw=max_import_kw)
    for s in specs:
        e.observe(s.id, 0.0, available=True, on=s.normally_on, power_kw=0.0)
    return e


WH = LoadSpec("wh", "water_heater", 2.0, 2.0, 2.0, shed_level=2, preheat_hours=1.0)
HP = LoadSpec("hp", "heat_pump", 1.5, 1.0, 2.0, shed_level=2, preheat_hours=1.0)
CUT = LoadSpec("cut", "generic", 1.0, 1.0, 1.0, shed_level=3, normally_on=True)


def test_a_storing_load_runs_ahead_of_a_window_that_will_cut_it() -> None:
    e = ems(WH, HP)
    window = [(2 * H, 4 * H, 3)]
    assert e.set_grid_outlook(1, window, 0.0) == []  # two hours ahead: not yet
    e.tick(0.0, None)
    assert not e.rt["wh"].on
    cmds = e.set_grid_outlook(1, window, 1.5 * H) + e.tick(1.5 * H, None)
    assert [(c.load, c.on, c.reason) for c in cmds] == [("wh", True, "local")]
    assert not e.rt["hp"].on  # a heat pump stores nothing: no anticipation
    cmds = e.set_grid_outlook(3, window, 2 * H) + e.tick(2 * H, None)
    assert [(c.load, c.on, c.reason) for c in cmds] == [("wh", False, "shed")]
    assert e.flex(2 * H, NOW).flex_kw == 0.0  # a shed load offers nothing


def test_anticipation_stays_within_the_contracted_import() -> None:
    e = ems(WH, max_import_kw=6.0)
    window = [(2 * H, 4 * H, 3)]
    e.set_grid_outlook(1, window, 1.5 * H)
    assert e.tick(1.5 * H, -5.0) == []  # importing 5 kW: 2 more would pass 6
    cmds = e.tick(1.6 * H, -3.0)
    assert [(c.load, c.on) for c in cmds] == [("wh", True)]


def test_a_cut_wired_load_runs_unless_shed_and_never_offers_flexibility() -> None:
    e = ems(CUT, WH)
    assert e.rt["cut"].on and e.rt["cut"].reason == "idle"
    assert [i.id for i in e.flex(0.0, NOW).loads] == ["wh"]
    cmds = e.set_grid_outlook(2, [], 10.0)
    assert [(c.load, c.on) for c in cmds] == [("wh", False)] or cmds == []
    assert e.rt["cut"].on  # level 2 < its shed level 3
    cmds = e.set_grid_outlook(3, [], 20.0)
    assert ("cut", False, "shed") in [(c.load, c.on, c.reason) for c in cmds]
    cmds = e.set_grid_outlook(1, [], 30.0)
    assert ("cut", True, "idle") in [(c.load, c.on, c.reason) for c in cmds]


def test_manual_beats_shedding() -> None:
    e = ems(WH)
    e.set_mode("wh", "force_on", 0.0)
    assert e.rt["wh"].on
    assert e.set_grid_outlook(3, [], 10.0) == []
    assert e.rt["wh"].on and e.rt["wh"].reason == "manual"

"""``ems bench strategies``: every registered strategy runs and reports its metrics (no timing)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from central.core import STRATEGIES
from ems.cli import main

METRICS = (
    "share_allocated",
    "share_usable",
    "injection_avoided_kwh",
    "injection_peak_kw",
    "jain_daily",
    "jain_all_days",
    "alloc_delay_mean_s",
    "alloc_delay_p95_s",
    "load_starts",
    "comfort_miss_kwh",
    "objectives",
    "pareto",
    "distance_to_ideal",
    "c_vs_fifo",
    "c_fifo_vs",
)


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, object]:
    assert main(["bench", "strategies", *argv]) == 0
    data: dict[str, object] = json.loads(capsys.readouterr().out)
    return data


def test_every_strategy_appears_with_its_metrics(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = _run(capsys, "--days", "1", "--json", "--homes", "12", "--plot", str(tmp_path))
    scenarios = data["scenarios"]
    assert isinstance(scenarios, dict)
    assert set(scenarios) == {"study", "realistic"}
    for scenario in scenarios.values():
        rows = scenario["strategies"]
        assert set(rows) == set(STRATEGIES)
        for row in rows.values():
            for key in METRICS:
                assert key in row
            assert 0.0 <= row["share_usable"] <= row["share_allocated"] + 1e-9 <= 1.0 + 1e-9
            assert len(row["objectives"]) == len(scenario["objectives"])
        assert scenario["front"], "a non-empty set of points has a non-empty Pareto front"
        assert rows["fifo"]["c_vs_fifo"] == 1.0  # a front weakly dominates itself
    figures = data["figures"]
    assert isinstance(figures, list) and len(figures) == 3
    assert all(Path(p).stat().st_size > 0 for p in figures)


def test_the_same_seed_gives_the_same_figures(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ("--days", "1", "--json", "--scenario", "study", "--strategies", "fifo,equal")
    first, second = _run(capsys, *argv), _run(capsys, *argv)
    assert first["scenarios"] == second["scenarios"]


def test_the_study_scenario_reproduces_the_simulators_fifo_share(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Day 1 of the study scenario is `ems simulate summer-day --seed 1` (40 cycles).
    bench = _run(capsys, "--days", "1", "--json", "--scenario", "study", "--strategies", "fifo")
    assert main(["simulate", "summer-day", "--json"]) == 0
    simulated = json.loads(capsys.readouterr().out)
    row = bench["scenarios"]["study"]["strategies"]["fifo"]  # type: ignore[index]
    assert row["share_allocated"] == pytest.approx(simulated["summary"]["mean_share"])


def test_scale_reports_every_strategy_at_every_size(capsys: pytest.CaptureFixture[str]) -> None:
    data = _run(capsys, "--scale", "10,50", "--json")
    rows = data["scale"]
    assert isinstance(rows, list)
    assert {(r["strategy"], r["sites"]) for r in rows} == {
        (name, n) for name in STRATEGIES for n in (10, 50)
    }
    for r in rows:
        assert r["seconds"] >= 0.0 and 0.0 <= r["gap"] <= 1.0
        if r["strategy"] in ("milp", "window"):
            assert r["method"] is not None


def test_table_output_has_one_row_per_strategy(capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main(["bench", "strategies", "--days", "1", "--scenario", "realistic", "--homes", "8"]) == 0
    )
    out = capsys.readouterr().out
    for name in STRATEGIES:
        assert any(line.strip().startswith(name + " ") for line in out.splitlines())

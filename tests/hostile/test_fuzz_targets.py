"""The standalone fuzz entry points (bench/fuzz/coordinator.py, gateway.py) run: the
deterministic corpus mode, the seed writer, and a short atheris run of each side."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, check=False)


@pytest.mark.parametrize("side", ["coordinator", "gateway"])
def test_the_corpus_mode_reports_what_it_refused(side: str) -> None:
    done = run(f"bench.fuzz.{side}", "--cases", "2000", "--seed", "3", "--json")
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["side"] == side and report["cases"] == 2000 and report["corpus_version"] >= 1
    if side == "coordinator":
        assert report["stats"]["errors"] == 0 and sum(report["stats"]["rejected"].values()) > 0
    else:
        assert report["diagnostics"]["errors"] == 0 and report["diagnostics"]["rejected"]


@pytest.mark.skipif(importlib.util.find_spec("atheris") is None,
                    reason="atheris has wheels for CPython 3.11 on x86-64 Linux only")
@pytest.mark.parametrize("side", ["coordinator", "gateway"])
def test_a_short_atheris_run_finds_nothing(side: str, tmp_path: Path) -> None:
    seeds = tmp_path / "seeds"
    wrote = run(f"bench.fuzz.{side}", "--write-seeds", str(seeds), "--cases", "200")
    assert wrote.returncode == 0, wrote.stderr[-2000:]
    assert len(list(seeds.iterdir())) == 200
    done = run(f"bench.fuzz.{side}", "--atheris", "-atheris_runs=1500", "-max_len=4096",
               str(seeds), timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Done 1500 runs" in done.stderr or "Done 1500" in done.stderr

"""The operator's commands on real files: check-config, cycles, and the services' exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from central.core.cycle import Decision
from central.recorder import Recorder, ReplyRow
from ems.cli import main


def write(tmp_path: Path, text: str, name: str = "central.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_check_config_accepts_a_valid_coordinator_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, '[community]\nid = "c1"\n[cycle]\nperiod_s = 300\n')
    assert main(["check-config", str(path)]) == 0
    assert "valid central configuration (community c1)" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('[community]\nid = "c1"\n[cycle]\nperod_s = 3\n', "[cycle] perod_s: unknown key"),
        ('[community]\nid = "C1!"\n', "[community] id"),
        ('[community]\nid = "c1"\n[mqtt]\nport = 70000\n', "[mqtt] port"),
        ('[community]\nid = "c1"\n[cycle]\nstrategy = "best"\n', "unknown strategy 'best'"),
        ('[community]\nid = "c1"\n[cycle]\nperiod_s = 60\nreply_timeout_s = 90\n',
         "reply_timeout_s (90.0) must be shorter than period_s"),
        ("[mqtt]\nport = 1883\n", "[community]"),
        ('[community\nid = "c1"\n', "(syntax)"),
    ],
)
def test_check_config_names_the_bad_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, expected: str
) -> None:
    path = write(tmp_path, text)
    assert main(["check-config", str(path)]) == 78
    err = capsys.readouterr().err
    assert expected in err
    assert str(path) in err


def test_check_config_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", str(tmp_path / "nope.toml")]) == 78
    assert "not found" in capsys.readouterr().err


def test_services_exit_78_on_a_bad_config(tmp_path: Path) -> None:
    path = write(tmp_path, '[community]\nid = "c1"\n[mqtt]\nhots = "x"\n')
    for module in ("central", "gateway"):
        proc = subprocess.run(
            [sys.executable, "-m", module, "--config", str(path)],
            capture_output=True, text=True, timeout=60,
        )
        assert proc.returncode == 78, proc.stderr
        assert "hots" in proc.stderr


def test_cycles_prints_the_recorded_cycles(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path / 'records.sqlite'}"
    rec = Recorder(url)
    epoch = rec.next_epoch()
    for hour, surplus in ((12, 30.0), (13, -7.0)):
        cycle = datetime(2026, 6, 21, hour, 0, tzinfo=UTC)
        rec.open_cycle(cycle, "c1", epoch, "fifo", cycle, surplus, 3, 3, None)
        if surplus > 0:
            rec.record_step(
                cycle, epoch,
                [ReplyRow("s1", 1.5, 20.0, "accepted"), ReplyRow("s2", 2.0, 15.0, "accepted")],
                [Decision("s1", 20.0, 1, 20.0, 1.5), Decision("s2", 10.0, 2, 15.0, 2.0)],
            )
            rec.close_cycle(cycle, "exhausted", cycle, 30.0, 2)
        else:
            rec.close_cycle(cycle, "no_surplus", cycle, 0.0, 0)
    rec.close()

    assert main(["cycles", "--db", url, "--last", "5", "--json", "--decisions"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [row["cycle"] for row in out] == ["2026-06-21T12:00:00Z", "2026-06-21T13:00:00Z"]
    assert out[0]["close"] == "exhausted" and out[0]["used"] == "100.0%"
    assert [d["alloc_kw"] for d in out[0]["decisions"]] == [20.0, 10.0]
    assert out[1]["close"] == "no_surplus" and out[1]["used"] == "-"

    assert main(["cycles", "--db", url, "--last", "1"]) == 0
    table = capsys.readouterr().out
    assert "2026-06-21T13:00:00Z" in table and "no_surplus" in table
    assert "2026-06-21T12:00:00Z" not in table

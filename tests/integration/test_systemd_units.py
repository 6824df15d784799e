"""The shipped systemd units and mosquitto drop-ins: valid for systemd, and saying what we rely on.

``systemd/ems-central.service`` and ``systemd/ems-gateway.service`` run the two
services; ``systemd/mosquitto-{central,edge}.conf`` are drop-ins for Debian's
``mosquitto.service`` (installed as ``/etc/systemd/system/mosquitto.service.d/ems.conf``).

Where ``systemd-analyze`` exists, every unit, and every drop-in on top of a copy
of Debian's ``mosquitto.service``, goes through ``systemd-analyze verify`` in a
temporary directory, with ``ExecStart`` pointing at an executable that exists
here (verify refuses a missing one). Verify only *warns* about an unknown key
and still exits 0, so any output fails the test. Without ``systemd-analyze`` the
same test falls back to a parse with ``configparser`` against the keys these
files may use. The key-by-key checks below run either way.
"""

from __future__ import annotations

import configparser
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from protocol.settings import EX_CONFIG

ROOT = Path(__file__).resolve().parents[2]
SYSTEMD = ROOT / "systemd"
SERVICES = {"ems-central.service": "ems-central", "ems-gateway.service": "ems-gateway"}
DROPINS = ("mosquitto-central.conf", "mosquitto-edge.conf")
UDEV_RULE = SYSTEMD / "99-phidget-1017.rules"
DEBIAN_MOSQUITTO_UNITS = (
    Path("/lib/systemd/system/mosquitto.service"),
    Path("/usr/lib/systemd/system/mosquitto.service"),
)
# Debian 12's mosquitto.service (2.0.11-1.2+deb12u2), for machines without the package.
DEBIAN_MOSQUITTO_STANDIN = """\
[Unit]
Description=Mosquitto MQTT Broker
After=network.target
Wants=network.target

[Service]
Type=notify
NotifyAccess=main
ExecStart=@EXEC@ -c /etc/mosquitto/mosquitto.conf
ExecReload=/bin/kill -HUP $MAINPID
Restart=on-failure

[Install]
WantedBy=multi-user.target
"""

# The keys these files may use, for the check without systemd-analyze.
KNOWN_KEYS = {
    "Unit": {"Description", "Documentation", "Wants", "Requires", "After", "Before"},
    "Service": {
        "Type", "User", "Group", "SupplementaryGroups", "ExecStart", "EnvironmentFile",
        "StateDirectory", "WorkingDirectory", "Restart", "RestartSec",
        "RestartPreventExitStatus", "KillSignal", "TimeoutStopSec", "LimitNOFILE",
        "NoNewPrivileges", "ProtectSystem", "ProtectHome", "PrivateTmp", "PrivateDevices",
        "DevicePolicy", "DeviceAllow", "ProtectKernelTunables", "ProtectKernelModules",
        "ProtectControlGroups", "RestrictAddressFamilies", "RestrictNamespaces",
        "LockPersonality", "ReadWritePaths",
    },
    "Install": {"WantedBy"},
}


def parse_unit(path: Path) -> configparser.RawConfigParser:
    """A unit file as sections of case-preserving keys (a repeated key: the last wins)."""
    cp = configparser.RawConfigParser(
        strict=False, delimiters=("=",), comment_prefixes=("#", ";"), interpolation=None
    )
    cp.optionxform = str  # type: ignore[assignment,method-assign]
    cp.read_string(path.read_text(encoding="utf-8"), source=str(path))
    return cp


def offline_problems(path: Path) -> list[str]:
    """What a parse finds wrong without systemd: unknown sections or keys, empty values."""
    problems = []
    try:
        cp = parse_unit(path)
    except configparser.Error as exc:
        return [f"{path.name}: {exc}"]
    for section in cp.sections():
        if section not in KNOWN_KEYS:
            problems.append(f"{path.name}: unknown section [{section}]")
            continue
        for key, value in cp.items(section):
            if key not in KNOWN_KEYS[section]:
                problems.append(f"{path.name}: unknown key {key} in [{section}]")
            elif not value.strip():
                problems.append(f"{path.name}: empty {key} in [{section}]")
    return problems


def seconds(value: str) -> float:
    """A systemd time span (``300``, ``5min``, ``2min 30s``) in seconds."""
    units = {"": 1, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600}
    parts = re.findall(r"(\d+)\s*([a-z]*)", value)
    assert parts, f"not a time span: {value!r}"
    return sum(int(n) * units[u] for n, u in parts)


def existing_executable(name: str) -> str:
    """The venv's console script of that name, else this Python (verify needs a real file)."""
    here = Path(sys.executable).parent / name
    return str(here) if here.exists() else (shutil.which(name) or sys.executable)


def with_exec(text: str, executable: str) -> str:
    """``text`` with each ExecStart's program replaced by ``executable``."""
    return re.sub(r"(?m)^(ExecStart=)(\S+)", lambda m: m.group(1) + executable, text)


def mosquitto_base_unit() -> str:
    """Debian's mosquitto.service if installed (its program made to exist), else a stand-in."""
    for path in DEBIAN_MOSQUITTO_UNITS:
        if path.exists():
            text = path.read_text(encoding="utf-8")
            program = re.search(r"(?m)^ExecStart=(\S+)", text)
            if program and not Path(program.group(1)).exists():
                text = with_exec(text, sys.executable)
            return text
    return DEBIAN_MOSQUITTO_STANDIN.replace("@EXEC@", sys.executable)


def verify(units: list[Path]) -> str:
    """``systemd-analyze verify`` output (stdout and stderr); an exit status != 0 is output too."""
    analyze = shutil.which("systemd-analyze")
    assert analyze is not None
    proc = subprocess.run(
        [analyze, "verify", "--man=no", *map(str, units)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    out = (proc.stdout + proc.stderr).strip()
    if proc.returncode != 0:
        out += f"\n(exit status {proc.returncode})"
    return out.strip()


def staged_service(tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    text = (SYSTEMD / name).read_text(encoding="utf-8")
    path.write_text(with_exec(text, existing_executable(SERVICES[name])), encoding="utf-8")
    return path


def staged_dropin(tmp_path: Path, dropin: str) -> Path:
    """A copy of mosquitto.service with ``dropin`` as its mosquitto.service.d/ems.conf."""
    unit = tmp_path / "mosquitto.service"
    unit.write_text(mosquitto_base_unit(), encoding="utf-8")
    (tmp_path / "mosquitto.service.d").mkdir()
    shutil.copyfile(SYSTEMD / dropin, tmp_path / "mosquitto.service.d" / "ems.conf")
    return unit


# systemd's own opinion (or the offline parse) ----------------------------------------


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_service_unit_verifies(tmp_path: Path, name: str) -> None:
    if shutil.which("systemd-analyze") is None:
        assert offline_problems(SYSTEMD / name) == []
        return
    out = verify([staged_service(tmp_path, name)])
    assert out == "", f"systemd-analyze verify {name}:\n{out}"


@pytest.mark.parametrize("dropin", DROPINS)
def test_mosquitto_dropin_verifies(tmp_path: Path, dropin: str) -> None:
    if shutil.which("systemd-analyze") is None:
        assert offline_problems(SYSTEMD / dropin) == []
        return
    out = verify([staged_dropin(tmp_path, dropin)])
    assert out == "", f"systemd-analyze verify mosquitto.service + {dropin}:\n{out}"


def test_verify_reports_an_unknown_key(tmp_path: Path) -> None:
    """The checks above are not vacuous: a misspelt key is caught, in a unit and a drop-in."""
    svc = tmp_path / "svc"
    svc.mkdir()
    bad_unit = staged_service(svc, "ems-gateway.service")
    bad_unit.write_text(
        bad_unit.read_text(encoding="utf-8").replace("TimeoutStopSec=", "TimeoutStopSecs="),
        encoding="utf-8",
    )
    dropin = tmp_path / "dropin"
    dropin.mkdir()
    base = staged_dropin(dropin, "mosquitto-edge.conf")
    bad_dropin = dropin / "mosquitto.service.d" / "ems.conf"
    bad_dropin.write_text(
        bad_dropin.read_text(encoding="utf-8").replace("KillSignal=", "KillSignals="),
        encoding="utf-8",
    )
    assert any("TimeoutStopSecs" in p for p in offline_problems(bad_unit))
    assert any("KillSignals" in p for p in offline_problems(bad_dropin))
    if shutil.which("systemd-analyze") is not None:
        assert "TimeoutStopSecs" in verify([bad_unit])
        assert "KillSignals" in verify([base])


@pytest.mark.parametrize("name", [*sorted(SERVICES), *DROPINS])
def test_offline_parse_is_clean(name: str) -> None:
    """The fallback check passes on the shipped files too (it runs here with systemd-analyze)."""
    assert offline_problems(SYSTEMD / name) == []


# What the units must say ---------------------------------------------------------------


def test_ex_config_is_what_the_units_refuse_to_restart_on() -> None:
    assert EX_CONFIG == 78
    for name in SERVICES:
        svc = parse_unit(SYSTEMD / name)["Service"]
        assert svc["Restart"] == "on-failure", name
        assert str(EX_CONFIG) in svc["RestartPreventExitStatus"].split(), name


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_service_unit_keys(name: str) -> None:
    unit = parse_unit(SYSTEMD / name)
    svc = unit["Service"]
    program = SERVICES[name]
    assert svc["Type"] == "exec"
    assert (svc["User"], svc["Group"]) == ("ems", "ems")
    assert svc["ExecStart"].split()[0] == f"/opt/ems/.venv/bin/{program}"
    config = svc["ExecStart"].split()[svc["ExecStart"].split().index("--config") + 1]
    assert config == f"/etc/ems/{program.removeprefix('ems-')}.toml"
    assert svc["StateDirectory"] == program
    assert svc["WorkingDirectory"] == f"/var/lib/{program}"
    assert svc["KillSignal"] == "SIGTERM"
    assert svc["ProtectSystem"] == "strict"
    # time-sync.target: ordered after, never pulled in (systemd.special(7)).
    assert "time-sync.target" in unit["Unit"]["After"].split()
    assert "time-sync.target" not in unit["Unit"].get("Wants", "").split()
    assert "mosquitto.service" in unit["Unit"]["After"].split()
    assert unit["Install"]["WantedBy"] == "multi-user.target"


def test_gateway_can_reach_the_usb_board() -> None:
    svc = parse_unit(SYSTEMD / "ems-gateway.service")["Service"]
    groups = set(re.findall(r'GROUP="([^"]+)"', UDEV_RULE.read_text(encoding="utf-8")))
    assert groups == {"ems"}
    assert groups <= {svc["Group"], *svc.get("SupplementaryGroups", "").split()}
    assert svc.get("PrivateDevices", "no") == "no"  # it would hide /dev/bus/usb
    assert svc["DevicePolicy"] == "closed"
    assert svc["DeviceAllow"].split() == ["char-usb_device", "rw"]


def test_state_paths_match_the_example_configs() -> None:
    """What the services write lies in their StateDirectory (writable under ProtectSystem)."""
    gw = tomllib.loads((ROOT / "examples" / "gateway.toml").read_text(encoding="utf-8"))
    central = tomllib.loads((ROOT / "examples" / "central.toml").read_text(encoding="utf-8"))
    gw_state = parse_unit(SYSTEMD / "ems-gateway.service")["Service"]["StateDirectory"]
    c_state = parse_unit(SYSTEMD / "ems-central.service")["Service"]["StateDirectory"]
    assert gw["state"]["dir"] == f"/var/lib/{gw_state}"
    assert central["recorder"]["url"].startswith(f"sqlite:////var/lib/{c_state}/")


@pytest.mark.parametrize("dropin", DROPINS)
def test_mosquitto_dropin_keys(dropin: str) -> None:
    unit = parse_unit(SYSTEMD / dropin)
    svc = unit["Service"]
    # SIGTERM saves mosquitto.db; SIGKILL loses the queue (faults §0.2).
    assert svc["KillSignal"] == "SIGTERM"
    assert seconds(svc["TimeoutStopSec"]) >= 60
    assert svc["Restart"] == "always"
    assert "3" in svc["RestartPreventExitStatus"].split()  # mosquitto's config error
    assert "ExecStart" not in svc  # Debian's ExecStart and ExecReload (SIGHUP) stay
    assert "time-sync.target" in unit["Unit"]["After"].split()
    assert "time-sync.target" not in unit["Unit"].get("Wants", "").split()
    assert "Requires" not in unit["Unit"]


def test_central_broker_may_hold_many_gateways() -> None:
    svc = parse_unit(SYSTEMD / "mosquitto-central.conf")["Service"]
    assert int(svc["LimitNOFILE"].split(":")[0]) >= 16384
    edge = parse_unit(SYSTEMD / "mosquitto-edge.conf")["Service"]
    assert seconds(edge["TimeoutStopSec"]) <= seconds(svc["TimeoutStopSec"])

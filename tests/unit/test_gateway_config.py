"""``GatewaySettings`` (gateway/config.py): a home's devices, loads and meter, validated.

A valid configuration uses each device family the product ships profiles for
(Shelly Gen2 and Gen1 plugs, the Shelly Pro 3EM meter, the Phidget 1017
relay board). Each invalid one must raise ``ConfigError`` whose ``problems``
name the key or the load at fault; environment variables
(``EMS_<SECTION>__<KEY>``) win over the file.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from gateway.config import GatewaySettings, load_gateway_settings
from gateway.profiles import (
    PhidgetDigitalOutput,
    ShellyGen1Switch,
    ShellyGen2Meter,
    ShellyGen2Switch,
)
from protocol.settings import ConfigError, load_settings

VALID_TOML = """
[community]
id = "c1"

[site]
id = "s042"
name = "Maison Martin"

[meter]
device = "grid"

[[devices]]
id = "grid"
profile = "shelly/pro-3em"
prefix = "shellypro3em-0cb815fcaf10"

[[devices]]
id = "plug-wh"
profile = "shelly/plus-plug-s"
prefix = "shellyplusplugs-e86beae8f4b4"

[[devices]]
id = "plug-ev"
profile = "shelly/plug-s"
prefix = "shellyplug-s-7c87ce65c1e2"

[[devices]]
id = "relays"
profile = "phidget/1017"
serial = 123456

[[loads]]
id = "wh"
kind = "water_heater"
device = "plug-wh"
nominal_kw = 2.2
min_on_s = 900
min_off_s = 600
max_starts_per_hour = 2
priority = 5

[[loads]]
id = "ev"
kind = "ev_charger"
device = "plug-ev"
nominal_kw = 2.3
capacity_kwh = 40
soc = 0.35
departure = 07:30:00

[[loads]]
id = "hp"
kind = "heat_pump"
device = "relays"
channel = 0
nominal_kw = 0.4
min_kw = 0.3
max_kw = 0.45
shed_level = 3
energized_means = "off"

[[loads]]
id = "fan"
device = "relays"
channel = 7
nominal_kw = 0.1
"""

BASE: dict[str, Any] = {
    "community": {"id": "c1"},
    "site": {"id": "s1"},
    "meter": {"device": "grid"},
    "devices": [
        {"id": "grid", "profile": "shelly/pro-3em", "prefix": "g"},
        {"id": "plug", "profile": "shelly/plus-plug-s", "prefix": "p"},
        {"id": "plug1", "profile": "shelly/plug-s", "prefix": "q"},
        {"id": "relays", "profile": "phidget/1017"},
    ],
    "loads": [{"id": "wh", "device": "plug", "nominal_kw": 2.0}],
}


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "gateway.toml"
    path.write_text(VALID_TOML)
    return path


def problems_of(**changes: Any) -> list[tuple[str, str]]:
    """Validate BASE with these sections replaced; the problems it raises."""
    data = copy.deepcopy(BASE)
    data.update(changes)
    with pytest.raises(ConfigError) as info:
        load_gateway_settings(None, env={}, **data)
    assert info.value.problems, "a ConfigError must list at least one problem"
    return info.value.problems


def test_a_valid_configuration_with_shelly_and_phidget_devices(config_file: Path) -> None:
    s = load_gateway_settings(config_file, env={})
    assert (s.community.id, s.site.id, s.site.name) == ("c1", "s042", "Maison Martin")
    models = {d.id: d.model for d in s.devices}
    assert isinstance(models["grid"], ShellyGen2Meter)
    assert isinstance(models["plug-wh"], ShellyGen2Switch)
    assert isinstance(models["plug-ev"], ShellyGen1Switch)
    assert isinstance(models["relays"], PhidgetDigitalOutput)
    assert models["relays"].channels == 8
    loads = {ld.id: ld for ld in s.loads}
    assert list(loads) == ["wh", "ev", "hp", "fan"]
    assert (loads["wh"].min_power_kw, loads["wh"].max_power_kw) == (2.2, 2.2)
    assert (loads["hp"].min_power_kw, loads["hp"].max_power_kw) == (0.3, 0.45)
    assert loads["hp"].energized_means == "off"
    assert loads["ev"].departure is not None and loads["ev"].departure.hour == 7
    assert s.meter.device == "grid"


def test_the_generic_loader_gives_the_same_settings(config_file: Path) -> None:
    direct = load_settings(GatewaySettings, config_file, env={})
    assert direct == load_gateway_settings(config_file, env={})


def test_the_environment_overrides_the_file_and_keeps_sibling_keys(config_file: Path) -> None:
    s = load_gateway_settings(config_file, env={"EMS_SITE__ID": "s777"})
    assert s.site.id == "s777"
    assert s.site.name == "Maison Martin"


def test_the_environment_overrides_keyword_overrides(config_file: Path) -> None:
    s = load_gateway_settings(config_file, env={"EMS_SITE__ID": "from-env"},
                              site={"id": "from-kwargs"})
    assert s.site.id == "from-env"


def test_keyword_overrides_merge_into_a_section(config_file: Path) -> None:
    s = load_gateway_settings(config_file, env={}, site={"id": "s9"})
    assert (s.site.id, s.site.name) == ("s9", "Maison Martin")


def test_an_invalid_environment_value_names_its_key(config_file: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_gateway_settings(config_file, env={"EMS_SITE__ID": "Not An Id"})
    assert [key for key, _ in info.value.problems] == ["[site] id"]
    assert str(config_file) in str(info.value)


def test_the_env_argument_replaces_the_process_environment(
    config_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EMS_SITE__ID", "from-process")
    assert load_gateway_settings(config_file, env={}).site.id == "s042"
    assert load_gateway_settings(config_file, env={"EMS_SITE__ID": "s5"}).site.id == "s5"
    import os

    assert os.environ["EMS_SITE__ID"] == "from-process"  # restored afterwards


def test_an_unknown_key_in_a_section_is_named(tmp_path: Path) -> None:
    path = tmp_path / "g.toml"
    path.write_text(VALID_TOML.replace('name = "Maison Martin"', 'nmae = "Maison Martin"'))
    with pytest.raises(ConfigError) as info:
        load_gateway_settings(path, env={})
    assert info.value.problems == [("[site] nmae", "unknown key")]


def test_an_unknown_key_in_a_load_is_named_with_its_index() -> None:
    problems = problems_of(loads=[{"id": "wh", "device": "plug", "nominal_kw": 2.0,
                                   "colour": "red"}])
    assert problems == [("[loads] 0.colour", "unknown key")]


def test_an_unknown_section_is_named() -> None:
    problems = problems_of(hvac={"on": True})
    assert [key for key, _ in problems] == ["hvac"]
    assert problems[0][1] == "unknown key"


def test_a_missing_section_is_named() -> None:
    data = copy.deepcopy(BASE)
    del data["site"]
    with pytest.raises(ConfigError) as info:
        load_gateway_settings(None, env={}, **data)
    assert any("site" in key for key, _ in info.value.problems)


def test_min_kw_above_max_kw_is_named() -> None:
    problems = problems_of(loads=[{"id": "wh", "device": "plug", "nominal_kw": 1.0,
                                   "min_kw": 1.5, "max_kw": 1.2}])
    assert len(problems) == 1
    key, msg = problems[0]
    assert key.startswith("[loads] 0")
    assert "wh" in msg and "min_kw" in msg and "max_kw" in msg


def test_an_unknown_profile_is_refused() -> None:
    devices = [*BASE["devices"], {"id": "x", "profile": "shelly/teapot", "prefix": "t"}]
    problems = problems_of(devices=devices)
    assert any(key.startswith("[devices] 4") and "shelly/teapot" in msg
               for key, msg in problems)


def test_a_shelly_without_its_mqtt_prefix_is_refused() -> None:
    devices = [*BASE["devices"], {"id": "x", "profile": "shelly/plug-s"}]
    problems = problems_of(devices=devices)
    assert any(key.startswith("[devices] 4") and "prefix" in msg for key, msg in problems)


# Cross references: each message names the load (or meter) and what is wrong.
CROSS_REFERENCE_CASES: dict[str, tuple[dict[str, Any], list[str]]] = {
    "unknown device": (
        {"loads": [{"id": "wh", "device": "nope", "nominal_kw": 2.0}]},
        ["wh", "unknown device", "nope"],
    ),
    "channel out of range on the 1017": (
        {"loads": [{"id": "hp", "device": "relays", "channel": 8, "nominal_kw": 0.3}]},
        ["hp", "channel 8", "0..7"],
    ),
    "channel out of range on a plug": (
        {"loads": [{"id": "wh", "device": "plug1", "channel": 1, "nominal_kw": 1.0}]},
        ["wh", "channel 1", "0..0"],
    ),
    "max_kw above the plug's rating": (
        {"loads": [{"id": "wh", "device": "plug", "nominal_kw": 2.0, "max_kw": 3.0}]},
        ["wh", "3.0", "2.5"],
    ),
    "nominal_kw above the relay's rating": (
        {"loads": [{"id": "hp", "device": "relays", "nominal_kw": 2.0}]},
        ["hp", "2.0", "0.46"],
    ),
    "two loads on one channel": (
        {"loads": [
            {"id": "hp", "device": "relays", "channel": 3, "nominal_kw": 0.3},
            {"id": "fan", "device": "relays", "channel": 3, "nominal_kw": 0.1},
        ]},
        ["hp", "fan", "channel 3"],
    ),
    "load on a meter": (
        {"loads": [{"id": "wh", "device": "grid", "nominal_kw": 1.0}]},
        ["wh", "grid", "no relay"],
    ),
    "meter not a meter": (
        {"meter": {"device": "plug"}},
        ["meter", "plug", "not a meter"],
    ),
    "meter device unknown": (
        {"meter": {"device": "ghost"}},
        ["meter", "ghost"],
    ),
    "device id used twice": (
        {"devices": [*BASE["devices"], {"id": "plug", "profile": "shelly/plug-s",
                                        "prefix": "z"}]},
        ["plug", "twice"],
    ),
    "load id used twice": (
        {"loads": [{"id": "wh", "device": "plug", "nominal_kw": 1.0},
                   {"id": "wh", "device": "plug1", "nominal_kw": 1.0}]},
        ["wh", "twice"],
    ),
}


@pytest.mark.parametrize("case", list(CROSS_REFERENCE_CASES))
def test_a_bad_cross_reference_is_refused_with_a_message_naming_it(case: str) -> None:
    changes, words = CROSS_REFERENCE_CASES[case]
    problems = problems_of(**changes)
    assert len(problems) == 1
    _, msg = problems[0]
    for word in words:
        assert word in msg, f"{word!r} not in {msg!r}"


@pytest.mark.parametrize(
    ("case", "key"),
    [
        ("unknown device", "[loads] 0.device"),
        ("load on a meter", "[loads] 0.device"),
        ("channel out of range on the 1017", "[loads] 0.channel"),
        ("channel out of range on a plug", "[loads] 0.channel"),
        ("max_kw above the plug's rating", "[loads] 0.max_kw"),
        ("nominal_kw above the relay's rating", "[loads] 0.max_kw"),
        ("two loads on one channel", "[loads] 1.channel"),
        ("meter not a meter", "[meter] device"),
        ("meter device unknown", "[meter] device"),
        ("device id used twice", "[devices] 4.id"),
        ("load id used twice", "[loads] 1.id"),
    ],
)
def test_a_bad_cross_reference_names_the_key_at_fault(case: str, key: str) -> None:
    changes, _ = CROSS_REFERENCE_CASES[case]
    assert [k for k, _ in problems_of(**changes)] == [key]


def test_a_contactor_lifts_the_relay_rating() -> None:
    loads = [{"id": "hp", "device": "relays", "nominal_kw": 3.0, "contactor": True}]
    s = load_gateway_settings(None, env={}, **{**BASE, "loads": loads})
    assert s.loads[0].max_power_kw == 3.0


def test_a_cut_wired_load_needs_a_relay_board() -> None:
    problems = problems_of(loads=[{"id": "wh", "device": "plug", "nominal_kw": 2.0,
                                   "energized_means": "off"}])
    assert [k for k, _ in problems] == ["[loads] 0.energized_means"]


def test_several_phidget_boards_each_need_a_serial() -> None:
    devices = [*BASE["devices"], {"id": "relays2", "profile": "phidget/1017", "serial": 7}]
    problems = problems_of(devices=devices)
    assert len(problems) == 1 and "serial" in problems[0][0]


def test_an_unknown_time_zone_is_named() -> None:
    problems = problems_of(ems={"grid_timezone": "Europe/Atlantis"})
    assert [k for k, _ in problems] == ["[ems] grid_timezone"]


def test_a_load_at_the_relay_rating_is_accepted() -> None:
    s = load_gateway_settings(
        None, env={}, **{**BASE, "loads": [
            {"id": "hp", "device": "relays", "channel": 7, "nominal_kw": 0.46},
            {"id": "wh", "device": "plug", "nominal_kw": 2.5},
        ]},
    )
    assert [ld.channel for ld in s.loads] == [7, 0]

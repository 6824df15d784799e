"""The load keys of modulation (gateway/config.py, docs/configuration.md "Modulating loads").

``modulation = "none" | "continuous" | "steps"`` with ``steps_kw`` or
``step_kw``: each bad combination is refused with the key named; a
modulating load needs a device that takes a set point (a go-e charger), not
a relay; ``[ems] allow_import_kw`` bounds the import an allocation may add.
"""

from __future__ import annotations

from typing import Any

import pytest

from gateway.app import spec_of
from gateway.config import GatewaySettings, load_gateway_settings
from protocol.settings import ConfigError

DEVICES = [
    {"id": "plug", "profile": "shelly/plus-plug-s", "prefix": "shellyplusplugs-e86beae8f4b4"},
    {"id": "wallbox", "profile": "go-e/home-plus-11kw", "prefix": "go-eCharger/012345",
     "phases": 1},
]


def settings(*loads: dict[str, Any], **sections: Any) -> GatewaySettings:
    return load_gateway_settings(
        None, env={}, community={"id": "c1"}, site={"id": "s1"}, devices=DEVICES,
        loads=list(loads), **sections,
    )


def problems(*loads: dict[str, Any]) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as info:
        settings(*loads)
    return info.value.problems


def ev(**keys: Any) -> dict[str, Any]:
    return {"id": "ev", "kind": "ev_charger", "device": "wallbox", "nominal_kw": 3.68, **keys}


def test_a_wallbox_in_whole_amps_gives_its_set_points() -> None:
    cfg = settings(ev(modulation="steps", min_kw=1.38, max_kw=3.68, step_kw=0.23))
    load = cfg.loads[0]
    assert load.setpoints_kw == tuple(round(a * 0.23, 2) for a in range(6, 17))
    spec = spec_of(load)
    assert (spec.modulation, spec.least_kw, spec.most_kw) == ("steps", 1.38, 3.68)


def test_explicit_steps_set_the_range_when_min_and_max_are_not_given() -> None:
    load = settings(ev(modulation="steps", steps_kw=[1.4, 2.8, 4.2])).loads[0]
    assert (load.min_power_kw, load.max_power_kw, load.setpoints_kw) == (1.4, 4.2,
                                                                         (1.4, 2.8, 4.2))


def test_a_continuous_load_and_the_import_allowance() -> None:
    cfg = settings(ev(modulation="continuous", min_kw=1.4, max_kw=7.0),
                   ems={"allow_import_kw": 0.2})
    assert cfg.ems.allow_import_kw == 0.2
    assert spec_of(cfg.loads[0]).least_kw == 1.4
    assert settings(ev()).ems.allow_import_kw == 0.0  # the default: never above A


@pytest.mark.parametrize(
    ("keys", "key", "words"),
    [
        ({"steps_kw": [1.4, 2.8]}, "[loads] 0.steps_kw", 'only with modulation = "steps"'),
        ({"modulation": "continuous", "step_kw": 0.23, "min_kw": 1.4, "max_kw": 3.7},
         "[loads] 0.step_kw", 'only with modulation = "steps"'),
        ({"modulation": "continuous"}, "[loads] 0.min_kw", "min_kw below max_kw"),
        ({"modulation": "steps"}, "[loads] 0.steps_kw", "either steps_kw"),
        ({"modulation": "steps", "steps_kw": [1.4], "step_kw": 0.23}, "[loads] 0.steps_kw",
         "not both"),
        ({"modulation": "steps", "steps_kw": [2.8, 1.4]}, "[loads] 0.steps_kw", "ascending"),
        ({"modulation": "steps", "steps_kw": [1.0, 2.0], "min_kw": 1.4, "max_kw": 3.7},
         "[loads] 0.steps_kw", "within min_kw"),
        ({"modulation": "steps", "step_kw": 0.23}, "[loads] 0.step_kw", "min_kw below max_kw"),
        ({"modulation": "steps", "step_kw": 0.01, "min_kw": 1.0, "max_kw": 7.0},
         "[loads] 0.step_kw", "at most 100"),
    ],
)
def test_bad_modulation_keys_are_named(keys: dict[str, Any], key: str, words: str) -> None:
    ((found, msg),) = problems(ev(**keys))
    assert found == key and words in msg and "ev" in msg


def test_unknown_modulation_is_refused() -> None:
    ((key, _),) = problems(ev(modulation="pwm"))
    assert key == "[loads] 0.modulation"


def test_a_relay_cannot_modulate() -> None:
    ((key, msg),) = problems({"id": "hp", "device": "plug", "nominal_kw": 1.5,
                              "min_kw": 1.0, "max_kw": 2.0, "modulation": "continuous"})
    assert key == "[loads] 0.modulation"
    assert "only switches" in msg and "Shelly Plus Plug S" in msg


def test_a_go_e_charger_needs_its_topic_base() -> None:
    with pytest.raises(ConfigError) as info:
        load_gateway_settings(None, env={}, community={"id": "c1"}, site={"id": "s1"},
                              devices=[{"id": "wallbox", "profile": "go-e/home-plus-11kw"}])
    ((key, msg),) = info.value.problems
    assert key.startswith("[devices] 0") and "go-eCharger/<serial>" in msg

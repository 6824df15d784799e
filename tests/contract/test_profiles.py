"""Every device profile under firmware_profiles/ loads and builds its driver.

Parametrised over the files found, so a new model file is covered the day it
is added. Bad profiles raise ``ProfileError`` naming the file and the key.
"""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path

import pytest

from gateway.config import DeviceSettings
from gateway.devices.base import MessageHandler
from gateway.devices.registry import DRIVERS, build_device
from gateway.errors import ProfileError
from gateway.profiles import (
    PROFILES_DIR,
    PhidgetDigitalOutput,
    SwitchProfile,
    all_profiles,
    load_profile_file,
    profile_name,
)
from gateway.sim.phidget import FakeBoard

PROFILE_FILES = sorted(PROFILES_DIR.glob("*/*.toml"))
# Drivers that need only an MQTT port (the Phidget driver needs its native library).
MQTT_DRIVERS = {
    "shelly_gen1_switch",
    "shelly_gen2_switch",
    "shelly_gen1_em",
    "shelly_gen2_em",
    "mqtt_generic_meter",
    "goe_charger_v2",
}

PLUG_S = """\
driver = "shelly_gen1_switch"
vendor = "Shelly"
model = "SHPLG-S"
name = "Shelly Plug S"
channels = 1
max_power_kw = 2.5
"""


class RecordingPort:
    """An ``MqttPort`` that only records what a driver asks of it."""

    def __init__(self) -> None:
        self.subscriptions: list[str] = []
        self.published: list[tuple[str, bytes | str]] = []

    def subscribe(self, topic: str, handler: MessageHandler) -> None:
        self.subscriptions.append(topic)

    def publish(self, topic: str, payload: bytes | str, qos: int = 1, retain: bool = False) -> None:
        self.published.append((topic, payload))


class Clock:
    def monotonic(self) -> float:
        return time.monotonic()


def test_the_shelly_models_are_there() -> None:
    names = {profile_name(p) for p in PROFILE_FILES}
    assert names >= {
        "shelly/plug-s",
        "shelly/1pm",
        "shelly/plus-plug-s",
        "shelly/plus-1pm",
        "shelly/pro-4pm",
        "shelly/em",
        "shelly/pro-3em",
        "generic/mqtt-meter",
    }


@pytest.mark.parametrize("path", PROFILE_FILES, ids=profile_name)
def test_profile_loads(path: Path) -> None:
    profile = load_profile_file(path)
    assert profile.driver in DRIVERS
    assert re.fullmatch(r"[a-z0-9][a-z0-9-]*", path.stem), "file names are lowercase-kebab"
    assert re.fullmatch(r"[a-z0-9][a-z0-9-]*", path.parent.name), "vendor dirs are lowercase"
    assert all_profiles()[profile_name(path)] == profile


@pytest.mark.parametrize("path", PROFILE_FILES, ids=profile_name)
def test_profile_builds_its_driver(path: Path) -> None:
    profile = load_profile_file(path)
    settings = DeviceSettings(
        id="dev1", profile=profile_name(path), prefix="shelly-test", topic="home/grid/power",
        serial=424242, open_timeout_ms=100,
    )
    port = RecordingPort()
    options = {}
    if isinstance(profile, PhidgetDigitalOutput):
        # The USB board is the one part we cannot have: the fake stands in for it.
        options["channel_factory"] = FakeBoard(424242).digital_output

    async def lifecycle() -> None:
        device = build_device(settings, profile, port, Clock(), lambda _id: None, **options)
        assert device.device_id == "dev1"
        await device.start()
        if isinstance(profile, SwitchProfile):
            relays = device.relays()
            assert sorted(relays) == list(range(profile.channels))
            assert [r.relay_id for r in relays.values()] == [
                f"dev1/{n}" for n in range(profile.channels)
            ]
            assert device.net_meter() is None
        else:
            meter = device.net_meter()
            assert device.relays() == {} and meter is not None
            assert meter.meter_id == "dev1" and meter.net_export_kw is None
        await device.stop()

    asyncio.run(lifecycle())
    if profile.driver in MQTT_DRIVERS:
        assert port.subscriptions, "an MQTT driver listens to its device"
    else:
        assert not port.subscriptions and not port.published, "a USB driver has no MQTT"
    assert not any(t.startswith("/") or "//" in t for t in port.subscriptions + [
        t for t, _ in port.published
    ])


# -- bad profiles ------------------------------------------------------------------------


def write(tmp_path: Path, text: str, name: str = "bad.toml") -> Path:
    path = tmp_path / "acme" / name
    path.parent.mkdir(exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("text", "key", "message"),
    [
        (PLUG_S + 'colour = "red"\n', "colour", "unknown key"),
        (PLUG_S.replace("shelly_gen1_switch", "shelly_gen9_switch"), "driver", "shelly_gen9"),
        (PLUG_S.replace("channels = 1\n", ""), "channels", "required"),
        (PLUG_S.replace("max_power_kw = 2.5", 'max_power_kw = "lots"'), "max_power_kw", "number"),
        (PLUG_S.replace("channels = 1", "channels = 0"), "channels", "greater than"),
        # A key of another driver is unknown to this one.
        (PLUG_S.replace("shelly_gen1_switch", "shelly_gen2_switch") + 'topic_prefix = "x"\n',
         "topic_prefix", "unknown key"),
        (PLUG_S + "channels = [\n", "(syntax)", ""),
    ],
    ids=["unknown-key", "wrong-driver", "missing-field", "wrong-type", "out-of-range",
         "other-drivers-key", "toml-syntax"],
)
def test_bad_profile_names_file_and_key(
    tmp_path: Path, text: str, key: str, message: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ProfileError) as err:
        load_profile_file(path)
    assert err.value.key == key
    assert err.value.path == str(path)
    assert str(path) in str(err.value) and key in str(err.value)
    assert message in str(err.value)


def test_missing_driver_names_the_driver_key(tmp_path: Path) -> None:
    path = write(tmp_path, PLUG_S.replace('driver = "shelly_gen1_switch"\n', ""))
    with pytest.raises(ProfileError) as err:
        load_profile_file(path)
    assert err.value.key == "driver"


def test_a_bad_file_fails_the_whole_directory(tmp_path: Path) -> None:
    write(tmp_path, PLUG_S, "good.toml")
    bad = write(tmp_path, PLUG_S + "extra = 1\n", "worse.toml")
    with pytest.raises(ProfileError) as err:
        all_profiles(tmp_path)
    assert err.value.path == str(bad) and err.value.key == "extra"

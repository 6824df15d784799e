"""Device models as data: ``firmware_profiles/<vendor>/<model>.toml``.

One file per model, validated at load time by a pydantic model that forbids
unknown keys and switches on the ``driver`` field. A bad file raises
``ProfileError`` naming the file and the key. Adding a model is a new file;
adding a protocol is a driver module plus one line in
``gateway.devices.registry.DRIVERS``.
"""

from __future__ import annotations

import tomllib
from functools import cache
from pathlib import Path
from typing import Annotated, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from gateway.errors import ProfileError

PROFILES_DIR = Path(__file__).resolve().parents[1] / "firmware_profiles"


class _Profile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    vendor: str = Field(min_length=1)
    model: str = Field(min_length=1, description="the maker's model code, e.g. SHPLG-S")
    name: str = Field(min_length=1, description="what people call it, e.g. Shelly Plug S")
    docs: str | None = None


class SwitchProfile(_Profile):
    """Common to devices with switched channels."""

    channels: int = Field(ge=1, le=64)
    max_power_kw: float = Field(gt=0, le=100, description="rating per channel")
    measures_power: bool = False
    measures_energy: bool = False
    takes_setpoint: ClassVar[bool] = False
    """Whether its driver can set a channel's power (``gateway.devices.base.SetPoint``)."""


class ShellyGen1Switch(SwitchProfile):
    """Shelly Gen1 relay over MQTT: ``shellies/<id>/relay/<n>`` (Plug S, 1PM)."""

    driver: Literal["shelly_gen1_switch"]
    topic_prefix: str = "shellies/{id}"


class ShellyGen2Switch(SwitchProfile):
    """Shelly Gen2+/Gen3 switch over MQTT JSON-RPC (Plus Plug S, Plus 1PM, Pro 4PM)."""

    driver: Literal["shelly_gen2_switch"]
    component: Literal["switch"] = "switch"


class ShellyGen1Meter(_Profile):
    """Shelly Gen1 energy meter (Shelly EM): ``shellies/<id>/emeter/<n>/power`` in W."""

    driver: Literal["shelly_gen1_em"]
    channels: int = Field(ge=1, le=3)
    topic_prefix: str = "shellies/{id}"


class ShellyGen2Meter(_Profile):
    """Shelly Gen2 three-phase meter (Pro 3EM): ``em:0`` ``total_act_power`` in W."""

    driver: Literal["shelly_gen2_em"]
    component: Literal["em"] = "em"
    phases: int = Field(default=3, ge=1, le=3)


class GenericMqttMeter(_Profile):
    """Any MQTT topic carrying a power: P1 readers, Home Assistant sensors (see its options)."""

    driver: Literal["mqtt_generic_meter"]


class GoeChargerV2(SwitchProfile):
    """A go-eCharger with its API v2 over MQTT: ``frc`` starts and stops, ``amp`` sets the
    current (github.com/goecharger/go-eCharger-API-v2, mqtt-en.md, apikeys-en.md)."""

    driver: Literal["goe_charger_v2"]
    takes_setpoint: ClassVar[bool] = True
    min_current_a: int = Field(ge=1, le=63, description="the least current it charges at")
    max_current_a: int = Field(ge=1, le=63, description="the unit's largest current")
    phases: int = Field(default=3, ge=1, le=3, description="phases it charges on")
    voltage_v: float = Field(default=230.0, gt=0, le=400, description="phase voltage")


class PhidgetDigitalOutput(SwitchProfile):
    """A Phidget22 board whose relays are ``DigitalOutput`` channels (Interface Kit 0/0/8)."""

    driver: Literal["phidget_digital_output"]
    device_id: int = Field(ge=0, description="Phidget22 DeviceID (PHIDID_1017 = 12)")
    usb_vendor_id: str = Field(pattern=r"^[0-9a-f]{4}$")
    usb_product_ids: tuple[Annotated[str, Field(pattern=r"^[0-9a-f]{4}$")], ...] = Field(
        min_length=1, description="board revisions may enumerate differently"
    )
    max_current_a: float = Field(gt=0)
    max_voltage_v: float = Field(gt=0)


Profile = Annotated[
    ShellyGen1Switch
    | ShellyGen2Switch
    | ShellyGen1Meter
    | ShellyGen2Meter
    | GenericMqttMeter
    | GoeChargerV2
    | PhidgetDigitalOutput,
    Field(discriminator="driver"),
]
_ADAPTER: TypeAdapter[Profile] = TypeAdapter(Profile)


def parse_profile(data: dict[str, object], path: str = "<memory>") -> Profile:
    """Validate one profile's data; ``ProfileError`` names the file and the key."""
    try:
        return _ADAPTER.validate_python(data)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        loc = [str(p) for p in err.get("loc", ())]
        # The first loc item is the discriminator's value: drop it from the key.
        if len(loc) > 1 and loc[0] == data.get("driver"):
            loc = loc[1:]
        key = ".".join(loc) or "(file)"
        msg = "unknown key" if err.get("type") == "extra_forbidden" else err.get("msg", "invalid")
        if err.get("type") in ("union_tag_invalid", "union_tag_not_found"):
            key = "driver"
        more = f" (+{exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise ProfileError(f"{path}: {key}: {msg}{more}", path, key) from None


def load_profile_file(path: Path) -> Profile:
    """Read and validate one profile file."""
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ProfileError(f"{path}: (syntax): {exc}", str(path), "(syntax)") from None
    except OSError as exc:
        raise ProfileError(f"{path}: (file): {exc.strerror}", str(path), "(file)") from None
    return parse_profile(data, str(path))


def profile_name(path: Path, root: Path = PROFILES_DIR) -> str:
    """``shelly/plus-plug-s`` for ``firmware_profiles/shelly/plus-plug-s.toml``."""
    return path.relative_to(root).with_suffix("").as_posix()


@cache
def _all(root: Path) -> dict[str, Profile]:
    return {profile_name(p, root): load_profile_file(p) for p in sorted(root.glob("*/*.toml"))}


def all_profiles(root: Path = PROFILES_DIR) -> dict[str, Profile]:
    """Every profile under ``root``, by name; raises on the first invalid file."""
    return dict(_all(root))


def get_profile(name: str, root: Path = PROFILES_DIR) -> Profile:
    """The profile called ``name`` (e.g. ``shelly/plug-s``); ``ProfileError`` lists the others."""
    profiles = _all(root)
    try:
        return profiles[name]
    except KeyError:
        known = ", ".join(sorted(profiles)) or "none"
        raise ProfileError(
            f"unknown device profile {name!r}; known: {known}", key="profile"
        ) from None

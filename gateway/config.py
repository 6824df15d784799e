"""The gateway's configuration (docs/configuration.md, "Gateway").

TOML validated by pydantic, every key also settable as ``EMS_<SECTION>__<KEY>``;
unknown keys are errors; each device's ``profile`` must name a file under
``firmware_profiles/`` and each load's ``device`` a configured device with
that channel.
"""

from __future__ import annotations

import math
from datetime import time
from itertools import pairwise
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from gateway.errors import ProfileError
from gateway.outbox import DEFAULT_DISK_RESERVE_BYTES, DEFAULT_MAX_BYTES, DEFAULT_MAX_ROWS
from gateway.profiles import (
    GenericMqttMeter,
    GoeChargerV2,
    PhidgetDigitalOutput,
    Profile,
    ShellyGen1Meter,
    ShellyGen2Meter,
    SwitchProfile,
    get_profile,
)
from protocol.ids import validate_id
from protocol.settings import (
    CommunitySettings,
    ConfigKeyError,
    LogSettings,
    MqttSettings,
    Section,
    ServiceSettings,
    load_settings,
)

LoadKind = Literal["water_heater", "heat_pump", "ev_charger", "battery", "generic"]
Modulation = Literal["none", "continuous", "steps"]
MAX_STEPS = 100
"""Set points a stepped load may have (a 6-32 A wallbox has 27)."""


class SiteSettings(Section):
    """``[site]``: this home."""

    id: str
    name: str | None = None

    @field_validator("id")
    @classmethod
    def _valid(cls, value: str) -> str:
        return validate_id(value, "site id")


class DeviceSettings(Section):
    """``[[devices]]``: one physical device, its model and how to reach it."""

    id: str
    profile: str = Field(description="e.g. shelly/plus-plug-s, phidget/1017")
    # Shelly: Gen1 device id (shellies/<id>/…) or Gen2 topic prefix (<prefix>/rpc);
    # go-e: the topic base of its keys (go-eCharger/<serial>)
    prefix: str | None = None
    # go-e: the phases it charges on here (1 on a single-phase supply); none = the model's
    phases: int | None = Field(default=None, ge=1, le=3)
    # Phidget: the board's serial number (the 1017 has no hub port)
    serial: int | None = Field(default=None, ge=0)
    open_timeout_ms: int = Field(default=5000, ge=100, le=60_000)
    retry_s: float = Field(default=30.0, gt=0, le=3600)
    command_timeout_s: float = Field(default=5.0, gt=0, le=60)
    # generic MQTT meter
    topic: str | None = None
    field: str | None = Field(
        default=None, description="dot path in a JSON payload; none = plain number"
    )
    unit: Literal["W", "kW"] = "W"
    sign: Literal["export_positive", "import_positive"] = "import_positive"
    # meters with several channels (Shelly EM): which one is the grid connection
    channel: int = Field(default=0, ge=0, le=63)

    @field_validator("id")
    @classmethod
    def _valid(cls, value: str) -> str:
        return validate_id(value, "device id")

    @property
    def model(self) -> Profile:
        return get_profile(self.profile)

    @model_validator(mode="after")
    def _options_fit_profile(self) -> DeviceSettings:
        try:
            profile = get_profile(self.profile)
        except ProfileError as exc:
            raise ValueError(str(exc)) from None
        if isinstance(profile, PhidgetDigitalOutput):
            pass  # serial optional with one board (required with several: see below)
        elif isinstance(profile, GenericMqttMeter):
            if not self.topic:
                raise ValueError(f"device {self.id}: a generic meter needs 'topic'")
        elif isinstance(profile, GoeChargerV2):
            if not self.prefix:
                raise ValueError(f"device {self.id}: a go-e charger needs 'prefix' "
                                 "(its topic base, go-eCharger/<serial>)")
        elif not self.prefix:
            raise ValueError(f"device {self.id}: a Shelly device needs 'prefix' (its MQTT id)")
        return self


class LoadSettings(Section):
    """``[[loads]]``: one flexible load behind a relay channel."""

    id: str
    kind: LoadKind = "generic"
    name: str | None = None
    device: str
    channel: int = Field(default=0, ge=0, le=63)
    nominal_kw: float = Field(gt=0, le=50)
    min_kw: float | None = Field(default=None, ge=0, le=50)
    max_kw: float | None = Field(default=None, gt=0, le=50)
    min_on_s: float = Field(default=300, ge=0, le=86_400)
    min_off_s: float = Field(default=300, ge=0, le=86_400)
    max_starts_per_hour: int = Field(default=6, ge=1, le=60)
    shed_level: int | None = Field(default=2, ge=1, le=3, description="cut from this grid level")
    priority: int = Field(default=0, ge=0, le=1000)
    energized_means: Literal["on", "off"] = "on"
    # Switched through a contactor: the relay drives only its coil, so the
    # relay's own rating does not bound the load (the contactor's does).
    contactor: bool = False
    # Below this measured power a load that is on draws nothing (thermostat satisfied).
    idle_below_kw: float = Field(default=0.05, ge=0, le=5)
    # EV charger
    capacity_kwh: float | None = Field(default=None, gt=0, le=200)
    soc: float | None = Field(default=None, ge=0, le=1, description="state of charge now, if known")
    soc_min: float = Field(default=0.2, ge=0, le=1)
    soc_max: float = Field(default=0.8, ge=0, le=1)
    departure: time | None = None
    energy_need_kwh: float | None = Field(default=None, ge=0, le=500)
    # Anticipation: run this long before a stress window that will cut it
    # (water heaters, EVs, batteries only).
    preheat_hours: float = Field(default=0.0, ge=0, le=24)
    # How the gateway sets its power: "none" switches it whole at nominal_kw (a
    # relay); "continuous" runs it anywhere in [min_kw, max_kw] (an inverter heat
    # pump); "steps" at one of steps_kw, or min_kw + k * step_kw up to max_kw (a
    # wallbox taking whole amps). Modulating needs a device that takes a set point.
    modulation: Modulation = "none"
    steps_kw: list[Annotated[float, Field(gt=0, le=50)]] | None = Field(
        default=None, min_length=1, max_length=MAX_STEPS
    )
    step_kw: float | None = Field(default=None, gt=0, le=50)

    @field_validator("id")
    @classmethod
    def _valid(cls, value: str) -> str:
        return validate_id(value, "load id")

    @model_validator(mode="after")
    def _powers(self) -> LoadSettings:
        lo, hi = self.min_power_kw, self.max_power_kw
        if lo > hi:
            raise ValueError(f"load {self.id}: min_kw {lo} exceeds max_kw {hi}")
        if self.soc_min > self.soc_max:
            raise ValueError(f"load {self.id}: soc_min exceeds soc_max")
        return self

    @property
    def min_power_kw(self) -> float:
        if self.min_kw is not None:
            return self.min_kw
        return min(self.steps_kw) if self.steps_kw else self.nominal_kw

    @property
    def max_power_kw(self) -> float:
        if self.max_kw is not None:
            return self.max_kw
        return max(self.steps_kw) if self.steps_kw else self.nominal_kw

    @property
    def setpoints_kw(self) -> tuple[float, ...]:
        """A stepped load's powers, ascending (``steps_kw``, or generated from ``step_kw``)."""
        if self.steps_kw:
            return tuple(self.steps_kw)
        if self.step_kw is None:
            return ()
        lo, hi = self.min_power_kw, self.max_power_kw
        count = math.floor((hi - lo) / self.step_kw + 1e-9) + 1
        return tuple(round(lo + k * self.step_kw, 6) for k in range(count))

    def modulation_problem(self) -> tuple[str, str] | None:
        """(key, message) when the modulation keys do not fit together; None when they do."""
        steps_set = [k for k in ("steps_kw", "step_kw") if getattr(self, k) is not None]
        if self.modulation != "steps" and steps_set:
            return steps_set[0], f'only with modulation = "steps" (it is "{self.modulation}")'
        if self.modulation == "continuous" and not self.min_power_kw < self.max_power_kw:
            return "min_kw", 'modulation = "continuous" needs min_kw below max_kw'
        if self.modulation != "steps":
            return None
        if len(steps_set) != 1:
            return "steps_kw", ('modulation = "steps" needs either steps_kw (the powers it '
                                'accepts) or step_kw (from min_kw to max_kw), not both')
        if self.steps_kw is not None:
            steps = self.steps_kw
            if any(b <= a for a, b in pairwise(steps)):
                return "steps_kw", "must be in ascending order, each power once"
            if steps[0] < self.min_power_kw - 1e-9 or steps[-1] > self.max_power_kw + 1e-9:
                return "steps_kw", (f"powers must lie within min_kw {self.min_power_kw} and "
                                    f"max_kw {self.max_power_kw}")
            return None
        if not self.min_power_kw < self.max_power_kw:
            return "step_kw", "needs min_kw below max_kw"
        if len(self.setpoints_kw) > MAX_STEPS:
            return "step_kw", (f"gives {len(self.setpoints_kw)} steps from min_kw to max_kw; "
                               f"at most {MAX_STEPS}")
        return None


class MeterSettings(Section):
    """``[meter]``: where the home's net load comes from: a device with a grid meter."""

    device: str | None = None


class EmsSettings(Section):
    """``[ems]``: the home's local energy management."""

    period_s: float = Field(default=900, ge=1, le=86_400)
    netload_interval_s: float = Field(default=60, ge=0.1, le=3600)
    response_check_s: float = Field(default=10, gt=0, le=600)
    response_tolerance: float = Field(default=0.5, gt=0, le=1)
    unresponsive_hold_s: float = Field(default=3600, ge=0, le=86_400)
    local_self_consumption: bool = True
    coordinator_silence_s: float | None = Field(default=None, gt=0)
    # The home's contracted import (kVA ~ kW): anticipation never goes above it.
    max_import_kw: float | None = Field(default=None, gt=0, le=250)
    # An allocation of A kW may run loads drawing up to A + this from the grid
    # (0: never more than the allocation).
    allow_import_kw: float = Field(default=0.0, ge=0, le=50)
    # The grid operator's time zone: grid/signal's hours are its local hours.
    grid_timezone: str = "Europe/Paris"
    # The edge broker's bridge notification (mosquitto/edge.conf): "1" up, "0" cut
    # off from the community; none when the gateway talks to the central broker.
    bridge_state_topic: str | None = "bridge/central/state"

    @field_validator("grid_timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r}") from None
        return value


class HomeAssistantSettings(Section):
    """``[homeassistant]``: MQTT discovery."""

    enabled: bool = True
    discovery_prefix: str = "homeassistant"
    # "entity": one config per entity, every HA version; "device": one config
    # per device (homeassistant/device/<id>/config), HA 2024.11+ only.
    discovery: Literal["entity", "device"] = "entity"

    @field_validator("discovery_prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        if not value or value != value.strip("/") or any(c in value for c in "#+"):
            raise ValueError("must be a topic without wildcards or a leading/trailing '/'")
        return value


class StateSettings(Section):
    """``[state]``: where the gateway keeps what must survive a restart."""

    dir: Path = Path("/var/lib/ems-gateway")


class OutboxSettings(Section):
    """``[outbox]``: bounds of the report outbox (gateway/outbox.py, docs/reliability.md).

    Past ``max_rows`` reports or ``max_bytes`` of them, or while the disk has
    less than ``disk_reserve_bytes`` free, the oldest unacknowledged reports
    are dropped to keep the newest (counted, one warning per episode).
    """

    max_rows: int = Field(default=DEFAULT_MAX_ROWS, ge=10, le=10_000_000)
    max_bytes: int = Field(default=DEFAULT_MAX_BYTES, ge=65_536, le=2**34)
    disk_reserve_bytes: int = Field(default=DEFAULT_DISK_RESERVE_BYTES, ge=0, le=2**40)


class ClockSettings(Section):
    """``[clock]``: ``speed`` > 1 for demos and tests only."""

    speed: float = Field(default=1.0, gt=0, le=100_000)


class GatewaySettings(ServiceSettings):
    """Everything ``ems-gateway`` reads."""

    mqtt: MqttSettings = MqttSettings()
    community: CommunitySettings
    site: SiteSettings
    meter: MeterSettings = MeterSettings()
    devices: list[DeviceSettings] = Field(default_factory=list)
    loads: list[LoadSettings] = Field(default_factory=list)
    ems: EmsSettings = EmsSettings()
    homeassistant: HomeAssistantSettings = HomeAssistantSettings()
    state: StateSettings = StateSettings()
    outbox: OutboxSettings = OutboxSettings()
    clock: ClockSettings = ClockSettings()
    log: LogSettings = LogSettings()

    @model_validator(mode="after")
    def _references(self) -> GatewaySettings:
        devices: dict[str, DeviceSettings] = {}
        for i, d in enumerate(self.devices):
            if d.id in devices:
                raise ConfigKeyError(f"[devices] {i}.id", f"device id {d.id!r} is used twice")
            devices[d.id] = d
        boards = [d for d in self.devices if isinstance(d.model, PhidgetDigitalOutput)]
        if len(boards) > 1 and any(d.serial is None for d in boards):
            # Without serials each channel would attach to any board.
            raise ConfigKeyError("[devices] serial",
                                 "several Phidget boards: each needs its serial")
        seen: dict[tuple[str, int], str] = {}
        load_ids = set()
        for i, load in enumerate(self.loads):
            key = f"[loads] {i}"
            if load.id in load_ids:
                raise ConfigKeyError(f"{key}.id", f"load id {load.id!r} is used twice")
            load_ids.add(load.id)
            dev = devices.get(load.device)
            if dev is None:
                raise ConfigKeyError(f"{key}.device", f"load {load.id}: unknown device "
                                     f"{load.device!r}")
            profile = dev.model
            if not isinstance(profile, SwitchProfile):
                raise ConfigKeyError(
                    f"{key}.device",
                    f"load {load.id}: device {dev.id} has no relay ({profile.name})",
                )
            if load.channel >= profile.channels:
                raise ConfigKeyError(
                    f"{key}.channel",
                    f"load {load.id}: channel {load.channel} out of range for "
                    f"{profile.name} (0..{profile.channels - 1})",
                )
            if load.max_power_kw > profile.max_power_kw and not load.contactor:
                raise ConfigKeyError(
                    f"{key}.max_kw",
                    f"load {load.id}: max {load.max_power_kw} kW exceeds the "
                    f"{profile.name}'s rating of {profile.max_power_kw} kW "
                    "(switch it through a contactor and set contactor = true)",
                )
            problem = load.modulation_problem()
            if problem is not None:
                raise ConfigKeyError(f"{key}.{problem[0]}", f"load {load.id}: {problem[1]}")
            if load.modulation != "none" and not profile.takes_setpoint:
                raise ConfigKeyError(
                    f"{key}.modulation",
                    f"load {load.id}: device {dev.id} ({profile.name}) only switches on and "
                    'off; a modulating load needs a device that takes a set point '
                    '(e.g. go-e/charger); use modulation = "none"',
                )
            if load.energized_means == "off" and not isinstance(profile, PhidgetDigitalOutput):
                raise ConfigKeyError(f"{key}.energized_means",
                                     f"load {load.id}: \"off\" only applies to relay boards")
            where = (load.device, load.channel)
            if where in seen:
                raise ConfigKeyError(
                    f"{key}.channel",
                    f"loads {seen[where]} and {load.id} share {dev.id} channel {load.channel}",
                )
            seen[where] = load.id
        if self.meter.device is not None:
            dev = devices.get(self.meter.device)
            if dev is None:
                raise ConfigKeyError("[meter] device",
                                     f"meter device {self.meter.device!r} is not configured")
            if not isinstance(dev.model, ShellyGen1Meter | ShellyGen2Meter | GenericMqttMeter):
                raise ConfigKeyError(
                    "[meter] device", f"{dev.id} is not a meter ({dev.model.name})"
                )
        return self


def load_gateway_settings(
    path: Path | str | None, env: dict[str, str] | None = None, **overrides: Any
) -> GatewaySettings:
    """Load and validate the gateway's settings (raises ``ConfigError``)."""
    return load_settings(GatewaySettings, path, env=env, overrides=overrides)

"""The explicit driver registry: a profile's ``driver`` -> the class that drives it.

A driver class is built as ``cls(settings, profile, port, clock, on_change)``
and satisfies ``gateway.devices.base.Device``. Imports are lazy so a home
without a Phidget board never loads the native library.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gateway.config import DeviceSettings
    from gateway.devices.base import ChangeListener, Clock, Device, MqttPort
    from gateway.profiles import Profile

DRIVERS: dict[str, str] = {
    "shelly_gen1_switch": "gateway.devices.shelly_gen1:ShellyGen1Switch",
    "shelly_gen2_switch": "gateway.devices.shelly_gen2:ShellyGen2Switch",
    "shelly_gen1_em": "gateway.devices.shelly_em:ShellyEm",
    "shelly_gen2_em": "gateway.devices.shelly_pro3em:ShellyPro3Em",
    "mqtt_generic_meter": "gateway.devices.generic_meter:GenericMqttMeter",
    "goe_charger_v2": "gateway.devices.goe_charger:GoeCharger",
    "phidget_digital_output": "gateway.devices.phidget:PhidgetRelayBoard",
}


def driver_class(driver: str) -> Any:
    """The class registered for ``driver`` (``KeyError`` names the known drivers)."""
    try:
        target = DRIVERS[driver]
    except KeyError:
        raise KeyError(f"unknown driver {driver!r}; known: {', '.join(sorted(DRIVERS))}") from None
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def build_device(
    settings: DeviceSettings,
    profile: Profile,
    port: MqttPort,
    clock: Clock,
    on_change: ChangeListener,
    **options: Any,
) -> Device:
    """Build the driver of one configured device (``options``: driver extras, e.g. a
    simulated board's channel factory)."""
    cls = driver_class(profile.driver)
    device: Device = cls(settings, profile, port, clock, on_change, **options)
    return device

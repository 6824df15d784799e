"""A grid meter on any MQTT topic: P1/DSMR readers, Home Assistant sensors, Tasmota SML.

The device's settings say where and how (gateway/config.py ``DeviceSettings``):

- ``topic``: the topic carrying the power (wildcards are not allowed);
- ``field``: a dot path into a JSON payload (``"grid.power"``; a numeric part
  indexes a list: ``"phases.0.p"``); without it the payload is a plain number
  (``"1234.5"``) or a JSON number;
- ``unit``: ``W`` (default) or ``kW``;
- ``sign``: ``import_positive`` (default: most P1 readers and HA grid sensors
  count what the home draws) or ``export_positive``.

A payload that does not parse is counted in ``bad_payloads`` and logged; the
last good reading stays until it goes stale. There is no availability topic:
a reading older than ``max_age_s`` (default 300 s, by the monotonic clock)
reads as None.
"""

from __future__ import annotations

from typing import Any

from gateway.config import DeviceSettings
from gateway.devices.base import ChangeListener, Clock, MqttPort, NetMeter, Relay
from gateway.devices.mqtt_device import (
    FRESH_FOR_S,
    GridReading,
    MqttDevice,
    PayloadError,
    load_json,
    parse_power_w,
)
from gateway.profiles import GenericMqttMeter as GenericMqttMeterProfile


def field_value(data: Any, path: str) -> Any:
    """The value at a dot path in decoded JSON; ``PayloadError`` when it is not there."""
    value = data
    for part in path.split("."):
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            raise PayloadError(f"field {path!r}: no {part!r} in the payload")
    return value


class GenericMqttMeter(MqttDevice):
    """The home's net power from one MQTT topic."""

    def __init__(
        self,
        settings: DeviceSettings,
        profile: GenericMqttMeterProfile,
        port: MqttPort,
        clock: Clock,
        on_change: ChangeListener,
        *,
        max_age_s: float = FRESH_FOR_S,
    ) -> None:
        super().__init__(settings.id, port, clock, on_change)
        if not settings.topic or "+" in settings.topic or "#" in settings.topic:
            raise ValueError(f"device {settings.id}: a generic meter needs a plain 'topic'")
        self.topic = settings.topic
        self._field = settings.field
        self._scale_w = 1000.0 if settings.unit == "kW" else 1.0
        self._meter = GridReading(settings.id, clock, settings.sign, max_age_s)
        self._log = self._log.bind(topic=self.topic)

    def relays(self) -> dict[int, Relay]:
        return {}

    def net_meter(self) -> NetMeter | None:
        return self._meter

    async def start(self) -> None:
        self._running = True
        self._subscribe(self.topic, self._on_message)
        self._log.info("device_started", field=self._field)

    async def stop(self) -> None:
        self._running = False

    def _on_message(self, _topic: str, payload: bytes) -> None:
        if self._field:
            data = load_json(payload, "payload")
            raw = field_value(data, self._field)
        else:
            raw = payload
        power_w = parse_power_w(raw, self._field or "payload", self._scale_w)
        if self._meter.record_w(power_w):
            self._notify(self._meter.meter_id)

"""Shelly Pro 3EM (Gen2, ``SPEM-003CEBEU``) as the home's grid meter.

The meter is component ``em:0`` (the default "triphase" profile; the
"monophase" profile's ``em1:<n>`` components are not supported). Its
``total_act_power`` is the signed sum of the three phases in W, positive when
the home imports. It arrives (reference §2 for the transport):

- in ``NotifyStatus`` (changed keys only) and ``NotifyFullStatus`` frames on
  ``<prefix>/events/rpc``; the device notifies a 5 % / 10 W change;
- as the full component on ``<prefix>/status/em:0`` when ``status_ntf`` is on;
- in the reply to ``Shelly.GetStatus`` (``ShellyGen2Device``).

Sign and freshness as ``ShellyEm``: export = -power by default; a reading older
than ``max_age_s`` (default 300 s, monotonic clock) reads as None. A steady
load may not change by 5 % for minutes: with a long ``max_age_s`` that is fine;
with a short one, enable ``status_ntf`` or a periodic script on the device.
"""

from __future__ import annotations

from typing import Any

from gateway.config import DeviceSettings
from gateway.devices.base import ChangeListener, Clock, MqttPort, NetMeter, Relay
from gateway.devices.mqtt_device import FRESH_FOR_S, GridReading, PayloadError, parse_power_w
from gateway.devices.shelly_rpc import ShellyGen2Device
from gateway.profiles import ShellyGen2Meter


class ShellyPro3Em(ShellyGen2Device):
    """The ``em:0`` total active power of a Shelly Pro 3EM."""

    def __init__(
        self,
        settings: DeviceSettings,
        profile: ShellyGen2Meter,
        port: MqttPort,
        clock: Clock,
        on_change: ChangeListener,
        *,
        reply_prefix: str | None = None,
        max_age_s: float = FRESH_FOR_S,
    ) -> None:
        super().__init__(settings, port, clock, on_change, reply_prefix)
        self._key = f"{profile.component}:0"
        self._meter = GridReading(settings.id, clock, settings.sign, max_age_s)
        self._meter.available = False

    def relays(self) -> dict[int, Relay]:
        return {}

    def net_meter(self) -> NetMeter | None:
        return self._meter

    def _status_components(self) -> list[str]:
        return [self._key]

    def _availability_changed(self, online: bool) -> None:
        self._meter.available = online
        self._notify(self._meter.meter_id)
        super()._availability_changed(online)

    def _parse_components(self, components: dict[str, Any]) -> list[Any]:
        status = components.get(self._key)
        if status is None:
            return []
        if not isinstance(status, dict):
            raise PayloadError(f"{self._key}: status is not an object")
        if status.get("total_act_power") is None:
            return []  # a partial NotifyStatus without the total (e.g. only a voltage)
        return [parse_power_w(status["total_act_power"], "total_act_power")]

    def _apply_parsed(self, updates: list[Any]) -> None:
        for power_w in updates:
            if self._meter.record_w(power_w):
                self._notify(self._meter.meter_id)

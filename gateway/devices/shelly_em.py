"""Shelly EM (Gen1, ``SHEM``) as the home's grid meter.

Topics (Shelly Gen1 API, "Shelly EM: MQTT"; reference §1 for the common ones),
``<base>`` = ``shellies/<mqtt id>``:

- ``<base>/emeter/<i>/power``: instantaneous active power in W, positive when
  the home imports, negative when it exports; ``<i>`` is the clamp (0 or 1) and
  the device's configured ``channel`` says which one is on the grid connection;
- ``<base>/online`` (will ``false``), ``shellies/announce``, ``<base>/announce``;
- ``<base>/info`` (firmware >= 1.8.0): ``/status`` JSON with ``emeters[i].power``.

Sign: the configured ``sign`` says how the device counts; the default
``import_positive`` is Shelly's, so export = -power. A reading older than
``max_age_s`` (default 300 s by the monotonic clock; the device republishes
every ``mqtt_update_period``, 30 s by default) reads as None, as it does while
the device is offline.
"""

from __future__ import annotations

from gateway.config import DeviceSettings
from gateway.devices.base import ChangeListener, Clock, MqttPort, NetMeter, Relay
from gateway.devices.mqtt_device import (
    FRESH_FOR_S,
    GridReading,
    MqttDevice,
    PayloadError,
    load_json,
    parse_bool_word,
    parse_power_w,
)
from gateway.devices.shelly_gen1 import gen1_base, parse_announce
from gateway.profiles import ShellyGen1Meter


class ShellyEm(MqttDevice):
    """The grid-connection clamp of a Shelly EM."""

    def __init__(
        self,
        settings: DeviceSettings,
        profile: ShellyGen1Meter,
        port: MqttPort,
        clock: Clock,
        on_change: ChangeListener,
        *,
        max_age_s: float = FRESH_FOR_S,
    ) -> None:
        super().__init__(settings.id, port, clock, on_change)
        if settings.channel >= profile.channels:
            raise ValueError(
                f"device {settings.id}: channel {settings.channel} out of range for "
                f"{profile.name} (0..{profile.channels - 1})"
            )
        self.mqtt_id = settings.prefix or ""
        self._base = gen1_base(settings, profile.topic_prefix)
        self._root = self._base.rpartition("/")[0]
        self._channel = settings.channel
        self._meter = GridReading(settings.id, clock, settings.sign, max_age_s)
        self._meter.available = False
        self._log = self._log.bind(mqtt_id=self.mqtt_id, channel=self._channel)

    def relays(self) -> dict[int, Relay]:
        return {}

    def net_meter(self) -> NetMeter | None:
        return self._meter

    async def start(self) -> None:
        """Subscribe, then ask the device to announce itself and publish its state."""
        self._running = True
        base = self._base
        self._subscribe(f"{base}/online", self._on_online)
        self._subscribe(f"{base}/announce", self._on_announce)
        if self._root:
            self._subscribe(f"{self._root}/announce", self._on_announce)
        self._subscribe(f"{base}/info", self._on_info)
        self._subscribe(f"{base}/emeter/{self._channel}/power", self._on_power)
        self._port.publish(f"{base}/command", "announce")
        self._port.publish(f"{base}/command", "update")
        self._log.info("device_started", base=base)

    async def stop(self) -> None:
        self._running = False

    def _on_online(self, _topic: str, payload: bytes) -> None:
        self._set_online(parse_bool_word(payload, "online"))

    def _availability_changed(self, online: bool) -> None:
        self._meter.available = online
        self._notify(self._meter.meter_id)

    def _on_announce(self, _topic: str, payload: bytes) -> None:
        data = parse_announce(payload)
        if data["id"] == self.mqtt_id:
            if self._online is not True:
                self._log.info(
                    "device_announced", model=data.get("model"), fw_ver=data.get("fw_ver")
                )
            self._set_online(True)

    def _on_power(self, _topic: str, payload: bytes) -> None:
        self._record(parse_power_w(payload, "power"))

    def _on_info(self, _topic: str, payload: bytes) -> None:
        data = load_json(payload, "info")
        emeters = data.get("emeters") if isinstance(data, dict) else None
        if not isinstance(emeters, list):
            raise PayloadError("info: no 'emeters' list")
        if self._channel < len(emeters) and isinstance(emeters[self._channel], dict):
            self._record(parse_power_w(emeters[self._channel].get("power"), "emeters.power"))

    def _record(self, power_w: float) -> None:
        self._seen()
        if self._meter.record_w(power_w):
            self._notify(self._meter.meter_id)

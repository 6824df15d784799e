"""Shelly Gen2+/Gen3 switches over MQTT JSON-RPC (Plus Plug S, Plus 1PM, Pro 4PM).

Reference devices-and-apis.md §2, ``<prefix>`` = the device's MQTT topic prefix
(its device id by default, e.g. ``shellyplusplugs-aabbccddeeff``):

- commands: ``Switch.Set`` ``{"id": n, "on": bool}`` to ``<prefix>/rpc`` with
  our ``src``; the device answers on ``<src>/rpc`` (``{"was_on": bool}``, or an
  error whose ``code`` becomes ``ShellyRpcError.code``);
- status: ``NotifyStatus`` (changed keys only) and ``NotifyFullStatus`` on
  ``<prefix>/events/rpc`` (``rpc_ntf``, on by default), and the full component
  on ``<prefix>/status/switch:<n>`` (``status_ntf``, off by default): ``output``,
  ``apower`` (W), ``aenergy.total`` (**Wh**, persistent);
- availability: ``<prefix>/online`` (retained ``true``; the will says ``false``);
- ``Shelly.GetStatus`` at start and whenever the device is online with no
  full status known (``ShellyGen2Device``).

``src`` defaults to ``ems-gw-<device id>``; the gateway should pass
``reply_prefix="ems-gw-<site>-<device>"`` so two homes on one broker never share
a reply topic. A successful ``Switch.Set`` is the device's confirmation: the
channel's ``on`` is updated from it at once. It says the relay switched, not
that the load draws power: a tripped relay (``errors: ["overpower"]``) or a
satisfied thermostat shows in the following ``NotifyStatus``.
"""

from __future__ import annotations

import functools
from typing import Any

from gateway.config import DeviceSettings
from gateway.devices.base import ChangeListener, Clock, MqttPort, NetMeter, Relay
from gateway.devices.mqtt_device import ChannelRelay, PayloadError, parse_number, parse_power_w
from gateway.devices.shelly_rpc import ShellyGen2Device
from gateway.errors import DeviceError, DeviceUnavailable
from gateway.profiles import ShellyGen2Switch as ShellyGen2SwitchProfile

WH_PER_KWH = 1000.0


class ShellyGen2Switch(ShellyGen2Device):
    """A Gen2+ Shelly with ``channels`` switch components ``switch:0..N-1``."""

    def __init__(
        self,
        settings: DeviceSettings,
        profile: ShellyGen2SwitchProfile,
        port: MqttPort,
        clock: Clock,
        on_change: ChangeListener,
        *,
        reply_prefix: str | None = None,
    ) -> None:
        super().__init__(settings, port, clock, on_change, reply_prefix)
        self._profile = profile
        self._component = profile.component
        self._relays = {
            n: ChannelRelay(f"{settings.id}/{n}", functools.partial(self._set, n))
            for n in range(profile.channels)
        }
        self._errors: dict[int, object] = {}

    def relays(self) -> dict[int, Relay]:
        return dict(self._relays)

    def net_meter(self) -> NetMeter | None:
        return None

    async def _set(self, channel: int, on: bool) -> None:
        relay = self._relays[channel]
        if self._online is False:
            raise DeviceUnavailable(f"{relay.relay_id}: device offline", self.device_id, channel)
        try:
            await self._rpc.call("Switch.Set", {"id": channel, "on": on}, self._timeout_s)
        except DeviceError as exc:
            exc.channel = channel
            raise
        self._log.info("relay_set", channel=channel, on=on)
        self._apply(channel, {"output": on})

    def _status_components(self) -> list[str]:
        return [f"{self._component}:{n}" for n in self._relays]

    def _availability_changed(self, online: bool) -> None:
        for relay in self._relays.values():
            if relay.set_available(online):
                self._notify(relay.relay_id)
        super()._availability_changed(online)

    def _parse_components(self, components: dict[str, Any]) -> list[Any]:
        """Status keys ``switch:<n>`` (other components and ``ts`` are ignored)."""
        updates = []
        for key, status in components.items():
            kind, _, index = key.partition(":")
            # isdecimal, not isdigit: "²" is a digit that int() refuses.
            if kind != self._component or not index.isdecimal() or len(index) > 3:
                continue
            channel = int(index)
            if channel not in self._relays or status is None:
                continue  # a channel we do not drive, or a removed key
            if not isinstance(status, dict):
                raise PayloadError(f"{key}: status is not an object")
            updates.append((channel, self._values(channel, status), status.get("errors")))
        return updates

    def _apply_parsed(self, updates: list[Any]) -> None:
        for channel, values, errors in updates:
            self._apply_values(channel, values, errors)

    def _apply(self, channel: int, status: dict[str, Any]) -> None:
        """Apply a (partial) switch status: ``output``, ``apower`` W, ``aenergy.total`` Wh."""
        self._apply_values(channel, self._values(channel, status), status.get("errors"))

    def _values(self, channel: int, status: dict[str, Any]) -> dict[str, object]:
        values: dict[str, object] = {}
        if "output" in status:
            if not isinstance(status["output"], bool):
                raise PayloadError(f"switch:{channel}.output is not a boolean")
            values["on"] = status["output"]
        if self._profile.measures_power and status.get("apower") is not None:
            values["power_kw"] = parse_power_w(status["apower"], "apower") / 1000.0
        aenergy = status.get("aenergy")
        if self._profile.measures_energy and isinstance(aenergy, dict) and "total" in aenergy:
            values["energy_kwh"] = parse_number(aenergy["total"], "aenergy.total") / WH_PER_KWH
        return values

    def _apply_values(self, channel: int, values: dict[str, object], errors: object) -> None:
        if errors and errors != self._errors.get(channel):
            # Logged when they change, not with every notification; an excerpt.
            self._log.warning("switch_errors", channel=channel, errors=str(errors)[:200])
        self._errors[channel] = errors or None
        relay = self._relays[channel]
        if relay.update(self._clock.monotonic(), **values):
            self._notify(relay.relay_id)

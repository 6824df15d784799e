"""Shelly Gen1 relays over MQTT (Plug S ``SHPLG-S``, 1PM ``SHSW-PM``).

Topics (reference devices-and-apis.md §1), ``<base>`` = ``shellies/<mqtt id>``:

- ``<base>/relay/<n>``: ``on``, ``off`` or ``overpower`` (tripped, so off);
- ``<base>/relay/<n>/power``: W as a float string; ``<base>/relay/<n>/energy``:
  a counter in **watt-minutes**, reset when the device reboots (kWh = v / 60000);
- ``<base>/online``: ``true``, ``false`` from the will (not retained by default);
- ``shellies/announce`` and ``<base>/announce``: JSON with ``id``, ``model``,
  ``fw_ver``…; ``<base>/info`` (firmware >= 1.8.0): the HTTP ``/status`` JSON;
- we publish ``on``/``off`` to ``<base>/relay/<n>/command``, and ``announce``
  then ``update`` to ``<base>/command`` at start (this device only, rather than
  every Gen1 device through ``shellies/command``).

``set(on)`` publishes the command and waits until the device reports the
channel in that state, or ``command_timeout_s`` (real seconds) passes: then
``DeviceError`` (``DeviceUnavailable`` if nothing was ever heard from the
device). When the channel is already reported in that state the device has no
change to publish, so we also ask for an ``update``.
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any

from gateway.config import DeviceSettings
from gateway.devices.base import ChangeListener, Clock, MqttPort, NetMeter, Relay
from gateway.devices.mqtt_device import (
    ChannelRelay,
    MqttDevice,
    PayloadError,
    load_json,
    parse_bool_word,
    parse_number,
    parse_power_w,
)
from gateway.errors import DeviceError, DeviceUnavailable
from gateway.profiles import ShellyGen1Switch as ShellyGen1SwitchProfile

_STATES = {b"on": True, b"off": False, b"overpower": False}
WMIN_PER_KWH = 60_000.0


def gen1_base(settings: DeviceSettings, topic_prefix: str) -> str:
    """``shellies/<mqtt id>`` from the profile's ``topic_prefix`` and the device's ``prefix``."""
    if not settings.prefix:
        raise ValueError(f"device {settings.id}: a Shelly Gen1 device needs 'prefix' (its MQTT id)")
    return topic_prefix.format(id=settings.prefix)


def parse_announce(payload: bytes) -> dict[str, Any]:
    """The announce JSON (compare fields, never bytes: real payloads have odd spacing)."""
    data = load_json(payload, "announce")
    if not isinstance(data, dict) or not isinstance(data.get("id"), str):
        raise PayloadError("announce: not an object with a string 'id'")
    return data


class ShellyGen1Switch(MqttDevice):
    """A Gen1 Shelly with ``channels`` relays (one for the Plug S and the 1PM)."""

    def __init__(
        self,
        settings: DeviceSettings,
        profile: ShellyGen1SwitchProfile,
        port: MqttPort,
        clock: Clock,
        on_change: ChangeListener,
    ) -> None:
        super().__init__(settings.id, port, clock, on_change)
        self.mqtt_id = settings.prefix or ""
        self._base = gen1_base(settings, profile.topic_prefix)
        self._root = self._base.rpartition("/")[0]
        self._timeout_s = settings.command_timeout_s
        self._profile = profile
        self._relays = {
            n: ChannelRelay(f"{settings.id}/{n}", functools.partial(self._set, n))
            for n in range(profile.channels)
        }
        self._reported: dict[int, bytes] = {}
        self._waiters: dict[int, list[tuple[bool, asyncio.Future[None]]]] = {}
        self._locks = {n: asyncio.Lock() for n in self._relays}
        self.firmware: str | None = None
        self._log = self._log.bind(mqtt_id=self.mqtt_id)

    def relays(self) -> dict[int, Relay]:
        return dict(self._relays)

    def net_meter(self) -> NetMeter | None:
        return None

    async def start(self) -> None:
        """Subscribe, then ask this device to announce itself and publish its state."""
        self._running = True
        base = self._base
        self._subscribe(f"{base}/online", self._on_online)
        self._subscribe(f"{base}/announce", self._on_announce)
        if self._root:
            self._subscribe(f"{self._root}/announce", self._on_announce)
        self._subscribe(f"{base}/info", self._on_info)
        for n in self._relays:
            self._subscribe(f"{base}/relay/{n}", functools.partial(self._on_relay, n))
            if self._profile.measures_power:
                self._subscribe(f"{base}/relay/{n}/power", functools.partial(self._on_power, n))
            if self._profile.measures_energy:
                self._subscribe(f"{base}/relay/{n}/energy", functools.partial(self._on_energy, n))
        self._port.publish(f"{base}/command", "announce")
        self._port.publish(f"{base}/command", "update")
        self._log.info("device_started", base=base)

    async def stop(self) -> None:
        """Ignore further messages and fail pending commands."""
        self._running = False
        self._fail_waiters(DeviceError(f"{self.device_id}: stopped", self.device_id))

    # -- commands ---------------------------------------------------------------

    async def _set(self, channel: int, on: bool) -> None:
        relay = self._relays[channel]
        if self._online is False:
            raise DeviceUnavailable(f"{relay.relay_id}: device offline", self.device_id, channel)
        async with self._locks[channel]:
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            waiters = self._waiters.setdefault(channel, [])
            waiters.append((on, fut))
            word = "on" if on else "off"
            try:
                self._port.publish(f"{self._base}/relay/{channel}/command", word)
                if relay.state.on is on:
                    # No change to report: ask the device to publish its state.
                    self._port.publish(f"{self._base}/command", "update")
                await asyncio.wait_for(fut, self._timeout_s)
            except TimeoutError:
                last = self._reported.get(channel, b"unknown").decode(errors="replace")
                msg = (
                    f"{relay.relay_id}: no report of '{word}' within {self._timeout_s:g} s "
                    f"(last reported: {last})"
                )
                self._log.warning("command_timeout", channel=channel, command=word, last=last)
                if self._online is None:
                    raise DeviceUnavailable(msg + "; nothing heard from the device") from None
                raise DeviceError(msg, self.device_id, channel) from None
            finally:
                if (on, fut) in waiters:
                    waiters.remove((on, fut))
                if not fut.done():
                    fut.cancel()
            self._log.info("relay_set", channel=channel, on=on)

    def _fail_waiters(self, exc: DeviceError) -> None:
        for waiters in self._waiters.values():
            for _, fut in waiters:
                if not fut.done():
                    fut.set_exception(exc)
                    fut.exception()  # retrieved here: the waiter re-raises it

    # -- reports ------------------------------------------------------------------

    def _on_online(self, _topic: str, payload: bytes) -> None:
        self._set_online(parse_bool_word(payload, "online"))

    def _availability_changed(self, online: bool) -> None:
        for relay in self._relays.values():
            if relay.set_available(online):
                self._notify(relay.relay_id)
        if not online:
            self._fail_waiters(
                DeviceUnavailable(f"{self.device_id}: device went offline", self.device_id)
            )

    def _on_announce(self, _topic: str, payload: bytes) -> None:
        data = parse_announce(payload)
        if data["id"] != self.mqtt_id:
            return  # another device on shellies/announce
        firmware = str(data.get("fw_ver")) if data.get("fw_ver") is not None else None
        if firmware != self.firmware or self._online is not True:
            # Announces come in pairs (shellies/announce and <base>/announce): log news only.
            self._log.info("device_announced", model=data.get("model"), fw_ver=firmware)
        self.firmware = firmware
        self._set_online(True)

    def _on_relay(self, channel: int, _topic: str, payload: bytes) -> None:
        word = payload.strip().lower()
        if word not in _STATES:
            raise PayloadError(f"relay state: expected on/off/overpower, got {word[:20]!r}")
        if word == b"overpower" and self._reported.get(channel) != word:
            self._log.warning("relay_overpower", channel=channel)
        self._reported[channel] = word
        self._apply(channel, on=_STATES[word])
        for target, fut in self._waiters.get(channel, []):
            if target is _STATES[word] and word != b"overpower" and not fut.done():
                fut.set_result(None)

    def _on_power(self, channel: int, _topic: str, payload: bytes) -> None:
        self._apply(channel, power_kw=parse_power_w(payload, "power") / 1000.0)

    def _on_energy(self, channel: int, _topic: str, payload: bytes) -> None:
        wmin = parse_number(payload, "energy")
        if wmin < 0:
            raise PayloadError(f"energy: negative counter {wmin}")
        self._apply(channel, energy_kwh=wmin / WMIN_PER_KWH)

    def _on_info(self, _topic: str, payload: bytes) -> None:
        """``info``: the ``/status`` JSON: ``relays[n].ison``, ``meters[n].power``/``total``."""
        data = load_json(payload, "info")
        if not isinstance(data, dict):
            raise PayloadError("info: not an object")
        relays = data.get("relays") or []
        meters = data.get("meters") or []
        if not isinstance(relays, list) or not isinstance(meters, list):
            raise PayloadError("info: relays/meters are not lists")
        for n in self._relays:
            values: dict[str, object] = {}
            if n < len(relays) and isinstance(relays[n], dict):
                ison = relays[n].get("ison")
                if isinstance(ison, bool):
                    values["on"] = ison and not relays[n].get("overpower", False)
            if n < len(meters) and isinstance(meters[n], dict):
                if self._profile.measures_power and "power" in meters[n]:
                    values["power_kw"] = parse_power_w(meters[n]["power"], "power") / 1000.0
                if self._profile.measures_energy and "total" in meters[n]:
                    values["energy_kwh"] = parse_number(meters[n]["total"], "total") / WMIN_PER_KWH
            if values:
                self._apply(n, **values)

    def _apply(self, channel: int, **values: object) -> None:
        self._seen()
        relay = self._relays[channel]
        if relay.update(self._clock.monotonic(), **values):
            self._notify(relay.relay_id)

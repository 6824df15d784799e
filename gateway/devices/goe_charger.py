"""go-eCharger (HOME+, HOMEfix, Gemini) through its API v2 over MQTT: a wallbox with a set point.

Reference: github.com/goecharger/go-eCharger-API-v2, ``mqtt-en.md`` and
``apikeys-en.md``. ``<base>`` is the topic base of the charger's keys,
``go-eCharger/<serial>`` by default (the device setting ``prefix``):

- the charger publishes each API key retained on ``<base>/<key>``, JSON
  encoded: ``frc`` forceState (Neutral=0, Off=1, On=2), ``amp`` requested
  current (A), ``nrg`` the energy array (index 11: total power, W), ``eto``
  total energy (Wh), ``car`` (Idle=1, Charging=2, WaitCar=3, Complete=4);
- ``<base>/mcc`` is its availability: retained ``true`` once connected, and
  its will ``false``;
- a write goes to ``<base>/<key>/set`` (JSON value; MQTT writes must be
  enabled in the app since firmware 051.5), and the charger answers on
  ``<base>/<key>/result``: ``success``, or why it refused.

``set(on)`` writes ``frc`` 2 (on) or 1 (off); ``set_power(kW)`` writes
``amp``, the largest whole current not above ``kW / (voltage x phases)``
within the model's range, so it never draws more than it was given. Each
write waits for its ``result`` for ``command_timeout_s`` (real seconds):
``DeviceError`` if refused or unanswered (``DeviceUnavailable`` when the
charger is offline or was never heard). A charger left in Neutral (0)
charges by its own logic: it counts as on, and the gateway stops it when
the load is idle.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable

import orjson

from gateway.config import DeviceSettings
from gateway.devices.base import ChangeListener, Clock, MqttPort, NetMeter, Relay
from gateway.devices.mqtt_device import (
    MqttDevice,
    PayloadError,
    SetPointChannel,
    load_json,
    parse_number,
    parse_power_w,
)
from gateway.errors import DeviceError, DeviceUnavailable
from gateway.profiles import GoeChargerV2

FORCE_ON = 2
FORCE_OFF = 1
WH_PER_KWH = 1000.0
NRG_TOTAL_POWER = 11


def _int(payload: bytes, what: str) -> int:
    value = load_json(payload, what)
    if isinstance(value, bool) or not isinstance(value, int):
        raise PayloadError(f"{what}: expected an integer, got {str(value)[:20]!r}")
    return value


def amps_for(power_kw: float, profile: GoeChargerV2, phases: int) -> int:
    """The largest whole current not above ``power_kw`` on ``phases``, within the model's range."""
    amps = math.floor(power_kw * 1000.0 / (profile.voltage_v * phases) + 1e-6)
    return min(max(amps, profile.min_current_a), profile.max_current_a)


class GoeCharger(MqttDevice):
    """One go-eCharger: one channel (``<device>/0``) that switches and takes a set point."""

    def __init__(
        self,
        settings: DeviceSettings,
        profile: GoeChargerV2,
        port: MqttPort,
        clock: Clock,
        on_change: ChangeListener,
    ) -> None:
        super().__init__(settings.id, port, clock, on_change)
        if not settings.prefix:
            raise ValueError(f"device {settings.id}: a go-e charger needs 'prefix'")
        self._base = settings.prefix.rstrip("/")
        self._profile = profile
        self._phases = settings.phases or profile.phases
        self._timeout_s = settings.command_timeout_s
        self._channel = SetPointChannel(f"{settings.id}/0", self._set, self._set_power)
        self._results: dict[str, list[asyncio.Future[str]]] = {}
        self.current_a: int | None = None
        """The requested current the charger last reported (``amp``)."""
        self.car_state: int | None = None
        self._log = self._log.bind(base=self._base)

    def relays(self) -> dict[int, Relay]:
        return {0: self._channel}

    def net_meter(self) -> NetMeter | None:
        return None

    async def start(self) -> None:
        """Subscribe to the keys we use (retained: the charger's state comes at once)."""
        self._running = True
        handlers: dict[str, Callable[[str, bytes], None]] = {
            "mcc": self._on_mcc,
            "frc": self._on_frc,
            "amp": self._on_amp,
            "car": self._on_car,
            "frc/result": self._on_result,
            "amp/result": self._on_result,
        }
        if self._profile.measures_power:
            handlers["nrg"] = self._on_nrg
        if self._profile.measures_energy:
            handlers["eto"] = self._on_eto
        for key, handler in handlers.items():
            self._subscribe(f"{self._base}/{key}", handler)
        self._log.info("device_started", phases=self._phases)

    async def stop(self) -> None:
        """Ignore further messages and fail pending writes."""
        self._running = False
        self._fail_pending(DeviceError(f"{self.device_id}: stopped", self.device_id))

    # -- commands ---------------------------------------------------------------

    async def _set(self, on: bool) -> None:
        await self._write("frc", FORCE_ON if on else FORCE_OFF)
        self._apply(on=on)
        self._log.info("charger_set", on=on)

    async def _set_power(self, power_kw: float) -> None:
        amps = amps_for(power_kw, self._profile, self._phases)
        await self._write("amp", amps)
        self.current_a = amps
        self._log.info("charger_current_set", power_kw=power_kw, amps=amps)

    async def _write(self, key: str, value: int) -> None:
        relay_id = self._channel.relay_id
        if self._online is False:
            raise DeviceUnavailable(f"{relay_id}: charger offline", self.device_id, 0)
        fut: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        waiters = self._results.setdefault(key, [])
        waiters.append(fut)
        try:
            self._port.publish(f"{self._base}/{key}/set", orjson.dumps(value))
            answer = await asyncio.wait_for(fut, self._timeout_s)
        except TimeoutError:
            msg = f"{relay_id}: no result for {key}={value} within {self._timeout_s:g} s"
            self._log.warning("command_timeout", key=key, value=value)
            if self._online is None:
                raise DeviceUnavailable(msg + "; nothing heard from the charger") from None
            raise DeviceError(msg, self.device_id, 0) from None
        finally:
            if fut in waiters:
                waiters.remove(fut)
            if not fut.done():
                fut.cancel()
        if answer != "success":
            self._log.warning("command_refused", key=key, value=value, result=answer[:120])
            raise DeviceError(f"{relay_id}: {key}={value} refused: {answer[:120]}",
                              self.device_id, 0)

    def _fail_pending(self, exc: DeviceError) -> None:
        for waiters in self._results.values():
            for fut in waiters:
                if not fut.done():
                    fut.set_exception(exc)
                    fut.exception()  # retrieved here: the waiter re-raises it

    # -- reports ------------------------------------------------------------------

    def _on_result(self, topic: str, payload: bytes) -> None:
        key = topic[len(self._base) + 1:].removesuffix("/result")
        # Shown unquoted in the reference (``success``); a JSON string is accepted too.
        answer = payload.decode("utf-8", errors="replace").strip().strip('"')
        for fut in self._results.get(key, []):
            if not fut.done():
                fut.set_result(answer)
                break  # one answer per write, in order

    def _on_mcc(self, _topic: str, payload: bytes) -> None:
        value = load_json(payload, "mcc")
        if not isinstance(value, bool):
            raise PayloadError(f"mcc: expected true/false, got {str(value)[:20]!r}", "not_a_flag")
        self._set_online(value)

    def _availability_changed(self, online: bool) -> None:
        if self._channel.set_available(online):
            self._notify(self._channel.relay_id)
        if not online:
            self._fail_pending(
                DeviceUnavailable(f"{self.device_id}: charger went offline", self.device_id)
            )

    def _on_frc(self, _topic: str, payload: bytes) -> None:
        state = _int(payload, "frc")
        if state not in (0, FORCE_OFF, FORCE_ON):
            raise PayloadError(f"frc: expected 0, 1 or 2, got {state}")
        self._apply(on=state != FORCE_OFF)

    def _on_amp(self, _topic: str, payload: bytes) -> None:
        self._seen()
        self.current_a = _int(payload, "amp")

    def _on_car(self, _topic: str, payload: bytes) -> None:
        value = load_json(payload, "car")
        self._seen()
        self.car_state = value if isinstance(value, int) and not isinstance(value, bool) else None

    def _on_nrg(self, _topic: str, payload: bytes) -> None:
        values = load_json(payload, "nrg")
        if not isinstance(values, list) or len(values) <= NRG_TOTAL_POWER:
            raise PayloadError("nrg: expected an array of at least 12 values")
        watts = parse_power_w(values[NRG_TOTAL_POWER], "nrg[11]")
        self._apply(power_kw=max(watts, 0.0) / 1000.0)

    def _on_eto(self, _topic: str, payload: bytes) -> None:
        wh = parse_number(load_json(payload, "eto"), "eto")
        if wh < 0:
            raise PayloadError(f"eto: negative counter {wh}")
        self._apply(energy_kwh=wh / WH_PER_KWH)

    def _apply(self, **values: object) -> None:
        self._seen()
        if self._channel.update(self._clock.monotonic(), **values):
            self._notify(self._channel.relay_id)

"""Simulated Shelly Gen1 devices: Plug S / 1PM and the Shelly EM (reference §1).

On connect a Gen1 device publishes its announce (``shellies/announce`` and
``shellies/<id>/announce``), then ``shellies/<id>/online`` = ``true``, then its
state; its will is ``online`` = ``false``, retained only with ``mqtt_retain``
(off by default, as on the device). It answers ``announce`` (announce + ``info``,
firmware >= 1.8.0), ``update`` (its state) and ``update_fw`` (ignored here) on
``shellies/command`` and ``shellies/<id>/command``, and republishes its state
every ``update_period_s`` (``mqtt_update_period``, 30 s by default). QoS 0
(``mqtt_max_qos`` defaults to 0).

[~] A relay change publishes ``relay/<n>`` and ``relay/<n>/power`` at once; an
``on`` to a relay already on publishes nothing (no change). The EM publishes a
clamp's values when ``set_power_w`` changes them (``publish_on_change``), and
every period.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass

import orjson

from gateway.sim.mqtt_device import SimLoad, SimMqttDevice

GEN1_FW = "20230913-114008/v1.14.0-gcb84623"
_GEN1_SWITCHES = {"SHPLG-S": ("shellyplug-s", 2500.0), "SHSW-PM": ("shelly1pm", 3500.0)}


def _f2(value: float) -> str:
    """Gen1 floats: ``37.71``."""
    return f"{value:.2f}"


class SimGen1Device(SimMqttDevice):
    """Announce, ``online``, commands and periodic state of a Gen1 device."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        mqtt_prefix: str,
        model: str,
        device_id: str | None,
        update_period_s: float,
        retain: bool,
        fw_ver: str,
        speed: float,
        seed: int | None,
    ) -> None:
        device_id = device_id or f"{random.Random(seed).getrandbits(24):06X}"
        self.mqtt_id = f"{mqtt_prefix}-{device_id}"
        self.base = f"shellies/{self.mqtt_id}"
        super().__init__(
            host,
            port,
            client_id=self.mqtt_id,
            will_topic=f"{self.base}/online",
            will_payload="false",
            will_retain=retain,
            qos=0,
            period_s=update_period_s,
            speed=speed,
            seed=seed,
        )
        self.model = model
        self.mac = ("C45BBE" + device_id.upper())[-12:].rjust(12, "0")
        self.fw_ver = fw_ver
        self.retain = retain
        self.ignore_commands = False
        """True: commands are received (and recorded) but not acted on: a hung device."""
        self.commands: list[tuple[str, str]] = []
        self._started_at = time.monotonic()

    def _subscriptions(self) -> list[str]:
        return ["shellies/command", f"{self.base}/command", *self._command_topics()]

    def _command_topics(self) -> list[str]:
        return []

    def _on_connected(self) -> None:
        self._publish_announce()
        self.publish(f"{self.base}/online", "true", retain=self.retain)
        self._publish_state()

    def _publish_announce(self) -> None:
        announce = orjson.dumps(
            {
                "id": self.mqtt_id,
                "model": self.model,
                "mac": self.mac,
                "ip": "192.168.1.50",
                "new_fw": False,
                "fw_ver": self.fw_ver,
            }
        )
        self.publish("shellies/announce", announce)
        self.publish(f"{self.base}/announce", announce)

    def _handle(self, topic: str, payload: bytes) -> None:
        self.commands.append((topic, payload.decode(errors="replace")))
        if topic in ("shellies/command", f"{self.base}/command"):
            word = payload.strip()
            if word == b"announce":
                self._publish_announce()
                self.publish(f"{self.base}/info", orjson.dumps(self._info()))
            elif word == b"update":
                self._advance()
                self._publish_state()
            else:
                self._log.info("sim_command_ignored", topic=topic, payload=payload[:40])
        elif self.ignore_commands:
            self._log.info("sim_command_dropped", topic=topic)
        else:
            self._handle_command(topic, payload)

    def _on_tick(self) -> None:
        self._advance()
        self._resample()
        self._publish_state()

    def _uptime_s(self) -> int:
        return int(time.monotonic() - self._started_at)

    # subclasses
    def _handle_command(self, topic: str, payload: bytes) -> None: ...
    def _advance(self) -> None: ...
    def _resample(self) -> None: ...
    def _publish_state(self) -> None: ...
    def _info(self) -> dict[str, object]:
        return {}


class SimShellyGen1Plug(SimGen1Device):
    """A Gen1 Plug S (``SHPLG-S``, 2500 W) or 1PM (``SHSW-PM``, 3500 W): one relay.

    ``energy_wmin`` is the starting ``relay/0/energy`` counter (watt-minutes).
    Switching on a load above the rating trips the relay: ``relay/0`` =
    ``overpower`` and ``relay/0/overpower_value``; the next ``on`` retries.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        model: str = "SHPLG-S",
        device_id: str | None = None,
        load: SimLoad | None = None,
        relay_on: bool = False,
        energy_wmin: float = 0.0,
        update_period_s: float = 30.0,
        retain: bool = False,
        fw_ver: str = GEN1_FW,
        speed: float = 1.0,
        seed: int | None = None,
    ) -> None:
        if model not in _GEN1_SWITCHES:
            raise ValueError(f"model {model!r}: one of {', '.join(_GEN1_SWITCHES)}")
        prefix, self.max_power_w = _GEN1_SWITCHES[model]
        super().__init__(
            host, port, mqtt_prefix=prefix, model=model, device_id=device_id,
            update_period_s=update_period_s, retain=retain, fw_ver=fw_ver, speed=speed, seed=seed,
        )
        self.load = load or SimLoad()
        self._relay_on = relay_on
        self._overpower_w: float | None = None
        self._energy_wmin = float(energy_wmin)
        self._power_w = self.load.draw_w(relay_on, self.rng)
        self._t = self.clock.now()
        self.temperature_c = 39.18

    # -- what a test or the demo sees and does ------------------------------------

    @property
    def relay_on(self) -> bool:
        return self._relay_on

    @property
    def overpowered(self) -> bool:
        return self._overpower_w is not None

    @property
    def power_w(self) -> float:
        return self._power_w

    @property
    def energy_wmin(self) -> float:
        with self._lock:
            self._advance()
            return self._energy_wmin

    def switch(self, on: bool) -> None:
        """The button on the device (not an MQTT command)."""
        with self._lock:
            self._switch(on)

    def set_satisfied(self, satisfied: bool) -> None:
        """The appliance's thermostat: satisfied = it draws about 0 W with the relay on."""
        with self._lock:
            self.load.satisfied = satisfied
            self._power_changed()

    def set_load_w(self, nominal_w: float) -> None:
        with self._lock:
            self.load.nominal_w = nominal_w
            self._power_changed()

    def publish_state(self) -> None:
        """Publish the full state now (as the periodic update does)."""
        with self._lock:
            self._advance()
            self._publish_state()

    # -- device behaviour -------------------------------------------------------------

    def _command_topics(self) -> list[str]:
        return [f"{self.base}/relay/0/command"]

    def _handle_command(self, topic: str, payload: bytes) -> None:
        word = payload.strip()
        if word == b"toggle":
            self._switch(not self._relay_on)
        elif word in (b"on", b"off"):
            self._switch(word == b"on")
        else:
            self._log.info("sim_command_ignored", topic=topic, payload=payload[:40])

    def _switch(self, on: bool) -> None:
        self._advance()
        changed = on != self._relay_on or self._overpower_w is not None
        self._relay_on = on
        self._overpower_w = None
        self._resample()
        if changed:
            self._publish_relay()
            self.publish(f"{self.base}/relay/0/power", _f2(self._power_w))

    def _power_changed(self) -> None:
        self._advance()
        before = self._power_w, self._overpower_w
        self._resample()
        if (self._power_w, self._overpower_w) != before:
            if self._overpower_w is not None and before[1] is None:
                self._publish_relay()
            self.publish(f"{self.base}/relay/0/power", _f2(self._power_w))

    def _advance(self) -> None:
        now = self.clock.now()
        self._energy_wmin += self._power_w * (now - self._t) / 60.0
        self._t = now

    def _resample(self) -> None:
        draw = self.load.draw_w(self._relay_on, self.rng)
        if self._relay_on and draw > self.max_power_w:
            self._relay_on = False
            self._overpower_w = round(draw, 2)
            draw = 0.0
            self._log.info("sim_overpower", power_w=self._overpower_w)
        self._power_w = draw

    def _relay_word(self) -> str:
        if self._overpower_w is not None:
            return "overpower"
        return "on" if self._relay_on else "off"

    def _publish_relay(self) -> None:
        self.publish(f"{self.base}/relay/0", self._relay_word())
        if self._overpower_w is not None:
            self.publish(f"{self.base}/relay/0/overpower_value", _f2(self._overpower_w))

    def _publish_state(self) -> None:
        base = self.base
        self._publish_relay()
        self.publish(f"{base}/relay/0/power", _f2(self._power_w))
        self.publish(f"{base}/relay/0/energy", str(int(self._energy_wmin)))
        self.publish(f"{base}/temperature", _f2(self.temperature_c))
        self.publish(f"{base}/temperature_f", _f2(self.temperature_c * 9 / 5 + 32))
        self.publish(f"{base}/overtemperature", "0")
        if self.model == "SHSW-PM":
            self.publish(f"{base}/temperature_status", "Normal")
            self.publish(f"{base}/input/0", "0")

    def _info(self) -> dict[str, object]:
        return {
            "relays": [
                {
                    "ison": self._relay_on,
                    "has_timer": False,
                    "timer_started": 0,
                    "timer_duration": 0,
                    "timer_remaining": 0,
                    "overpower": self._overpower_w is not None,
                    "source": "mqtt",
                }
            ],
            "meters": [
                {
                    "power": round(self._power_w, 2),
                    "overpower": self._overpower_w or 0.0,
                    "is_valid": True,
                    "timestamp": int(self.clock.now()),
                    "counters": [round(self._power_w, 2)] * 3,
                    "total": int(self._energy_wmin),
                }
            ],
            "temperature": self.temperature_c,
            "overtemperature": False,
            "tmp": {
                "tC": self.temperature_c,
                "tF": round(self.temperature_c * 9 / 5 + 32, 2),
                "is_valid": True,
            },
            "mqtt": {"connected": True},
            "uptime": self._uptime_s(),
        }


@dataclass
class _Clamp:
    power_w: float = 0.0
    voltage_v: float = 230.5
    energy_wmin: float = 0.0  # imported, watt-minutes (reset at reboot)
    returned_wmin: float = 0.0
    total_wh: float = 0.0  # imported, Wh (non-volatile)
    total_returned_wh: float = 0.0


class SimShellyEm(SimGen1Device):
    """A Gen1 Shelly EM (``SHEM``): two clamps, ``emeter/<i>/power`` in W (+ = import).

    Topics (Shelly Gen1 API, "Shelly EM: MQTT"): ``emeter/<i>/power``,
    ``reactive_power``, ``voltage``, ``pf``, ``energy`` and ``returned_energy``
    (watt-minutes), ``total`` and ``total_returned`` (Wh); ``relay/0`` is the
    contactor output (``on``/``off``, commands on ``relay/0/command``).
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        device_id: str | None = None,
        power_w: tuple[float, float] = (0.0, 0.0),
        update_period_s: float = 30.0,
        publish_on_change: bool = True,
        retain: bool = False,
        fw_ver: str = GEN1_FW,
        speed: float = 1.0,
        seed: int | None = None,
    ) -> None:
        super().__init__(
            host, port, mqtt_prefix="shellyem", model="SHEM", device_id=device_id,
            update_period_s=update_period_s, retain=retain, fw_ver=fw_ver, speed=speed, seed=seed,
        )
        self.publish_on_change = publish_on_change
        self.clamps = [_Clamp(power_w=p) for p in power_w]
        self.relay_on = False
        self._t = self.clock.now()

    def set_power_w(self, power_w: float, channel: int = 0) -> None:
        """The power through a clamp in W: > 0 the home imports, < 0 it exports."""
        with self._lock:
            self._advance()
            self.clamps[channel].power_w = float(power_w)
            if self.publish_on_change:
                self._publish_clamp(channel)

    def total_wh(self, channel: int = 0) -> tuple[float, float]:
        """(imported, returned) Wh of a clamp."""
        with self._lock:
            self._advance()
            clamp = self.clamps[channel]
            return clamp.total_wh, clamp.total_returned_wh

    def _command_topics(self) -> list[str]:
        return [f"{self.base}/relay/0/command"]

    def _handle_command(self, topic: str, payload: bytes) -> None:
        word = payload.strip()
        if word not in (b"on", b"off", b"toggle"):
            return
        on = not self.relay_on if word == b"toggle" else word == b"on"
        if on != self.relay_on:
            self.relay_on = on
            self.publish(f"{self.base}/relay/0", "on" if on else "off")

    def _advance(self) -> None:
        now = self.clock.now()
        dt_s = now - self._t
        self._t = now
        for clamp in self.clamps:
            wmin = clamp.power_w * dt_s / 60.0
            if wmin >= 0:
                clamp.energy_wmin += wmin
                clamp.total_wh += wmin / 60.0
            else:
                clamp.returned_wmin -= wmin
                clamp.total_returned_wh -= wmin / 60.0

    def _publish_clamp(self, i: int) -> None:
        clamp = self.clamps[i]
        topic = f"{self.base}/emeter/{i}"
        pf = 0.97 if clamp.power_w else 0.0
        self.publish(f"{topic}/power", _f2(clamp.power_w))
        self.publish(f"{topic}/reactive_power", _f2(abs(clamp.power_w) * 0.25))
        self.publish(f"{topic}/voltage", _f2(clamp.voltage_v))
        self.publish(f"{topic}/pf", _f2(pf))
        self.publish(f"{topic}/energy", str(int(clamp.energy_wmin)))
        self.publish(f"{topic}/returned_energy", str(int(clamp.returned_wmin)))
        self.publish(f"{topic}/total", _f2(clamp.total_wh))
        self.publish(f"{topic}/total_returned", _f2(clamp.total_returned_wh))

    def _publish_state(self) -> None:
        self.publish(f"{self.base}/relay/0", "on" if self.relay_on else "off")
        for i in range(len(self.clamps)):
            self._publish_clamp(i)

    def _info(self) -> dict[str, object]:
        return {
            "relays": [{"ison": self.relay_on, "has_timer": False, "overpower": False,
                        "is_valid": True, "source": "mqtt"}],
            "emeters": [
                {"power": round(c.power_w, 2), "reactive": round(abs(c.power_w) * 0.25, 2),
                 "pf": 0.97 if c.power_w else 0.0, "voltage": c.voltage_v, "is_valid": True,
                 "total": round(c.total_wh, 2), "total_returned": round(c.total_returned_wh, 2)}
                for c in self.clamps
            ],
            "mqtt": {"connected": True},
            "uptime": self._uptime_s(),
        }

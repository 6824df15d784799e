"""Simulated Shelly Gen2+ devices: switches (Plus Plug S, Plus 1PM, Pro 4PM) and the Pro 3EM.

As the reference §2 describes them:

- the will is ``<prefix>/online`` = ``false``, retained, QoS 1; on connect the
  device publishes ``online`` = ``true`` (retained), then ``NotifyFullStatus``
  on ``<prefix>/events/rpc`` (``rpc_ntf``, default on) and each component on
  ``<prefix>/status/<component>`` (``status_ntf``, default off);
- RPC requests on ``<prefix>/rpc`` (``enable_rpc``) are answered on
  ``<src>/rpc`` with ``{"id", "src": <device id>, "dst": <src>, "result"}`` or
  ``"error": {"code", "message"}``: -103 for a missing or bad argument, -105
  for an unknown component id, -114 for an unknown method (404 "No handler
  for …" with ``legacy_errors``, as older firmware does). A frame without
  ``src`` or ``id`` cannot be answered and is dropped;
- a change is notified with ``NotifyStatus`` carrying only the changed keys
  (after the RPC reply that caused it), and ``aenergy`` rolls every minute
  (``period_s`` = 60: one ``NotifyStatus`` per switch with ``apower`` and
  ``aenergy``).

``SimShellyPro3Em`` (the meter) is in ``gateway.sim.shelly_pro3em``.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from gateway.sim.mqtt_device import SimLoad, SimMqttDevice

GEN2_FW = "1.4.4"
Method = Callable[[dict[str, Any]], Any]

# model -> (id prefix, app, channels, rating W)
_SWITCH_MODELS = {
    "SNPL-00112EU": ("shellyplusplugs", "PlugS", 1, 2500.0),
    "SNSW-001P16EU": ("shellyplus1pm", "Plus1PM", 1, 3500.0),
    "SPSW-104PE16EU": ("shellypro4pm", "Pro4PM", 4, 3500.0),
}


class RpcFault(Exception):
    """An RPC error reply: Shelly's ``code`` and ``message``."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def component_id(params: dict[str, Any], count: int) -> int:
    """``params["id"]`` as a component index, with the device's errors."""
    if "id" not in params:
        raise RpcFault(-103, "Missing required 'id'")
    cid = params["id"]
    if isinstance(cid, bool) or not isinstance(cid, int) or not 0 <= cid < count:
        raise RpcFault(-105, f"Argument 'id', value {cid} not found!")
    return cid


class SimGen2Device(SimMqttDevice):
    """The RPC endpoint, notifications and ``online`` of a Gen2 device."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        id_prefix: str,
        model: str,
        app: str,
        device_id: str | None,
        topic_prefix: str | None,
        rpc_ntf: bool,
        status_ntf: bool,
        enable_rpc: bool,
        legacy_errors: bool,
        period_s: float,
        speed: float,
        seed: int | None,
    ) -> None:
        self.mac = device_id or f"{random.Random(seed).getrandbits(48):012x}"
        self.device_id = f"{id_prefix}-{self.mac.lower()}"
        self.prefix = topic_prefix or self.device_id
        super().__init__(
            host,
            port,
            client_id=self.device_id,
            will_topic=f"{self.prefix}/online",
            will_payload="false",
            will_retain=True,
            qos=1,
            period_s=period_s,
            speed=speed,
            seed=seed,
        )
        self.model = model
        self.app = app
        self.rpc_ntf = rpc_ntf
        self.status_ntf = status_ntf
        self.enable_rpc = enable_rpc
        self.legacy_errors = legacy_errors
        self.answer_rpc = True
        """False: requests are recorded but never answered (a hung device)."""
        self.requests: list[dict[str, Any]] = []
        self._started_unix = self.clock.now()

    # -- connection ---------------------------------------------------------------

    def _subscriptions(self) -> list[str]:
        topics = [f"{self.prefix}/rpc"] if self.enable_rpc else []
        return topics + self._control_topics()

    def _control_topics(self) -> list[str]:
        return []

    def _on_connected(self) -> None:
        self.publish(f"{self.prefix}/online", "true", retain=True)
        self._advance()
        status = self._full_status()
        if self.rpc_ntf:
            self._notify("NotifyFullStatus", status)
        if self.status_ntf:
            for key, value in status.items():
                self.publish(f"{self.prefix}/status/{key}", orjson.dumps(value))

    # -- RPC ------------------------------------------------------------------------

    def _handle(self, topic: str, payload: bytes) -> None:
        if topic == f"{self.prefix}/rpc":
            self._handle_rpc(payload)
        else:
            self._handle_control(topic, payload)

    def _handle_control(self, topic: str, payload: bytes) -> None: ...

    def _handle_rpc(self, payload: bytes) -> None:
        try:
            frame = orjson.loads(payload)
        except orjson.JSONDecodeError:
            self._log.info("sim_rpc_dropped", reason="not JSON", payload=payload[:80])
            return
        if not isinstance(frame, dict):
            self._log.info("sim_rpc_dropped", reason="not an object")
            return
        self.requests.append(frame)
        src, rpc_id = frame.get("src"), frame.get("id")
        if not isinstance(src, str) or not src or rpc_id is None or isinstance(rpc_id, bool):
            self._log.info("sim_rpc_dropped", reason="no src or id")
            return
        if not self.answer_rpc:
            return
        after: list[Callable[[], None]] = []
        try:
            method = frame.get("method")
            if not isinstance(method, str):
                raise RpcFault(-103, "Missing required 'method'")
            params = frame.get("params") or {}
            if not isinstance(params, dict):
                raise RpcFault(-103, "Invalid argument 'params'")
            handler = self._methods(after).get(method)
            if handler is None:
                if self.legacy_errors:
                    raise RpcFault(404, f"No handler for {method}")
                raise RpcFault(-114, f"Method {method} failed: Method not found!")
            reply: dict[str, Any] = {"result": handler(params)}
        except RpcFault as fault:
            reply = {"error": {"code": fault.code, "message": fault.message}}
        frame_out = {"id": rpc_id, "src": self.device_id, "dst": src, **reply}
        self.publish(f"{src}/rpc", orjson.dumps(frame_out))
        for step in after:  # notifications follow the reply, as on the device
            step()

    def _methods(self, after: list[Callable[[], None]]) -> dict[str, Method]:
        return {
            "Shelly.GetStatus": lambda p: self._full_status(),
            "Shelly.GetDeviceInfo": lambda p: self._device_info(),
        }

    def _device_info(self) -> dict[str, Any]:
        return {
            "name": None,
            "id": self.device_id,
            "mac": self.mac.upper(),
            "slot": 0,
            "model": self.model,
            "gen": 2,
            "fw_id": f"20240625-122901/{GEN2_FW}-g8d7d5d2",
            "ver": GEN2_FW,
            "app": self.app,
            "auth_en": False,
            "auth_domain": None,
        }

    # -- notifications --------------------------------------------------------------

    def _notify(self, method: str, params: dict[str, Any]) -> None:
        frame = {
            "src": self.device_id,
            "dst": f"{self.prefix}/events",
            "method": method,
            "params": {"ts": round(self.clock.now(), 2), **params},
        }
        self.publish(f"{self.prefix}/events/rpc", orjson.dumps(frame))

    def _changed(self, key: str, changes: dict[str, Any], full: dict[str, Any]) -> None:
        """Notify a component's changed keys (rpc_ntf) and its full status (status_ntf)."""
        if self.rpc_ntf:
            self._notify("NotifyStatus", {key: changes})
        if self.status_ntf:
            self.publish(f"{self.prefix}/status/{key}", orjson.dumps(full))

    def _full_status(self) -> dict[str, Any]:
        now = self.clock.now()
        return {
            **self._components(),
            "sys": {
                "mac": self.mac.upper(),
                "restart_required": False,
                "unixtime": int(now),
                "uptime": int(now - self._started_unix),
                "available_updates": {},
            },
            "mqtt": {"connected": True},
        }

    def _components(self) -> dict[str, Any]:
        return {}

    def _advance(self) -> None: ...


@dataclass
class _Switch:
    load: SimLoad
    output: bool = False
    source: str = "init"
    power_w: float = 0.0
    energy_wh: float = 0.0
    voltage_v: float = 231.2
    by_minute_mwh: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])
    minute_mwh: float = 0.0
    minute_ts: int = 0
    errors: list[str] = field(default_factory=list)


class SimShellyGen2Switch(SimGen2Device):
    """A Gen2 switch: ``SNPL-00112EU`` (Plus Plug S), ``SNSW-001P16EU`` (Plus 1PM),
    ``SPSW-104PE16EU`` (Pro 4PM, 4 channels).

    ``loads`` are the appliances behind the channels (one ``SimLoad`` each);
    ``aenergy_wh`` the starting ``aenergy.total`` per channel (Wh).
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        model: str = "SNPL-00112EU",
        channels: int | None = None,
        device_id: str | None = None,
        topic_prefix: str | None = None,
        loads: list[SimLoad] | None = None,
        aenergy_wh: float | list[float] = 0.0,
        rpc_ntf: bool = True,
        status_ntf: bool = False,
        enable_rpc: bool = True,
        enable_control: bool = True,
        legacy_errors: bool = False,
        period_s: float = 60.0,
        speed: float = 1.0,
        seed: int | None = None,
    ) -> None:
        if model not in _SWITCH_MODELS:
            raise ValueError(f"model {model!r}: one of {', '.join(_SWITCH_MODELS)}")
        id_prefix, app, default_channels, self.max_power_w = _SWITCH_MODELS[model]
        super().__init__(
            host, port, id_prefix=id_prefix, model=model, app=app, device_id=device_id,
            topic_prefix=topic_prefix, rpc_ntf=rpc_ntf, status_ntf=status_ntf,
            enable_rpc=enable_rpc, legacy_errors=legacy_errors, period_s=period_s,
            speed=speed, seed=seed,
        )
        count = channels or default_channels
        loads = loads or [SimLoad() for _ in range(count)]
        if len(loads) != count:
            raise ValueError(f"{count} channels need {count} loads, got {len(loads)}")
        energies = aenergy_wh if isinstance(aenergy_wh, list) else [aenergy_wh] * count
        self.enable_control = enable_control
        self._t = self._started_unix
        self._switches = [
            _Switch(load=ld, energy_wh=float(e), minute_ts=int(self._t // 60 * 60))
            for ld, e in zip(loads, energies, strict=True)
        ]

    # -- what a test or the demo sees and does ------------------------------------

    @property
    def channels(self) -> int:
        return len(self._switches)

    def output(self, channel: int = 0) -> bool:
        return self._switches[channel].output

    def power_w(self, channel: int = 0) -> float:
        return self._switches[channel].power_w

    def energy_wh(self, channel: int = 0) -> float:
        with self._lock:
            self._advance()
            return self._switches[channel].energy_wh

    def load(self, channel: int = 0) -> SimLoad:
        return self._switches[channel].load

    def switch(self, on: bool, channel: int = 0) -> None:
        """The button / input of a channel (``source`` = ``button``)."""
        with self._lock:
            self._set_output(channel, on, "button")()

    def set_satisfied(self, satisfied: bool, channel: int = 0) -> None:
        """The appliance's thermostat: satisfied = about 0 W with the relay on."""
        with self._lock:
            self._switches[channel].load.satisfied = satisfied
            self._power_changed(channel)

    def set_load_w(self, nominal_w: float, channel: int = 0) -> None:
        with self._lock:
            self._switches[channel].load.nominal_w = nominal_w
            self._power_changed(channel)

    # -- device behaviour -------------------------------------------------------------

    def _control_topics(self) -> list[str]:
        if not self.enable_control:
            return []
        return [f"{self.prefix}/command/switch:{n}" for n in range(self.channels)]

    def _handle_control(self, topic: str, payload: bytes) -> None:
        channel = int(topic.rpartition(":")[2])
        word = payload.strip()
        if word in (b"on", b"off", b"toggle"):
            on = not self._switches[channel].output if word == b"toggle" else word == b"on"
            self._set_output(channel, on, "MQTT")()

    def _methods(self, after: list[Callable[[], None]]) -> dict[str, Method]:
        def switch_set(params: dict[str, Any]) -> dict[str, Any]:
            n = component_id(params, self.channels)
            if "on" not in params:
                raise RpcFault(-103, "Missing required 'on'")
            if not isinstance(params["on"], bool):
                raise RpcFault(-103, "Invalid argument 'on': expected boolean")
            was_on = self._switches[n].output
            after.append(self._set_output(n, params["on"], "MQTT"))
            return {"was_on": was_on}

        def switch_toggle(params: dict[str, Any]) -> dict[str, Any]:
            n = component_id(params, self.channels)
            was_on = self._switches[n].output
            after.append(self._set_output(n, not was_on, "MQTT"))
            return {"was_on": was_on}

        def switch_get_status(params: dict[str, Any]) -> dict[str, Any]:
            n = component_id(params, self.channels)
            self._advance()
            return self._status(n)

        return {
            **super()._methods(after),
            "Switch.Set": switch_set,
            "Switch.Toggle": switch_toggle,
            "Switch.GetStatus": switch_get_status,
        }

    def _set_output(self, n: int, on: bool, source: str) -> Callable[[], None]:
        """Switch channel ``n`` now; returns the notifications to send (after a reply)."""
        sw = self._switches[n]
        self._advance()
        changed = sw.output != on
        sw.output = on
        sw.source = source
        if on:
            sw.errors = []
        before_w = sw.power_w
        tripped = self._resample(n)

        def notify() -> None:
            if changed or tripped:
                self._changed(
                    f"switch:{n}", {"id": n, "output": sw.output, "source": source}, self._status(n)
                )
            if sw.power_w != before_w:
                self._changed(f"switch:{n}", self._power_keys(n), self._status(n))

        return notify

    def _power_changed(self, n: int) -> None:
        self._advance()
        before = self._switches[n].power_w
        if self._resample(n):
            sw = self._switches[n]
            self._changed(f"switch:{n}", {"id": n, "output": False, "errors": sw.errors},
                          self._status(n))
        if self._switches[n].power_w != before:
            self._changed(f"switch:{n}", self._power_keys(n), self._status(n))

    def _resample(self, n: int) -> bool:
        """New measured power; True when the channel tripped on overpower."""
        sw = self._switches[n]
        draw = sw.load.draw_w(sw.output, self.rng)
        if sw.output and draw > self.max_power_w:
            sw.output = False
            sw.errors = ["overpower"]
            sw.power_w = 0.0
            self._log.info("sim_overpower", channel=n, power_w=round(draw, 1))
            return True
        sw.power_w = round(draw, 1)
        return False

    def _on_tick(self) -> None:
        self._advance()
        for n in range(self.channels):
            self._resample(n)
            sw = self._switches[n]
            changes = {**self._power_keys(n), "aenergy": self._aenergy(sw)}
            self._changed(f"switch:{n}", changes, self._status(n))

    def _advance(self) -> None:
        """Accumulate energy up to now; roll ``by_minute`` at each whole minute."""
        now = self.clock.now()
        for sw in self._switches:
            t = self._t
            if now - t > 180:  # a long gap (fast clock): no per-minute detail
                sw.energy_wh += sw.power_w * (now - t) / 3600.0
                per_min = round(sw.power_w * 60 / 3.6, 3)
                sw.by_minute_mwh = [per_min] * 3
                sw.minute_mwh = 0.0
                sw.minute_ts = int(now // 60 * 60)
                continue
            while t < now:
                minute_end = (t // 60 + 1) * 60
                seg_end = min(now, minute_end)
                wh = sw.power_w * (seg_end - t) / 3600.0
                sw.energy_wh += wh
                sw.minute_mwh += wh * 1000.0
                if seg_end >= minute_end:
                    sw.by_minute_mwh = [round(sw.minute_mwh, 3), *sw.by_minute_mwh[:2]]
                    sw.minute_mwh = 0.0
                    sw.minute_ts = int(minute_end)
                t = seg_end
        self._t = now

    def _aenergy(self, sw: _Switch) -> dict[str, Any]:
        return {
            "total": round(sw.energy_wh, 3),
            "by_minute": list(sw.by_minute_mwh),
            "minute_ts": sw.minute_ts,
        }

    def _power_keys(self, n: int) -> dict[str, Any]:
        sw = self._switches[n]
        return {"id": n, "apower": sw.power_w, "current": round(sw.power_w / sw.voltage_v, 3)}

    def _status(self, n: int) -> dict[str, Any]:
        sw = self._switches[n]
        status: dict[str, Any] = {
            "id": n,
            "source": sw.source,
            "output": sw.output,
            "apower": sw.power_w,
            "voltage": sw.voltage_v,
            "current": round(sw.power_w / sw.voltage_v, 3),
            "aenergy": self._aenergy(sw),
            "temperature": {"tC": 40.5, "tF": 104.9},
        }
        if sw.errors:
            status["errors"] = list(sw.errors)
        return status

    def _components(self) -> dict[str, Any]:
        return {f"switch:{n}": self._status(n) for n in range(self.channels)}

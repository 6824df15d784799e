"""Simulated Shelly Pro 3EM (Gen2, ``SPEM-003CEBEU``): the home's three-phase grid meter.

Same MQTT and RPC behaviour as the other Gen2 simulators (``gateway.sim.shelly_gen2``).
Components: ``em:0`` (per-phase and total active power, W, > 0 = import) and
``emdata:0`` (imported/returned energy, Wh); methods ``EM.GetStatus``,
``EMData.GetStatus`` (``{"id": 0}``), ``Shelly.GetStatus``, ``Shelly.GetDeviceInfo``.

[~] It notifies ``em:0`` when ``set_power_w`` changes it (the real device does
on a 5 % / 10 W change) and every ``period_s`` with ``emdata:0`` and ``em:0``'s
powers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gateway.sim.shelly_gen2 import Method, SimGen2Device, component_id


class SimShellyPro3Em(SimGen2Device):
    """A Pro 3EM (``SPEM-003CEBEU``): ``em:0`` with per-phase and total active power (W).

    ``set_power_w(total)`` splits the power evenly over the three phases;
    ``set_phase_powers_w(a, b, c)`` sets them one by one. Positive = import.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        device_id: str | None = None,
        topic_prefix: str | None = None,
        power_w: float = 0.0,
        rpc_ntf: bool = True,
        status_ntf: bool = False,
        enable_rpc: bool = True,
        legacy_errors: bool = False,
        period_s: float = 60.0,
        speed: float = 1.0,
        seed: int | None = None,
    ) -> None:
        super().__init__(
            host, port, id_prefix="shellypro3em", model="SPEM-003CEBEU", app="Pro3EM",
            device_id=device_id, topic_prefix=topic_prefix, rpc_ntf=rpc_ntf,
            status_ntf=status_ntf, enable_rpc=enable_rpc, legacy_errors=legacy_errors,
            period_s=period_s, speed=speed, seed=seed,
        )
        self._t = self._started_unix
        self._phase_w = [power_w / 3.0] * 3
        self._voltage_v = [230.1, 231.4, 229.8]
        self._import_wh = [0.0, 0.0, 0.0]
        self._export_wh = [0.0, 0.0, 0.0]

    @property
    def total_power_w(self) -> float:
        return sum(self._phase_w)

    def set_power_w(self, power_w: float) -> None:
        """The home's total power in W (> 0 imports), split evenly over the phases."""
        self.set_phase_powers_w(power_w / 3.0, power_w / 3.0, power_w / 3.0)

    def set_phase_powers_w(self, a: float, b: float, c: float) -> None:
        with self._lock:
            self._advance()
            before = list(self._phase_w)
            self._phase_w = [float(a), float(b), float(c)]
            if self._phase_w != before:
                self._changed("em:0", self._power_keys(), self._em_status())

    def energy_wh(self) -> tuple[float, float]:
        """(imported, exported) Wh over all phases."""
        with self._lock:
            self._advance()
            return sum(self._import_wh), sum(self._export_wh)

    def _methods(self, after: list[Callable[[], None]]) -> dict[str, Method]:
        def em_status(params: dict[str, Any]) -> dict[str, Any]:
            component_id(params, 1)
            return self._em_status()

        def emdata_status(params: dict[str, Any]) -> dict[str, Any]:
            component_id(params, 1)
            self._advance()
            return self._emdata_status()

        return {**super()._methods(after), "EM.GetStatus": em_status,
                "EMData.GetStatus": emdata_status}

    def _advance(self) -> None:
        now = self.clock.now()
        dt_h = (now - self._t) / 3600.0
        self._t = now
        for i, p in enumerate(self._phase_w):
            if p >= 0:
                self._import_wh[i] += p * dt_h
            else:
                self._export_wh[i] -= p * dt_h

    def _on_tick(self) -> None:
        self._advance()
        self._changed("em:0", self._power_keys(), self._em_status())
        self._changed("emdata:0", self._emdata_status(), self._emdata_status())

    def _power_keys(self) -> dict[str, Any]:
        keys: dict[str, Any] = {"id": 0}
        for name, p, v in zip("abc", self._phase_w, self._voltage_v, strict=True):
            keys[f"{name}_act_power"] = round(p, 1)
            keys[f"{name}_current"] = round(abs(p) / v, 3)
        keys["total_act_power"] = round(sum(self._phase_w), 3)
        keys["total_current"] = round(sum(abs(p) / v for p, v in
                                          zip(self._phase_w, self._voltage_v, strict=True)), 3)
        return keys

    def _em_status(self) -> dict[str, Any]:
        status: dict[str, Any] = {"id": 0}
        for name, p, v in zip("abc", self._phase_w, self._voltage_v, strict=True):
            status.update({
                f"{name}_current": round(abs(p) / v, 3),
                f"{name}_voltage": v,
                f"{name}_act_power": round(p, 1),
                f"{name}_aprt_power": round(abs(p) * 1.02, 1),
                f"{name}_pf": 0.98 if p else 0.0,
                f"{name}_freq": 50.0,
            })
        status.update({
            "n_current": None,
            "total_current": self._power_keys()["total_current"],
            "total_act_power": round(sum(self._phase_w), 3),
            "total_aprt_power": round(sum(abs(p) * 1.02 for p in self._phase_w), 3),
            "user_calibrated_phase": [],
        })
        return status

    def _emdata_status(self) -> dict[str, Any]:
        status: dict[str, Any] = {"id": 0}
        for name, imp, exp in zip("abc", self._import_wh, self._export_wh, strict=True):
            status[f"{name}_total_act_energy"] = round(imp, 2)
            status[f"{name}_total_act_ret_energy"] = round(exp, 2)
        status["total_act"] = round(sum(self._import_wh), 2)
        status["total_act_ret"] = round(sum(self._export_wh), 2)
        return status

    def _components(self) -> dict[str, Any]:
        return {"em:0": self._em_status(), "emdata:0": self._emdata_status()}

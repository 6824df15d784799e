"""A simulated go-eCharger speaking its API v2 over MQTT (go-eCharger-API-v2, mqtt-en.md).

On connect it publishes, retained, ``<base>/mcc`` = ``true`` (its will is
``false``, retained), then its keys: ``frc``, ``amp``, ``car``, ``nrg`` and
``eto``, JSON encoded. It takes writes on ``<base>/<key>/set`` for ``frc``
(0, 1, 2) and ``amp`` (its current range), answers each on
``<base>/<key>/result`` (``success``, or why not: not JSON, wrong type, out
of range, a key it does not write, or MQTT writes disabled: ``read_only``,
the app's setting), and republishes the key. Every
``period_s`` it republishes ``nrg`` and ``eto``.

The car behind it draws ``amp x voltage x phases`` while the charger is
forced on (``frc`` 2, or Neutral 0) and a car that still wants energy is
plugged in; ``nrg[11]`` is that power in W with a little noise, and ``eto``
(Wh) accumulates it in simulated time.
"""

from __future__ import annotations

import orjson

from gateway.sim.mqtt_device import SimMqttDevice

NRG_LEN = 16


class SimGoeCharger(SimMqttDevice):
    """One go-eCharger and the car plugged into it."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        serial: str = "000001",
        topic_prefix: str = "go-eCharger",
        min_current_a: int = 6,
        max_current_a: int = 16,
        phases: int = 3,
        voltage_v: float = 230.0,
        force_state: int = 0,
        current_a: int = 16,
        car_connected: bool = True,
        car_full: bool = False,
        energy_wh: float = 0.0,
        noise_ratio: float = 0.002,
        period_s: float = 5.0,
        speed: float = 1.0,
        seed: int | None = None,
    ) -> None:
        self.base = f"{topic_prefix}/{serial}"
        super().__init__(
            host, port, client_id=f"go-echarger_{serial}", will_topic=f"{self.base}/mcc",
            will_payload="false", will_retain=True, qos=1, period_s=period_s, speed=speed,
            seed=seed,
        )
        self.min_current_a = min_current_a
        self.max_current_a = max_current_a
        self.phases = phases
        self.voltage_v = voltage_v
        self.force_state = force_state
        self.current_a = current_a
        self.car_connected = car_connected
        self.car_full = car_full
        self.noise_ratio = noise_ratio
        self.read_only = False
        """MQTT writes disabled in the app (``mcr``): every write is refused."""
        self.writes: list[tuple[str, str]] = []
        """Every ``<key>/set`` received, in order: (key, payload)."""
        self._energy_wh = float(energy_wh)
        self._t = self.clock.now()

    # -- what a test or the demo sees and does ------------------------------------

    @property
    def charging(self) -> bool:
        return self.force_state != 1 and self.car_connected and not self.car_full

    @property
    def power_w(self) -> float:
        """What the car draws now (no noise)."""
        return self.current_a * self.voltage_v * self.phases if self.charging else 0.0

    @property
    def energy_wh(self) -> float:
        with self._lock:
            self._advance()
            return self._energy_wh

    def plug(self, connected: bool = True, full: bool = False) -> None:
        """A car plugged in (or out), or its battery full."""
        with self._lock:
            self._advance()
            self.car_connected, self.car_full = connected, full
            self._publish_state()

    # -- MQTT -------------------------------------------------------------------

    def _subscriptions(self) -> list[str]:
        return [f"{self.base}/+/set"]

    def _on_connected(self) -> None:
        self.publish(f"{self.base}/mcc", "true", retain=True)
        self._publish_state()

    def _handle(self, topic: str, payload: bytes) -> None:
        key = topic[len(self.base) + 1:].removesuffix("/set")
        self.writes.append((key, payload.decode(errors="replace")))
        answer = self._write(key, payload)
        self.publish(f"{self.base}/{key}/result", answer)
        if answer == "success":
            self._publish_state()

    def _write(self, key: str, payload: bytes) -> str:
        if self.read_only:
            return "mqtt writes are disabled"
        try:
            value = orjson.loads(payload)
        except orjson.JSONDecodeError as exc:
            return f"invalid json {exc}"
        if key not in ("frc", "amp"):
            return f"key {key} not writable here"
        if isinstance(value, bool) or not isinstance(value, int):
            return f"value must be integer {payload.decode(errors='replace')}"
        self._advance()
        if key == "frc":
            if value not in (0, 1, 2):
                return f"value out of range {value}"
            self.force_state = value
        else:
            if not self.min_current_a <= value <= self.max_current_a:
                return f"value out of range {value}"
            self.current_a = value
        return "success"

    def _on_tick(self) -> None:
        self._advance()
        self._publish_state()

    def _advance(self) -> None:
        now = self.clock.now()
        self._energy_wh += self.power_w * max(now - self._t, 0.0) / 3600.0
        self._t = now

    def _car_state(self) -> int:
        if not self.car_connected:
            return 1  # Idle
        if self.car_full:
            return 4  # Complete
        return 2 if self.charging else 3  # Charging / WaitCar

    def _publish_state(self) -> None:
        watts = self.power_w
        if watts > 0:
            watts = max(0.0, watts * (1.0 + self.rng.gauss(0.0, self.noise_ratio)))
        per_phase = watts / self.phases if self.phases else 0.0
        amps = per_phase / self.voltage_v
        nrg = [0.0] * NRG_LEN
        nrg[0:3] = [self.voltage_v] * 3
        nrg[4 : 4 + self.phases] = [round(amps, 2)] * self.phases
        nrg[7 : 7 + self.phases] = [round(per_phase, 1)] * self.phases
        nrg[11] = round(watts, 1)
        for key, value in (
            ("frc", self.force_state),
            ("amp", self.current_a),
            ("car", self._car_state()),
            ("nrg", nrg),
            ("eto", round(self._energy_wh)),
        ):
            self.publish(f"{self.base}/{key}", orjson.dumps(value), retain=True)

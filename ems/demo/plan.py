"""What each simulated home of ``ems demo`` is made of, and its gateway's configuration (pure).

``make_homes(count, seed)`` draws the homes: PV or not (about 60 %, 4-12 kWp),
household consumption, a grid meter (Shelly Pro 3EM, or a Gen1 Shelly EM in
every third home) and flexible appliances, each behind a switch:

- a water heater (2-3 kW) in every home: up to 2.4 kW behind a plug (Shelly
  Plus Plug S or Gen1 Plug S, both rated 10 A / 2.5 kW), above that behind a
  Shelly Plus 1PM in the wall box (16 A / 3.5 kW). A PV home's tank is nearly
  hot already: its gateway heated it on the morning sun;
- an EV charger in about a third of the homes: a portable charging cable set
  to 10 A (2.3 kW) behind a plug, whose rating it must respect (DOMAIN.md);
- home-03 and home-06 have a Phidget 1017 relay board switching, through
  contactors (its relays are rated 0.46 kW), a heat pump and, if they have
  one, a 16 A EV charger (3.7 kW). home-03's heat pump is wired as the
  earlier prototype was: energised = cut (``energized_means = "off"``), so it
  runs on its own thermostat and the gateway only ever cuts it (it offers no
  flexibility). These two homes have no PV: their loads run on the
  community's surplus only.

Under grid stress (RTE's Ecowatt signal, ``ems.demo.grid``) the gateways cut
water heaters and EV chargers from level 2 and heat pumps (home-03's
prototype-wired one included) from level 3; water heaters heat their tank up
to 1.5 h ahead of a window that will cut them.

``gateway_sections(home, ...)`` turns a home into the sections of
``load_gateway_settings``: the same settings a real home's ``gateway.toml``
holds. The simulated devices get ids derived from the home's number, so the
configuration and the simulators agree without talking to each other.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import time
from pathlib import Path
from typing import Any, Literal

SwitchModel = Literal["plus-plug-s", "plug-s", "plus-1pm", "phidget-1017"]
MeterModel = Literal["pro-3em", "em"]
ApplianceKind = Literal["water_heater", "ev_charger", "heat_pump"]

BOARD_HOMES = (2, 5)
"""0-based numbers of the homes with a Phidget board (home-03, home-06)."""
PROTOTYPE_WIRING_HOME = 2
"""The board home whose heat pump is cut when the relay is energised."""
PV_KWP = (4.0, 12.0)
"""Roofs big enough that the PV homes' own loads (run first, on their gateway's
local self-consumption) leave a surplus for the community around midday."""
WATER_HEATER_KW = (2.0, 2.2, 2.4, 2.4, 2.8, 3.0)
PLUG_MAX_KW = 2.4
"""The largest water heater put behind a plug (rated 2.5 kW): above, a Plus 1PM."""
EV_PLUG_KW = 2.3
"""A portable charging cable set to 10 A: what a 10 A plug may carry."""
EV_CONTACTOR_KW = 3.7
"""A 16 A charging cable through a contactor."""
METER_DEVICE = "grid"
BOARD_DEVICE = "board"
WATER_HEATER_SHED = 2
"""Water heaters are cut from level 2 (orange)..."""
WATER_HEATER_PREHEAT_H = 1.5
"""...and heat their tank up to 1.5 h ahead of the window, so showers stay hot."""
EV_SHED = 2
"""EV chargers are cut from level 2 (no anticipation: the car may not be there)."""
HEAT_PUMP_SHED = 3
"""Heat pumps only from level 3 (red): comfort first."""
BOARD_SERIAL_BASE = 500_000

PROFILE_OF: dict[str, str] = {
    "plus-plug-s": "shelly/plus-plug-s",
    "plug-s": "shelly/plug-s",
    "plus-1pm": "shelly/plus-1pm",
    "phidget-1017": "phidget/1017",
    "pro-3em": "shelly/pro-3em",
    "em": "shelly/em",
}


@dataclass(frozen=True, slots=True)
class ApplianceSpec:
    """One flexible appliance and the switch in front of it."""

    id: str
    """The load id in the gateway's configuration and on the wire."""
    kind: ApplianceKind
    nominal_kw: float
    switch: SwitchModel
    channel: int
    need_kwh: float
    """Energy it still needs when the demo starts."""
    capacity_kwh: float
    """The most it can need: a cold tank, an EV from 20 % to 80 %."""
    min_kw: float | None = None
    max_kw: float | None = None
    energized_means: Literal["on", "off"] = "on"
    departure_h: float | None = None
    """EV: hour of the day (UTC) it leaves; it is gone after."""
    battery_kwh: float | None = None
    soc: float | None = None
    shed_level: int | None = None
    """Cut from this grid level (``grid/shed``, ``grid/signal``); None: never."""
    preheat_hours: float = 0.0
    """Run this long ahead of a stress window that will cut it (anticipation)."""

    @property
    def on_board(self) -> bool:
        return self.switch == "phidget-1017"

    @property
    def device_id(self) -> str:
        """Its switch's id in the gateway's configuration."""
        return BOARD_DEVICE if self.on_board else f"{self.id}-switch"


@dataclass(frozen=True, slots=True)
class HomeSpec:
    """One simulated home."""

    site: str
    number: int
    """1-based: home-03 is number 3."""
    pv_kwp: float
    base_kw: float
    """Consumption at rest (fridge, standby, ventilation)."""
    peak_kw: float
    """Extra consumption at meal times and in the evening."""
    meter: MeterModel
    appliances: tuple[ApplianceSpec, ...]
    seed: int

    @property
    def has_board(self) -> bool:
        return any(a.on_board for a in self.appliances)

    @property
    def board_serial(self) -> int:
        return BOARD_SERIAL_BASE + self.number

    def mac(self, slot: int) -> str:
        """A Gen2 device's MAC (12 hex digits): slot 0 the meter, 1.. the switches."""
        return f"c0ffee{self.number:04x}{slot:02x}"

    def gen1_id(self, slot: int) -> str:
        """A Gen1 device's id (6 hex digits)."""
        return f"{self.number:04X}{slot:02X}"

    def meter_prefix(self) -> str:
        """The meter's MQTT id (Gen1) or topic prefix (Gen2)."""
        if self.meter == "em":
            return f"shellyem-{self.gen1_id(0)}"
        return f"shellypro3em-{self.mac(0)}"

    def switch_prefix(self, appliance: ApplianceSpec) -> str:
        """A Shelly switch's MQTT id (Gen1) or topic prefix (Gen2)."""
        slot = self.appliances.index(appliance) + 1
        if appliance.switch == "plug-s":
            return f"shellyplug-s-{self.gen1_id(slot)}"
        if appliance.switch == "plus-plug-s":
            return f"shellyplusplugs-{self.mac(slot)}"
        if appliance.switch == "plus-1pm":
            return f"shellyplus1pm-{self.mac(slot)}"
        raise ValueError(f"{appliance.id} is on the Phidget board, not a Shelly")


def make_homes(count: int, seed: int) -> list[HomeSpec]:
    """``count`` homes drawn from ``seed`` (the same seed, the same homes)."""
    if count < 1:
        raise ValueError("at least one home is needed")
    rng = random.Random(seed)
    homes = []
    for i in range(count):
        board = i in BOARD_HOMES
        # Draw everything in the same order for every home, so a seed keeps its homes.
        pv_roll, pv_kwp = rng.random(), round(rng.uniform(*PV_KWP), 1)
        # Most water heaters are 2-2.4 kW (behind a plug); some 2.8-3 kW (a Plus 1PM).
        wh_kw, wh_fill = rng.choice(WATER_HEATER_KW), rng.random()
        ev_roll = rng.random()
        battery_kwh, soc = rng.choice((40.0, 50.0, 60.0)), rng.uniform(0.3, 0.6)
        departure_h = round(rng.uniform(16.0, 19.0), 2)
        hp_kw, hp_need = round(rng.uniform(1.2, 2.0), 1), round(rng.uniform(2.0, 6.0), 2)
        base_kw, peak_kw = round(rng.uniform(0.2, 0.5), 2), round(rng.uniform(0.6, 1.6), 2)
        # The first home always has PV, so a tiny community still has a surplus;
        # the board homes never do (see the module docstring).
        has_pv = not board and (i == 0 or pv_roll < 0.6)
        # A PV home's gateway has already heated its tank on the morning sun.
        wh_need = round(0.3 + wh_fill * (1.7 if has_pv else 5.5), 2)
        number = i + 1
        gen2_first = number % 2 == 1
        plug: SwitchModel = "plus-plug-s" if gen2_first else "plug-s"
        other_plug: SwitchModel = "plug-s" if gen2_first else "plus-plug-s"
        appliances = [
            ApplianceSpec("water-heater", "water_heater", wh_kw,
                          plug if wh_kw <= PLUG_MAX_KW else "plus-1pm", 0, wh_need, 10.0,
                          shed_level=WATER_HEATER_SHED, preheat_hours=WATER_HEATER_PREHEAT_H)
        ]
        if board:
            appliances.append(ApplianceSpec(
                "heat-pump", "heat_pump", hp_kw, "phidget-1017", 0, hp_need, 8.0,
                min_kw=round(0.6 * hp_kw, 2), max_kw=hp_kw,
                energized_means="off" if i == PROTOTYPE_WIRING_HOME else "on",
                shed_level=HEAT_PUMP_SHED,
            ))
        if ev_roll < (0.5 if board else 0.35):
            need = round((0.8 - soc) * battery_kwh, 1)  # charge to 80 % (SOC window 0.2-0.8)
            switch: SwitchModel = "phidget-1017" if board else other_plug
            appliances.append(ApplianceSpec(
                "ev", "ev_charger", EV_CONTACTOR_KW if board else EV_PLUG_KW, switch,
                1 if board else 0, need, need, departure_h=departure_h,
                battery_kwh=battery_kwh, soc=round(soc, 3), shed_level=EV_SHED,
            ))
        homes.append(HomeSpec(
            site=f"home-{number:02d}",
            number=number,
            pv_kwp=pv_kwp if has_pv else 0.0,
            base_kw=base_kw,
            peak_kw=peak_kw,
            meter="em" if number % 3 == 2 else "pro-3em",
            appliances=tuple(appliances),
            seed=seed * 10_007 + i,
        ))
    return homes


def netload_interval_s(period_s: float) -> float:
    """How often each gateway reports its net load (clock seconds): every 2 simulated minutes.

    A real gateway's default is every minute. Compressed ×180 with 20 homes in one
    process, each report (and its Home Assistant context) is traffic the broker and
    the shared event loop carry 3 times a real second per home; the coordinator only
    needs the latest one at each period boundary.
    """
    return min(120.0, period_s / 5)


def response_check_s(speed: float) -> float:
    """When the gateway checks that a load it started draws power (clock seconds).

    The default 10 s are 28 ms at speed 360: shorter than a plug takes to
    report its power over MQTT. Half a real second, within the setting's range.
    """
    return min(600.0, max(10.0, 0.5 * speed))


def _load_section(a: ApplianceSpec) -> dict[str, Any]:
    load: dict[str, Any] = {
        "id": a.id, "kind": a.kind, "device": a.device_id, "channel": a.channel,
        "nominal_kw": a.nominal_kw,
    }
    if a.min_kw is not None:
        load["min_kw"] = a.min_kw
    if a.max_kw is not None:
        load["max_kw"] = a.max_kw
    # Explicit, also when None: the gateway's own default is level 2.
    load["shed_level"] = a.shed_level
    if a.preheat_hours > 0:
        load["preheat_hours"] = a.preheat_hours
    if a.on_board:
        # The board's relays only drive contactor coils (rated 0.46 kW).
        load["contactor"] = True
        load["energized_means"] = a.energized_means
    if a.kind == "heat_pump":
        # A compressor must not cycle often (DOMAIN.md).
        load.update(min_on_s=600, min_off_s=600, max_starts_per_hour=3)
    if a.kind == "ev_charger":
        assert a.departure_h is not None
        hours, minutes = divmod(round(a.departure_h * 60), 60)
        load.update(capacity_kwh=a.battery_kwh, soc=a.soc, departure=time(hours, minutes))
    return load


def gateway_sections(
    home: HomeSpec,
    *,
    host: str,
    port: int,
    community: str,
    period_s: float,
    speed: float,
    state_dir: Path,
) -> dict[str, Any]:
    """The sections of ``load_gateway_settings`` for ``home``'s gateway."""
    devices: list[dict[str, Any]] = [{
        "id": METER_DEVICE, "profile": PROFILE_OF[home.meter], "prefix": home.meter_prefix(),
    }]
    for a in home.appliances:
        if not a.on_board:
            devices.append({"id": a.device_id, "profile": PROFILE_OF[a.switch],
                            "prefix": home.switch_prefix(a)})
    if home.has_board:
        devices.append({"id": BOARD_DEVICE, "profile": PROFILE_OF["phidget-1017"],
                        "serial": home.board_serial, "open_timeout_ms": 1000})
    return {
        # amqtt speaks MQTT 3.1.1 only; one protocol keeps both brokers alike.
        "mqtt": {"host": host, "port": port, "protocol": "3.1.1"},
        "community": {"id": community},
        "site": {"id": home.site},
        "meter": {"device": METER_DEVICE},
        "devices": devices,
        "loads": [_load_section(a) for a in home.appliances],
        "ems": {"period_s": period_s, "netload_interval_s": netload_interval_s(period_s),
                "response_check_s": response_check_s(speed)},
        "state": {"dir": str(state_dir / home.site)},
        "clock": {"speed": speed},
    }

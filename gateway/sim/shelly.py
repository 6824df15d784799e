"""Simulated Shelly devices that speak MQTT exactly as the real ones do.

They stand in for hardware in the tests and the demo. Topics, payloads, the
RPC envelope and error codes follow /work/shared/reference/devices-and-apis.md
§1 (Gen1) and §2 (Gen2+); where the reference is silent the choice is marked
[~] and explained.

- ``SimShellyGen1Plug``: Plug S (``SHPLG-S``) or 1PM (``SHSW-PM``);
- ``SimShellyGen2Switch``: Plus Plug S, Plus 1PM (1 channel) or Pro 4PM (4);
- ``SimShellyEm``: Gen1 Shelly EM (``SHEM``), two clamps;
- ``SimShellyPro3Em``: Gen2 Pro 3EM (``SPEM-003CEBEU``), ``em:0``.

A relay has a ``SimLoad`` behind it (a 2 kW water heater by default): the
measured power follows the relay and the load (about 0 W once the thermostat
is ``satisfied``), and the energy counters accumulate in simulated time
(``speed`` x wall time). Meters' power is set with ``set_power_w`` (W,
positive when the home imports, as the real devices count).

Each device is its own paho client (see ``gateway.sim.mqtt_device``):
``start``/``stop``, ``go_offline`` (the will fires) and ``go_online``.
"""

from __future__ import annotations

from gateway.sim.mqtt_device import SimLoad
from gateway.sim.shelly_gen1 import SimShellyEm, SimShellyGen1Plug
from gateway.sim.shelly_gen2 import SimShellyGen2Switch
from gateway.sim.shelly_pro3em import SimShellyPro3Em

__all__ = [
    "SimLoad",
    "SimShellyEm",
    "SimShellyGen1Plug",
    "SimShellyGen2Switch",
    "SimShellyPro3Em",
]

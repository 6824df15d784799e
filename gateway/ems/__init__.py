"""The home's local EMS: pure decisions about its flexible loads.

No MQTT, no devices, no clock: time (seconds, monotonic-consistent, plus the
wall time where deadlines need it) and inputs come in as arguments; commands
and their reasons come out. The gateway service, the demo and the tests drive
the same code.
"""

from gateway.ems.controller import Command, FlexOffer, LoadView, LocalEms
from gateway.ems.guard import WearGuard
from gateway.ems.loads import LoadRuntime, LoadSpec, Mode
from gateway.ems.plan import choose_loads

__all__ = [
    "Command",
    "FlexOffer",
    "LoadRuntime",
    "LoadSpec",
    "LoadView",
    "LocalEms",
    "Mode",
    "WearGuard",
    "choose_loads",
]

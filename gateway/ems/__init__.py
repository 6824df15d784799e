"""The home's local EMS: pure decisions about its flexible loads.

No MQTT, no devices, no clock: time (seconds, monotonic-consistent, plus the
wall time where deadlines need it) and inputs come in as arguments; commands
and their reasons come out. The gateway service, the demo and the tests drive
the same code.
"""

from gateway.ems.controller import Command, FlexOffer, LoadView, LocalEms
from gateway.ems.guard import WearGuard
from gateway.ems.loads import LoadRuntime, LoadSpec, Mode, Modulation
from gateway.ems.plan import Candidate, Run, candidate_of, choose_loads

__all__ = [
    "Candidate",
    "Command",
    "FlexOffer",
    "LoadRuntime",
    "LoadSpec",
    "LoadView",
    "LocalEms",
    "Mode",
    "Modulation",
    "Run",
    "WearGuard",
    "candidate_of",
    "choose_loads",
]

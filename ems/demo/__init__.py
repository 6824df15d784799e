"""``ems demo``: the real coordinator and simulated homes on an embedded broker.

``homes`` holds the simulated homes (MQTT clients speaking the contract),
``runner`` wires broker, coordinator and homes in one event loop, ``view``
draws the live terminal view (or plain lines when output is not a terminal).
"""

from ems.demo.runner import CycleRecord, DemoError, DemoOptions, DemoState, run_demo

__all__ = ["CycleRecord", "DemoError", "DemoOptions", "DemoState", "run_demo"]

"""``ems demo``: the real coordinator and real gateways with simulated devices, live.

``runner`` wires the broker, the coordinator and one ``home.DemoHome`` per
home (the real gateway, simulated Shelly devices, a fake Phidget board for
some, and the home's ``physics``); ``plan`` draws the homes and their gateway
configuration, ``profiles`` the simulated day; ``view`` draws the live
terminal view (or plain lines when output is not a terminal). The coordinator
serves its operator page (``central.web``) on 127.0.0.1 during the demo.
"""

from ems.demo.runner import CycleRecord, DemoError, DemoOptions, DemoState, run_demo

__all__ = ["CycleRecord", "DemoError", "DemoOptions", "DemoState", "run_demo"]

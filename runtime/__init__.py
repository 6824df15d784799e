"""Runtime plumbing both services share and the pure packages must not hold:
clocks (which read the time and sleep) and the daemons' entry point (signals,
the event loop). On the bottom floor beside ``protocol``, which stays pure.
"""

"""Device drivers behind small capability interfaces (``Relay``, ``PowerMeter``, ``NetMeter``).

One driver per module; ``gateway.devices.registry.DRIVERS`` maps a profile's
``driver`` field to the factory that builds it.
"""

"""The edge gateway and local EMS of one home."""

__version__ = "0.1.0"

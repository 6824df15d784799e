"""The community coordinator: cycles, allocation, grid signal, records."""

__version__ = "0.1.0"

"""The operator's tool (``ems``): demo, simulator, records, config checks.

The top floor: free to use both ``central`` and ``gateway``.
"""

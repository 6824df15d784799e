"""Hostile input for both services: a versioned corpus, in-process harnesses, fuzz targets.

- ``corpus``: a deterministic generator of (topic, payload) cases, mutations
  of valid messages for every topic the coordinator and the gateway read
  (PROTOCOL.md) and every device topic the drivers parse;
- ``harness``: the coordinator's and the gateway's real message handling,
  driven in-process (no broker), with the checks of their invariants;
- ``coordinator`` / ``gateway``: long runs, with atheris (coverage-guided) or
  the deterministic generator: ``python -m bench.fuzz.coordinator --help``.

The test suite (``tests/hostile``) uses the same corpus and harnesses on a
budget of 100,000 inputs a side; docs/reliability.md, "Hostile input".
"""

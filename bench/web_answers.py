"""What one long answer of the operator API costs the coordinator's event loop.

``python -m bench.web_answers [--sites 10000] [--repeat 7]``. The page's long
answers (``/api/sites``, ``/api/get_relays_state``, ``/api/cycles``) are built
and encoded on the coordinator's own loop, so their time is time the loop does
not spend on replies. For ``--sites`` rows of ``/api/sites`` (the shape
``central.web.live.sites_view`` builds), it times, side by side, the median of
``--repeat`` runs of:

- **baseline**: the dict returned under its ``dict[str, Any]`` annotation, as
  the API did before it was typed (FastAPI checks it is a dict, then pydantic
  writes its JSON);
- **validated**: the same dict through its response model (``SitesPage``), as
  FastAPI does for a handler that returns data under a ``response_model``;
- **orjson**: the dict encoded by orjson into a ``Response``, what the API does
  now for its long answers (the model documents them; the schema test checks).

Only the server side is timed (the handler's return to the bytes sent), in
process, with no socket: FastAPI's own ``serialize_response``.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Callable
from typing import Any

import orjson
from fastapi.routing import serialize_response
from fastapi.utils import create_model_field

from central.web.models import SitesPage


def sites_page(n: int) -> dict[str, Any]:
    """A page of ``n`` site rows, every field filled as a busy community's are."""
    rows = [
        {
            "site": f"s{i:06d}", "online": True, "version": "1.4.2", "loads": ["wh", "ev"],
            "status_at": "2026-06-21T11:02:00Z", "net_export_kw": 1.5 + i % 7,
            "netload_at": "2026-06-21T12:14:31Z", "netload_age_s": 29.0, "degraded": False,
            "quarantined": False, "quarantined_until": None,
            "last_cycle": "2026-06-21T12:00:00Z", "reply_s": 0.118, "flex_kw": 2.0,
            "alloc_kw": 1.25, "rank": i + 1, "alloc_kwh_since_start": 31.5,
            "share_since_start": 1.0 / n, "alloc_kwh_long_run": 412.75,
            "share_long_run": 1.0 / n,
        }
        for i in range(n)
    ]
    return {"total": n, "offset": 0, "limit": n, "sites": rows}


def median_ms(fn: Callable[[], Any], repeat: int) -> tuple[float, int]:
    fn()  # warm up (pydantic builds its validator, caches fill)
    times, size = [], 0
    for _ in range(repeat):
        start = time.perf_counter()
        size = len(fn())
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000.0, size


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sites", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args(argv)
    data = sites_page(args.sites)
    untyped = create_model_field(name="Response", type_=dict[str, Any], mode="serialization")
    typed = create_model_field(name="Response", type_=SitesPage, mode="serialization")

    def through(field: Any) -> Callable[[], bytes]:
        def run() -> bytes:
            # FastAPI's path for a handler's data: validate, then pydantic's own JSON.
            content: bytes = asyncio.run(serialize_response(
                field=field, response_content=data, is_coroutine=True, dump_json=True))
            return content
        return run

    def encoded() -> bytes:
        return orjson.dumps(data)

    print(f"/api/sites, {args.sites} rows, median of {args.repeat} (ms on the loop)")
    base_ms = 0.0
    for name, fn in (("baseline", through(untyped)), ("validated", through(typed)),
                     ("orjson", encoded)):
        ms, size = median_ms(fn, args.repeat)
        base_ms = base_ms or ms
        print(f"  {name:<10} {ms:8.1f} ms  {size / 1e6:6.2f} MB  x{ms / base_ms:5.2f} baseline")


if __name__ == "__main__":
    main()

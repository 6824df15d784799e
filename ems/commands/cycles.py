"""``ems cycles --last N``: the last recorded cycles as a table."""

from __future__ import annotations

import argparse
import json
import sys

from rich.console import Console
from rich.table import Table

from central.db import redact_url
from central.errors import RecorderError
from central.recorder import Recorder, rows_to_table
from protocol.settings import EX_CONFIG, ConfigError

HEADERS = ["cycle", "surplus kW", "allocated kW", "used", "replies/sites", "close", "strategy",
           "epoch"]


def run(args: argparse.Namespace) -> int:
    url = args.db
    if url is None:
        from central.config import load_central_settings

        try:
            url = load_central_settings(args.config).recorder.url
        except ConfigError as exc:
            sys.stderr.write(f"{exc}\n")
            return EX_CONFIG
    try:
        recorder = Recorder(url)
        rows = recorder.last_cycles(args.last)
        details = {r.cycle: recorder.decisions(r.cycle) for r in rows} if args.decisions else {}
        recorder.close()
    except RecorderError as exc:
        sys.stderr.write(f"ems cycles: {exc}\n")
        return 1
    if args.json:
        out = []
        for r in rows:
            item = dict(zip(HEADERS, rows_to_table([r])[0], strict=True))
            if args.decisions:
                item["decisions"] = [d._asdict() for d in details[r.cycle]]
            out.append(item)
        print(json.dumps(out, indent=2))
        return 0
    console = Console(width=None if sys.stdout.isatty() else 140)
    table = Table(title=f"last {len(rows)} cycles ({redact_url(url)})")
    for h in HEADERS:
        table.add_column(h, justify="right" if "kW" in h or h in ("used", "epoch") else "left")
    for r in rows_to_table(rows):
        table.add_row(*r)
    console.print(table)
    for cycle, decisions in details.items():
        sub = Table(title=f"decisions of {cycle}")
        for h in ("rank", "site", "flex kW", "alloc kW", "arrival s"):
            sub.add_column(h)
        for d in decisions:
            sub.add_row(str(d.rank), d.site, f"{d.flex_kw:.2f}", f"{d.alloc_kw:.2f}",
                        f"{d.elapsed_s:.3f}")
        console.print(sub)
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("cycles", help="print the last recorded cycles")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--config", "-c", help="the coordinator's config (its [recorder] url)")
    src.add_argument("--db", help="a recorder url (sqlite:///PATH, postgresql://...) or a path")
    p.add_argument("--last", type=int, default=10, help="how many cycles (default 10)")
    p.add_argument("--decisions", action="store_true", help="also list each cycle's decisions")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run)

"""``ems``: the operator's command-line tool.

Each subcommand lives in its own module under ``ems.commands`` and exposes
``register(subparsers)``, which adds its parser and sets ``func`` (a callable
taking the parsed arguments and returning an exit status). The list below is
the explicit registry.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

COMMAND_MODULES = (
    "ems.commands.check_config",
    "ems.commands.cycles",
    "ems.commands.replay",
    "ems.commands.simulate",
    "ems.commands.bench",
    "ems.commands.demo",
    "ems.commands.signal",
    "ems.commands.community",
    "ems.commands.site",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ems", description="Energy-community coordinator and gateway: operator's tool."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

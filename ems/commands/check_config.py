"""``ems check-config FILE``: validate a coordinator or gateway config, name the bad key."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from protocol.settings import EX_CONFIG, ConfigError, read_toml


def _kind_of(data: dict[str, Any]) -> str:
    # A gateway config describes a home (its [site]); a coordinator config does not.
    return "gateway" if "site" in data or "loads" in data or "devices" in data else "central"


def run(args: argparse.Namespace) -> int:
    path = Path(args.file)
    try:
        data = read_toml(path)
        kind = args.kind or _kind_of(data)
        if kind == "central":
            from central.config import load_central_settings

            settings: Any = load_central_settings(path)
        else:
            try:
                from gateway.config import load_gateway_settings
            except ImportError:
                sys.stderr.write(f"{path}: gateway configs are not supported by this version\n")
                return EX_CONFIG
            settings = load_gateway_settings(path)
    except ConfigError as exc:
        sys.stderr.write(f"{exc}\n")
        return EX_CONFIG
    print(f"{path}: valid {kind} configuration (community {settings.community.id})")
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("check-config", help="validate a config file and name any bad key")
    p.add_argument("file", help="TOML config file")
    p.add_argument("--kind", choices=["central", "gateway"], help="default: guessed from the file")
    p.set_defaults(func=run)

"""``ems community init COMMUNITY --dir DIR``: a community's CA and central broker files.

Creates (or completes: it is idempotent) the community's own CA, an empty CRL,
central's TLS certificate, ``central/mosquitto.conf`` rendered from
``mosquitto/central.conf``, the ACL files and the coordinator's and admin's
passwords (``mosquitto_passwd``). See ``ems.provision`` for the directory layout.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ems.provision import ProvisionError, init_community

EX_FAIL = 1


def run_init(args: argparse.Namespace) -> int:
    try:
        outcome = init_community(
            Path(args.dir),
            args.community,
            topic_root=args.topic_root,
            san=args.san or ["localhost", "127.0.0.1"],
            tls_port=args.tls_port,
            tls_bind=args.tls_bind,
            local_port=args.local_port,
            data_dir=Path(args.data_dir),
            pid_file=Path(args.pid_file),
        )
    except (ProvisionError, ValueError) as exc:
        sys.stderr.write(f"ems community init: {exc}\n")
        return EX_FAIL
    for line in outcome.messages:
        print(line)
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("community", help="provision a community's CA and central broker")
    cmds = p.add_subparsers(dest="community_command", metavar="ACTION")
    cmds.required = True
    init = cmds.add_parser(
        "init", help="create the CA, central's certificate, config, ACLs and passwords"
    )
    init.add_argument("community", help="community id, e.g. c1")
    init.add_argument("--dir", required=True, help="the community's directory (keep it private)")
    init.add_argument("--topic-root", default="ems", help="topic root (default: ems)")
    init.add_argument(
        "--san",
        action="append",
        metavar="NAME",
        help="a DNS name or IP of central in its certificate; repeat for several "
        "(default: localhost and 127.0.0.1); the first is what sites connect to",
    )
    init.add_argument("--tls-port", type=int, default=8883, help="gateways' TLS port (8883)")
    init.add_argument(
        "--tls-bind", default="", help="address of the TLS listener (default: all interfaces)"
    )
    init.add_argument(
        "--local-port", type=int, default=1883, help="coordinator's loopback port (1883)"
    )
    init.add_argument("--data-dir", default="/var/lib/mosquitto", help="persistence directory")
    init.add_argument(
        "--pid-file", default="/run/mosquitto/mosquitto.pid", help="central's pid_file"
    )
    init.set_defaults(func=run_init)

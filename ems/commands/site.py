"""``ems site add|remove|list COMMUNITY [SITE] --dir DIR``: provision one home.

``add`` issues the site's certificate (CN = site id) from the community CA,
regenerates central's gateway ACL, and writes under ``DIR/sites/SITE/`` what an
installer copies to the home's box (edge broker config, certificates, gateway
config skeleton). ``remove`` revokes the certificate (CRL) and drops the site's
ACL block. Both reload central with SIGHUP when ``--pid-file`` is given, else
print what to run.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ems.provision import ProvisionError, add_site, list_sites, remove_site

EX_FAIL = 1


def _pid(args: argparse.Namespace) -> Path | None:
    return Path(args.pid_file) if args.pid_file else None


def run_add(args: argparse.Namespace) -> int:
    try:
        outcome = add_site(
            Path(args.dir),
            args.community,
            args.site,
            central_host=args.central_host,
            central_port=args.central_port,
            edge_root=Path(args.edge_root),
            edge_port=args.edge_port,
            edge_data_dir=Path(args.edge_data_dir),
            pid_file=_pid(args),
            renew=args.renew,
        )
    except (ProvisionError, ValueError) as exc:
        sys.stderr.write(f"ems site add: {exc}\n")
        return EX_FAIL
    for line in outcome.messages:
        print(line)
    return 0


def run_remove(args: argparse.Namespace) -> int:
    try:
        outcome = remove_site(Path(args.dir), args.community, args.site, pid_file=_pid(args))
    except (ProvisionError, ValueError) as exc:
        sys.stderr.write(f"ems site remove: {exc}\n")
        return EX_FAIL
    for line in outcome.messages:
        print(line)
    return 0


def run_list(args: argparse.Namespace) -> int:
    try:
        sites = list_sites(Path(args.dir), args.community)
    except (ProvisionError, ValueError) as exc:
        sys.stderr.write(f"ems site list: {exc}\n")
        return EX_FAIL
    for site, serial, added in sites:
        print(f"{site}\tserial {serial}\tadded {added}")
    if not sites:
        print(f"no site in community {args.community}")
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("site", help="provision a home: certificate, ACL, edge broker config")
    cmds = p.add_subparsers(dest="site_command", metavar="ACTION")
    cmds.required = True

    def common(q: argparse.ArgumentParser, with_site: bool = True) -> None:
        q.add_argument("community", help="community id")
        if with_site:
            q.add_argument("site", help="site id (one home), e.g. s042")
        q.add_argument("--dir", required=True, help="the community's directory")

    add = cmds.add_parser("add", help="issue a site's certificate and write its box's files")
    common(add)
    add.add_argument("--central-host", help="central's name as sites reach it (first --san)")
    add.add_argument("--central-port", type=int, help="central's TLS port (from init)")
    add.add_argument(
        "--edge-root", default="/etc/mosquitto/ems", help="where the box keeps the certificates"
    )
    add.add_argument("--edge-port", type=int, default=1883, help="the box's local MQTT port")
    add.add_argument(
        "--edge-data-dir", default="/var/lib/mosquitto", help="the box's persistence directory"
    )
    add.add_argument("--pid-file", help="central's pid file: reload it with SIGHUP")
    add.add_argument(
        "--renew", action="store_true", help="issue a new certificate, revoking the old"
    )
    add.set_defaults(func=run_add)

    rm = cmds.add_parser("remove", help="revoke a site's certificate and drop its ACL")
    common(rm)
    rm.add_argument("--pid-file", help="central's pid file: reload it with SIGHUP")
    rm.set_defaults(func=run_remove)

    ls = cmds.add_parser("list", help="the provisioned sites")
    common(ls, with_site=False)
    ls.set_defaults(func=run_list)

"""Provision a community's brokers: its CA, the central broker, one edge box per home.

Everything lives under one directory (``--dir``), the community's registry::

    DIR/community.json          what was provisioned: settings, sites, revoked serials
    DIR/ca/ca.key  ca.crt       the community's own CA (key 0600; keep DIR private)
    DIR/ca/crl.pem              revoked site certificates (central's crlfile)
    DIR/central/mosquitto.conf  rendered from mosquitto/central.conf
    DIR/central/server.key|crt  central's TLS certificate (SAN: --san names)
    DIR/central/gateways.acl    one "user <site>" block per site (TLS listener)
    DIR/central/local.acl       coordinator and admin (loopback listener)
    DIR/central/local.pw        their password hashes (mosquitto_passwd)
    DIR/central/coordinator.password, admin.password   the clear passwords (0600)
    DIR/sites/SITE/             what an installer copies to the home's box:
        mosquitto.conf          the edge broker, rendered from mosquitto/edge.conf
        ca.crt site.crt site.key, gateway.toml, INSTALL.txt

The central config names the files where they are (run the broker from DIR, e.g.
``/etc/mosquitto/ems-c1``); an edge config names them under ``edge_root``
(``/etc/mosquitto/ems`` on the box by default). ACL lines and bridge topics are
built from ``protocol.Topics``, the only place topics are spelled. References:
``/work/shared/reference/mosquitto-and-faults.md`` §1 and ``PROTOCOL.md`` ("Who
may write what").
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import pwd
import re
import secrets
import shutil
import signal
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from protocol.ids import validate_id
from protocol.topics import Topics

TEMPLATE_DIR = Path(__file__).resolve().parents[1] / "mosquitto"
CENTRAL_TEMPLATE = TEMPLATE_DIR / "central.conf"
EDGE_TEMPLATE = TEMPLATE_DIR / "edge.conf"

REGISTRY = "community.json"
COORDINATOR_USER = "coordinator"
ADMIN_USER = "admin"
# Where the edge broker publishes its bridge's state ("1"/"0", retained, local only).
BRIDGE_STATE_TOPIC = "bridge/central/state"
# Central makes a certificate's CN both username and client id
# (use_username_as_clientid), and client ids are broker-wide: a site named like
# the coordinator's client id (ems-central-{c} by default) would kick it off.
RESERVED_SITE_IDS = frozenset({COORDINATOR_USER, ADMIN_USER})
RESERVED_SITE_PREFIXES = ("ems-",)

CA_DAYS = 20 * 365
CERT_DAYS = 10 * 365
# OpenSSL refuses every client once the CRL's nextUpdate has passed: re-run
# ``ems community init`` (it re-issues the CRL) well before.
CRL_DAYS = 10 * 365
# Boxes without an RTC may boot a little behind: certificates start a day early.
BACKDATE = dt.timedelta(days=1)

_PLACEHOLDER = re.compile(r"@[A-Z_]+@")


class ProvisionError(Exception):
    """A provisioning step cannot be done; the message says why and what to do."""


# Templates ---------------------------------------------------------------------------


def render_template(template: str, values: dict[str, str], extra_config: str = "") -> str:
    """Replace ``@NAME@`` placeholders outside comments; refuse any left unfilled.

    A value may span lines (the edge's bridge topics). ``extra_config`` lines are
    appended; a later line overrides an earlier one (the bridge section is last).
    """
    lines = []
    for line in template.splitlines(keepends=True):
        if not line.lstrip().startswith("#"):
            for name, value in values.items():
                line = line.replace(f"@{name}@", value)
            if left := _PLACEHOLDER.findall(line):
                raise ProvisionError(f"no value for placeholder {left[0]} in a mosquitto template")
            line = line.rstrip(" \t\n") + "\n"
        lines.append(line)
    text = "".join(lines)
    if extra_config.strip():
        text += "\n# extra_config\n" + extra_config.strip() + "\n"
    return text


def _read_template(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ProvisionError(
            f"template {path} not found: run ems from a checkout of the project "
            "(the mosquitto/ directory ships the templates)"
        ) from None


def render_central_config(
    *,
    ca_file: Path,
    cert_file: Path,
    key_file: Path,
    crl_file: Path,
    gateways_acl: Path,
    local_acl: Path,
    password_file: Path,
    data_dir: Path,
    pid_file: Path,
    tls_port: int = 8883,
    tls_bind: str = "",
    local_port: int = 1883,
    local_host: str = "127.0.0.1",
    extra_config: str = "",
) -> str:
    """``mosquitto/central.conf`` with its placeholders filled in."""
    values = {
        "TLS_LISTENER": f"{tls_port} {tls_bind}".strip(),
        "LOCAL_PORT": str(local_port),
        "LOCAL_HOST": local_host,
        "CA_FILE": str(ca_file),
        "CERT_FILE": str(cert_file),
        "KEY_FILE": str(key_file),
        "CRL_FILE": str(crl_file),
        "GATEWAYS_ACL": str(gateways_acl),
        "LOCAL_ACL": str(local_acl),
        "PASSWORD_FILE": str(password_file),
        "DATA_DIR": str(data_dir).rstrip("/") or "/",
        "PID_FILE": str(pid_file),
    }
    return render_template(_read_template(CENTRAL_TEMPLATE), values, extra_config)


def render_edge_config(
    topics: Topics,
    site: str,
    *,
    central_address: str,
    ca_file: Path,
    cert_file: Path,
    key_file: Path,
    data_dir: Path,
    local_port: int = 1883,
    local_host: str = "127.0.0.1",
    extra_config: str = "",
) -> str:
    """``mosquitto/edge.conf`` for one site with its placeholders filled in."""
    values = {
        "SITE": site,
        "CENTRAL_ADDRESS": central_address,
        "CA_FILE": str(ca_file),
        "CERT_FILE": str(cert_file),
        "KEY_FILE": str(key_file),
        "DATA_DIR": str(data_dir).rstrip("/") or "/",
        "LOCAL_PORT": str(local_port),
        "LOCAL_HOST": local_host,
        "BRIDGE_TOPICS": "\n".join(bridge_topic_lines(topics, site)),
    }
    return render_template(_read_template(EDGE_TEMPLATE), values, extra_config)


# ACL lines and bridge topics, from protocol.Topics ------------------------------------


def gateway_acl_lines(topics: Topics, site: str) -> list[str]:
    """The ``user <site>`` block of central's gateway ACL (PROTOCOL.md, "Who may write what")."""
    return [
        f"user {site}",
        f"topic write {topics.site_prefix(site)}",
        *(f"topic read {t}" for t in topics.gateway_subscriptions(site)),
    ]


def local_acl_lines(topics: Topics) -> list[str]:
    """The coordinator's and the admin's rights on central's loopback listener."""
    return [
        f"user {COORDINATOR_USER}",
        f"topic readwrite {topics.everything()}",
        "",
        f"user {ADMIN_USER}",
        f"topic write {topics.base}/admin/#",
        f"topic read {topics.everything()}",
    ]


def site_up_topics(topics: Topics, site: str) -> list[str]:
    """What the bridge carries up: the contract's gateway topics, not the HA extensions."""
    return [
        topics.site_status(site),
        topics.netload(site),
        topics.flex(site),
        topics.report(site),
        topics.load_state(site, "+"),
    ]


def bridge_topic_lines(topics: Topics, site: str, qos: int = 1) -> list[str]:
    """The edge bridge's ``topic`` lines: this site's topics out, its own and shared ones in."""
    out = [f"topic {t} out {qos}" for t in site_up_topics(topics, site)]
    inn = [f"topic {t} in {qos}" for t in topics.gateway_subscriptions(site)]
    return out + inn


# Certificates ---------------------------------------------------------------------------


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def make_ca(community: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A self-signed CA dedicated to one community (it may sign site certificates only)."""
    key = _new_key()
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, f"ems community {community}"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"ems-{community} CA"),
        ]
    )
    now = _now()
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + dt.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def issue_cert(
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    common_name: str,
    *,
    server_names: Sequence[str] = (),
    client: bool = True,
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A leaf certificate signed by the community CA: a site (client) or central (server)."""
    key = _new_key()
    now = _now()
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + dt.timedelta(days=CERT_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=True,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    if server_names:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([_general_name(n) for n in server_names]),
            critical=False,
        )
    return key, builder.sign(ca_key, hashes.SHA256())


def _general_name(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def make_crl(
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    revoked: Iterable[tuple[int, dt.datetime]],
) -> x509.CertificateRevocationList:
    """The CA's CRL listing ``(serial, revoked_at)``; empty when nothing is revoked."""
    now = _now()
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca_cert.subject)
        .last_update(now - dt.timedelta(minutes=5))
        .next_update(now + dt.timedelta(days=CRL_DAYS))
    )
    for serial, when in revoked:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(when).build()
        )
    return builder.sign(ca_key, hashes.SHA256())


# Files -----------------------------------------------------------------------------------


def _write(path: Path, data: bytes | str, mode: int = 0o644) -> None:
    """Write atomically with ``mode`` from the start (a key is never world-readable)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = data.encode("utf-8") if isinstance(data, str) else data
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)
        os.write(fd, raw)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _give_to(user: str | None, *files: Path) -> None:
    """Let the broker's user read its secrets: mosquitto reads the password file
    (and re-reads everything on SIGHUP) after dropping root for that user.
    Only when running as root and the user exists; the files stay 0600."""
    if user is None or os.geteuid() != 0:
        return
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        return
    for f in files:
        if f.exists():
            os.chown(f, entry.pw_uid, entry.pw_gid)


def _load_key(path: Path) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ProvisionError(f"{path}: not an EC private key")
    return key


def _load_cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


@dataclass
class CommunityPaths:
    """Where each file of a community's directory lives."""

    root: Path

    @property
    def registry(self) -> Path:
        return self.root / REGISTRY

    @property
    def ca_key(self) -> Path:
        return self.root / "ca" / "ca.key"

    @property
    def ca_cert(self) -> Path:
        return self.root / "ca" / "ca.crt"

    @property
    def crl(self) -> Path:
        return self.root / "ca" / "crl.pem"

    @property
    def central(self) -> Path:
        return self.root / "central"

    @property
    def central_conf(self) -> Path:
        return self.central / "mosquitto.conf"

    @property
    def server_key(self) -> Path:
        return self.central / "server.key"

    @property
    def server_cert(self) -> Path:
        return self.central / "server.crt"

    @property
    def gateways_acl(self) -> Path:
        return self.central / "gateways.acl"

    @property
    def local_acl(self) -> Path:
        return self.central / "local.acl"

    @property
    def password_file(self) -> Path:
        return self.central / "local.pw"

    def password(self, user: str) -> Path:
        return self.central / f"{user}.password"

    def site_dir(self, site: str) -> Path:
        return self.root / "sites" / site


@dataclass
class Registry:
    """``community.json``: the community's settings, its sites and the revoked serials."""

    community: str
    topic_root: str = "ems"
    san: list[str] = field(default_factory=lambda: ["localhost", "127.0.0.1"])
    tls_port: int = 8883
    tls_bind: str = ""
    local_port: int = 1883
    local_host: str = "127.0.0.1"
    data_dir: str = "/var/lib/mosquitto"
    pid_file: str = "/run/mosquitto/mosquitto.pid"
    sites: dict[str, dict[str, Any]] = field(default_factory=dict)
    revoked: list[dict[str, Any]] = field(default_factory=list)

    @property
    def topics(self) -> Topics:
        return Topics(self.community, root=self.topic_root)

    @classmethod
    def load(cls, paths: CommunityPaths, community: str) -> Registry:
        try:
            data = json.loads(paths.registry.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ProvisionError(
                f"{paths.root} holds no community (no {REGISTRY}): "
                f"run `ems community init {community} --dir {paths.root}` first"
            ) from None
        except (OSError, ValueError) as exc:
            raise ProvisionError(f"{paths.registry}: unreadable: {exc}") from None
        registry = cls(**data)
        if registry.community != community:
            raise ProvisionError(
                f"{paths.root} is community {registry.community!r}, not {community!r}"
            )
        return registry

    def save(self, paths: CommunityPaths) -> None:
        _write(paths.registry, json.dumps(self.__dict__, indent=2, sort_keys=True) + "\n")


def validate_site_id(site: str) -> str:
    validate_id(site, "site id")
    if site in RESERVED_SITE_IDS or site.startswith(RESERVED_SITE_PREFIXES):
        raise ProvisionError(
            f"site id {site!r} is reserved: central uses a certificate's CN as client id, "
            f"and {sorted(RESERVED_SITE_IDS)} and 'ems-*' belong to the coordinator and the admin"
        )
    return site


# Steps -----------------------------------------------------------------------------------


@dataclass
class Outcome:
    """What a provisioning step did, as lines for the operator, and files it wrote."""

    messages: list[str] = field(default_factory=list)
    written: list[Path] = field(default_factory=list)

    def say(self, message: str) -> None:
        self.messages.append(message)


def find_mosquitto_passwd() -> str | None:
    return shutil.which("mosquitto_passwd") or (
        "/usr/bin/mosquitto_passwd" if os.access("/usr/bin/mosquitto_passwd", os.X_OK) else None
    )


def _set_password(binary: str, pw_file: Path, user: str, password: str) -> None:
    # The password goes through stdin (prompt and confirmation), never argv: -b
    # would show it in `ps` and the shell history (faults §1).
    cmd = [binary, *([] if pw_file.exists() else ["-c"]), str(pw_file), user]
    proc = subprocess.run(
        cmd, input=f"{password}\n{password}\n", capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise ProvisionError(
            f"mosquitto_passwd failed for {user}: {proc.stderr.strip() or proc.stdout.strip()}"
        )
    pw_file.chmod(0o600)


def _password_users(pw_file: Path) -> set[str]:
    if not pw_file.exists():
        return set()
    return {
        line.split(":", 1)[0]
        for line in pw_file.read_text(encoding="utf-8").splitlines()
        if ":" in line
    }


def _write_central_files(paths: CommunityPaths, reg: Registry, out: Outcome) -> None:
    """Render central's config and both ACL files from the registry (idempotent)."""
    conf = render_central_config(
        ca_file=paths.ca_cert.resolve(),
        cert_file=paths.server_cert.resolve(),
        key_file=paths.server_key.resolve(),
        crl_file=paths.crl.resolve(),
        gateways_acl=paths.gateways_acl.resolve(),
        local_acl=paths.local_acl.resolve(),
        password_file=paths.password_file.resolve(),
        data_dir=Path(reg.data_dir),
        pid_file=Path(reg.pid_file),
        tls_port=reg.tls_port,
        tls_bind=reg.tls_bind,
        local_port=reg.local_port,
        local_host=reg.local_host,
    )
    _write(paths.central_conf, conf)
    _write(paths.local_acl, render_local_acl(reg.topics))
    _write(paths.gateways_acl, render_gateways_acl(reg.topics, sorted(reg.sites)))
    out.written += [paths.central_conf, paths.local_acl, paths.gateways_acl]


def render_local_acl(topics: Topics) -> str:
    head = [
        "# Central broker, loopback listener: the coordinator and the admin (PROTOCOL.md).",
        "# Generated by `ems community init`; do not edit.",
    ]
    return "\n".join([*head, "", *local_acl_lines(topics)]) + "\n"


def render_gateways_acl(topics: Topics, sites: Iterable[str]) -> str:
    lines = [
        "# Central broker, gateway (mutual TLS) listener: one block per site, the user",
        "# being the certificate's CN (PROTOCOL.md, \"Who may write what\").",
        "# Generated by `ems site add/remove`; do not edit. Reload: SIGHUP.",
    ]
    for site in sites:
        lines += ["", *gateway_acl_lines(topics, site)]
    return "\n".join(lines) + "\n"


def _write_crl(paths: CommunityPaths, reg: Registry, ca_key: Any, ca_cert: Any) -> None:
    revoked = [
        (int(r["serial"]), dt.datetime.fromisoformat(r["revoked_at"])) for r in reg.revoked
    ]
    crl = make_crl(ca_key, ca_cert, revoked)
    _write(paths.crl, crl.public_bytes(serialization.Encoding.PEM))


def init_community(
    root: Path,
    community: str,
    *,
    topic_root: str = "ems",
    san: Sequence[str] = ("localhost", "127.0.0.1"),
    tls_port: int = 8883,
    tls_bind: str = "",
    local_port: int = 1883,
    local_host: str = "127.0.0.1",
    data_dir: Path = Path("/var/lib/mosquitto"),
    pid_file: Path = Path("/run/mosquitto/mosquitto.pid"),
    passwords: dict[str, str] | None = None,
    broker_user: str | None = "mosquitto",
) -> Outcome:
    """Create (or complete) a community's CA, central certificate, config, ACLs, passwords.

    Idempotent: an existing CA, server certificate and password are kept; the
    config, the ACLs and the CRL are re-rendered (the CRL's validity renewed).
    ``passwords`` (tests) fixes the coordinator's and admin's passwords when
    they are created. Run as root, central's key and password file are handed
    to ``broker_user`` (the user mosquitto drops to), still 0600.
    """
    validate_id(community, "community id")
    Topics(community, root=topic_root)  # validates the root
    if not san:
        raise ProvisionError("central's certificate needs at least one --san name")
    paths = CommunityPaths(Path(root))
    out = Outcome()
    if paths.registry.exists():
        reg = Registry.load(paths, community)
        if reg.topic_root != topic_root:
            raise ProvisionError(
                f"{paths.root}: topic root is {reg.topic_root!r}; it cannot change to "
                f"{topic_root!r} (every site's ACL and bridge use it)"
            )
        out.say(f"community {community} exists in {paths.root}: completing it")
    else:
        reg = Registry(community=community, topic_root=topic_root)
    reg.san = list(san)
    reg.tls_port, reg.tls_bind = tls_port, tls_bind
    reg.local_port, reg.local_host = local_port, local_host
    reg.data_dir, reg.pid_file = str(data_dir), str(pid_file)

    if paths.ca_key.exists() and paths.ca_cert.exists():
        ca_key, ca_cert = _load_key(paths.ca_key), _load_cert(paths.ca_cert)
    elif paths.ca_key.exists() or paths.ca_cert.exists():
        raise ProvisionError(f"{paths.root / 'ca'}: one of ca.key/ca.crt is missing; restore it")
    else:
        ca_key, ca_cert = make_ca(community)
        _write(paths.ca_key, _key_pem(ca_key), 0o600)
        _write(paths.ca_cert, _cert_pem(ca_cert))
        out.written += [paths.ca_key, paths.ca_cert]
        out.say(f"created the community CA {paths.ca_cert} (its key: {paths.ca_key}, 0600)")

    if not _server_cert_fits(paths, san):
        key, cert = issue_cert(ca_key, ca_cert, san[0], server_names=san, client=False)
        _write(paths.server_key, _key_pem(key), 0o600)
        _write(paths.server_cert, _cert_pem(cert))
        out.written += [paths.server_key, paths.server_cert]
        out.say(f"issued central's certificate for {', '.join(san)}")

    _write_crl(paths, reg, ca_key, ca_cert)
    out.written.append(paths.crl)
    reg.save(paths)
    _write_central_files(paths, reg, out)

    binary = find_mosquitto_passwd()
    known = _password_users(paths.password_file)
    for user in (COORDINATOR_USER, ADMIN_USER):
        if user in known:
            continue
        if binary is None:
            out.say(
                f"mosquitto_passwd not found: no password set for {user}. Install the "
                f"mosquitto package, then run `mosquitto_passwd {'' if known else '-c '}"
                f"{paths.password_file} {user}` (or re-run this command)"
            )
            continue
        password = (passwords or {}).get(user) or secrets.token_urlsafe(24)
        _write(paths.password(user), password + "\n", 0o600)
        _set_password(binary, paths.password_file, user, password)
        known.add(user)
        out.written += [paths.password(user), paths.password_file]
        out.say(f"password of {user} in {paths.password(user)} (0600)")
    _give_to(broker_user, paths.server_key, paths.password_file)
    out.say(
        f"central broker: mosquitto -c {paths.central_conf.resolve()} "
        f"(TLS for gateways on port {tls_port}, coordinator/admin on "
        f"{local_host}:{local_port}). The mosquitto user must be able to read "
        f"{paths.central.resolve()} and {paths.crl.resolve()}."
    )
    return out


def _server_cert_fits(paths: CommunityPaths, san: Sequence[str]) -> bool:
    if not (paths.server_key.exists() and paths.server_cert.exists()):
        return False
    cert = _load_cert(paths.server_cert)
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    have = {str(v) for v in names.get_values_for_type(x509.DNSName)}
    have |= {str(v) for v in names.get_values_for_type(x509.IPAddress)}
    return have == {str(_general_name(n).value) for n in san}


def _gateway_toml(reg: Registry, site: str, edge_port: int) -> str:
    return f"""\
# Gateway of site {site} (community {reg.community}): a skeleton written by
# `ems site add`. Add this home's [meter], [[devices]] and [[loads]]; every key
# is documented in docs/configuration.md ("Gateway"). Check it with
# `ems check-config gateway.toml`.

[mqtt]          # the home's own (edge) broker; its bridge carries the community topics
host = "127.0.0.1"
port = {edge_port}

[community]
id = "{reg.community}"
topic_root = "{reg.topic_root}"

[site]
id = "{site}"

[state]
dir = "/var/lib/ems-gateway"
"""


def add_site(
    root: Path,
    community: str,
    site: str,
    *,
    central_host: str | None = None,
    central_port: int | None = None,
    edge_root: Path = Path("/etc/mosquitto/ems"),
    edge_port: int = 1883,
    edge_host: str = "127.0.0.1",
    edge_data_dir: Path = Path("/var/lib/mosquitto"),
    pid_file: Path | None = None,
    renew: bool = False,
) -> Outcome:
    """Issue a site's certificate, add its ACL block, write its box's files, reload central.

    Idempotent: a site that already has a certificate keeps it (``renew`` issues
    a new one and revokes the old); its files and the ACL are re-rendered.
    """
    validate_site_id(site)
    paths = CommunityPaths(Path(root))
    reg = Registry.load(paths, community)
    ca_key, ca_cert = _load_key(paths.ca_key), _load_cert(paths.ca_cert)
    out = Outcome()
    d = paths.site_dir(site)
    key_path, cert_path = d / "site.key", d / "site.crt"
    entry = reg.sites.get(site)
    if entry and key_path.exists() and cert_path.exists() and not renew:
        out.say(f"site {site} already has a certificate (serial {entry['serial']}): kept")
    else:
        if entry:
            _revoke(reg, site, int(entry["serial"]))
            out.say(f"revoked the previous certificate of {site} (serial {entry['serial']})")
        key, cert = issue_cert(ca_key, ca_cert, site, client=True)
        _write(key_path, _key_pem(key), 0o600)
        _write(cert_path, _cert_pem(cert))
        reg.sites[site] = {"serial": str(cert.serial_number), "added": _now().isoformat()}
        out.written += [key_path, cert_path]
        out.say(f"issued the certificate of {site} (CN={site}, serial {cert.serial_number})")
    _write(d / "ca.crt", _cert_pem(ca_cert))
    host = central_host or reg.san[0]
    port = central_port or reg.tls_port
    edge_root = Path(edge_root)
    conf = render_edge_config(
        reg.topics,
        site,
        central_address=f"{host}:{port}",
        ca_file=edge_root / "ca.crt",
        cert_file=edge_root / "site.crt",
        key_file=edge_root / "site.key",
        data_dir=Path(edge_data_dir),
        local_port=edge_port,
        local_host=edge_host,
    )
    _write(d / "mosquitto.conf", conf)
    _write(d / "gateway.toml", _gateway_toml(reg, site, edge_port))
    _write(d / "INSTALL.txt", _install_notes(site, edge_root, host, port))
    out.written += [d / "ca.crt", d / "mosquitto.conf", d / "gateway.toml", d / "INSTALL.txt"]
    _write_crl(paths, reg, ca_key, ca_cert)
    reg.save(paths)
    _write_central_files(paths, reg, out)
    out.say(f"files for the home's box: {d}/ (see INSTALL.txt)")
    reload_broker(pid_file, out)
    return out


def _install_notes(site: str, edge_root: Path, host: str, port: int) -> str:
    return f"""\
Site {site}: files for the home's box.

  install -d -m 0755 {edge_root}
  install -m 0644 ca.crt site.crt {edge_root}/
  install -m 0600 -o mosquitto site.key {edge_root}/
  install -m 0644 mosquitto.conf /etc/mosquitto/mosquitto.conf
  systemctl restart mosquitto
  install -m 0644 gateway.toml /etc/ems/gateway.toml    # then add the home's devices and loads

The bridge reaches {host}:{port} and checks its certificate's name: {host}
must resolve on the box. The box's clock must be right (NTP) before the bridge
starts, or TLS validity checks fail. The bridge's state is retained on the
box's broker at {BRIDGE_STATE_TOPIC} ("1" up, "0" down).
"""


def _revoke(reg: Registry, site: str, serial: int) -> None:
    if not any(int(r["serial"]) == serial for r in reg.revoked):
        reg.revoked.append(
            {"serial": str(serial), "site": site, "revoked_at": _now().isoformat()}
        )


def remove_site(
    root: Path, community: str, site: str, *, pid_file: Path | None = None
) -> Outcome:
    """Revoke a site's certificate (CRL), drop its ACL block and its box's files, reload."""
    validate_id(site, "site id")
    paths = CommunityPaths(Path(root))
    reg = Registry.load(paths, community)
    out = Outcome()
    entry = reg.sites.pop(site, None)
    if entry is None:
        raise ProvisionError(f"site {site} is not in community {community} ({paths.root})")
    _revoke(reg, site, int(entry["serial"]))
    ca_key, ca_cert = _load_key(paths.ca_key), _load_cert(paths.ca_cert)
    _write_crl(paths, reg, ca_key, ca_cert)
    reg.save(paths)
    _write_central_files(paths, reg, out)
    shutil.rmtree(paths.site_dir(site), ignore_errors=True)
    out.say(f"revoked the certificate of {site} (serial {entry['serial']}); ACL block removed")
    reload_broker(pid_file, out)
    return out


def list_sites(root: Path, community: str) -> list[tuple[str, str, str]]:
    """``(site, serial, added)`` of every provisioned site."""
    reg = Registry.load(CommunityPaths(Path(root)), community)
    return [(s, e["serial"], e.get("added", "")) for s, e in sorted(reg.sites.items())]


def reload_broker(pid_file: Path | None, out: Outcome) -> None:
    """SIGHUP central (ACL, CRL and password files are re-read); else say how to."""
    if pid_file is None:
        out.say(
            "reload the central broker to apply: `systemctl reload mosquitto` or "
            "`kill -HUP $(cat /run/mosquitto/mosquitto.pid)` (or pass --pid-file)"
        )
        return
    try:
        pid = int(Path(pid_file).read_text(encoding="ascii").strip())
        os.kill(pid, signal.SIGHUP)
    except (OSError, ValueError) as exc:
        raise ProvisionError(f"could not reload the central broker via {pid_file}: {exc}") from None
    out.say(f"central broker reloaded (SIGHUP to pid {pid})")

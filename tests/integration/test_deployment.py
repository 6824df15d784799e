"""The shipped broker configs, provisioned by ``ems.provision``, on real mosquitto.

A community c1 is provisioned in a temporary directory (CA, central's
certificate, ACLs, passwords, sites s042/s043/s099); the central broker runs
``DIR/central/mosquitto.conf`` and the edge broker of s042 runs
``DIR/sites/s042/mosquitto.conf``, both as rendered, with 127.0.0.1 and free
ports. Clients are paho MQTT v5 with TLS contexts, so refusals show as reason
codes; what a client must not see is checked by subscription observation.

Only two test-only changes are made to the rendered files: ``user root`` is
appended when the tests run as root (mosquitto would drop to the ``mosquitto``
user, who cannot enter pytest's 0700 temporary directories), and the local
ACL gets a ``c2`` account so that another community's messages exist on the
broker.
"""

from __future__ import annotations

import contextlib
import os
import queue
import re
import signal
import socket
import ssl
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from ems import provision
from ems.broker import find_mosquitto, free_port
from protocol import Topics

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

HOST = "127.0.0.1"
COMMUNITY = "c1"
PASSWORDS = {"coordinator": "coord-secret", "admin": "admin-secret"}
C2_USER, C2_PASSWORD = "c2coordinator", "c2-secret"
WAIT_S = 5.0
QUIET_S = 0.5
NOT_AUTHORIZED = 0x87
T = Topics(COMMUNITY)


# Brokers -----------------------------------------------------------------------------


class Mosquitto:
    """One mosquitto process from a rendered config file, stopped by its own handle."""

    def __init__(self, conf: Path, port: int) -> None:
        self.conf = conf
        self.port = port
        self.log = conf.with_suffix(".log")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Mosquitto:
        # Provisioning re-renders the config: (re)add the test-only line each start.
        if os.geteuid() == 0 and "\nuser root\n" not in self.conf.read_text():
            with self.conf.open("a") as f:
                f.write("\n# test only: stay root to read pytest's 0700 tmp dirs\nuser root\n")
        binary = find_mosquitto()
        assert binary, "integration tests need mosquitto (apt-get install mosquitto)"
        with self.log.open("ab") as log:
            offset = log.tell()
            self.proc = subprocess.Popen(
                [binary, "-c", str(self.conf)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"mosquitto exited:\n{self.tail()}"
            with self.log.open("rb") as f:
                f.seek(offset)
                up = re.search(rb"mosquitto version \S+ running", f.read()) is not None
            if up:
                with contextlib.suppress(OSError), socket.create_connection((HOST, self.port), 1):
                    return self
            time.sleep(0.02)
        raise AssertionError(f"mosquitto did not start:\n{self.tail()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def hup(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGHUP)
        time.sleep(0.3)

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""


@dataclass
class Community:
    root: Path
    paths: provision.CommunityPaths
    tls_port: int
    local_port: int
    pid_file: Path
    central: Mosquitto
    other_ca_site: Path  # a site s042 of ANOTHER community (another CA)


def _give_c2_an_account(paths: provision.CommunityPaths) -> None:
    """Test only: a second community's coordinator on the same loopback listener."""
    acl = paths.local_acl.read_text()
    if C2_USER not in acl:
        paths.local_acl.write_text(acl + f"\nuser {C2_USER}\ntopic readwrite ems/c2/#\n")
    if C2_USER not in paths.password_file.read_text():
        subprocess.run(
            ["mosquitto_passwd", str(paths.password_file), C2_USER],
            input=f"{C2_PASSWORD}\n{C2_PASSWORD}\n",
            text=True,
            check=True,
            capture_output=True,
        )


@pytest.fixture(scope="module")
def community(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Community]:
    if provision.find_mosquitto_passwd() is None:
        pytest.fail("these tests need mosquitto_passwd (apt-get install mosquitto-clients)")
    root = tmp_path_factory.mktemp("c1")
    tls_port, local_port = free_port(HOST), free_port(HOST)
    pid_file = root / "central.pid"
    (root / "central-data").mkdir()
    provision.init_community(
        root,
        COMMUNITY,
        san=["localhost", HOST],
        tls_port=tls_port,
        tls_bind=HOST,
        local_port=local_port,
        data_dir=root / "central-data",
        pid_file=pid_file,
        passwords=PASSWORDS,
    )
    for site in ("s042", "s043", "s099"):
        provision.add_site(
            root, COMMUNITY, site, central_host=HOST, edge_root=root / "sites" / site
        )
    paths = provision.CommunityPaths(root)
    _give_c2_an_account(paths)
    other = tmp_path_factory.mktemp("c2")
    provision.init_community(other, "c2", passwords=PASSWORDS, data_dir=other)
    provision.add_site(other, "c2", "s042", edge_root=other / "sites" / "s042")
    central = Mosquitto(paths.central_conf, tls_port).start()
    try:
        yield Community(
            root, paths, tls_port, local_port, pid_file, central, other / "sites" / "s042"
        )
    finally:
        central.stop()


# Clients -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Msg:
    topic: str
    payload: bytes
    retain: bool


class Client:
    """A paho MQTT v5 client on its network thread; records messages and PUBACK codes."""

    def __init__(self, client_id: str | None = None, clean: bool = True) -> None:
        self.c = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id or f"t-{uuid.uuid4().hex[:8]}",
            protocol=MQTTProtocolVersion.MQTTv5,
        )
        self.clean = clean
        self.messages: queue.Queue[Msg] = queue.Queue()
        self.connected = threading.Event()
        self.answered = threading.Event()
        self.connack: object = None
        self.acks: dict[int, int] = {}
        self.acked = threading.Condition()
        self.c.on_connect = self._on_connect
        self.c.on_message = lambda c, u, m: self.messages.put(Msg(m.topic, m.payload, m.retain))
        self.c.on_publish = self._on_publish

    def _on_connect(self, c: object, u: object, flags: object, rc: object, props: object) -> None:
        self.connack = rc
        self.answered.set()
        if not getattr(rc, "is_failure", True):
            self.connected.set()

    def _on_publish(self, c: object, u: object, mid: int, rc: object, props: object) -> None:
        with self.acked:
            self.acks[mid] = int(getattr(rc, "value", 0))
            self.acked.notify_all()

    def tls(self, ca: Path, cert: Path, key: Path) -> Client:
        ctx = ssl.create_default_context(cafile=str(ca))
        ctx.load_cert_chain(str(cert), str(key))
        self.c.tls_set_context(ctx)
        return self

    def login(self, user: str, password: str) -> Client:
        self.c.username_pw_set(user, password)
        return self

    def connect(self, port: int) -> Client:
        props = Properties(PacketTypes.CONNECT)
        if not self.clean:
            props.SessionExpiryInterval = 3600
        self.c.reconnect_delay_set(0.2, 1)
        self.c.connect(HOST, port, keepalive=30, clean_start=self.clean, properties=props)
        self.c.loop_start()
        self.answered.wait(WAIT_S)
        assert self.connected.is_set(), f"not connected: {self.connack}"
        return self

    def subscribe(self, *filters: str) -> Client:
        done = threading.Event()
        self.c.on_subscribe = lambda *a: done.set()
        self.c.subscribe([(f, 1) for f in filters])
        assert done.wait(WAIT_S)
        return self

    def publish(self, topic: str, payload: str = "{}", retain: bool = False) -> int:
        """Publish QoS 1; return the PUBACK reason code (0 = accepted)."""
        info = self.c.publish(topic, payload, qos=1, retain=retain)
        with self.acked:
            assert self.acked.wait_for(lambda: info.mid in self.acks, WAIT_S), "no PUBACK"
            return self.acks.pop(info.mid)

    def expect(self, topic: str, timeout_s: float = WAIT_S) -> Msg:
        deadline = time.monotonic() + timeout_s
        while True:
            left = deadline - time.monotonic()
            assert left > 0, f"no message on {topic}"
            msg = self.messages.get(timeout=left)
            if msg.topic == topic:
                return msg

    def bridge_state(self, want: bytes, timeout_s: float = 10.0) -> None:
        """Wait until the edge's bridge notification says ``want`` (b"1" up, b"0" down)."""
        deadline = time.monotonic() + timeout_s
        topic = provision.BRIDGE_STATE_TOPIC
        while self.expect(topic, deadline - time.monotonic()).payload != want:
            pass

    def until(self, topic: str, timeout_s: float = WAIT_S) -> list[Msg]:
        """Every message up to the first on ``topic`` (included), then stragglers."""
        deadline = time.monotonic() + timeout_s
        out: list[Msg] = []
        while not out or out[-1].topic != topic:
            left = deadline - time.monotonic()
            assert left > 0, f"no message on {topic}; got {[m.topic for m in out]}"
            with contextlib.suppress(queue.Empty):
                out.append(self.messages.get(timeout=left))
        return out + self.drain()

    def drain(self, quiet_s: float = QUIET_S) -> list[Msg]:
        out = []
        with contextlib.suppress(queue.Empty):
            while True:
                out.append(self.messages.get(timeout=quiet_s))
        return out

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.c.disconnect()
        self.c.loop_stop()


@contextlib.contextmanager
def clients() -> Iterator[list[Client]]:
    made: list[Client] = []
    try:
        yield made
    finally:
        for c in made:
            c.close()


def gateway(cm: Community, site: str, site_dir: Path | None = None) -> Client:
    d = site_dir or cm.paths.site_dir(site)
    return Client().tls(cm.paths.ca_cert, d / "site.crt", d / "site.key")


def local(user: str, password: str) -> Client:
    return Client().login(user, password)


def tls_handshake_accepted(cm: Community, site_dir: Path) -> bool:
    """Connect with the site's certificate and an MQTT CONNECT: True on CONNACK 0."""
    ctx = ssl.create_default_context(cafile=str(cm.paths.ca_cert))
    ctx.load_cert_chain(str(site_dir / "site.crt"), str(site_dir / "site.key"))
    # MQTT 3.1.1 CONNECT, clean session, client id "probe" (central replaces it).
    connect = b"\x10\x11\x00\x04MQTT\x04\x02\x00\x3c\x00\x05probe"
    try:
        with (
            socket.create_connection((HOST, cm.tls_port), timeout=WAIT_S) as raw,
            ctx.wrap_socket(raw, server_hostname=HOST) as s,
        ):
            s.sendall(connect)
            reply = s.recv(4)
            if reply == b"\x20\x02\x00\x00":
                s.sendall(b"\xe0\x00")
                return True
            return False
    except (ssl.SSLError, OSError):
        return False


# Tests -------------------------------------------------------------------------------


def test_gateway_writes_only_under_its_own_site(community: Community) -> None:
    with clients() as made:
        coord = local("coordinator", PASSWORDS["coordinator"]).connect(community.local_port)
        made.append(coord.subscribe(T.everything()))
        gw = gateway(community, "s042").connect(community.tls_port)
        made.append(gw)

        assert gw.publish(T.netload("s042"), '{"own":1}') == 0
        assert coord.expect(T.netload("s042")).payload == b'{"own":1}'

        forged = {
            T.netload("s043"): "another site's report",
            T.report("s043"): "another site's report",
            T.alloc("s042"): "its own allocation",
            T.ack("s042"): "its own ack",
            T.cycle_request(): "a cycle request",
            T.admin_signal_set(): "an admin override",
            "ems/c2/site/s042/netload": "another community",
        }
        for topic, what in forged.items():
            assert gw.publish(topic) == NOT_AUTHORIZED, f"a gateway could write {what}"
        assert gw.publish(T.site_status("s042"), "{}") == 0  # marker: still allowed
        seen = coord.until(T.site_status("s042"))
        leaked = [m.topic for m in seen if m.topic in forged]
        assert leaked == [], f"the coordinator saw forged messages: {leaked}"


def test_gateway_reads_only_what_is_addressed_to_it(community: Community) -> None:
    with clients() as made:
        gw = gateway(community, "s042").connect(community.tls_port)
        made.append(gw.subscribe("#", "ems/#", "ems/c2/#"))  # granted; filtered at delivery
        coord = local("coordinator", PASSWORDS["coordinator"]).connect(community.local_port)
        c2 = local(C2_USER, C2_PASSWORD).connect(community.local_port)
        made += [coord, c2]

        assert c2.publish("ems/c2/alloc/s042") == 0
        assert c2.publish("ems/c2/cycle/request") == 0
        for topic in (T.alloc("s043"), T.ack("s043"), T.netload("s043"), T.admin_signal_set()):
            assert coord.publish(topic) == 0
        for topic in (T.alloc("s042"), T.ack("s042"), T.grid_shed(), T.coordinator_status()):
            assert coord.publish(topic) == 0
        assert coord.publish(T.cycle_request()) == 0  # the marker, published last
        seen = {m.topic for m in gw.until(T.cycle_request())}
        assert seen == {
            T.alloc("s042"),
            T.ack("s042"),
            T.grid_shed(),
            T.coordinator_status(),
            T.cycle_request(),
        }


def test_local_accounts(community: Community) -> None:
    with clients() as made:
        coord = local("coordinator", PASSWORDS["coordinator"]).connect(community.local_port)
        made.append(coord.subscribe(T.everything()))
        admin = local("admin", PASSWORDS["admin"]).connect(community.local_port)
        made.append(admin.subscribe(T.everything()))
        assert admin.publish(T.admin_signal_set(), '{"v":1}') == 0
        coord.expect(T.admin_signal_set())
        for topic in (T.alloc("s042"), T.grid_shed(), T.site_status("s042"), "ems/c2/admin/x"):
            assert admin.publish(topic) == NOT_AUTHORIZED, f"admin could write {topic}"
        assert coord.publish(T.grid_signal()) == 0
        admin.expect(T.grid_signal())  # the admin reads the community

        bad = local("coordinator", "wrong")
        with pytest.raises(AssertionError, match="not connected"):
            bad.connect(community.local_port)
        bad.close()
        assert "Bad user name or password" in str(bad.connack) or "authori" in str(bad.connack)


def test_foreign_ca_and_plain_tcp_are_refused(community: Community) -> None:
    assert tls_handshake_accepted(community, community.paths.site_dir("s042"))
    assert not tls_handshake_accepted(community, community.other_ca_site)
    # No certificate at all: require_certificate.
    ctx = ssl.create_default_context(cafile=str(community.paths.ca_cert))
    with (
        pytest.raises((ssl.SSLError, OSError)),
        socket.create_connection((HOST, community.tls_port), timeout=WAIT_S) as raw,
        ctx.wrap_socket(raw, server_hostname=HOST) as s,
    ):
        s.sendall(b"\x10\x11\x00\x04MQTT\x04\x02\x00\x3c\x00\x05probe")
        if not s.recv(4):
            raise OSError("closed")


def test_edge_bridge_carries_reports_up_and_allocations_down(
    community: Community, tmp_path: Path
) -> None:
    site_dir = community.paths.site_dir("s042")
    edge_port = free_port(HOST)
    provision.add_site(
        community.root,
        COMMUNITY,
        "s042",
        central_host=HOST,
        edge_root=site_dir,
        edge_port=edge_port,
        edge_data_dir=tmp_path,
    )
    _give_c2_an_account(community.paths)  # add_site re-rendered local.acl
    community.central.hup()
    conf = site_dir / "mosquitto.conf"
    with conf.open("a") as f:
        f.write("\n# test only: reconnect fast\nrestart_timeout 1 1\n")
    edge = Mosquitto(conf, edge_port).start()
    try:
        with clients() as made:
            coord = local("coordinator", PASSWORDS["coordinator"]).connect(
                community.local_port
            )
            made.append(coord.subscribe(T.everything()))
            home = Client().connect(edge_port)  # the gateway/HA: anonymous, loopback
            made.append(home.subscribe("#"))
            home.bridge_state(b"1")

            # Up: the contract's topics; the HA extensions and other sites stay home.
            for topic in (
                T.load_mode_set("s042", "wh"),
                T.site_context("s042"),
                T.report("s043"),
                T.report("s042"),
            ):
                assert home.publish(topic, topic) == 0
            assert home.publish(T.load_state("s042", "wh"), "on") == 0
            up = {m.topic: m.payload for m in coord.until(T.load_state("s042", "wh"))}
            assert up[T.report("s042")] == T.report("s042").encode()
            assert not set(up) & {
                T.load_mode_set("s042", "wh"), T.site_context("s042"), T.report("s043")
            }

            # Down: this site's allocation and the community's messages, nothing else.
            for topic in (T.alloc("s043"), T.alloc("s042"), T.cycle_request()):
                assert coord.publish(topic, topic) == 0
            down = {m.topic: m.payload for m in home.until(T.cycle_request())}
            assert down[T.alloc("s042")] == T.alloc("s042").encode()
            assert T.alloc("s043") not in down
    finally:
        edge.stop()


def test_reports_queued_at_the_edge_arrive_after_an_outage_in_order(
    community: Community, tmp_path: Path
) -> None:
    site_dir = community.paths.site_dir("s042")
    conf = site_dir / "mosquitto.conf"
    edge_port = free_port(HOST)
    provision.add_site(
        community.root, COMMUNITY, "s042", central_host=HOST, edge_root=site_dir,
        edge_port=edge_port, edge_data_dir=tmp_path,
    )
    _give_c2_an_account(community.paths)
    with conf.open("a") as f:
        f.write("\n# test only: reconnect fast\nrestart_timeout 1 1\n")
    edge = Mosquitto(conf, edge_port).start()
    try:
        with clients() as made:
            # The coordinator keeps a durable session (fixed id, no clean start).
            coord = Client("ems-central-c1", clean=False).login(
                "coordinator", PASSWORDS["coordinator"]
            )
            made.append(coord.connect(community.local_port).subscribe(T.report("s042")))
            home = Client().connect(edge_port)
            made.append(home.subscribe(provision.BRIDGE_STATE_TOPIC))
            home.bridge_state(b"1")

            community.central.stop()
            home.bridge_state(b"0")
            n = 30
            for seq in range(n):
                assert home.publish(T.report("s042"), f'{{"seq":{seq}}}') == 0
            community.central.start()
            got = [coord.expect(T.report("s042"), timeout_s=15).payload for _ in range(n)]
            assert got == [f'{{"seq":{seq}}}'.encode() for seq in range(n)]
    finally:
        edge.stop()


def test_revoked_site_is_refused_and_loses_its_acl(community: Community) -> None:
    s099 = community.paths.site_dir("s099")
    keep = s099.parent / "s099-kept"
    keep.mkdir(exist_ok=True)
    for name in ("site.crt", "site.key"):
        (keep / name).write_bytes((s099 / name).read_bytes())
    assert tls_handshake_accepted(community, keep)

    out = provision.remove_site(community.root, COMMUNITY, "s099", pid_file=community.pid_file)
    assert any("SIGHUP" in m for m in out.messages)
    time.sleep(0.3)
    assert "user s099" not in community.paths.gateways_acl.read_text()
    assert not s099.exists()
    assert not tls_handshake_accepted(community, keep)
    assert tls_handshake_accepted(community, community.paths.site_dir("s042"))

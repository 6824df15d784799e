"""Real processes for the fault tests: coordinators, gateways, their devices and records.

Every service is a real process started from a TOML file the test writes
(``python -m central``, ``python -m gateway``, or a runner of this directory
when the test must steer it: ``crashable_central.py``, ``skewed_gateway.py``),
logging JSON lines to its own file, talking to real Mosquitto processes on
127.0.0.1. A gateway's devices are the simulated Shelly Pro 3EM and Plus Plug S
(``gateway.sim``), which speak the devices' own MQTT topics and RPC.

After a fault the tests check the same three things (``check_*`` below):

- no report lost: each gateway's outbox is empty and the coordinator's
  recorder holds every seq the gateway generated, exactly once;
- no allocation doubled: at most one decision per (cycle, site), never more
  than the cycle's surplus, and every allocation a gateway applied is a
  recorded decision (same kW, same rank);
- every service alive: its process runs and its retained status is online.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from gateway.sim.mqtt_device import SimLoad
from gateway.sim.shelly_gen2 import SimShellyGen2Switch
from gateway.sim.shelly_pro3em import SimShellyPro3Em
from protocol import Topics

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
CRASHABLE_CENTRAL = REPO / "tests" / "integration" / "crashable_central.py"
HOST = "127.0.0.1"
COMMUNITY = "c1"


def parse_utc(text: str) -> datetime:
    """A time as the recorder writes it (format_utc: Z, microseconds only when not 0)."""
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


async def until(predicate: Callable[[], object], what: str, timeout_s: float = 20.0) -> None:
    """Wait for ``predicate()`` (a liveness bound, never a speed assertion)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"not in {timeout_s} s: {what}")
        await asyncio.sleep(0.05)


# Processes --------------------------------------------------------------------------


class Service:
    """One service process, its JSON log and its own handle (never killed by name)."""

    def __init__(self, name: str, args: list[str], log: Path) -> None:
        self.name = name
        self.args = args
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Service:
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen([sys.executable, *self.args], cwd=REPO, env=env,
                                         stdin=subprocess.DEVNULL, stdout=out, stderr=out)
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    async def wait(self, timeout_s: float = 20.0) -> int:
        assert self.proc is not None
        proc = self.proc
        await until(lambda: proc.poll() is not None, f"{self.name} exits", timeout_s)
        return proc.returncode

    async def stop(self) -> int:
        """SIGTERM, as systemd stops it; the exit status (0 = clean)."""
        if not self.alive():
            assert self.proc is not None
            return self.proc.returncode
        self.signal(signal.SIGTERM)
        return await self.wait()

    def kill(self) -> None:
        if self.alive():
            assert self.proc is not None
            self.proc.kill()
            self.proc.wait()

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        """The JSON log lines (of one event), across every run that wrote this log."""
        out = []
        if not self.log.exists():
            return out
        for line in self.log.read_bytes().splitlines():
            if not line.startswith(b"{"):
                continue
            try:
                event = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            if name is None or event.get("event") == name:
                out.append(event)
        return out

    def tail(self, n: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-n:] if self.log.exists() else ""


# Configuration ------------------------------------------------------------------------


def central_toml(path: Path, *, port: int, root: str, records: Path, period_s: float,
                 reply_timeout_s: float, strategy: str = "fifo") -> Path:
    path.write_text(
        f'[mqtt]\nhost = "{HOST}"\nport = {port}\nclient_id = "central-{root}"\n'
        f'[community]\nid = "{COMMUNITY}"\ntopic_root = "{root}"\n'
        f'[cycle]\nperiod_s = {period_s}\nreply_timeout_s = {reply_timeout_s}\n'
        f'strategy = "{strategy}"\n'
        f'[recorder]\nurl = "sqlite:///{records}"\n'
        f'[log]\nformat = "json"\n'
    )
    return path


@dataclass
class Home:
    """One home: its gateway's config, state directory and simulated devices."""

    site: str
    root: str
    dir: Path
    port: int  # the broker the gateway and the devices use (central, or the home's edge)
    period_s: float = 1.0
    export_w: float = 4000.0
    load_kw: float = 2.0
    bridge_state_topic: str | None = None
    outbox: dict[str, int] = field(default_factory=dict)
    meter: SimShellyPro3Em | None = None
    plug: SimShellyGen2Switch | None = None

    @property
    def state_dir(self) -> Path:
        return self.dir / "state"

    @property
    def config(self) -> Path:
        return self.dir / "gateway.toml"

    @property
    def outbox_path(self) -> Path:
        return self.state_dir / f"outbox-{self.site}.sqlite"

    def write_config(self) -> Path:
        tag = f"{self.root}-{self.site}"
        bridge = (f'bridge_state_topic = "{self.bridge_state_topic}"\n'
                  if self.bridge_state_topic else 'bridge_state_topic = ""\n')
        outbox = "".join(f"{k} = {v}\n" for k, v in self.outbox.items())
        self.dir.mkdir(parents=True, exist_ok=True)
        self.config.write_text(
            f'[mqtt]\nhost = "{HOST}"\nport = {self.port}\nprotocol = "3.1.1"\n'
            f'client_id = "gw-{tag}"\n'
            f'[community]\nid = "{COMMUNITY}"\ntopic_root = "{self.root}"\n'
            f'[site]\nid = "{self.site}"\n'
            f'[meter]\ndevice = "grid"\n'
            f'[[devices]]\nid = "grid"\nprofile = "shelly/pro-3em"\nprefix = "em-{tag}"\n'
            f'[[devices]]\nid = "plug"\nprofile = "shelly/plus-plug-s"\nprefix = "plug-{tag}"\n'
            f'[[loads]]\nid = "wh"\nkind = "water_heater"\ndevice = "plug"\n'
            f"nominal_kw = {self.load_kw}\nmin_on_s = 0\nmin_off_s = 0\n"
            f"max_starts_per_hour = 60\n"
            f"[ems]\nperiod_s = {self.period_s}\nnetload_interval_s = 0.3\n"
            f"response_check_s = 5\nlocal_self_consumption = false\n{bridge}"
            # Cycles are seconds apart here but minutes in a real community: a
            # silence of one period is not the coordinator gone.
            f"coordinator_silence_s = 600\n"
            f"[homeassistant]\nenabled = false\n"
            f'[state]\ndir = "{self.state_dir}"\n'
            f"[outbox]\n{outbox}"
            f'[log]\nformat = "json"\n'
        )
        return self.config

    def start_devices(self) -> None:
        tag = f"{self.root}-{self.site}"
        # The meter counts import as positive: the home exports export_w.
        self.meter = SimShellyPro3Em(HOST, self.port, topic_prefix=f"em-{tag}",
                                     power_w=-self.export_w, period_s=0.5)
        self.plug = SimShellyGen2Switch(HOST, self.port, topic_prefix=f"plug-{tag}",
                                        loads=[SimLoad(nominal_w=self.load_kw * 1000.0)],
                                        period_s=0.5)
        self.meter.start()
        self.plug.start()

    def stop_devices(self) -> None:
        for dev in (self.meter, self.plug):
            if dev is not None:
                with contextlib.suppress(Exception):
                    dev.stop()

    def gateway(self, args: list[str] | None = None) -> Service:
        """The home's gateway process (``python -m gateway`` unless ``args`` say otherwise)."""
        self.write_config()
        argv = args if args is not None else ["-m", "gateway", "--config", str(self.config)]
        return Service(f"gateway {self.site}", argv, self.dir / "gateway.log")

    def outbox_state(self) -> OutboxState:
        return read_outbox(self.outbox_path)


@dataclass(frozen=True)
class OutboxState:
    last_seq: int
    pending: list[int]
    dropped: int
    dropped_through: int


def read_outbox(path: Path) -> OutboxState:
    """The gateway's outbox as it is on disk (a reader beside the running gateway: WAL)."""
    if not path.exists():
        return OutboxState(0, [], 0, 0)
    with contextlib.closing(sqlite3.connect(path, timeout=5)) as db:
        meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
        pending = [s for (s,) in db.execute("SELECT seq FROM outbox ORDER BY seq")]
    return OutboxState(int(meta.get("last_seq", 0)), pending, int(meta.get("dropped", 0)),
                       int(meta.get("dropped_through", 0)))


# The coordinator's records ------------------------------------------------------------


class Records:
    """Read-only views of the coordinator's SQLite records (beside the running coordinator)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @contextlib.contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        with contextlib.closing(sqlite3.connect(self.path, timeout=5)) as db:
            yield db

    def exists(self) -> bool:
        if not self.path.exists():
            return False
        with self._db() as db:
            return db.execute(
                "SELECT 1 FROM sqlite_master WHERE name='reports'").fetchone() is not None

    def report_seqs(self, site: str) -> list[int]:
        if not self.exists():
            return []
        with self._db() as db:
            return [s for (s,) in db.execute(
                "SELECT seq FROM reports WHERE site=? ORDER BY seq", (site,))]

    def reports(self, site: str) -> list[tuple[int, str, str]]:
        """(seq, period, received_at) of a site's reports."""
        with self._db() as db:
            return [(int(s), p, r) for s, p, r in db.execute(
                "SELECT seq, period, received_at FROM reports WHERE site=? ORDER BY seq",
                (site,))]

    def decisions(self) -> list[tuple[str, str, float, int]]:
        """(cycle, site, alloc_kw, rank) of every decision."""
        if not self.exists():
            return []
        with self._db() as db:
            return [(c, s, float(kw), int(r)) for c, s, kw, r in db.execute(
                "SELECT cycle, site, alloc_kw, rank FROM decisions ORDER BY cycle, rank")]

    def cycles(self) -> list[dict[str, Any]]:
        if not self.exists():
            return []
        with self._db() as db:
            db.row_factory = sqlite3.Row
            return [dict(r) for r in db.execute("SELECT * FROM cycles ORDER BY cycle")]


# Observing the brokers --------------------------------------------------------------


class Watcher:
    """A paho client on one broker that keeps every message under the topic root.

    It reconnects by itself (paho's loop) when a broker restarts, so it sees
    what the brokers deliver after a fault as well as before.
    """

    def __init__(self, port: int, topics: Topics) -> None:
        self.topics = topics
        self.messages: list[tuple[str, bytes, bool]] = []
        self.client = paho.Client(CallbackAPIVersion.VERSION2,
                                  client_id=f"watch-{uuid.uuid4().hex[:8]}",
                                  protocol=paho.MQTTv311)
        self.client.on_connect = lambda c, *_: c.subscribe(topics.everything(), qos=1)
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(0.2, 1)
        self.client.connect(HOST, port, keepalive=10)
        self.client.loop_start()

    def _on_message(self, client: Any, userdata: Any, msg: paho.MQTTMessage) -> None:
        self.messages.append((msg.topic, bytes(msg.payload), bool(msg.retain)))

    def on(self, topic: str) -> list[dict[str, Any]]:
        out = []
        for t, p, _ in list(self.messages):
            if t == topic and p:
                with contextlib.suppress(orjson.JSONDecodeError):
                    out.append(orjson.loads(p))
        return out

    def last(self, topic: str) -> dict[str, Any] | None:
        got = self.on(topic)
        return got[-1] if got else None

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def retained_states(port: int, topics: Topics, sites: list[str],
                    timeout_s: float = 5.0) -> dict[str, str]:
    """The retained ``state`` of the coordinator's and each site's status, as a new
    subscriber sees them now (what a gateway or the operator would read)."""
    wanted = {topics.coordinator_status(): "coordinator"}
    wanted.update({topics.site_status(s): s for s in sites})
    got: dict[str, str] = {}
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"st-{uuid.uuid4().hex[:8]}",
                         protocol=paho.MQTTv311)

    def on_message(c: Any, u: Any, msg: paho.MQTTMessage) -> None:
        name = wanted.get(msg.topic)
        if name is not None and msg.payload:
            got[name] = orjson.loads(msg.payload)["state"]

    client.on_message = on_message
    client.on_connect = lambda c, *_: c.subscribe([(t, 1) for t in wanted])
    client.connect(HOST, port, keepalive=10)
    client.loop_start()
    try:
        end = time.monotonic() + timeout_s
        while len(got) < len(wanted) and time.monotonic() < end:
            time.sleep(0.05)
    finally:
        client.loop_stop()
        client.disconnect()
    return got


# The invariants ------------------------------------------------------------------------


async def wait_reports_delivered(records: Records, homes: list[Home],
                                 timeout_s: float = 30.0) -> None:
    """Until each outbox is empty and its every seq (but the dropped) is recorded."""

    def delivered() -> bool:
        for home in homes:
            box = home.outbox_state()
            if box.pending or box.last_seq == 0:
                return False
            recorded = set(records.report_seqs(home.site))
            if not set(range(box.dropped_through + 1, box.last_seq + 1)) <= recorded:
                return False
        return True

    await until(delivered, "every report delivered and acknowledged", timeout_s)


def check_no_report_lost(records: Records, homes: list[Home]) -> dict[str, int]:
    """Every seq a (stopped) gateway generated is recorded exactly once, or still in its
    durable outbox (made in its last moments, sent again at its next start), or
    dropped by a full outbox, which counts each one. Returns the reports recorded."""
    counts = {}
    for home in homes:
        box = home.outbox_state()
        seqs = records.report_seqs(home.site)
        assert len(seqs) == len(set(seqs)), f"{home.site}: a report recorded twice"
        assert not set(seqs) - set(range(1, box.last_seq + 1)), f"{home.site}: unknown seqs"
        missing = sorted(set(range(1, box.last_seq + 1)) - set(seqs) - set(box.pending))
        assert len(missing) == box.dropped, (
            f"{home.site}: {len(missing)} reports neither recorded nor pending {missing[:10]},"
            f" {box.dropped} dropped by the outbox")
        assert all(s <= box.dropped_through for s in missing)
        counts[home.site] = len(seqs)
    return counts


def applied_allocations(gateways: list[Service]) -> list[dict[str, Any]]:
    """Every allocation a gateway applied (its log: ``allocation_received`` accepted)."""
    return [e for gw in gateways for e in gw.events("allocation_received") if e["accepted"]]


def check_no_allocation_doubled(records: Records, applied: list[dict[str, Any]],
                                sim_allocs: dict[str, list[Any]] | None = None) -> int:
    """At most one decision per (cycle, site), within the surplus; what a gateway
    applied is a recorded decision. Returns the number of decisions."""
    decisions = records.decisions()
    keys = [(c, s) for c, s, _, _ in decisions]
    assert len(keys) == len(set(keys)), "two decisions for one (cycle, site)"
    surplus = {c["cycle"]: c["surplus_kw"] for c in records.cycles()}
    per_cycle: dict[str, float] = {}
    for c, _, kw, _ in decisions:
        per_cycle[c] = per_cycle.get(c, 0.0) + kw
    for c, total in per_cycle.items():
        assert total <= surplus[c] + 1e-6, f"cycle {c}: {total} kW allocated > {surplus[c]}"
    recorded = {(c, s): (kw, r) for c, s, kw, r in decisions}
    seen: dict[tuple[str, str], set[tuple[float, int]]] = {}
    for e in applied:
        key = (e["cycle"].replace("+00:00", "Z"), e["site"])
        got = (float(e["alloc_kw"]), int(e["rank"]))
        assert recorded.get(key) == got, f"{key}: applied {got}, recorded {recorded.get(key)}"
        seen.setdefault(key, set()).add(got)
    for key, values in seen.items():
        assert len(values) == 1, f"{key} applied twice differently: {values}"
    applied_keys = [(e["cycle"], e["site"]) for e in applied]
    assert len(applied_keys) == len(set(applied_keys)), "a gateway applied a cycle twice"
    for site, allocs in (sim_allocs or {}).items():
        for a in allocs:
            key = (a.cycle.isoformat().replace("+00:00", "Z"), site)
            assert recorded.get(key) == (a.alloc_kw, a.rank), f"{key}: sent {a}, recorded " \
                f"{recorded.get(key)}"
    return len(decisions)


def check_alive(port: int, topics: Topics, services: list[Service], sites: list[str]) -> None:
    for svc in services:
        assert svc.alive(), f"{svc.name} is not running:\n{svc.tail()}"
    states = retained_states(port, topics, sites)
    want = {"coordinator": "online", **{s: "online" for s in sites}}
    assert states == want, f"retained statuses {states}"

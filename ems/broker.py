"""Run an MQTT broker on loopback for the tests, the benchmarks and the demo.

``EmbeddedBroker`` starts the system ``mosquitto`` (found on ``PATH``, then at
``/usr/sbin/mosquitto``) from the ``mosquitto/dev.conf`` template, or, where
Mosquitto is not installed, an in-process amqtt broker on a background thread
with its own event loop, so sync and async callers use it alike::

    with EmbeddedBroker() as broker:
        client.connect(broker.host, broker.port)

The broker listens only on a loopback address: the dev config allows anonymous
clients. Mosquitto is stopped by its own process handle (SIGTERM, then SIGKILL).

amqtt speaks MQTT 3.1.1 only: connect with ``version=MQTTv311`` (gmqtt) or
``protocol=MQTTv311`` (paho); ``mosquitto/README.md`` lists its other limits.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import logging
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self

import structlog

log = structlog.get_logger(__name__)

BrokerKind = Literal["auto", "mosquitto", "amqtt"]
KINDS: tuple[str, ...] = ("auto", "mosquitto", "amqtt")

DEV_CONF_PATH = Path(__file__).resolve().parents[1] / "mosquitto" / "dev.conf"
MOSQUITTO_FALLBACK_PATHS = ("/usr/sbin/mosquitto",)
_PLACEHOLDER = re.compile(r"@[A-Z_]+@")
_LOG_TAIL_BYTES = 2000

# Identical to mosquitto/dev.conf (tests/integration/test_broker.py checks it); used
# when the package is installed without the repository's mosquitto/ directory.
DEV_CONF_TEMPLATE = """\
# Mosquitto 2.0 development/test broker for ems-community: loopback only, anonymous,
# no persistence. NOT for production (see README.md in this directory).
#
# This is a template. ems/broker.py (EmbeddedBroker) replaces @HOST@, @PORT@ and
# @DATA_DIR@ and writes the result into its own temporary directory; the runner
# refuses any host that is not a loopback address. ems/broker.py carries an
# identical copy (DEV_CONF_TEMPLATE) for installs without this directory; a test
# checks that the two stay the same.
#
# References: /work/shared/reference/mqtt-performance.md (perf) and
# /work/shared/reference/mosquitto-and-faults.md (faults), cited below by section.

# One TCP listener on loopback and a free port chosen at run time, so parallel test
# runs, benchmarks and the demo never collide (faults §1 "Listeners and authentication").
listener @PORT@ @HOST@

# Anonymous access is tolerable only because the listener is loopback-only; Mosquitto
# 2.0 defaults to false (faults §1). Production uses mTLS, passwords and ACLs.
allow_anonymous true

# Every run starts clean, so retained messages never leak from one run into the next.
# Persistence is a periodic snapshot, not a log, anyway (faults §0.2).
persistence false

# Used only if a fault test turns persistence on through the runner's extra_config.
persistence_location @DATA_DIR@/

# No per-client queue limit: the defaults (max_queued_messages 1000, max_inflight 20)
# silently dropped 65-74 % of a 10k-100k QoS 1 reply burst (perf §2, pitfall 1).
max_queued_messages 0

# Up to 1000 unacknowledged QoS 1/2 messages per client, as in the measured "tuned"
# config (perf §1-§2); the default 20 throttles a fan-in burst.
max_inflight_messages 1000

# Payloads are at most 16 KiB (PROTOCOL.md); 64 KiB leaves headroom. An oversized
# packet disconnects its sender instead of being dropped silently, as
# message_size_limit does for 3.1.1 clients (faults §0.8, §1 "Limits and persistence").
max_packet_size 65536

# Tests publish right after SUBACK; without this the broker's Nagle delay held such
# publishes 17-39 ms (perf pitfall 5). It costs ~25 % of QoS 0 throughput and nothing
# measurable at QoS 1 (perf §1-§2); a QoS 0 benchmark can append "set_tcp_nodelay false".
set_tcp_nodelay true

# Log to stderr (the runner sends it to broker.log in its temp dir and shows the tail
# if the broker dies). notice/information include connects and disconnects, which is
# what one wants when a test fails; debug would log every packet.
log_dest stderr
log_type error
log_type warning
log_type notice
log_type information
log_timestamp true
log_timestamp_format %Y-%m-%dT%H:%M:%S
"""


class BrokerError(RuntimeError):
    """Root of the errors raised while running a development broker."""


class BrokerNotFoundError(BrokerError):
    """``kind="mosquitto"`` was asked for but no mosquitto binary was found."""


class BrokerStartError(BrokerError):
    """The broker did not come up; carries its kind, port and log tail."""

    def __init__(self, message: str, *, kind: str, port: int, log_tail: str = "") -> None:
        detail = f"\n--- broker log tail ---\n{log_tail}" if log_tail else ""
        super().__init__(f"{message} ({kind} on port {port}){detail}")
        self.kind = kind
        self.port = port
        self.log_tail = log_tail


def find_mosquitto() -> str | None:
    """Return the path of the mosquitto binary: ``PATH`` first, then /usr/sbin."""
    found = shutil.which("mosquitto")
    if found:
        return found
    for candidate in MOSQUITTO_FALLBACK_PATHS:
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def free_port(host: str = "127.0.0.1") -> int:
    """Ask the kernel for a free TCP port on ``host`` (racy: the caller retries)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def load_dev_config_template() -> str:
    """The ``mosquitto/dev.conf`` template, or its embedded copy if the file is missing."""
    try:
        return DEV_CONF_PATH.read_text(encoding="utf-8")
    except FileNotFoundError:
        return DEV_CONF_TEMPLATE


def render_dev_config(host: str, port: int, data_dir: Path, extra_config: str = "") -> str:
    """Fill in the dev template's placeholders; ``extra_config`` lines are appended."""
    values = {"@HOST@": host, "@PORT@": str(port), "@DATA_DIR@": str(data_dir)}
    lines = []
    for line in load_dev_config_template().splitlines(keepends=True):
        if not line.lstrip().startswith("#"):  # comments keep naming the placeholders
            for placeholder, value in values.items():
                line = line.replace(placeholder, value)
            if left := _PLACEHOLDER.findall(line):
                raise BrokerError(f"unknown placeholder in mosquitto dev config: {left[0]}")
        lines.append(line)
    text = "".join(lines)
    if extra_config:
        text += "\n# extra_config from EmbeddedBroker\n" + extra_config.strip() + "\n"
    return text


def _require_loopback(host: str) -> None:
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ValueError(
            f"host must be a loopback IP address such as 127.0.0.1, got {host!r}: "
            "the development broker accepts anonymous clients"
        )


def _mqtt_handshake(host: str, port: int, timeout_s: float = 0.5) -> bool:
    """Connect over TCP, send an MQTT 3.1.1 CONNECT, expect CONNACK 0, DISCONNECT.

    Stronger than a bare TCP connect (the broker answers MQTT), and quiet: amqtt logs
    an ERROR for a connection closed before its CONNECT.
    """
    client_id = f"ems-probe-{os.urandom(4).hex()}".encode()
    # MQTT 3.1.1 section 3.1: protocol name, level 4, flags 0x02 (clean session),
    # keep-alive 60 s, then the client id as the only payload field. The whole is
    # under 128 bytes, so the remaining length fits in one byte.
    variable = b"\x00\x04MQTT\x04\x02\x00\x3c"
    payload = len(client_id).to_bytes(2, "big") + client_id
    connect = bytes([0x10, len(variable) + len(payload)]) + variable + payload
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as sock:
            sock.sendall(connect)
            connack = b""
            while len(connack) < 4:
                chunk = sock.recv(4 - len(connack))
                if not chunk:
                    return False
                connack += chunk
            if connack != b"\x20\x02\x00\x00":
                return False
            sock.sendall(b"\xe0\x00")  # DISCONNECT: no will, a clean goodbye
    except OSError:
        return False
    return True


def _wait_until_ready(
    ready: Callable[[], bool], alive: Callable[[], bool], deadline: float
) -> bool:
    """Poll ``ready()`` until it holds (True) or ``alive()`` turns false (False).

    Raises TimeoutError once ``deadline`` (a ``time.monotonic()`` value) passes.
    """
    while alive():
        if ready():
            return alive()
        if time.monotonic() > deadline:
            raise TimeoutError
        time.sleep(0.02)
    return False


class _MosquittoProcess:
    """One mosquitto child process, its config and its log in ``workdir``."""

    def __init__(self, binary: str, host: str, port: int, workdir: Path, extra: str) -> None:
        self.binary = binary
        self.host = host
        self.port = port
        self.workdir = workdir
        self.conf_path = workdir / "mosquitto.conf"
        self.log_path = workdir / "broker.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_offset = 0
        data_dir = workdir / "data"
        data_dir.mkdir(exist_ok=True)
        self.conf_path.write_text(render_dev_config(host, port, data_dir, extra), encoding="utf-8")
        _let_mosquitto_user_write(workdir, data_dir)

    def launch(self, timeout_s: float) -> None:
        with self.log_path.open("ab") as log_file:
            self._log_offset = log_file.tell()
            self.proc = subprocess.Popen(
                [self.binary, "-c", str(self.conf_path)],
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=log_file,
                # Its own session: a Ctrl-C at the terminal must not kill the
                # broker before the clients have said goodbye.
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout_s
        try:
            up = _wait_until_ready(self._ready, self.alive, deadline)
        except TimeoutError:
            self.terminate(timeout_s=2.0)
            raise self._start_error(
                f"no 'mosquitto version ... running' log line and MQTT answer after {timeout_s} s"
            ) from None
        if not up:
            self.proc.wait()
            raise self._start_error(f"mosquitto exited with status {self.proc.returncode}")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _ready(self) -> bool:
        # An answer on the port alone can come from another broker that holds it
        # (ours then exits with "Address already in use"), so first wait for *our*
        # process to log that it runs: mosquitto logs "mosquitto version X running"
        # (log_type information, set in dev.conf) only after opening its listeners.
        with self.log_path.open("rb") as f:
            f.seek(self._log_offset)
            announced = re.search(rb"mosquitto version \S+ running", f.read()) is not None
        return announced and _mqtt_handshake(self.host, self.port)

    def terminate(self, timeout_s: float) -> int | None:
        """SIGTERM (Mosquitto saves and exits), then SIGKILL if it hangs."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return None
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            log.warning("broker_stop_timeout", kind="mosquitto", port=self.port, pid=proc.pid)
            proc.kill()
            return proc.wait()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def log_tail(self) -> str:
        try:
            with self.log_path.open("rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - _LOG_TAIL_BYTES))
                return f.read().decode("utf-8", "replace").strip()
        except OSError:
            return ""

    def _start_error(self, message: str) -> BrokerStartError:
        return BrokerStartError(message, kind="mosquitto", port=self.port, log_tail=self.log_tail())


def _let_mosquitto_user_write(workdir: Path, data_dir: Path) -> None:
    """Run as root, mosquitto drops to the ``mosquitto`` user after reading its config;
    let that user reach ``data_dir`` in case a fault test turns persistence on."""
    if os.geteuid() != 0:
        return
    try:
        user = pwd.getpwnam("mosquitto")
    except KeyError:
        return
    workdir.chmod(0o711)
    os.chown(data_dir, user.pw_uid, user.pw_gid)


@functools.cache
def _amqtt_broker_class() -> type[Any]:
    """amqtt's Broker, corrected to send retained messages to subscribers only.

    amqtt 0.12.1 replays, on every CONNECT, the retained messages matching *all*
    clients' subscriptions to the connecting client (``Broker._handle_client_session``
    loops over ``self._subscriptions``). MQTT 3.1.1 section 3.3.1.3 sends retained
    messages only to "future subscribers whose subscriptions match".
    """
    from amqtt.broker import Broker

    class SubscriberScopedBroker(Broker):  # type: ignore[misc]
        async def _publish_retained_messages_for_subscription(
            self, subscription: tuple[str, int], session: Any
        ) -> None:
            topic_filter = subscription[0]
            granted = [
                qos
                for owner, qos in self._subscriptions.get(topic_filter, ())
                if owner.client_id == session.client_id
            ]
            if granted:
                await super()._publish_retained_messages_for_subscription(
                    (topic_filter, granted[0]), session
                )

    return SubscriberScopedBroker


class _AmqttThread:
    """An amqtt broker on its own event loop in a daemon thread."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.loop: asyncio.AbstractEventLoop | None = None
        self.thread: threading.Thread | None = None
        self.broker: Any = None

    def launch(self, timeout_s: float) -> None:
        _quiet_amqtt_loggers()
        loop = asyncio.new_event_loop()
        self.loop = loop
        self.thread = threading.Thread(
            target=loop.run_forever, name=f"amqtt-broker-{self.port}", daemon=True
        )
        self.thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self._start(), loop).result(timeout_s)
            up = _wait_until_ready(
                lambda: _mqtt_handshake(self.host, self.port),
                self.alive,
                time.monotonic() + timeout_s,
            )
        except Exception as exc:
            self.terminate(timeout_s=2.0)
            raise BrokerStartError(
                f"amqtt did not start: {exc!r}", kind="amqtt", port=self.port
            ) from exc
        if not up:
            self.terminate(timeout_s=2.0)
            raise BrokerStartError("amqtt thread died", kind="amqtt", port=self.port)

    async def _start(self) -> None:
        bind = f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"
        config = {
            "listeners": {"default": {"type": "tcp", "bind": bind}},
            # Only anonymous auth: the default plugin set adds $SYS publishing every
            # 20 s and per-packet logging, which we don't want in tests.
            "plugins": {
                "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}
            },
        }
        self.broker = _amqtt_broker_class()(config)
        await self.broker.start()

    async def _shutdown(self) -> None:
        if self.broker is not None and self.broker.transitions.state == "started":
            await self.broker.shutdown()
        current = asyncio.current_task()
        tasks = [t for t in asyncio.all_tasks() if t is not current]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def alive(self) -> bool:
        return self.thread is not None and self.thread.is_alive()

    def terminate(self, timeout_s: float) -> None:
        loop, thread = self.loop, self.thread
        if loop is None or thread is None:
            return
        if thread.is_alive():
            try:
                asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(timeout_s)
            except Exception:
                log.warning("broker_stop_unclean", kind="amqtt", port=self.port, exc_info=True)
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout_s)
        if not thread.is_alive():
            loop.close()
        self.loop = self.thread = self.broker = None


def _quiet_amqtt_loggers() -> None:
    """amqtt logs every connection at INFO; keep WARNING unless the app chose a level."""
    for name in ("amqtt", "transitions"):
        logger = logging.getLogger(name)
        if logger.level == logging.NOTSET:
            logger.setLevel(logging.WARNING)


class EmbeddedBroker:
    """An MQTT broker on a loopback address and a free port: mosquitto or amqtt.

    ``kind="auto"`` takes mosquitto when installed, else amqtt; ``"mosquitto"``
    raises BrokerNotFoundError without the binary. ``extra_config`` lines are
    appended to the mosquitto config (e.g. ``"persistence true"`` for fault tests).
    """

    def __init__(
        self,
        kind: BrokerKind = "auto",
        host: str = "127.0.0.1",
        port: int | None = None,
        *,
        extra_config: str = "",
        start_timeout_s: float = 10.0,
        stop_timeout_s: float = 5.0,
    ) -> None:
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}; got {kind!r}")
        _require_loopback(host)
        if port is not None and not (isinstance(port, int) and 0 < port < 65536):
            raise ValueError(f"port must be None (pick a free one) or 1..65535; got {port!r}")
        binary = None if kind == "amqtt" else find_mosquitto()
        if kind == "mosquitto" and binary is None:
            raise BrokerNotFoundError(
                "kind='mosquitto' but no mosquitto binary on PATH or at "
                f"{', '.join(MOSQUITTO_FALLBACK_PATHS)}; "
                "install it with `apt-get install mosquitto`"
            )
        self.kind: Literal["mosquitto", "amqtt"] = "mosquitto" if binary else "amqtt"
        if extra_config and self.kind != "mosquitto":
            raise ValueError("extra_config is mosquitto configuration; this broker is amqtt")
        self.host = host
        self._binary = binary
        self._port = port
        self._port_fixed = port is not None
        self._extra_config = extra_config
        self._start_timeout_s = start_timeout_s
        self._stop_timeout_s = stop_timeout_s
        self._workdir: Path | None = None
        self._backend: _MosquittoProcess | _AmqttThread | None = None

    @property
    def port(self) -> int:
        """The TCP port; chosen at the first start() unless given."""
        if self._port is None:
            raise BrokerError("the broker has no port yet: call start() first")
        return self._port

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"mqtt://{host}:{self.port}"

    @property
    def pid(self) -> int | None:
        """The mosquitto process id while it runs; None for amqtt (in-process)."""
        backend = self._backend
        if isinstance(backend, _MosquittoProcess) and backend.alive() and backend.proc:
            return backend.proc.pid
        return None

    @property
    def log_path(self) -> Path | None:
        """Mosquitto's stderr log file (in the broker's temp dir), None for amqtt."""
        backend = self._backend
        return backend.log_path if isinstance(backend, _MosquittoProcess) else None

    def is_running(self) -> bool:
        return self._backend is not None and self._backend.alive()

    def start(self) -> Self:
        """Start the broker and block until it accepts TCP connections."""
        if self.is_running():
            raise BrokerError(f"broker already running on {self.url}")
        attempts = 1 if self._port_fixed else 3
        for attempt in range(1, attempts + 1):
            if self._port is None:
                self._port = free_port(self.host)
            try:
                self._launch()
            except BaseException as exc:
                port_taken = "address already in use" in str(exc).lower()
                if isinstance(exc, BrokerStartError) and port_taken and attempt < attempts:
                    # free_port() is racy: another process took the port meanwhile.
                    log.warning("broker_port_taken", kind=self.kind, port=self._port)
                    self._port = None
                    continue
                log.error("broker_start_failed", kind=self.kind, port=self._port, error=str(exc))
                self.stop()  # the error carries the log tail; leave no temp dir behind
                raise
            break
        self._port_fixed = True
        log.info("broker_started", kind=self.kind, host=self.host, port=self._port, pid=self.pid)
        return self

    def stop(self) -> None:
        """Stop the broker (mosquitto: SIGTERM, wait, SIGKILL) and remove its temp dir."""
        pid = self.pid
        backend, self._backend = self._backend, None
        if backend is not None:
            was_running = backend.alive()
            backend.terminate(self._stop_timeout_s)
            if was_running:
                log.info("broker_stopped", kind=self.kind, port=self._port, pid=pid)
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None

    def kill(self) -> None:
        """SIGKILL the mosquitto process, as a crash would; start() brings it back."""
        backend = self._backend
        if not isinstance(backend, _MosquittoProcess):
            raise BrokerError("kill() needs a mosquitto process; amqtt runs in this process")
        pid = self.pid
        backend.kill()
        log.info("broker_killed", kind=self.kind, port=self._port, pid=pid)

    def restart(self) -> None:
        """Stop gracefully (if running) and start again on the same port."""
        if self._backend is not None:
            self._backend.terminate(self._stop_timeout_s)
        self._port_fixed = True
        if self._port is None:
            self._port = free_port(self.host)
        self._launch()
        log.info("broker_restarted", kind=self.kind, host=self.host, port=self._port, pid=self.pid)

    def _launch(self) -> None:
        port = self.port
        if self.kind == "mosquitto":
            assert self._binary is not None
            if self._workdir is None:
                self._workdir = Path(tempfile.mkdtemp(prefix="ems-mosquitto-"))
            self._backend = _MosquittoProcess(
                self._binary, self.host, port, self._workdir, self._extra_config
            )
        else:
            self._backend = _AmqttThread(self.host, port)
        self._backend.launch(self._start_timeout_s)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    async def __aenter__(self) -> Self:
        return await asyncio.to_thread(self.start)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await asyncio.to_thread(self.stop)

    def __repr__(self) -> str:
        where = self.url if self._port is not None else f"{self.host}:?"
        state = "running" if self.is_running() else "stopped"
        return f"<EmbeddedBroker {self.kind} {where} {state}>"

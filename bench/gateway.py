"""What one home's gateway costs, and how fast an allocation reaches its relays.

``python -m bench.gateway`` (see docs/benchmarks.md, "Gateway"). On one local
Mosquitto (``ems.broker.EmbeddedBroker``, 127.0.0.1 only) it runs:

- **the gateway**: one real ``gateway.app.Gateway`` in a process of its own
  (``python -c``, so its memory is its own and it loads only what the gateway
  loads), with a realistic home: a Shelly Pro 3EM on the grid connection, two
  Shelly Plus Plug S and a Phidget 1017 relay board. The board is
  ``gateway.sim.phidget.FakeBoard`` (it stands in for the USB hardware only,
  so it lives in the gateway's process, as the library would), recording the
  monotonic time of each ``setState``;
- **the devices**: the simulated Shellys (``gateway.sim.shelly``) in this
  process, each its own MQTT client; a plug records the monotonic time at
  which each RPC request reaches it;
- **the coordinator**: a plain gmqtt client in this process playing its part:
  retained ``coordinator/status`` (online, epoch 1), then per cycle
  ``cycle/request``, the home's ``flex`` reply, ``alloc/{s}`` (epoch 1, valid
  until the period's end) and ``cycle/closed``, as the real one does for one site.

Cycles alternate: an allocation of the whole offer (every load on), then one of
0 kW (every load off), so each cycle sends three relay commands. The latency is
from the ``alloc`` publish to the command reaching the device: ``Switch.Set``
at a plug's ``<prefix>/rpc``, ``setState`` on the board. ``time.monotonic()``
is system-wide on Linux, so the two processes' times compare.

Memory is ``VmRSS`` / ``VmHWM`` of ``/proc/<pid>/status`` and CPU the process's
user + system time (``/proc/<pid>/stat``, every thread), read from outside, so
measuring costs the gateway nothing. The same is read for a bare interpreter
(``python -c``, importing nothing) to show what Python itself costs.

This module's top-level imports are the standard library and ``bench.common``
(itself standard library only): the gateway's process imports it to start, and
must not load the simulators or gmqtt.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench.common import cpu_times, proc_status, progress

ROOT = Path(__file__).resolve().parents[1]
TARGET_RSS_MB = 60.0
TARGET_LATENCY_MS = 100.0
DEFAULT_CYCLES = 30
MAX_CYCLES = 120  # every other cycle starts each load; the guard allows 60 starts an hour
DEFAULT_IDLE_S = 20.0
DEFAULT_PAUSE_S = 0.8  # after each cycle: the device notifications and state updates settle
SETTLE_S = 3.0  # after start-up, before the idle window
COMMAND_TIMEOUT_S = 5.0
READY_TIMEOUT_S = 60.0
RSS_SAMPLE_S = 0.25
SITE = "home1"
BOARD_SERIAL = 5150
METER_IMPORT_W = 600.0  # the home imports: no local self-consumption gets in the way
METER_PERIOD_S = 1.0  # a live meter: a real Pro 3EM notifies on every 5 % / 10 W change
PLUG_PERIOD_S = 60.0  # a plug's aenergy roll-over, as on the device
PERIOD = timedelta(hours=1)
EPOCH = 1


@dataclass(frozen=True)
class HomeLoad:
    """One load of the simulated home and the relay behind it."""

    id: str
    kind: str
    device: str  # the gateway's device id
    channel: int
    nominal_kw: float


# Switched in this order by the gateway's one command worker (config order).
LOADS = (
    HomeLoad("radiator", "generic", "plug0", 0, 1.5),
    HomeLoad("pool-pump", "generic", "plug1", 0, 0.8),
    HomeLoad("water-heater", "water_heater", "board", 0, 2.4),
)


# The gateway's process ------------------------------------------------------------------


def gateway_settings(spec: dict[str, Any]) -> dict[str, Any]:
    """The home's configuration sections (``load_gateway_settings`` overrides)."""
    tag = spec["tag"]
    return {
        "mqtt": {"host": spec["host"], "port": spec["port"], "client_id": f"bench-gw-{tag}"},
        "community": {"id": spec["community"], "topic_root": spec["root"]},
        "site": {"id": SITE},
        "meter": {"device": "grid"},
        "devices": [
            {"id": "grid", "profile": "shelly/pro-3em", "prefix": f"em-{tag}"},
            {"id": "plug0", "profile": "shelly/plus-plug-s", "prefix": f"plug0-{tag}"},
            {"id": "plug1", "profile": "shelly/plus-plug-s", "prefix": f"plug1-{tag}"},
            {"id": "board", "profile": "phidget/1017", "serial": BOARD_SERIAL},
        ],
        "loads": [
            {"id": ld.id, "kind": ld.kind, "device": ld.device, "channel": ld.channel,
             "nominal_kw": ld.nominal_kw, "contactor": ld.device == "board",
             # On and off every other cycle: no minimum times, the most starts allowed.
             "min_on_s": 0, "min_off_s": 0, "max_starts_per_hour": 60}
            for ld in LOADS
        ],
        "homeassistant": {"enabled": True, "discovery_prefix": f"{spec['root']}-ha"},
        "state": {"dir": spec["state_dir"]},
    }


def _say(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def serve_gateway() -> None:
    """Entry point of the gateway's process: ``python -c`` with the spec (JSON) in argv[1].

    Runs one ``Gateway`` and answers the benchmark on stdin/stdout (one JSON
    object a line): ``ready`` once every load is available, the board's
    ``setState`` times on ``events``, ``bye`` on ``stop`` or end of input.
    Its logs go to stderr, as ``ems-gateway`` writes them (JSON, info level).
    """
    # The benchmark owns the lifecycle: it asks us to stop, or closes our stdin.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    spec = json.loads(sys.argv[1])
    # At entry: the interpreter and this module's imports (asyncio, json: the gateway's too).
    stages = {"entry": proc_status("self").get("VmRSS", 0.0)}
    asyncio.run(_run_gateway(spec, stages))


async def _run_gateway(spec: dict[str, Any], stages: dict[str, float]) -> None:
    from gateway.app import Gateway
    from gateway.config import load_gateway_settings
    from gateway.sim.phidget import FakeBoard
    from protocol.logs import configure_logging
    from runtime.clock import SystemClock

    stages["imported"] = proc_status("self").get("VmRSS", 0.0)
    configure_logging("info", "json")

    class TimedBoard(FakeBoard):
        """The fake 1017, noting when each ``setState`` reaches the hardware."""

        def __init__(self, serial: int) -> None:
            super().__init__(serial, plugged=True)
            self.set_states: list[tuple[float, int, bool]] = []

        def _record(self, method: str, channel: int, *args: Any) -> None:
            if method == "setState":
                self.set_states.append((time.monotonic(), channel, bool(args[0])))
            super()._record(method, channel, *args)

    board = TimedBoard(BOARD_SERIAL)
    settings = load_gateway_settings(None, env={}, **gateway_settings(spec))
    gw = Gateway(settings, SystemClock(),
                 device_options={"board": {"channel_factory": board.digital_output}})
    stop = asyncio.Event()
    task = asyncio.create_task(gw.run(stop), name="gateway")
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    async def every_load_available() -> None:
        await gw.wait_ready()
        while not all(rt.available for rt in gw.ems.rt.values()):
            await asyncio.sleep(0.05)

    error = None
    try:
        ready = asyncio.ensure_future(every_load_available())
        await asyncio.wait({ready, task}, timeout=READY_TIMEOUT_S,
                           return_when=asyncio.FIRST_COMPLETED)
        if not ready.done():
            ready.cancel()
            error = f"not every load available within {READY_TIMEOUT_S:g} s"
            return  # the gateway failed (reported below) or a device never came up
        stages["ready"] = proc_status("self").get("VmRSS", 0.0)
        _say({"event": "ready", "pid": os.getpid(), "stages_mb": stages})
        while not task.done():
            read = asyncio.ensure_future(reader.readline())
            await asyncio.wait({read, task}, return_when=asyncio.FIRST_COMPLETED)
            if not read.done():
                read.cancel()
                break
            line = read.result()
            if not line or line.strip() == b"stop":
                break
            cmd = json.loads(line)
            if cmd["cmd"] == "events":
                _say({"event": "events", "set_states": board.set_states[cmd["since"]:]})
    finally:
        stop.set()
        try:
            async with asyncio.timeout(20):
                await task
        except Exception as exc:  # reported to the benchmark, which fails the run
            error = f"{type(exc).__name__}: {exc}"
        _say({"event": "bye", "error": error, "received": gw.bus.received,
              "handler_errors": gw.bus.handler_errors, "rejected": gw.rejected})


class GatewayProcess:
    """The benchmark's handle on the gateway's process: start, ask, stop (always)."""

    entry = "from bench.gateway import serve_gateway; serve_gateway()"
    """The code the process runs (``python -c``); a diagnostic may wrap it."""

    def __init__(self, spec: dict[str, Any], log_path: Path) -> None:
        self.spec = spec
        self.log_path = log_path
        self.proc: asyncio.subprocess.Process | None = None
        self.pid = 0
        self.stages_mb: dict[str, float] = {}
        self.farewell: dict[str, Any] = {}
        self.set_states: list[tuple[float, int, bool]] = []
        """The board's ``setState`` calls fetched so far: (monotonic, channel, energise)."""

    async def start(self) -> None:
        with self.log_path.open("wb") as log:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-c", self.entry,
                json.dumps(self.spec),
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=log,
                cwd=ROOT,
                # Its own session: Ctrl-C reaches only us, and we stop it.
                start_new_session=True,
            )
        self.pid = self.proc.pid
        ready = await self._expect("ready", READY_TIMEOUT_S + 10)
        self.stages_mb = ready["stages_mb"]

    async def _expect(self, event: str, timeout_s: float) -> dict[str, Any]:
        assert self.proc is not None and self.proc.stdout is not None
        try:
            async with asyncio.timeout(timeout_s):
                line = await self.proc.stdout.readline()
        except TimeoutError:
            line = b""
        if not line:
            raise RuntimeError(f"the gateway (pid {self.pid}) did not send {event!r}; "
                               f"exit code {self.proc.returncode}; log: {self.log_tail()}")
        msg: dict[str, Any] = json.loads(line)
        if msg.get("event") != event:
            raise RuntimeError(f"the gateway sent {msg.get('event')!r}, expected {event!r}: "
                               f"{msg.get('error')}; log: {self.log_tail()}")
        return msg

    async def fetch_set_states(self) -> list[tuple[float, int, bool]]:
        """Fetch the board's new ``setState`` calls into ``set_states``; all of them."""
        assert self.proc is not None and self.proc.stdin is not None
        since = len(self.set_states)
        self.proc.stdin.write(json.dumps({"cmd": "events", "since": since}).encode() + b"\n")
        await self.proc.stdin.drain()
        reply = await self._expect("events", 10)
        self.set_states.extend((float(t), int(c), bool(s)) for t, c, s in reply["set_states"])
        return self.set_states

    async def stop(self, polite: bool = True) -> None:
        """Ask it to stop (or not, after a failure or Ctrl-C), then terminate, then kill."""
        proc = self.proc
        if proc is None:
            return
        if polite and proc.returncode is None and proc.stdin is not None:
            with contextlib.suppress(Exception):
                proc.stdin.write(b"stop\n")
                await proc.stdin.drain()
                self.farewell = await self._expect("bye", 30)
                async with asyncio.timeout(10):
                    await proc.wait()
        for end in (proc.terminate, proc.kill):
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    end()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(5):
                        await proc.wait()

    def log_tail(self, chars: int = 1500) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")[-chars:]
        return ""

    def log_levels(self) -> dict[str, int]:
        """The gateway's log events counted as ``level:event`` (warnings and errors only)."""
        counts: dict[str, int] = {}
        with contextlib.suppress(OSError):
            for line in self.log_path.read_text(errors="replace").splitlines():
                try:
                    entry = json.loads(line)
                except ValueError:
                    key = "unparsed:stderr"
                else:
                    level = entry.get("level", "?")
                    if level in ("debug", "info"):
                        continue
                    key = f"{level}:{entry.get('event')}"
                counts[key] = counts.get(key, 0) + 1
        return counts


async def bare_python_rss_mb() -> float:
    """VmRSS of this interpreter started with nothing to do (``-c`` imports nothing)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", "print('up', flush=True); input()",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdin is not None and proc.stdout is not None
    try:
        async with asyncio.timeout(10):
            await proc.stdout.readline()
        rss = proc_status(proc.pid).get("VmRSS", 0.0)
        proc.stdin.write(b"\n")
        await proc.stdin.drain()
        async with asyncio.timeout(10):
            await proc.wait()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    return rss


# The devices and the coordinator's part (this process) ---------------------------------


def timed_plug(host: str, port: int, prefix: str, load: HomeLoad) -> Any:
    """A simulated Shelly Plus Plug S that notes when each RPC request reaches it."""
    from gateway.sim.shelly import SimLoad, SimShellyGen2Switch

    class TimedPlug(SimShellyGen2Switch):
        def __init__(self) -> None:
            super().__init__(host, port, topic_prefix=prefix, period_s=PLUG_PERIOD_S,
                             loads=[SimLoad(nominal_w=load.nominal_kw * 1000)])
            self.arrivals: list[tuple[float, bytes]] = []

        def _handle_rpc(self, payload: bytes) -> None:
            self.arrivals.append((time.monotonic(), payload))
            super()._handle_rpc(payload)

        def switch_sets(self, since: int) -> list[tuple[float, bool]]:
            out = []
            for at, payload in self.arrivals[since:]:
                frame = json.loads(payload)
                if frame.get("method") == "Switch.Set":
                    out.append((at, bool(frame["params"]["on"])))
            return out

    return TimedPlug()


@dataclass
class CycleRun:
    """One cycle as the benchmark saw it; times in ms from the ``alloc`` publish."""

    index: int
    on: bool
    flex_ms: float | None = None  # request published -> flex reply received
    offered: list[str] = field(default_factory=list)
    command_ms: dict[str, float | None] = field(default_factory=dict)  # load -> latency

    @property
    def complete(self) -> bool:
        """Every load was offered and each of its commands was seen."""
        return (set(self.offered) == set(self.command_ms) == {ld.id for ld in LOADS}
                and all(v is not None for v in self.command_ms.values()))


@dataclass
class GatewayBench:
    """Every figure of one run."""

    cycles: list[CycleRun]
    idle_s: float
    pause_s: float
    bare_python_rss_mb: float
    stages_rss_mb: dict[str, float]
    idle_cpu_s: tuple[float, float]  # (user, system)
    idle_rss_mb: list[float]
    cycles_wall_s: float
    cycles_cpu_s: tuple[float, float]
    cycles_rss_mb: list[float]
    end_status: dict[str, float]
    gateway_log: dict[str, int]
    farewell: dict[str, Any]
    machine: dict[str, Any]
    wall_s: float = 0.0

    @property
    def complete(self) -> bool:
        return (bool(self.cycles) and all(c.complete for c in self.cycles)
                and not self.farewell.get("error"))

    def latencies(self, load: str | None = None) -> list[float]:
        """Every command latency (ms) of ``load``, or of all loads."""
        return [v for c in self.cycles for k, v in c.command_ms.items()
                if v is not None and (load is None or k == load)]

    def last_command_ms(self) -> list[float]:
        """Per complete cycle: the latency of its last command (the whole home switched)."""
        return [max(v for v in c.command_ms.values() if v is not None)
                for c in self.cycles if c.complete]

    def summary(self) -> dict[str, Any]:
        idle_cpu, cycles_cpu = sum(self.idle_cpu_s), sum(self.cycles_cpu_s)
        idle_rate = idle_cpu / self.idle_s if self.idle_s else 0.0
        n = len(self.cycles)
        lat = {ld.id: stats(self.latencies(ld.id)) for ld in LOADS}
        lat["all"] = stats(self.latencies())
        lat["last_of_cycle"] = stats(self.last_command_ms())
        flex = [c.flex_ms for c in self.cycles if c.flex_ms is not None]
        return {
            "targets": {"rss_mb": TARGET_RSS_MB, "latency_ms": TARGET_LATENCY_MS},
            "bare_python_rss_mb": self.bare_python_rss_mb,
            "stages_rss_mb": self.stages_rss_mb,
            "idle": {"seconds": self.idle_s, "cpu_s": idle_cpu,
                     "cpu_user_s": self.idle_cpu_s[0], "cpu_system_s": self.idle_cpu_s[1],
                     "cpu_ms_per_s": 1000 * idle_rate, **stats(self.idle_rss_mb, "rss_mb_")},
            "cycles_phase": {
                "cycles": n, "seconds": self.cycles_wall_s, "cpu_s": cycles_cpu,
                "cpu_user_s": self.cycles_cpu_s[0], "cpu_system_s": self.cycles_cpu_s[1],
                "cpu_ms_per_s": 1000 * cycles_cpu / self.cycles_wall_s
                if self.cycles_wall_s else None,
                # What a cycle adds above idling, per cycle.
                "cpu_ms_per_cycle_above_idle": 1000 * (
                    cycles_cpu - idle_rate * self.cycles_wall_s) / n if n else None,
                **stats(self.cycles_rss_mb, "rss_mb_"),
            },
            "end_status": self.end_status,
            "latency_ms": lat,
            "flex_reply_ms": stats(flex),
            "complete_cycles": sum(c.complete for c in self.cycles),
            "gateway_log_warnings": self.gateway_log,
            "gateway_farewell": self.farewell,
        }

    def as_dict(self) -> dict[str, Any]:
        return {"summary": self.summary(), "cycles": [asdict(c) for c in self.cycles],
                "idle_rss_mb": self.idle_rss_mb, "cycles_rss_mb": self.cycles_rss_mb,
                "pause_s": self.pause_s, "machine": self.machine, "wall_s": self.wall_s,
                "complete": self.complete}


def stats(values: Sequence[float], prefix: str = "") -> dict[str, Any]:
    """min / median / p95 (nearest rank) / max and the count."""
    if not values:
        return {f"{prefix}n": 0, f"{prefix}min": None, f"{prefix}median": None,
                f"{prefix}p95": None, f"{prefix}max": None}
    ordered = sorted(values)
    n = len(ordered)
    mid = n // 2
    median = ordered[mid] if n % 2 else (ordered[mid - 1] + ordered[mid]) / 2
    p95 = ordered[max(0, -(-95 * n // 100) - 1)]
    return {f"{prefix}n": n, f"{prefix}min": ordered[0], f"{prefix}median": median,
            f"{prefix}p95": p95, f"{prefix}max": ordered[-1]}


class CoordinatorStandIn:
    """The coordinator's part for one site: request, flex, alloc, closed (QoS 1)."""

    def __init__(self, community: str, root: str, tag: str) -> None:
        from bench.swarm import Link
        from protocol import Topics

        self.topics = Topics(community, root)
        self.flex: asyncio.Queue[tuple[float, dict[str, Any]]] = asyncio.Queue()
        self.link = Link(f"bench-coord-{tag}", self._on_message, window=100)

    def _on_message(self, topic: str, payload: bytes) -> None:
        self.flex.put_nowait((time.monotonic(), json.loads(payload)))

    async def start(self, host: str, port: int) -> None:
        from protocol import CoordinatorStatus, encode

        await self.link.connect(host, port)
        await self.link.subscribe([self.topics.flex(SITE)])
        status = CoordinatorStatus(state="online", version="bench", epoch=EPOCH)
        self.link.publish(self.topics.coordinator_status(), encode(status), retain=True)
        await self.link.drain(10)

    def request(self, period_start: datetime) -> float:
        from protocol import CycleRequest, encode

        request = CycleRequest(cycle=period_start, surplus_kw=10.0, period_start=period_start,
                               period_end=period_start + PERIOD,
                               reply_by=datetime.now(UTC) + timedelta(seconds=30))
        payload = encode(request)
        sent_at = time.monotonic()
        self.link.publish(self.topics.cycle_request(), payload)
        return sent_at

    async def reply(self, period_start: datetime, timeout_s: float) -> tuple[float, dict[str, Any]]:
        from protocol.models import format_utc

        cycle = format_utc(period_start)
        async with asyncio.timeout(timeout_s):
            while True:
                at, flex = await self.flex.get()
                if flex.get("cycle") == cycle:
                    return at, flex

    def allocate(self, period_start: datetime, alloc_kw: float) -> float:
        """Publish ``alloc/{s}`` then ``cycle/closed``; the time of the alloc's publish."""
        from protocol import CycleClosed, encode, encode_alloc
        from protocol.models import format_utc

        payload = encode_alloc(format_utc(period_start), alloc_kw, 1,
                               format_utc(period_start + PERIOD), EPOCH)
        closed = encode(CycleClosed(cycle=period_start, reason="all_replied", surplus_kw=10.0,
                                    allocated_kw=alloc_kw, replies=1, sites=1))
        sent_at = time.monotonic()
        self.link.publish(self.topics.alloc(SITE), payload)
        self.link.publish(self.topics.cycle_closed(), closed, retain=True)
        return sent_at

    async def stop(self) -> None:
        await self.link.disconnect()


# Measuring --------------------------------------------------------------------------


def _minus(after: tuple[float, float], before: tuple[float, float]) -> tuple[float, float]:
    return after[0] - before[0], after[1] - before[1]


async def _sample_rss(pid: int, into: list[float], every_s: float) -> None:
    while True:
        rss = proc_status(pid).get("VmRSS")
        if rss is not None:
            into.append(rss)
        await asyncio.sleep(every_s)


async def _until_found(find: Callable[[], Any], timeout_s: float, every_s: float = 0.005) -> Any:
    """Poll ``find`` until it returns something, or None after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while (found := find()) is None:
        if time.monotonic() > deadline:
            return None
        await asyncio.sleep(every_s)
    return found


async def _run_cycle(index: int, period_start: datetime, coord: CoordinatorStandIn,
                     plugs: dict[str, Any], gw: GatewayProcess) -> CycleRun:
    """One cycle: request -> flex -> alloc (all on, or 0 kW) -> the relay commands."""
    run = CycleRun(index, on=index % 2 == 0)
    requested_at = coord.request(period_start)
    try:
        flex_at, flex = await coord.reply(period_start, COMMAND_TIMEOUT_S)
    except TimeoutError:
        progress(f"  cycle {index + 1}: no flex reply within {COMMAND_TIMEOUT_S:g} s")
        return run  # incomplete: nothing offered, nothing allocated
    run.flex_ms = 1000 * (flex_at - requested_at)
    run.offered = [ld["id"] for ld in flex.get("loads", [])]
    marks = {dev: len(plug.arrivals) for dev, plug in plugs.items()}
    board_mark = len(gw.set_states)  # fetched up to date after the previous cycle
    alloc_at = coord.allocate(period_start, float(flex["flex_kw"]) if run.on else 0.0)
    for load in LOADS:
        if load.id not in run.offered:
            continue
        if load.device in plugs:
            plug, since = plugs[load.device], marks[load.device]

            def plug_cmd(plug: Any = plug, since: int = since) -> float | None:
                return next((at for at, on in plug.switch_sets(since) if on == run.on), None)

            at = await _until_found(plug_cmd, COMMAND_TIMEOUT_S)
        else:
            async def board_cmd(channel: int = load.channel) -> float | None:
                for at, ch, state in (await gw.fetch_set_states())[board_mark:]:
                    if ch == channel and state == run.on:  # wired "on": energised = on
                        return at
                return None

            at = None
            deadline = time.monotonic() + COMMAND_TIMEOUT_S
            while at is None and time.monotonic() < deadline:
                at = await board_cmd()
                if at is None:
                    await asyncio.sleep(0.02)
        run.command_ms[load.id] = None if at is None else 1000 * (at - alloc_at)
    await gw.fetch_set_states()
    return run


async def run_benchmark(
    cycles: int = DEFAULT_CYCLES, idle_s: float = DEFAULT_IDLE_S, *,
    pause_s: float = DEFAULT_PAUSE_S, settle_s: float = SETTLE_S,
    broker: Any | None = None, root: str = "ems",
) -> GatewayBench:
    """Run everything; start (and always stop) a local Mosquitto unless ``broker`` is given."""
    import tempfile
    import uuid

    from bench.common import machine_info
    from ems.broker import EmbeddedBroker
    from gateway.sim.shelly import SimShellyPro3Em

    t0 = time.monotonic()
    machine = machine_info()
    tag = uuid.uuid4().hex[:6]
    community = f"bench-{tag}"
    async with contextlib.AsyncExitStack() as stack:
        if broker is None:
            broker = stack.enter_context(EmbeddedBroker(kind="mosquitto", host="127.0.0.1"))
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="ems-bench-gw-")))
        host, port = broker.host, broker.port
        progress(f"broker {host}:{port}; {cycles} cycles, {idle_s:g} s idle")
        bare = await bare_python_rss_mb()

        meter = SimShellyPro3Em(host, port, topic_prefix=f"em-{tag}", power_w=METER_IMPORT_W,
                                period_s=METER_PERIOD_S)
        plugs = {ld.device: timed_plug(host, port, f"{ld.device}-{tag}", ld)
                 for ld in LOADS if ld.device.startswith("plug")}
        for device in (meter, *plugs.values()):
            await asyncio.to_thread(device.start)
            stack.callback(device.stop)
        coord = CoordinatorStandIn(community, root, tag)
        await coord.start(host, port)
        stack.push_async_callback(coord.stop)

        spec = {"host": host, "port": port, "root": root, "community": community, "tag": tag,
                "state_dir": str(workdir / "state")}
        gw = GatewayProcess(spec, workdir / "gateway.log")
        finished = False
        gateway_log: dict[str, int] = {}

        async def stop_gateway() -> None:
            await gw.stop(polite=finished)

        # Exit order is last in, first out: stop the gateway, then read its log,
        # then (further down the stack) the devices, the temp dir, the broker.
        stack.callback(lambda: gateway_log.update(gw.log_levels()))
        stack.push_async_callback(stop_gateway)
        await gw.start()
        pid = gw.pid
        progress(f"gateway pid {pid} ready, VmRSS {gw.stages_mb.get('ready', 0):.1f} MB; "
                 f"settling {settle_s:g} s, then {idle_s:g} s idle")
        await asyncio.sleep(settle_s)

        idle_rss: list[float] = []
        sampler = asyncio.create_task(_sample_rss(pid, idle_rss, 1.0))
        cpu0 = cpu_times(pid)
        await asyncio.sleep(idle_s)
        idle_cpu = _minus(cpu_times(pid), cpu0)
        sampler.cancel()

        cycle_rss: list[float] = []
        sampler = asyncio.create_task(_sample_rss(pid, cycle_rss, RSS_SAMPLE_S))
        base = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) + PERIOD
        runs = []
        await gw.fetch_set_states()
        started, cpu0 = time.monotonic(), cpu_times(pid)
        for k in range(cycles):
            run = await _run_cycle(k, base + k * PERIOD, coord, plugs, gw)
            runs.append(run)
            shown = ", ".join(f"{lid} {'-' if v is None else f'{v:.1f}'}"
                              for lid, v in run.command_ms.items())
            progress(f"cycle {k + 1}/{cycles} ({'on' if run.on else 'off'}): flex "
                     f"{_fmt(run.flex_ms)} ms; alloc -> command (ms): {shown or 'none offered'}")
            await asyncio.sleep(pause_s)
        cycles_wall = time.monotonic() - started
        cycles_cpu = _minus(cpu_times(pid), cpu0)
        sampler.cancel()
        end_status = proc_status(pid)
        finished = True
    # The stack has stopped the gateway (politely), the devices and the broker.
    return GatewayBench(
        cycles=runs, idle_s=idle_s, pause_s=pause_s, bare_python_rss_mb=bare,
        stages_rss_mb=gw.stages_mb, idle_cpu_s=idle_cpu, idle_rss_mb=idle_rss,
        cycles_wall_s=cycles_wall, cycles_cpu_s=cycles_cpu, cycles_rss_mb=cycle_rss,
        end_status=end_status, gateway_log=gateway_log, farewell=gw.farewell,
        machine={**machine, "loadavg_end": os.getloadavg()}, wall_s=time.monotonic() - t0,
    )


# Reporting --------------------------------------------------------------------------------


def _fmt(value: float | None, spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)


def _spread(st: dict[str, Any], prefix: str = "") -> str:
    return " / ".join(_fmt(st[f"{prefix}{k}"]) for k in ("min", "median", "p95", "max"))


def _verdict(value: float | None, target: float) -> str:
    if value is None:
        return "-"
    return "ok" if value <= target else "OVER"


def format_table(bench: GatewayBench) -> str:
    """Measured figures next to the targets, one row each."""
    s = bench.summary()
    idle, cyc, lat, end = s["idle"], s["cycles_phase"], s["latency_ms"], s["end_status"]
    rss_t, lat_t = f"<= {TARGET_RSS_MB:g}", f"<= {TARGET_LATENCY_MS:g}"
    hwm = end.get("VmHWM")
    rows = [
        ["", "measured", "target", ""],
        ["gateway VmRSS idle, min / max (MB)",
         f"{_fmt(idle['rss_mb_min'])} / {_fmt(idle['rss_mb_max'])}", rss_t,
         _verdict(idle["rss_mb_max"], TARGET_RSS_MB)],
        ["gateway VmRSS during cycles, min / max (MB)",
         f"{_fmt(cyc['rss_mb_min'])} / {_fmt(cyc['rss_mb_max'])}", rss_t,
         _verdict(cyc["rss_mb_max"], TARGET_RSS_MB)],
        ["gateway peak RSS, VmHWM at the end (MB)", _fmt(hwm), rss_t,
         _verdict(hwm, TARGET_RSS_MB)],
        ["  bare Python interpreter, VmRSS (MB)", _fmt(s["bare_python_rss_mb"]), "", ""],
        ["  gateway process: at entry / imports done / ready (MB)",
         " / ".join(_fmt(s["stages_rss_mb"].get(k)) for k in ("entry", "imported", "ready")),
         "", ""],
        ["gateway threads", _fmt(end.get("Threads"), ".0f"), "", ""],
        [f"gateway CPU idle over {bench.idle_s:g} s (ms per s; user / system s)",
         f"{_fmt(idle['cpu_ms_per_s'], '.2f')} ({idle['cpu_user_s']:.2f} / "
         f"{idle['cpu_system_s']:.2f})", "", ""],
        [f"gateway CPU during {cyc['cycles']} cycles (ms per s; user / system s)",
         f"{_fmt(cyc['cpu_ms_per_s'], '.2f')} ({cyc['cpu_user_s']:.2f} / "
         f"{cyc['cpu_system_s']:.2f})", "", ""],
        ["gateway CPU per cycle above idle (ms)", _fmt(cyc["cpu_ms_per_cycle_above_idle"]), "",
         ""],
        *(
            [f"alloc -> {ld.id} {'setState' if ld.device == 'board' else 'Switch.Set'} "
             f"({ld.device}), min / med / p95 / max (ms)",
             _spread(lat[ld.id]), lat_t, _verdict(lat[ld.id]["max"], TARGET_LATENCY_MS)]
            for ld in LOADS
        ),
        ["alloc -> all commands, min / med / p95 / max (ms)", _spread(lat["all"]), lat_t,
         _verdict(lat["all"]["max"], TARGET_LATENCY_MS)],
        ["alloc -> last command of the cycle, min / med / p95 / max (ms)",
         _spread(lat["last_of_cycle"]), lat_t,
         _verdict(lat["last_of_cycle"]["max"], TARGET_LATENCY_MS)],
        ["request -> flex reply, min / med / p95 / max (ms)", _spread(s["flex_reply_ms"]), "",
         ""],
        ["cycles with every command measured", f"{s['complete_cycles']}/{cyc['cycles']}", "",
         ""],
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                       for i, (c, w) in enumerate(zip(r, widths, strict=True))).rstrip()
             for r in rows]
    lines.insert(1, "-" * max(len(line) for line in lines))
    mach = bench.machine
    lines.append("")
    lines.append(f"{mach['cpus']} CPUs ({mach['cpu']}), Python {mach['python']}, "
                 f"{mach['mosquitto']}; load avg {mach['loadavg_start'][0]:.2f} -> "
                 f"{mach.get('loadavg_end', (0,))[0]:.2f}; wall {bench.wall_s:.0f} s")
    if s["gateway_log_warnings"]:
        lines.append(f"gateway warnings/errors: {s['gateway_log_warnings']}")
    if not bench.complete:
        lines.append("WARNING: some commands were not measured (see the progress lines).")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.gateway",
        description="Gateway memory, CPU and allocation-to-relay latency (docs/benchmarks.md).",
    )
    parser.add_argument("--cycles", type=int, default=DEFAULT_CYCLES,
                        help=f"allocation cycles, alternately on and off (default "
                             f"{DEFAULT_CYCLES}, at most {MAX_CYCLES})")
    parser.add_argument("--idle-s", type=float, default=DEFAULT_IDLE_S,
                        help=f"idle window for RSS and CPU (default {DEFAULT_IDLE_S:g} s)")
    parser.add_argument("--pause-s", type=float, default=DEFAULT_PAUSE_S,
                        help=f"pause after each cycle (default {DEFAULT_PAUSE_S:g} s)")
    parser.add_argument("--json", action="store_true",
                        help="print JSON on stdout (the table then goes to stderr)")
    args = parser.parse_args(argv)
    if not 1 <= args.cycles <= MAX_CYCLES:
        parser.error(f"--cycles must be between 1 and {MAX_CYCLES} (each load may start "
                     "60 times an hour)")
    if args.idle_s <= 0 or args.pause_s < 0:
        parser.error("--idle-s must be positive and --pause-s not negative")
    from protocol.logs import configure_logging

    # Library logs (the broker, the simulated devices) go to stderr, never into the table.
    configure_logging("warning", "console")
    # SIGTERM unwinds like Ctrl-C, so the cleanup stops the gateway, devices and broker.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        bench = asyncio.run(run_benchmark(args.cycles, args.idle_s, pause_s=args.pause_s))
    except KeyboardInterrupt:
        progress("interrupted; gateway, devices, broker and temp files cleaned up")
        return 130
    table = format_table(bench)
    if args.json:
        sys.stderr.write(table + "\n")
        sys.stdout.write(json.dumps(bench.as_dict(), indent=2) + "\n")
    else:
        sys.stdout.write(table + "\n")
    return 0 if bench.complete else 1


if __name__ == "__main__":
    sys.exit(main())

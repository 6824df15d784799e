"""What every benchmark script shares: progress lines, /proc readings, the machine,
helper processes, the local broker, sizes and straight-line fits.

Standard library only at import time: ``bench.gateway``'s child process imports
this module to start the gateway and must not load gmqtt or the simulators.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import math
import multiprocessing
import os
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any


def progress(message: str) -> None:
    """One progress line on stderr (stdout carries only the result)."""
    sys.stderr.write(f"[bench {time.strftime('%H:%M:%S')}] {message}\n")
    sys.stderr.flush()


# /proc ------------------------------------------------------------------------------


def proc_status(pid: int | str) -> dict[str, float]:
    """``VmRSS``, ``VmHWM`` (MB) and ``Threads`` of a process; empty once it is gone."""
    out: dict[str, float] = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0]) / 1024  # kB
            elif key == "Threads":
                out[key] = int(value)
    return out


def cpu_times(pid: int | str) -> tuple[float, float]:
    """(user, system) CPU seconds of a process, all its threads; (0, 0) once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0, 0.0
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def cpu_seconds(pid: int | None) -> float | None:
    """User + system CPU seconds of a process (for the broker), None if unknown."""
    if pid is None:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def delta(after: float | None, before: float | None) -> float | None:
    return after - before if after is not None and before is not None else None


def peak_rss_mb() -> float:
    """This process's RSS high-water mark (``getrusage``; Linux reports kB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def machine_info() -> dict[str, Any]:
    """CPU, versions and load average, for the record under every table."""
    import gmqtt  # here, not at import time (see the module docstring)

    mosquitto = "?"
    with contextlib.suppress(Exception):
        out = subprocess.run(["/usr/sbin/mosquitto", "-h"], capture_output=True, text=True,
                             timeout=5)
        mosquitto = (out.stdout or out.stderr).splitlines()[0]
    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "cpus": os.cpu_count(),
        "cpu": cpu,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "mosquitto": mosquitto,
        "gmqtt": getattr(gmqtt, "__version__", "?"),
        "loadavg_start": os.getloadavg(),
    }


def machine_line(machine: dict[str, Any]) -> str:
    """One line describing the machine a table was measured on."""
    return (f"{machine['cpus']} CPUs ({machine['cpu']}), Python {machine['python']}, "
            f"{machine['mosquitto']}; load avg {machine['loadavg_start'][0]:.2f} -> "
            f"{machine.get('loadavg_end', (0,))[0]:.2f}")


def local_broker(stack: contextlib.ExitStack, broker: Any | None = None) -> Any:
    """``broker`` if given, else a Mosquitto started on 127.0.0.1 for the ``stack``'s life.

    ``mosquitto/dev.conf``: ``max_queued_messages 0`` and ``max_inflight_messages
    1000``, since the stock limits drop fan-in bursts (reference/mqtt-performance.md,
    pitfall 1).
    """
    if broker is not None:
        return broker
    from ems.broker import EmbeddedBroker

    return stack.enter_context(EmbeddedBroker(kind="mosquitto", host="127.0.0.1"))


# Sizes and fits -------------------------------------------------------------------------


def parse_sizes(text: str) -> list[int]:
    """``"1000,10k,100k"`` -> ``[1000, 10000, 100000]``."""
    sizes = []
    for part in text.split(","):
        part = part.strip().lower().replace("_", "")
        scale = 1_000 if part.endswith("k") else 1
        value = int(float(part.rstrip("k")) * scale)
        if value < 1:
            raise argparse.ArgumentTypeError(f"size must be positive: {part!r}")
        sizes.append(value)
    return sizes


@dataclass(frozen=True)
class LineFit:
    """Least-squares line ``y = slope * x + intercept`` with the slope's standard error."""

    slope: float
    intercept: float
    slope_stderr: float
    points: int

    @property
    def slope_ci95(self) -> float:
        """Half-width of the slope's 95 % confidence interval (Student's t)."""
        return _t95(self.points - 2) * self.slope_stderr

    @property
    def within_noise(self) -> bool:
        """The 95 % interval of the slope contains zero."""
        return abs(self.slope) <= self.slope_ci95


def fit_line(xs: Sequence[float], ys: Sequence[float]) -> LineFit | None:
    """Ordinary least squares; None with fewer than three points or no spread in x."""
    n = len(xs)
    if n != len(ys) or n < 3:
        return None
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        return None
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx
    intercept = my - slope * mx
    residual = sum((y - (slope * x + intercept)) ** 2 for x, y in zip(xs, ys, strict=True))
    stderr = math.sqrt(residual / (n - 2) / sxx)
    return LineFit(slope, intercept, stderr, n)


def loglog_slope(sizes: Sequence[float], seconds: Sequence[float]) -> float | None:
    """Slope k of log(t) against log(N) by least squares (t ~ N^k)."""
    xs: list[float] = []
    ys: list[float] = []
    for n, t in zip(sizes, seconds, strict=True):
        if n > 0 and t is not None and t > 0:
            xs.append(math.log(n))
            ys.append(math.log(t))
    if len(xs) < 2:
        return None
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        return None
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx


_T95 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
        2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086)


def _t95(dof: int) -> float:
    """Two-sided 95 % quantile of Student's t (1.96 beyond 120 degrees of freedom)."""
    if dof < 1:
        return math.inf
    if dof <= len(_T95):
        return _T95[dof - 1]
    return 1.96 + 2.4 / dof  # within 0.01 of the table from 21 to 120 and beyond


def fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


# Waiting ------------------------------------------------------------------------------


async def until(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    """Poll ``predicate`` every 10 ms; TimeoutError naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        await asyncio.sleep(0.01)


async def recv(conn: Connection, timeout_s: float) -> Any:
    """Receive from a pipe without blocking the event loop.

    ``asyncio.timeout``, not ``wait_for``: on 3.11 ``wait_for`` swallows a
    cancellation (Ctrl-C) that lands just as its future completes.
    """
    if not conn.poll():
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = loop.create_future()

        def wake() -> None:
            if not ready.done():
                ready.set_result(None)

        loop.add_reader(conn.fileno(), wake)
        try:
            async with asyncio.timeout(timeout_s):
                await ready
        finally:
            loop.remove_reader(conn.fileno())
    return conn.recv()


# Helper processes -------------------------------------------------------------------


class GcClock:
    """Time spent in the cyclic garbage collector, by generation (via ``gc.callbacks``).

    py-spy cannot see the collector: its pauses land on whatever line allocated.
    """

    def __init__(self) -> None:
        self.seconds = [0.0, 0.0, 0.0]
        self.count = [0, 0, 0]
        self._t0 = 0.0
        gc.callbacks.append(self._callback)

    def reset(self) -> None:
        self.seconds, self.count = [0.0, 0.0, 0.0], [0, 0, 0]

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._t0 = time.perf_counter()
        else:
            gen = info["generation"]
            self.seconds[gen] += time.perf_counter() - self._t0
            self.count[gen] += 1

    def snapshot(self) -> dict[str, Any]:
        return {"gc_s": sum(self.seconds), "gc_s_by_gen": list(self.seconds),
                "gc_count_by_gen": list(self.count)}


class Hub:
    """Parent-side handle of a helper process (spawned) that talks over a pipe.

    ``target(conn, spec)`` runs in the child. The child answers ``("ready", pid)``
    first and ``("bye", {...})`` to ``("stop",)``; :meth:`stop` always ends it.
    """

    def __init__(self, target: Callable[[Connection, Any], None], spec: Any, role: str,
                 name: str) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.spec = spec
        self.role = role
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=target, args=(child, spec), daemon=True, name=name)
        self.proc.start()
        child.close()
        self.pid: int | None = None
        self.farewell: dict[str, Any] = {}

    async def expect(self, kind: str, timeout_s: float) -> Any:
        try:
            msg = await recv(self.conn, timeout_s)
        except (EOFError, TimeoutError) as exc:
            raise RuntimeError(
                f"{self.role} hub (pid {self.proc.pid}) did not send {kind!r}: {exc!r}; "
                f"exit code {self.proc.exitcode}"
            ) from exc
        if msg[0] != kind:
            raise RuntimeError(f"{self.role} hub sent {msg[0]!r}, expected {kind!r}")
        return msg[1] if len(msg) == 2 else msg[1:]

    async def ready(self) -> None:
        self.pid = await self.expect("ready", 60)

    def send(self, *cmd: Any) -> None:
        self.conn.send(cmd)

    async def stop(self, polite: bool = True) -> None:
        """Ask politely (or not, after a failure or Ctrl-C), then terminate, then kill."""
        if polite and self.proc.is_alive():
            with contextlib.suppress(Exception):
                self.send("stop")
                self.farewell = await self.expect("bye", 30)
            self.proc.join(5)
        for end in (self.proc.terminate, self.proc.kill):
            if self.proc.is_alive():
                end()
                self.proc.join(3)
        self.conn.close()

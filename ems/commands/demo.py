"""``ems demo``: the coordinator and real gateways with simulated devices, live.

Parses the options, sends the logs to a file (so they do not scroll the live
view away), installs the Ctrl-C handler and runs ``ems.demo.runner.run_demo``
with a live view on a terminal, plain lines otherwise. The coordinator serves
its operator page on 127.0.0.1 (``--web-port``, any free port by default); the
demo prints where and, when a display is available, opens it in the user's
browser (``--no-browser`` not to). docs/demo.md tells what is shown.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import tempfile
import threading
import webbrowser
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

import structlog

from ems.broker import KINDS
from ems.commands.argtypes import positive_float, positive_int
from ems.demo.grid import DEFAULT_STRESS, parse_stress
from ems.demo.runner import (
    DEFAULT_HOMES,
    DEFAULT_SPEED,
    CycleRecord,
    DemoError,
    DemoOptions,
    DemoState,
    DemoView,
    run_demo,
    sqlite_url,
)
from ems.demo.view import LiveView, PlainView

DEFAULT_PERIOD_S = 900.0
DEFAULT_REPLY_TIMEOUT_S = 60.0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``demo`` to the ``ems`` parser."""
    p = subparsers.add_parser(
        "demo",
        help="run the coordinator and real gateways with simulated devices, live",
        description=(
            "The coordinator and one real gateway per home, with simulated Shelly "
            "devices and Phidget boards, on an embedded MQTT broker and an accelerated "
            "clock: a 15-minute cycle every few seconds, shown live, with a grid-stress "
            "episode from a loopback stand-in for RTE's Ecowatt API."
        ),
    )
    p.add_argument("--homes", type=positive_int, default=DEFAULT_HOMES,
                   help=f"number of simulated homes (default: {DEFAULT_HOMES})")
    p.add_argument("--seed", type=int, default=1, help="random seed of the homes (default: 1)")
    p.add_argument("--broker", choices=KINDS, default="auto",
                   help="auto: mosquitto when installed, else the in-process amqtt (default)")
    p.add_argument("--speed", type=positive_float, default=DEFAULT_SPEED,
                   help=f"clock speed-up (default: {DEFAULT_SPEED:g}: a 900 s period every "
                        f"{900 / DEFAULT_SPEED:g} s)")
    p.add_argument("--period-s", type=positive_float, default=DEFAULT_PERIOD_S,
                   help=f"cycle period in clock seconds (default: {DEFAULT_PERIOD_S:g})")
    p.add_argument("--reply-timeout-s", type=positive_float, default=DEFAULT_REPLY_TIMEOUT_S,
                   help="reply deadline after a request, clock seconds "
                        f"(default: {DEFAULT_REPLY_TIMEOUT_S:g})")
    p.add_argument("--start", type=_start_time, default=None, metavar="TIME",
                   help="simulated time at launch: HH:MM (today, UTC) or an ISO 8601 time "
                        "(default: today 11:00 UTC, when there is a surplus; the grid-stress "
                        "episode comes 2-2.5 real minutes later; 14:30 goes straight to it)")
    stress = p.add_mutually_exclusive_group()
    stress.add_argument("--stress", type=_stress_hours, default=DEFAULT_STRESS, metavar="HH-HH",
                        help="grid stress from the loopback RTE stand-in: level 3 (red) over "
                             "these hours, Paris time, level 2 the hour before, on the simulated "
                             "day (the next one if the start is past them) (default: 18-20)")
    stress.add_argument("--no-stress", dest="stress", action="store_const", const=None,
                        help="RTE's stand-in serves four calm days (level 1)")
    p.add_argument("--cycles", type=positive_int, default=None, metavar="N",
                   help="stop after N closed cycles")
    p.add_argument("--duration", type=positive_float, default=None, metavar="S",
                   help="stop after S real seconds (default: run until Ctrl-C)")
    p.add_argument("--db", type=Path, default=None, metavar="PATH",
                   help="SQLite records (default: demo.sqlite in a new temp dir); "
                        "`ems cycles --db PATH` shows them afterwards")
    p.add_argument("--log-file", type=Path, default=None, metavar="PATH",
                   help="JSON logs (default: demo.log next to the records)")
    p.add_argument("--log-level", choices=("debug", "info", "warning", "error"), default="info",
                   help="level of the log file (default: info)")
    p.add_argument("--plain", action="store_true",
                   help="one line per cycle even on a terminal (the default when not a TTY)")
    p.add_argument("--web-port", type=_port, default=0, metavar="PORT",
                   help="port of the operator page the coordinator serves on 127.0.0.1 "
                        "(default: any free one; the demo prints where)")
    p.add_argument("--no-browser", dest="browser", action="store_false",
                   help="do not open the operator page in a browser (opened by default "
                        "when a display is available)")
    p.set_defaults(func=run)


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port 0-65535 (0: any free one), got {text!r}")
    return port


def display_available(env: Mapping[str, str] | None = None, platform: str | None = None) -> bool:
    """Whether a graphical browser can open: an X11 or Wayland display, or macOS.

    Without one, ``webbrowser`` would fall back to a text browser that takes the
    terminal away from the live view.
    """
    env = os.environ if env is None else env
    platform = sys.platform if platform is None else platform
    return platform == "darwin" or bool(env.get("DISPLAY") or env.get("WAYLAND_DISPLAY"))


class OpensPage:
    """A view that opens the operator page in the user's browser once it is served."""

    def __init__(self, view: DemoView, opener: Callable[[str], object] = webbrowser.open) -> None:
        self.view = view
        self.opener = opener
        self.opened: str | None = None

    def started(self, state: DemoState) -> None:
        self.view.started(state)
        if state.web_url and self.opened is None:
            self.opened = state.web_url
            # In a thread: some browsers' launchers take a moment; the demo goes on.
            threading.Thread(target=self._open, args=(state.web_url,), daemon=True).start()

    def _open(self, url: str) -> None:
        try:
            self.opener(url)
        except Exception:  # a browser that cannot start must not stop the demo
            structlog.get_logger("ems.demo").warning("browser_not_opened", url=url,
                                                     exc_info=True)

    def refresh(self, state: DemoState) -> None:
        self.view.refresh(state)

    def cycle_closed(self, state: DemoState, record: CycleRecord) -> None:
        self.view.cycle_closed(state, record)

    def finished(self, state: DemoState) -> None:
        self.view.finished(state)




def _stress_hours(text: str) -> tuple[int, int]:
    try:
        return parse_stress(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _start_time(text: str) -> datetime:
    """``HH:MM`` today (UTC), or an ISO 8601 time (UTC when it has no offset)."""
    try:
        if len(text) <= 5 and ":" in text:
            hour, minute = (int(part) for part in text.split(":"))
            return datetime.now(UTC).replace(hour=hour, minute=minute, second=0, microsecond=0)
        at = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"expected HH:MM or an ISO 8601 time such as 2026-06-21T11:00Z, got {text!r}"
        ) from exc
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)


def configure_demo_logging(log_file: Path, level: str) -> TextIO:
    """JSON logs of every component (structlog and the libraries) to ``log_file``.

    The terminal belongs to the live view. Returns the open file (the caller
    closes it).
    """
    import structlog

    from protocol.logs import configure_logging

    configure_logging(level, "json")
    stream = log_file.open("a", encoding="utf-8", buffering=1)
    # configure() changes only what it is given: same processors, another sink.
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(stream))
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root.addHandler(handler)
    return stream


def run(args: argparse.Namespace) -> int:
    """``ems demo``."""
    # Kept after the demo: `ems cycles --db` reads the records afterwards, and the
    # gateways' state (report outboxes, Home Assistant ledgers) is there to look at.
    run_dir = Path(tempfile.mkdtemp(prefix="ems-demo-"))
    db: Path = args.db or run_dir / "demo.sqlite"
    log_file: Path = args.log_file or run_dir / "demo.log"
    try:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        log_stream = configure_demo_logging(log_file, args.log_level)
    except OSError as exc:
        sys.stderr.write(f"ems demo: cannot write logs to {log_file}: {exc}\n")
        return 1
    options = DemoOptions(
        db_url=sqlite_url(db),
        homes=args.homes,
        seed=args.seed,
        broker=args.broker,
        speed=args.speed,
        period_s=args.period_s,
        reply_timeout_s=args.reply_timeout_s,
        start_at=args.start,
        cycles=args.cycles,
        duration_s=args.duration,
        log_file=log_file,
        state_dir=run_dir / "gateways",
        stress=args.stress,
        grid_cache=run_dir / "ecowatt-signals.json",
        web_port=args.web_port,
    )
    browser = args.browser and display_available()
    try:
        asyncio.run(_main(options, live=sys.stdout.isatty() and not args.plain, browser=browser))
    except DemoError as exc:
        sys.stderr.write(f"ems demo: {exc}\n(logs: {log_file})\n")
        return 1
    except asyncio.CancelledError:
        sys.stderr.write("ems demo: stopped at once (second interrupt)\n")
        return 130
    finally:
        log_stream.close()
    day = options.resolved_start().date().isoformat()
    sys.stdout.write(f"records: ems cycles --db {db} --decisions   logs: {log_file}\n"
                     f"replay the day with every strategy: "
                     f"ems replay --db {db} --day {day} --tz UTC --strategy all\n")
    return 0


async def _main(options: DemoOptions, *, live: bool, browser: bool = False) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    main = asyncio.current_task()
    assert main is not None

    def on_signal() -> None:
        # The first Ctrl-C (or SIGTERM) asks for a clean stop: gateways say offline,
        # the coordinator closes its cycle and says offline, then the broker stops.
        # A second one cuts the goodbyes short.
        if stop.is_set():
            main.cancel()
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    view: DemoView = LiveView() if live else PlainView(sys.stdout)
    if browser:
        view = OpensPage(view)
    await run_demo(options, stop=stop, view=view)

"""``ems signal show|set``: the grid-stress signal the coordinator serves, and manual overrides.

``show`` reads the coordinator's own state, not the broker: RTE's last good
answer from ``[ecowatt] cache_path`` (when Ecowatt is enabled) and the manual
overrides from the recorder's SQLite, merged by the same pure core the
coordinator publishes from (``central.core.grid``). Hours are RTE's: counted
from the local midnight of the day (Europe/Paris), so a DST day has 23 or 25.

``set`` publishes one ``admin/signal/set`` message (QoS 1, not retained) to the
broker of the coordinator's config, as the prototype's ``update_hvalue`` did;
``--clear`` sends ``"level": null``. The coordinator's MQTT session does not
outlive it, so a message sent while it is offline would be lost: ``set``
checks the retained ``coordinator/status`` first and refuses (exit 1) unless
``--force``.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import uuid
from datetime import UTC, date, datetime, timedelta
from typing import Any

import orjson

from central.config import CentralSettings, load_central_settings
from central.core.grid import (
    GridDataError,
    GridSchedule,
    Signals,
    day_hours,
    hour_start,
    locate,
    override_problem,
    parse_signals,
)
from central.ecowatt.cache import SignalCache
from central.errors import RecorderError
from central.recorder import Recorder
from protocol import Topics, encode
from protocol.models import AdminSignalSet, format_utc
from protocol.settings import EX_CONFIG, ConfigError

EX_USAGE = 2
_STYLE = {0: "green", 1: "", 2: "dark_orange", 3: "bold red"}


def _settings(path: str) -> CentralSettings | None:
    try:
        return load_central_settings(path)
    except ConfigError as exc:
        sys.stderr.write(f"{exc}\n")
        return None


# show -----------------------------------------------------------------------------


def _state(settings: CentralSettings) -> tuple[GridSchedule, datetime | None]:
    eco = settings.ecowatt
    tz = eco.tz
    signals: Signals | None = None
    fetched_at = None
    if eco.enabled:
        cached = SignalCache(eco.cache_path).load(eco.url)
        if cached is not None:
            try:
                signals = parse_signals(cached.body, tz)
                fetched_at = cached.fetched_at
            except GridDataError as exc:
                sys.stderr.write(f"ems signal show: the cached answer is unusable: {exc}\n")
    today = datetime.now(UTC).astimezone(tz).date()
    recorder = Recorder(settings.recorder.url)
    try:
        overrides = recorder.grid_overrides(since=today - timedelta(days=1))
    finally:
        recorder.close()
    return GridSchedule(signals, overrides, tz=tz), fetched_at


def _as_json(schedule: GridSchedule, fetched_at: datetime | None, now: datetime) -> dict[str, Any]:
    tz = schedule.tz
    day, hour = locate(now, tz)
    days = []
    for d in schedule.days():
        hours = schedule.hours(d) or ()
        days.append({
            "day": d.isoformat(),
            "source": schedule.source_of(d),
            "day_level": schedule.day_level(d),
            "hours": [
                {
                    "hour": h,
                    "start": format_utc(hour_start(d, h, tz)),
                    "local": hour_start(d, h, tz).astimezone(tz).strftime("%H:%M%z"),
                    "level": level,
                    "override": schedule.is_override(d, h),
                }
                for h, level in enumerate(hours)
            ],
        })
    return {
        "timezone": str(tz),
        "now": {"day": day.isoformat(), "hour": hour, "level": schedule.level_at(day, hour)},
        "fetched_at": format_utc(fetched_at) if fetched_at else None,
        "generated_at": (
            format_utc(schedule.signals.generated_at) if schedule.signals.generated_at else None
        ),
        "days": days,
    }


def run_show(args: argparse.Namespace) -> int:
    settings = _settings(args.config)
    if settings is None:
        return EX_CONFIG
    try:
        schedule, fetched_at = _state(settings)
    except RecorderError as exc:
        sys.stderr.write(f"ems signal show: {exc}\n")
        return 1
    now = datetime.now(UTC)
    data = _as_json(schedule, fetched_at, now)
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 140)
    if not data["days"]:
        console.print("no grid signal known (no Ecowatt answer cached, no override)")
        return 0
    table = Table(title=f"grid levels, hours from local midnight ({data['timezone']}); "
                        "* = manual override")
    table.add_column("hour", justify="right")
    for d in data["days"]:
        table.add_column(f"{d['day']}\nday {d['day_level']}, {len(d['hours'])} h, {d['source']}",
                         justify="center")
    now_day, now_hour = data["now"]["day"], data["now"]["hour"]
    for h in range(max(len(d["hours"]) for d in data["days"])):
        row = [str(h)]
        for d in data["days"]:
            if h >= len(d["hours"]):
                row.append("")
                continue
            cell = d["hours"][h]
            text = f"{cell['level']}{'*' if cell['override'] else ''}"
            if d["day"] == now_day and h == now_hour:
                text = f"[{text}]"
            style = _STYLE.get(cell["level"], "")
            row.append(f"[{style}]{text}[/]" if style else text)
        table.add_row(*row)
    console.print(table)
    console.print(f"now: {now_day} hour {now_hour}, level {data['now']['level']}; "
                  f"RTE answer fetched {data['fetched_at'] or 'never'}")
    return 0


# set ------------------------------------------------------------------------------


def _day(text: str, today: date) -> date:
    if text == "today":
        return today
    if text == "tomorrow":
        return today + timedelta(days=1)
    return date.fromisoformat(text)


def _publish(settings: CentralSettings, topics: Topics, payload: bytes, force: bool,
             timeout_s: float) -> int:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    s = settings.mqtt
    status: dict[str, Any] = {}
    heard = threading.Event()

    def on_message(client: Any, userdata: Any, message: Any) -> None:
        # paho's network thread: never let an exception escape.
        try:
            status.update(orjson.loads(message.payload))
        except Exception:
            status["state"] = "unreadable"
        finally:
            heard.set()

    version = mqtt.MQTTv5 if s.protocol == "5" else mqtt.MQTTv311
    client = mqtt.Client(CallbackAPIVersion.VERSION2,
                         client_id=f"ems-cli-{uuid.uuid4().hex[:8]}", protocol=version)
    client.on_message = on_message
    if s.username:
        client.username_pw_set(s.username, s.password.get_secret_value() if s.password else None)
    if s.tls:
        client.tls_set(ca_certs=str(s.ca_file) if s.ca_file else None,
                       certfile=str(s.cert_file) if s.cert_file else None,
                       keyfile=str(s.key_file) if s.key_file else None)
    try:
        client.connect(s.host, s.port, keepalive=s.keepalive_s)
    except OSError as exc:
        sys.stderr.write(f"ems signal set: cannot reach the broker {s.host}:{s.port}: {exc}\n")
        return 1
    client.loop_start()
    try:
        client.subscribe(topics.coordinator_status(), qos=1)
        heard.wait(min(timeout_s, 2.0))
        if status.get("state") != "online" and not force:
            sys.stderr.write(
                f"ems signal set: the coordinator is {status.get('state', 'not announced')} "
                "on this broker; the override would be lost. Not sent (use --force).\n"
            )
            return 1
        info = client.publish(topics.admin_signal_set(), payload, qos=1)
        info.wait_for_publish(timeout_s)
        if not info.is_published():
            sys.stderr.write("ems signal set: the broker did not acknowledge the message\n")
            return 1
    finally:
        client.disconnect()
        client.loop_stop()
    return 0


def run_set(args: argparse.Namespace) -> int:
    settings = _settings(args.config)
    if settings is None:
        return EX_CONFIG
    tz = settings.ecowatt.tz
    now = datetime.now(UTC)
    try:
        day = _day(args.day, now.astimezone(tz).date())
    except ValueError:
        sys.stderr.write(f"ems signal set: --day {args.day!r}: use YYYY-MM-DD, today or tomorrow\n")
        return EX_USAGE
    level = None if args.clear else args.level
    if level is not None:
        problem = override_problem(day, args.hour, now, tz)
        if problem is not None:
            sys.stderr.write(f"ems signal set: {problem}\n")
            return EX_USAGE
    elif not 0 <= args.hour < day_hours(day, tz):
        sys.stderr.write(f"ems signal set: {day} has {day_hours(day, tz)} hours\n")
        return EX_USAGE
    message = AdminSignalSet(day=day, hour=args.hour, level=level)
    payload = encode(message)
    topics = Topics(settings.community.id, settings.community.topic_root)
    status = _publish(settings, topics, payload, args.force, args.timeout_s)
    if status == 0:
        print(f"sent to {topics.admin_signal_set()}: {payload.decode()}")
    return status


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("signal", help="show the grid-stress signal, or override one hour's level")
    actions = p.add_subparsers(dest="signal_action", metavar="ACTION")
    actions.required = True

    show = actions.add_parser("show", help="the known days hour by hour, overrides marked *")
    show.add_argument("--config", "-c", required=True, help="the coordinator's config")
    show.add_argument("--json", action="store_true", help="machine-readable output")
    show.set_defaults(func=run_show)

    st = actions.add_parser("set", help="override (or --clear) one hour's level")
    st.add_argument("--config", "-c", required=True, help="the coordinator's config (its broker)")
    st.add_argument("--day", default="today", help="YYYY-MM-DD (local), today or tomorrow")
    st.add_argument("--hour", type=int, required=True,
                    help="hours since local midnight: 0-23 (0-22 / 0-24 on DST days)")
    what = st.add_mutually_exclusive_group(required=True)
    what.add_argument("--level", type=int, choices=range(4), help="0 low-carbon .. 3 very tense")
    what.add_argument("--clear", action="store_true", help="drop the override of that hour")
    st.add_argument("--force", action="store_true",
                    help="send even if the coordinator does not look online")
    st.add_argument("--timeout-s", type=float, default=5.0, help="broker acknowledgement wait")
    st.set_defaults(func=run_set)

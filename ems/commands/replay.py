"""``ems replay``: a recorded day run again through another strategy, side by side.

``ems replay --day 2026-06-21 --strategy proportional --db records.sqlite``
reads the day's cycles from the coordinator's records (surplus, sites asked,
deadline, every reply with its arrival time, flex and loads, every decision),
feeds them cycle after cycle to the strategy through the pure core
(``central.core.replay``), and prints the recorded run and the replayed one
metric by metric with the difference. ``--strategy all`` replays every
registered strategy into one table. docs/replay.md says what each figure
means and what a replay cannot know.

The day is a calendar day in ``--tz`` (default: the config's ``[ecowatt]
timezone``, else Europe/Paris, as on the operator page). Tables go to stdout,
the progress bar (on a terminal) to stderr; ``--json`` prints the same
figures for machines.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from central.core import STRATEGIES, Strategy, get_strategy
from central.core.replay import (
    METRICS,
    RECORDED,
    Comparison,
    Metric,
    RecordedCycle,
    RecordedReplayer,
    RecordedReply,
    Replayer,
    Run,
    compare,
)
from central.db import redact_url
from central.errors import RecorderError
from central.recorder import Recorder
from protocol.models import format_utc
from protocol.settings import EX_CONFIG, ConfigError

ALL = "all"
DEFAULT_TZ = "Europe/Paris"
DAY_LIMIT = 100_000
"""Cycles read for one day at most (a 1 s period makes 86,400)."""
TABLE_WIDTH = 200
"""Columns of the table when stdout is not a terminal (a pipe, a file)."""


class ReplayError(Exception):
    """What ``ems replay`` reports and exits 1 for."""


# Arguments --------------------------------------------------------------------


def _strategy(text: str) -> str:
    if text == ALL or text in STRATEGIES:
        return text
    known = ", ".join([*sorted(STRATEGIES), ALL])
    raise argparse.ArgumentTypeError(f"unknown strategy {text!r}; known: {known}")


def _day(text: str) -> str:
    if text in ("today", "yesterday"):
        return text
    try:
        return date.fromisoformat(text).isoformat()
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a day such as 2026-06-21 (or today, yesterday), got {text!r}"
        ) from None


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``replay`` to the ``ems`` parser."""
    p = subparsers.add_parser(
        "replay",
        help="run a recorded day again through another strategy, side by side",
        description=(
            "Replay a recorded day's replies through another allocation strategy with the "
            "coordinator's own core, cycle by cycle, and compare it with what was recorded."
        ),
    )
    p.add_argument("--day", required=True, type=_day, metavar="DAY",
                   help="the day: YYYY-MM-DD, today or yesterday (in --tz)")
    p.add_argument("--strategy", required=True, type=_strategy, metavar="NAME",
                   help=f"the strategy to replay, or {ALL} for every registered one "
                        f"({', '.join(sorted(STRATEGIES))})")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--config", "-c", help="the coordinator's config (its [recorder] url, "
                                            "its strategy's options, its time zone)")
    src.add_argument("--db",
                     help="a recorder url (sqlite:///PATH, postgresql://…) or a SQLite path")
    p.add_argument("--options", default=None, metavar="JSON",
                   help='the strategy\'s options as a JSON object, e.g. \'{"window_s": 3}\'; '
                        f'with --strategy {ALL}, one object per strategy name')
    p.add_argument("--state", choices=("empty", "recorded"), default="empty",
                   help="a stateful strategy (fair_rotation) starts the day empty (default) "
                        "or from the state the coordinator saved for it")
    p.add_argument("--tz", default=None, metavar="ZONE",
                   help=f"time zone of --day (default: the config's [ecowatt] timezone, "
                        f"else {DEFAULT_TZ})")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run)


# Reading the records ------------------------------------------------------------


@dataclass(slots=True)
class Source:
    """Where the records are and what the config says about them."""

    url: str
    tz: ZoneInfo
    config_strategy: str | None = None
    config_options: dict[str, Any] = field(default_factory=dict)


def _source(args: argparse.Namespace) -> Source:
    tz_name = args.tz
    if args.db is not None:
        url = args.db if "://" in args.db else f"sqlite:///{args.db}"
        source = Source(url, _zone(tz_name or DEFAULT_TZ))
    else:
        from central.config import load_central_settings

        settings = load_central_settings(args.config)
        source = Source(
            settings.recorder.url,
            _zone(tz_name or settings.ecowatt.timezone),
            settings.cycle.strategy,
            dict(settings.cycle.strategy_options),
        )
    if source.url.startswith("sqlite:///"):
        path = source.url.removeprefix("sqlite:///")
        if path != ":memory:" and not Path(path).is_file():
            raise ReplayError(f"no records at {path}")
    return source


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ReplayError(f"unknown time zone {name!r} (--tz)") from None


def day_range(day: str, tz: ZoneInfo, now: datetime | None = None) -> tuple[date, str, str]:
    """The day and its ``[since, until)`` as cycle ids (UTC) for a local calendar day."""
    if day in ("today", "yesterday"):
        local = (now or datetime.now(UTC)).astimezone(tz).date()
        the_day = local - timedelta(days=1) if day == "yesterday" else local
    else:
        the_day = date.fromisoformat(day)
    start = datetime(the_day.year, the_day.month, the_day.day, tzinfo=tz)
    end = datetime.combine(the_day + timedelta(days=1), start.timetz())
    return the_day, format_utc(start), format_utc(end)


def read_cycle(recorder: Recorder, cycle: str, sites: int) -> RecordedCycle:
    """One recorded cycle as the replay needs it."""
    stored = recorder.stored_cycle(cycle)
    if stored is None:
        raise ReplayError(f"cycle {cycle} vanished from the records while reading")
    if stored.reply_by is not None:
        deadline_s = (stored.reply_by - stored.opened_at).total_seconds()
    else:
        deadline_s = 1.0  # closed at once (no surplus, nobody online): never waited for
    replies = tuple(
        RecordedReply(r.site, r.arrival_s, r.flex_kw, r.outcome, r.loads)
        for r in recorder.replies(cycle)
    )
    return RecordedCycle(
        cycle=stored.cycle,
        strategy=stored.strategy,
        surplus_kw=stored.surplus_kw,
        sites=sites,
        deadline_s=deadline_s,
        replies=replies,
        decisions=tuple(recorder.decisions(cycle)),
        site_ids=stored.site_ids,
        close_reason=stored.close_reason,
    )


def read_day(recorder: Recorder, ids: list[tuple[str, int]]) -> Iterator[RecordedCycle]:
    """The cycles ``ids`` (id, sites asked), one at a time (100k replies each, at scale)."""
    for cycle, sites in ids:
        yield read_cycle(recorder, cycle, sites)


# Strategies -------------------------------------------------------------------------


def parse_options(
    text: str | None, names: list[str], *, per_strategy: bool
) -> dict[str, dict[str, Any]]:
    """``--options`` as keyword arguments per strategy name."""
    if text is None:
        return {}
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ReplayError(f"--options is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ReplayError("--options must be a JSON object")
    if not per_strategy:
        return {names[0]: data}
    for name, value in data.items():
        if name not in STRATEGIES:
            known = ", ".join(sorted(STRATEGIES))
            raise ReplayError(f"--options names an unknown strategy {name!r}; known: {known}")
        if not isinstance(value, dict):
            raise ReplayError(f"--options for {name!r} must be a JSON object")
    return data


def build(name: str, options: Mapping[str, Any]) -> Strategy:
    try:
        return get_strategy(name, **options)
    except (TypeError, ValueError) as exc:
        raise ReplayError(f"options for {name!r}: {exc}") from None


class TimingStrategies:
    """The strategies cycles were recorded with, built once each (None: not buildable)."""

    def __init__(self, source: Source) -> None:
        self.source = source
        self._built: dict[str, Strategy | None] = {}

    def __call__(self, name: str) -> Strategy | None:
        if name not in self._built:
            options = self.source.config_options if name == self.source.config_strategy else {}
            try:
                self._built[name] = get_strategy(name, **options)
            except (KeyError, TypeError, ValueError):
                self._built[name] = None
        return self._built[name]


# Running ------------------------------------------------------------------------------


@dataclass(slots=True)
class Outcome:
    """Everything one ``ems replay`` computed."""

    day: date
    tz: str
    url: str
    recorded_strategies: list[str]
    recorded: Run
    replays: list[Run]
    comparison: Comparison
    state: str
    options: dict[str, dict[str, Any]]


def replay_day(args: argparse.Namespace, source: Source, progress: Progress | None) -> Outcome:
    names = sorted(STRATEGIES) if args.strategy == ALL else [args.strategy]
    options = parse_options(args.options, names, per_strategy=args.strategy == ALL)
    for name in names:
        if name not in options and name == source.config_strategy:
            options[name] = dict(source.config_options)
    strategies = {name: build(name, options.get(name, {})) for name in names}
    the_day, since, until = day_range(args.day, source.tz)
    try:
        recorder = Recorder(source.url)
    except (RecorderError, ValueError) as exc:
        raise ReplayError(str(exc)) from None
    try:
        history = recorder.cycle_history(since, until, DAY_LIMIT)
        if not history:
            raise ReplayError(
                f"no recorded cycles on {the_day.isoformat()} ({source.tz.key}, "
                f"{since} to {until}) in {redact_url(source.url)}"
            )
        replayers = []
        for name, strategy in strategies.items():
            state = recorder.load_strategy_state(name) if args.state == "recorded" else {}
            replayers.append(Replayer(name, strategy, state))
        recorded = RecordedReplayer(TimingStrategies(source), get_strategy("fifo"))
        seen: dict[str, None] = {}
        task = None
        if progress is not None:
            task = progress.add_task("replaying", total=len(history))
        for cycle in read_day(recorder, [(h.cycle, h.sites) for h in history]):
            seen.setdefault(cycle.strategy, None)
            recorded.step(cycle)
            for replayer in replayers:
                replayer.step(cycle)
            if progress is not None and task is not None:
                progress.advance(task)
    except RecorderError as exc:
        raise ReplayError(str(exc)) from None
    finally:
        recorder.close()
    runs = [r.run for r in replayers]
    return Outcome(
        the_day, source.tz.key, redact_url(source.url), list(seen), recorded.run, runs,
        compare(recorded.run, runs), args.state, options,
    )


def run(args: argparse.Namespace) -> int:
    """``ems replay``."""
    try:
        source = _source(args)
    except ConfigError as exc:
        sys.stderr.write(f"{exc}\n")
        return EX_CONFIG
    except ReplayError as exc:
        sys.stderr.write(f"ems replay: {exc}\n")
        return 1
    err = Console(stderr=True)
    show = err.is_terminal
    progress = Progress(
        TextColumn("[progress.description]{task.description}"), BarColumn(),
        MofNCompleteColumn(), TextColumn("cycles"), TimeElapsedColumn(),
        console=err, transient=True, disable=not show,
    )
    try:
        with progress:
            outcome = replay_day(args, source, progress if show else None)
    except ReplayError as exc:
        sys.stderr.write(f"ems replay: {exc}\n")
        return 1
    if args.json:
        sys.stdout.write(json.dumps(to_json(outcome), indent=2) + "\n")
        return 0
    console = Console(width=None if sys.stdout.isatty() else TABLE_WIDTH)
    print_outcome(console, outcome)
    return 0


# Output ---------------------------------------------------------------------------------


def _fmt(metric: Metric, value: float | int | None) -> str:
    if value is None:
        return "-"
    if metric.unit == "%":
        return f"{100 * value:.2f} %"
    if isinstance(value, int):
        return str(value)
    return f"{value:.3f}" if metric.unit == "" else f"{value:.2f}"


def _fmt_diff(metric: Metric, diff: float | None, integer: bool) -> str:
    if diff is None:
        return "-"
    if metric.unit == "%":
        return f"{100 * diff:+.2f} pts"
    if integer:
        return f"{round(diff):+d}"
    return f"{diff:+.3f}" if metric.unit == "" else f"{diff:+.2f}"


def _style(metric: Metric, diff: float | None) -> str:
    if diff is None or metric.better == 0 or abs(diff) < 1e-9:
        return ""
    return "green" if diff * metric.better > 0 else "red"


def _label(metric: Metric) -> str:
    return f"{metric.label} ({metric.unit})" if metric.unit and metric.unit != "%" else metric.label


def build_table(outcome: Outcome) -> Table:
    """The recorded run and each replay, metric by metric, with the differences."""
    cmp = outcome.comparison
    names = [r.name for r in outcome.replays]
    single = len(names) == 1
    recorded_as = "+".join(outcome.recorded_strategies) or "?"
    table = Table(title=f"{outcome.day.isoformat()} ({outcome.tz}): recorded ({recorded_as}) "
                        f"vs replayed", title_justify="left")
    table.add_column("metric", min_width=24)
    table.add_column(f"recorded\n{recorded_as}", justify="right", no_wrap=True)
    for name in names:
        if single:
            table.add_column(f"replayed\n{name}", justify="right", no_wrap=True)
            table.add_column("difference", justify="right", no_wrap=True)
        else:
            table.add_column(name.replace("_", " "), justify="right", no_wrap=True)
    for metric in METRICS:
        row = [_label(metric), _fmt(metric, cmp.value(RECORDED, metric.key))]
        for name in names:
            value, diff = cmp.value(name, metric.key), cmp.diff(name, metric.key)
            # An input (the surplus, the injection without coordination) is the same
            # in every run: no difference to show.
            text = "" if metric.better == 0 else _fmt_diff(metric, diff, isinstance(value, int))
            style = _style(metric, diff)
            if style:
                text = f"[{style}]{text}[/]"
            # One strategy: its own difference column; all: the difference under the value.
            if single:
                row += [_fmt(metric, value), text]
            else:
                row.append(f"{_fmt(metric, value)}\n{text}".rstrip())
        table.add_row(*row)
    table.add_section()
    base = cmp.distance.get(RECORDED, 0.0)
    changed = ["allocations changed", "-"]
    front = ["on the Pareto front", "yes" if RECORDED in cmp.front else "no"]
    distance = ["distance to ideal (nadir-normalised)", f"{base:.3f}"]
    for name in names:
        value = cmp.distance.get(name, 0.0)
        if single:
            changed += [str(cmp.changed[name]), ""]
            front += ["yes" if name in cmp.front else "no", ""]
            distance += [f"{value:.3f}", f"{value - base:+.3f}"]
        else:
            changed.append(str(cmp.changed[name]))
            front.append("yes" if name in cmp.front else "no")
            distance.append(f"{value:.3f}\n{value - base:+.3f}")
    for row in (changed, front, distance):
        table.add_row(*row)
    return table


def notes(outcome: Outcome) -> list[str]:
    """What the reader must know to read the table."""
    m = outcome.comparison.recorded
    start = "from their saved state" if outcome.state == "recorded" else "empty"
    lines = [
        f"records {outcome.url}: {m.cycles} cycles, {m.cycles_with_surplus} with a surplus; "
        f"strategies start the day {start}",
    ]
    without = outcome.recorded.allocations_without_loads
    if without:
        lines.append(
            f"{without} recorded allocations went to replies whose loads are not in the records "
            "(older records, or no loads listed): counted as fully usable"
        )
    for run in outcome.replays:
        if run.methods:
            how = ", ".join(f"{k} {v}" for k, v in sorted(run.methods.items()))
            lines.append(f"{run.name} decided its cycles by: {how}")
    lines.append("objectives for the Pareto front (all minimised): 1 - usable share, "
                 "1 - Jain, relay starts, p95 time to allocation")
    return lines


def print_outcome(console: Console, outcome: Outcome) -> None:
    console.print(build_table(outcome))
    for line in notes(outcome):
        console.print(line, style="dim", highlight=False)


def to_json(outcome: Outcome) -> dict[str, Any]:
    """The same figures for machines."""
    cmp = outcome.comparison
    replays: dict[str, Any] = {}
    for run in outcome.replays:
        replays[run.name] = {
            "options": outcome.options.get(run.name, {}),
            "metrics": cmp.replays[run.name].to_dict(),
            "difference": {m.key: cmp.diff(run.name, m.key) for m in METRICS},
            "allocations_changed": cmp.changed[run.name],
            "methods": dict(run.methods),
            "pareto_front": run.name in cmp.front,
            "distance_to_ideal": cmp.distance.get(run.name),
        }
    return {
        "day": outcome.day.isoformat(),
        "timezone": outcome.tz,
        "records": outcome.url,
        "state": outcome.state,
        "recorded": {
            "strategies": outcome.recorded_strategies,
            "metrics": cmp.recorded.to_dict(),
            "pareto_front": RECORDED in cmp.front,
            "distance_to_ideal": cmp.distance.get(RECORDED),
            "allocations_without_loads": outcome.recorded.allocations_without_loads,
        },
        "replays": replays,
    }

"""What ``ems demo`` shows: a live terminal view, or one plain line per cycle.

``LiveView`` redraws a rich ``Live`` display from the ``DemoState`` a few
times a second (from the event loop, so it never reads the state while the
loop writes it): the simulated time, the last cycle, its allocations by rank
and the loads each gateway switched on with them, the last ten cycles, the
grid-stress signal (the level now, the day's hours as coloured digits, the
shed window), the homes (PV, consumption, the net load their gateway reads,
each load's switch, state, measured power and why: allocation, local,
preheat, shed...) and a few counters. ``PlainView`` is for output that is
not a terminal (tests, CI logs): a line when the demo starts, one per closed
cycle, one whenever the grid level changes, and a summary.
"""

from __future__ import annotations

from datetime import datetime
from typing import TextIO

from rich import box
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from ems.demo.grid import PARIS, GridNow
from ems.demo.home import DemoHome
from ems.demo.physics import SATISFIED_KWH
from ems.demo.profiles import sun_factor
from ems.demo.runner import CycleRecord, DemoState
from runtime.clock import next_boundary

HISTORY_ROWS = 10
UNDECIDED_ROWS = 3
"""Homes that got nothing (late, or offering 0 kW) listed one by one up to this many,
else on one line each kind, so that a large community's homes stay on screen."""
SIDE_BY_SIDE_WIDTH = 140
_KIND_SHORT = {"water_heater": "WH", "ev_charger": "EV", "heat_pump": "HP",
               "battery": "BAT", "generic": "load"}
_SWITCH_SHORT = {"plus-plug-s": "Plus Plug S", "plug-s": "Plug S", "plus-1pm": "Plus 1PM",
                 "phidget-1017": "1017"}
_METER_SHORT = {"pro-3em": "Pro 3EM", "em": "EM"}
_REASON_STYLE = {"exhausted": "green", "all_replied": "cyan", "deadline": "yellow",
                 "no_surplus": "dim"}
_LEVEL_STYLE = {0: "dim", 1: "green", 2: "bold dark_orange", 3: "bold red"}
_LEVEL_NAME = {0: "none", 1: "green", 2: "orange", 3: "red"}
_LOAD_REASON_STYLE = {"allocation": "bold green", "local": "green", "preheat": "bold magenta",
                      "idle": "green", "manual": "bold yellow", "shed": "bold red"}


# Formatting helpers ------------------------------------------------------------

def _kw(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _pct(share: float | None) -> str:
    return "-" if share is None else f"{100 * share:.1f} %"


def _hm(at: datetime) -> str:
    return at.strftime("%H:%M")


def _reason(record: CycleRecord) -> Text:
    reason = record.closed.reason if record.closed is not None else "open"
    return Text(reason, style=_REASON_STYLE.get(reason, "bold"))


def _replies(record: CycleRecord) -> str:
    replies = record.closed.replies if record.closed is not None else len(record.decisions)
    return f"{replies}/{record.sites}"


def cycle_line(record: CycleRecord, grid: GridNow | None = None, shed: int = 0) -> str:
    """One closed cycle as a plain line (the non-terminal output), the grid level at the end."""
    tail = f"  grid {grid.level} shed {shed}" if grid is not None else ""
    return (
        f"cycle {record.cycle_id}"
        f"  surplus {record.surplus_kw:7.2f} kW"
        f"  allocated {record.allocated_kw:6.2f} kW"
        f"  used {_pct(record.share_used):>7}"
        f"  injected {record.injected_kw:6.2f} kW"
        f"  close {record.closed.reason if record.closed else 'open':<11}"
        f"  replies {_replies(record):>5}"
        f"  allocations {len(record.decisions)}{tail}"
    )


def _hours_strip(grid: GridNow) -> Text:
    """The day's hourly levels as coloured digits, the current hour reversed."""
    text = Text()
    for pas, level in enumerate(grid.hours):
        style = _LEVEL_STYLE.get(level, "bold")
        if pas == grid.hour:
            style += " reverse"
        text.append(str(level), style=style)
    return text


def _shed_window(grid: GridNow) -> str:
    if grid.shed_level is None or grid.shed_from is None or grid.shed_until is None:
        return "no shed window"
    start, end = grid.shed_from.astimezone(PARIS), grid.shed_until.astimezone(PARIS)
    return f"shed window {start:%H:%M}-{end:%H:%M} Paris level {grid.shed_level}"


def _shed_count(state: DemoState) -> int:
    """Loads the gateways hold off (or cut) for the grid now."""
    return sum(home.load_reason(a) == "shed" for home in state.homes for a in home.spec.appliances)


def grid_line(state: DemoState, grid: GridNow | None) -> str:
    """The grid signal as a plain line (printed when its level changes)."""
    now = state.now()
    at = f"{now.astimezone(PARIS):%Y-%m-%d %H:%M} Paris" if now else "?"
    if grid is None:
        return f"grid {at}: no signal yet (RTE stand-in)"
    strip = "".join(str(level) for level in grid.hours)
    return (f"grid {at}: level {grid.level} ({_LEVEL_NAME.get(grid.level, '?')}),"
            f" {_shed_window(grid)}, loads shed {_shed_count(state)}; day {grid.day} {strip}")


def _episode_status(state: DemoState) -> str:
    """``in 80 s real``, ``under way`` or ``over``; empty without an episode or a clock."""
    episode, now = state.episode, state.now()
    if episode is None or now is None:
        return ""
    ahead_s = (episode.starts_at - now).total_seconds()
    if ahead_s > 0:
        return f"in {ahead_s / state.options.speed:.0f} s real"
    return "under way" if now < episode.ends_at else "over"


def episode_line(state: DemoState) -> str:
    """When the stress episode comes, in simulated and real time."""
    episode = state.episode
    if episode is None:
        return "grid: no stress (--no-stress): RTE's stand-in serves four calm days"
    status = _episode_status(state)
    return f"grid stress (RTE stand-in): {episode.describe()}" + (f", {status}" if status else "")


# The live view's parts -----------------------------------------------------------

def page_line(state: DemoState) -> str | None:
    """``Operator page: http://127.0.0.1:PORT/``, once the coordinator serves it."""
    return f"Operator page: {state.web_url}" if state.web_url else None


def _header(state: DemoState) -> Text:
    o = state.options
    now = state.now()
    text = Text()
    text.append("ems demo", style="bold")
    text.append(f"  community {o.community} · {len(state.homes)} homes · "
                f"broker {state.broker_kind} {state.broker_url} · speed ×{o.speed:g}\n")
    page = page_line(state)
    if page:
        text.append(page, style="bold reverse cyan")
        text.append("  (the coordinator's own page: live cycle, sites, grid signal)\n",
                    style="dim")
    if now is None:
        return text
    text.append("simulated time ", style="dim")
    text.append(now.strftime("%Y-%m-%d %H:%M:%S UTC"), style="bold cyan")
    text.append(f" ({now.astimezone(PARIS):%H:%M} Paris)", style="cyan")
    text.append(f"   sun {100 * sun_factor(now):3.0f} %", style="yellow")
    nxt = next_boundary(now, o.period_s)
    real_s = (nxt - now).total_seconds() / o.speed
    text.append(f"   next cycle {_hm(nxt)} in {real_s:4.1f} s", style="dim")
    if state.stopping:
        text.append(f"   stopping ({state.stopping})…", style="bold yellow")
    text.append("\n")
    text.append_text(_grid_text(state))
    return text


def _grid_text(state: DemoState) -> Text:
    """The grid level now, the day's hours as a strip, the shed window and the episode."""
    text = Text()
    grid = state.grid()
    text.append("grid ", style="dim")
    if grid is None:
        text.append("no signal yet", style="dim")
    else:
        text.append(f"level {grid.level} {_LEVEL_NAME.get(grid.level, '?')}",
                    style=_LEVEL_STYLE.get(grid.level, "bold"))
        text.append(f"   {grid.day:%d/%m} 0h ", style="dim")
        text.append_text(_hours_strip(grid))
        text.append(" 24h", style="dim")
        text.append(f"   {_shed_window(grid)}", style="dim" if grid.shed_level is None else "")
        shed = _shed_count(state)
        if shed:
            text.append(f"   {shed} loads shed", style="bold red")
    text.append(f"   {_episode_short(state)}", style="dim")
    return text


def _episode_short(state: DemoState) -> str:
    """``stress 21/06 17-20h Paris in 80 s real`` (the live header; the plain output says more)."""
    episode = state.episode
    if episode is None:
        return "no stress (--no-stress)"
    return (f"stress {episode.day:%d/%m} {episode.orange_from}-{episode.red_until}h Paris "
            f"{_episode_status(state)}").rstrip()


def _summary(state: DemoState) -> RenderableType:
    """The last cycle and the running counts, two lines in a panel."""
    record = state.last_closed
    text = Text()
    if record is None:
        text.append("waiting for the first cycle", style="dim")
    else:
        text.append("last cycle ", style="dim")
        text.append(record.cycle_id, style="bold")
        text.append("   ")
        text.append_text(_reason(record))
        text.append(f"   replies/sites {_replies(record)}\n")
        text.append(f"surplus {record.surplus_kw:.2f} kW   allocated {record.allocated_kw:.2f} kW"
                    f"   used {_pct(record.share_used)}   injected {record.injected_kw:.2f} kW")
    reasons = ", ".join(f"{k} {v}" for k, v in sorted(state.close_reasons.items())) or "-"
    text.append("\ncycles ", style="dim")
    text.append(f"{state.cycles_closed} ({state.cycles_with_request} with a request: {reasons})")
    text.append("   allocations ", style="dim")
    text.append(f"{state.allocations} ({state.allocated_kwh:.1f} kWh)")
    text.append("   rejected payloads ", style="dim")
    text.append(f"{state.rejected_by_coordinator} central, {state.rejected_by_homes} gateways")
    return Panel(text, box=box.ROUNDED, expand=False)


def _loads_on(home: DemoHome | None, cycle_id: str) -> tuple[str, str]:
    """What a gateway switched on for this cycle's allocation, and what it left unused."""
    if home is None:
        return "", ""
    home.sync()
    applied = home.applied.get(cycle_id)
    if applied is None:
        return "(not applied yet)", ""
    specs = {a.id: a for a in home.spec.appliances}
    names = " + ".join(
        f"{_KIND_SHORT.get(specs[load].kind, load)} {specs[load].nominal_kw:.1f}"
        if load in specs else load
        for load in applied.loads
    )
    unused = applied.alloc_kw - applied.used_kw
    return names or "-", (f"{unused:.2f}" if unused > 0.005 else "")


def allocation_table(state: DemoState, record: CycleRecord | None) -> Table:
    """The last cycle's replies by rank: offered, allocated, reply delay, loads switched on."""
    title = f"allocations of {record.cycle_id}" if record else "allocations"
    table = Table(title=title, box=box.SIMPLE_HEAD, title_justify="left", pad_edge=False)
    for name, justify in (("rank", "right"), ("site", "left"), ("flex kW", "right"),
                          ("alloc kW", "right"), ("reply s", "right"),
                          ("switched on", "left"), ("unused kW", "right")):
        table.add_column(name, justify=justify, no_wrap=True)  # type: ignore[arg-type]
    if record is None:
        return table
    decided = set()
    decisions = sorted(record.decisions, key=lambda d: d.rank)
    # Homes with nothing to offer still reply (0 kW); many of them fold into one line.
    idle = [d for d in decisions if d.flex_kw <= 0 and d.alloc_kw <= 0]
    fold = len(idle) > UNDECIDED_ROWS
    for d in decisions:
        decided.add(d.site)
        if fold and d in idle:
            continue
        loads, unused = _loads_on(state.home(d.site), record.cycle_id)
        style = "" if d.alloc_kw > 0 else "dim"
        table.add_row(str(d.rank), d.site, _kw(d.flex_kw), _kw(d.alloc_kw),
                      f"{d.elapsed_s:.1f}", loads, unused, style=style)
    if fold:
        table.add_row("-", f"{len(idle)} homes", _kw(0.0), _kw(0.0), "-", "offered nothing", "",
                      style="dim")
    if record.requested:
        # FIFO: once the surplus is handed out, later replies get nothing.
        why = "nothing left" if record.closed and record.closed.reason == "exhausted" else "-"
        left = [home.site for home in state.homes if home.site not in decided]
        if len(left) > UNDECIDED_ROWS:
            # A large community: one line for them, so the homes below stay on screen.
            table.add_row("-", f"{len(left)} homes", "-", "-", "-", why, "", style="dim")
        else:
            for site in left:
                table.add_row("-", site, "-", "-", "-", why, "", style="dim")
    return table


def history_table(state: DemoState) -> Table:
    """The last ten closed cycles."""
    table = Table(title="last cycles", box=box.SIMPLE_HEAD, title_justify="left",
                  pad_edge=False)
    for name in ("cycle", "S kW", "alloc kW", "used", "close", "replies"):
        table.add_column(name, justify="left" if name in ("cycle", "close") else "right",
                         no_wrap=True)
    for record in list(state.history)[-HISTORY_ROWS:]:
        table.add_row(_hm(record.period_start), _kw(record.surplus_kw),
                      _kw(record.allocated_kw), _pct(record.share_used),
                      _reason(record), _replies(record))
    return table


def _load_text(home: DemoHome) -> Text:
    """Each load: its kind and switch, its state and why (the gateway's reason)."""
    text = Text()
    for a in home.spec.appliances:
        short = _KIND_SHORT.get(a.kind, a.kind)
        text.append(f"{short}", style="bold")
        text.append(f"·{_SWITCH_SHORT[a.switch]} ", style="dim")
        appliance = home.model.appliances[a.id]
        reason = home.load_reason(a)
        if home.switched_on(a):
            kw = home.measured_kw(a)
            text.append(f"on {kw:.2f} kW ", style="bold green" if kw > 0.05 else "yellow")
            text.append(reason, style=_LOAD_REASON_STYLE.get(reason, ""))
        elif reason == "shed":
            text.append("off shed", style=_LOAD_REASON_STYLE["shed"])
            if appliance.need_kwh > SATISFIED_KWH and appliance.present(home.clock.now()):
                text.append(f" {appliance.need_kwh:.1f} kWh")
        elif not appliance.present(home.clock.now()):
            text.append("gone", style="dim")
        elif appliance.need_kwh <= SATISFIED_KWH:
            text.append("full", style="dim")
        else:
            text.append(f"off {appliance.need_kwh:.1f} kWh")
            if reason == "manual":
                text.append(" manual", style=_LOAD_REASON_STYLE["manual"])
        text.append("   ")
    return text


def homes_table(state: DemoState) -> Table:
    """Each home now: PV, consumption, the net load its gateway reads, its loads."""
    table = Table(title="homes", box=box.SIMPLE_HEAD, title_justify="left", pad_edge=False)
    for name, justify in (("site", "left"), ("meter", "left"), ("PV kWp", "right"),
                          ("PV kW", "right"), ("use kW", "right"), ("net kW", "right"),
                          ("loads (switch, state, measured power)", "left")):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for home in state.homes:
        net = home.net_export_kw
        net_text = (Text("-", style="dim") if net is None
                    else Text(f"{net:+.2f}", style="green" if net > 0 else "red"))
        spec = home.spec
        table.add_row(home.site, _METER_SHORT[spec.meter],
                      f"{spec.pv_kwp:.1f}" if spec.pv_kwp else "-",
                      f"{home.model.pv_kw:.2f}", f"{home.model.household_kw:.2f}",
                      net_text, _load_text(home))
    return table


def render(state: DemoState, width: int = 140) -> RenderableType:
    """The whole live view; the allocations and the history side by side when wide enough."""
    record = state.last_closed
    allocations, history = allocation_table(state, record), history_table(state)
    middle: RenderableType = Group(allocations, history)
    if width >= SIDE_BY_SIDE_WIDTH:
        grid = Table.grid(padding=(0, 2))
        grid.add_row(allocations, history)
        middle = grid
    footer = Text(f"records: {state.options.db_url}", style="dim")
    if state.options.log_file is not None:
        footer.append(f"   logs: {state.options.log_file}")
    footer.append("   Ctrl-C to stop")
    return Group(_header(state), _summary(state), middle, homes_table(state), footer)


def summary_line(state: DemoState) -> str:
    """One line when the demo ends."""
    reasons = ", ".join(f"{k} {v}" for k, v in sorted(state.close_reasons.items())) or "none"
    return (
        f"demo: stopped ({state.stopping or 'error'}) after {state.cycles_closed} cycles"
        f" ({state.cycles_with_request} with a request; {reasons}),"
        f" {state.allocations} allocations, {state.allocated_kwh:.1f} kWh allocated,"
        f" rejected payloads {state.rejected_by_coordinator} central"
        f" / {state.rejected_by_homes} gateways; records {state.options.db_url}"
    )


def started_line(state: DemoState) -> str:
    o = state.options
    now = state.now()
    at = now.strftime("%Y-%m-%dT%H:%M:%SZ") if now else "?"
    return (
        f"demo: {len(state.homes)} homes, broker {state.broker_kind} {state.broker_url},"
        f" speed x{o.speed:g} (a {o.period_s:g} s period every {o.period_s / o.speed:.1f} s),"
        f" simulated time {at}; {episode_line(state)}"
    )


# The two views -----------------------------------------------------------------------

class LiveView:
    """A rich ``Live`` display, redrawn by the runner's refresh task."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console()
        self._live: Live | None = None

    def started(self, state: DemoState) -> None:
        # No auto-refresh thread: the event loop redraws, so nothing reads the state
        # while the loop changes it.
        self._live = Live(self._render(state), console=self.console, auto_refresh=False)
        self._live.start(refresh=True)

    def refresh(self, state: DemoState) -> None:
        if self._live is not None:
            self._live.update(self._render(state), refresh=True)

    def cycle_closed(self, state: DemoState, record: CycleRecord) -> None:
        # Called inside the coordinator's close: drawing here would hold it up.
        # The refresh task shows the closed cycle within VIEW_REFRESH_S.
        pass

    def _render(self, state: DemoState) -> RenderableType:
        return render(state, self.console.width)

    def finished(self, state: DemoState) -> None:
        if self._live is not None:
            self._live.update(self._render(state), refresh=True)
            self._live.stop()
            self._live = None
        self.console.print(summary_line(state), highlight=False)


class PlainView:
    """Plain lines for logs: one when it starts, one per closed cycle, one at the end."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self._grid_level: int | None = None

    def _line(self, text: str) -> None:
        self.stream.write(text + "\n")
        self.stream.flush()

    def started(self, state: DemoState) -> None:
        self._line(started_line(state))
        page = page_line(state)
        if page:
            self._line(page)

    def refresh(self, state: DemoState) -> None:
        self._grid_changed(state)

    def _grid_changed(self, state: DemoState) -> None:
        """A line when the grid level the coordinator publishes changes."""
        grid = state.grid()
        if grid is not None and grid.level != self._grid_level:
            self._grid_level = grid.level
            self._line(grid_line(state, grid))

    def cycle_closed(self, state: DemoState, record: CycleRecord) -> None:
        self._grid_changed(state)
        self._line(cycle_line(record, state.grid(), _shed_count(state)))

    def finished(self, state: DemoState) -> None:
        self._line(summary_line(state))

"""Scenarios for comparing strategies (``ems bench strategies``), run through the real core.

Two scenarios, each a whole number of days and fully determined by its seed:

* ``study``: the study's summer day (``summer_day.draw_cycle``: 40 cycles a
  day, 5..30 of 30 members active, offers uniform 0..5 kW, replies after
  1..10 s), with one load behind each offer so that minimum powers matter:
  each member owns one kind of load for the whole run, a water heater
  (min = max = the offer), a heat pump (min 1..2 kW) or an EV charger
  (min 1.4 kW). The community draws are the ones ``ems simulate summer-day``
  makes with the same seed (day 1 is its first 40 cycles).
* ``realistic``: a community of homes over 96 quarter hours a day: a PV day
  curve (clear-sky bell, 06:00-21:00, a cloud factor per day and per
  quarter), a base load per home, and flexible loads with a state that the
  allocations change: water heaters of 2-3 kW that run at full power only
  (min = max) until their tank is hot (some are hot already: offer 0), heat
  pumps with a 1-2 kW minimum and at most ``HP_STARTS_PER_HOUR`` starts an
  hour, EVs at 1.4-7.4 kW that are home between an arrival and a departure
  (``until_s``) and need some energy (``energy_kwh``). Replies come after
  0.3-4 s, one in ten slow (4-14 s).

Everything random is drawn before any strategy runs, from generators seeded
by the run's seed: every strategy sees the same community, weather, loads,
needs and reply delays. Only what the allocations change (a tank heated, an
EV charged, a heat pump started) differs from one strategy to the next.

The homes answer and run what they are given exactly as a gateway does:
each load is a ``gateway.ems.LoadSpec`` whose ``modulation`` says how it is
driven (water heaters switched whole; inverter heat pumps continuous; EVs
on a 7.4 kW wallbox in 1 A steps, 3.7 kW ones on a portable cable behind a
relay, whole), its reply gives what it can really run at (``least_kw`` to
``most_kw``), and an allocation runs the loads and set points of the
gateway's own plan (``gateway.ems.plan.choose_loads``, the same pure code).
``gateway="switching"`` is the gateway before modulating loads: every load
switched whole at its maximum while its reply still gave its ``min_kw``.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal, NamedTuple

from central.core import Cycle, Offer, Strategy, StrategyState
from central.core.cycle import LoadOffer
from central.core.metrics import PERIOD_H, CycleRecord, relay_starts, usable_loads
from central.core.replay import drive
from ems.simulation.summer_day import SummerDayModel, draw_cycle
from gateway.ems.loads import LoadSpec, Modulation
from gateway.ems.plan import Candidate, candidate_of, choose_loads

DEFAULT_REPLY_TIMEOUT_S = 15.0
STUDY_CYCLES_PER_DAY = 40
QUARTERS_PER_DAY = 96
QUARTER_S = 900.0
HP_STARTS_PER_HOUR = 2
"""A heat pump's compressor must not cycle often (DOMAIN.md): at most this many starts an hour."""
SCENARIOS = ("study", "realistic")
GatewayModel = Literal["modulating", "switching"]
GATEWAY_MODELS: tuple[GatewayModel, ...] = ("modulating", "switching")
"""How the homes' gateways drive their loads: as now, or whole (before modulation)."""
WALLBOX_STEP_KW = 0.23
"""One ampere on one phase at 230 V: a wallbox's step."""


class Reply(NamedTuple):
    """One home's answer in one cycle, and the net load it reported before."""

    site: str
    net_load_kw: float
    """Positive = the home exports (the study's sign)."""
    delay_s: float
    loads: tuple[LoadOffer, ...]
    plans: tuple[Candidate, ...] = ()
    """The gateway's planning view of the same loads (what it can really run)."""

    @property
    def flex_kw(self) -> float:
        """What the gateway offers: the sum of its offerable loads' largest power."""
        return round(math.fsum(load.max_kw for load in self.loads), 6)

    def run(self, alloc_kw: float) -> dict[str, float]:
        """The loads the gateway runs on ``alloc_kw`` and their power (its own plan)."""
        if not alloc_kw > 0.0:
            return {}
        return {r.id: r.kw for r in choose_loads(self.plans, alloc_kw)}


def gateway_view(
    spec: LoadSpec,
    gateway: GatewayModel,
    *,
    until_s: float | None = None,
    energy_kwh: float | None = None,
) -> tuple[LoadOffer, Candidate]:
    """What a gateway replies for one load and how it plans it.

    ``modulating``: the reply's min/max are the powers the load can really run
    at (``LoadSpec.least_kw``/``most_kw``, as ``LocalEms.flex``), and the plan
    honours its modulation. ``switching``: the gateway before modulation, which
    replied with the configured ``min_kw``/``max_kw`` but switched the load whole.
    """
    priority = spec.priority or None
    if gateway == "switching":
        whole = replace(spec, modulation="none", steps_kw=())
        offer = LoadOffer(spec.id, spec.min_kw, spec.max_kw, spec.kind, priority, until_s,
                          energy_kwh)
        return offer, candidate_of(whole, until_s)
    offer = LoadOffer(spec.id, spec.least_kw, spec.most_kw, spec.kind, priority, until_s,
                      energy_kwh)
    return offer, candidate_of(spec, until_s)


def make_reply(
    site: str,
    net_load_kw: float,
    delay_s: float,
    views: Sequence[tuple[LoadOffer, Candidate]],
) -> Reply:
    return Reply(site, net_load_kw, delay_s, tuple(o for o, _ in views),
                 tuple(c for _, c in views))


def load_spec(
    load_id: str,
    kind: str,
    min_kw: float,
    max_kw: float,
    modulation: Modulation = "none",
    *,
    priority: int = 0,
) -> LoadSpec:
    """A simulated home's load as its gateway configures it (nominal = its maximum).

    ``steps`` is a wallbox: from ``min_kw`` in 1 A steps (0.23 kW) up to ``max_kw``.
    """
    steps: tuple[float, ...] = ()
    if modulation == "steps":
        count = math.floor((max_kw - min_kw) / WALLBOX_STEP_KW + 1e-9) + 1
        steps = tuple(round(min_kw + k * WALLBOX_STEP_KW, 6) for k in range(count))
    return LoadSpec(load_id, kind=kind, nominal_kw=max_kw, min_kw=min_kw, max_kw=max_kw,
                    priority=priority, modulation=modulation, steps_kw=steps)


@dataclass(slots=True)
class RunResult:
    """One strategy over one scenario: its cycles, and what the homes missed."""

    strategy: str
    scenario: str
    records: list[CycleRecord] = field(default_factory=list)
    comfort_miss_by_day: dict[int, float] = field(default_factory=dict)
    """kWh an EV still needed when it left, per day (0 in the study scenario)."""
    methods: dict[str, int] = field(default_factory=dict)
    """How an optimising strategy decided its cycles (``solver``, ``fallback``, …)."""

    @property
    def comfort_miss_kwh(self) -> float:
        return math.fsum(self.comfort_miss_by_day.values())


OnCycle = Callable[[], None]



class Allocated(NamedTuple):
    """What one cycle gave each site and when."""

    alloc_kw: dict[str, float]
    decided_at_s: dict[str, float]
    state: StrategyState


def allocate(
    cycle_id: Hashable,
    replies: Sequence[Reply],
    strategy: Strategy,
    state: StrategyState,
    *,
    reply_timeout_s: float,
    seed: int,
) -> Allocated:
    """Run one cycle through the core: every home asked, replies in order of arrival."""
    surplus_kw = math.fsum(r.net_load_kw for r in replies)
    cycle, _ = Cycle.open(
        cycle_id,
        surplus_kw,
        [r.site for r in replies],
        strategy,
        state,
        deadline_s=reply_timeout_s,
        seed=seed,
    )
    decided_at: dict[str, float] = {}
    if cycle.close_reason is None:
        offers = [Offer(r.site, cycle_id, r.flex_kw, r.delay_s, r.loads) for r in replies]
        offers.sort(key=lambda o: o.elapsed_s)
        decided_at = drive(cycle, offers)
    alloc = {d.site: d.alloc_kw for d in cycle.decisions}
    return Allocated(alloc, decided_at, cycle.settle(state))


def _note_method(result: RunResult, state: StrategyState) -> None:
    method = state.get("last_method")
    if isinstance(method, str):
        result.methods[method] = result.methods.get(method, 0) + 1


def _record(
    day: int,
    replies: Sequence[Reply],
    got: Allocated,
    *,
    on_before: set[str],
    on_now: set[str],
    sites_before: set[str],
    sites_now: set[str],
    ran: Mapping[str, Mapping[str, float]],
) -> CycleRecord:
    surplus_kw = math.fsum(r.net_load_kw for r in replies)
    usable = math.fsum(kw for loads in ran.values() for kw in loads.values())
    usable_mod = 0.0
    for r in replies:
        kw = got.alloc_kw.get(r.site, 0.0)
        if kw > 0.0:
            # The strategies' model: any power between a load's min and max.
            usable_mod += math.fsum(p for _, p in usable_loads(kw, r.loads, modulating=True))
    delays = tuple(t for site, t in got.decided_at_s.items() if got.alloc_kw.get(site, 0.0) > 0.0)
    return CycleRecord(
        day=day,
        surplus_kw=surplus_kw,
        allocated_kw=math.fsum(got.alloc_kw.values()),
        usable_kw=usable,
        usable_modulating_kw=usable_mod,
        decision_delays_s=delays,
        load_starts=relay_starts(on_before, on_now),
        site_starts=relay_starts(sites_before, sites_now),
        alloc_kw_by_site=got.alloc_kw,
        offering_sites=frozenset(r.site for r in replies if r.flex_kw > 0.0),
    )


# The study's summer day with loads ------------------------------------------------


class StudyInputs(NamedTuple):
    """Every cycle of the run, drawn in advance: (day, replies) in order."""

    cycles: list[tuple[int, tuple[Reply, ...]]]


def draw_study(
    days: int,
    seed: int,
    model: SummerDayModel | None = None,
    gateway: GatewayModel = "modulating",
) -> StudyInputs:
    """The study's summer days (40 cycles each) with one load behind each positive offer.

    The water heater is switched whole; the heat pump and the EV charger modulate
    (continuous) between their minimum and the offer, so the offers are the
    simulator's whatever ``gateway`` says.
    """
    model = model or SummerDayModel()
    members = model.member_ids()
    rng = random.Random(seed)  # the same draws as ``ems simulate summer-day --seed``
    load_rng = random.Random(f"study-loads:{seed}")
    kinds = {m: load_rng.choice(("water_heater", "heat_pump", "ev_charger")) for m in members}
    hp_min_kw = {m: round(load_rng.uniform(1.0, 2.0), 2) for m in members}
    cycles: list[tuple[int, tuple[Reply, ...]]] = []
    for day in range(days):
        for _ in range(STUDY_CYCLES_PER_DAY):
            draw = draw_cycle(rng, model, members)
            replies = []
            for site, net_kw, flex_kw, delay_s in zip(
                draw.sites, draw.net_loads_kw, draw.flex_kw, draw.delays_s, strict=True
            ):
                views: list[tuple[LoadOffer, Candidate]] = []
                if flex_kw > 0.0:
                    kind = kinds[site]
                    low = {
                        "water_heater": flex_kw,
                        "heat_pump": min(hp_min_kw[site], flex_kw),
                        "ev_charger": min(1.4, flex_kw),
                    }[kind]
                    how: Modulation = "none" if kind == "water_heater" else "continuous"
                    spec = load_spec(f"{site}/{kind}", kind, low, flex_kw, how)
                    views.append(gateway_view(spec, gateway))
                replies.append(make_reply(site, float(net_kw), delay_s, views))
            cycles.append((day, tuple(replies)))
    return StudyInputs(cycles)


def run_study(
    inputs: StudyInputs,
    name: str,
    strategy: Strategy,
    *,
    seed: int,
    reply_timeout_s: float = DEFAULT_REPLY_TIMEOUT_S,
    on_cycle: OnCycle | None = None,
) -> RunResult:
    """Every cycle of ``inputs`` through ``strategy`` (state carried from cycle to cycle)."""
    result = RunResult(name, "study")
    strategy_rng = random.Random(f"strategy:{seed}")
    state: StrategyState = {}
    on_before: set[str] = set()
    sites_before: set[str] = set()
    for index, (day, replies) in enumerate(inputs.cycles, start=1):
        got = allocate(
            index,
            replies,
            strategy,
            state,
            reply_timeout_s=reply_timeout_s,
            seed=strategy_rng.getrandbits(32),
        )
        state = got.state
        _note_method(result, state)
        on_now: set[str] = set()
        sites_now: set[str] = set()
        ran: dict[str, dict[str, float]] = {}
        for r in replies:
            chosen = r.run(got.alloc_kw.get(r.site, 0.0))
            if chosen:
                ran[r.site] = chosen
                sites_now.add(r.site)
                on_now.update(chosen)
        result.records.append(
            _record(
                day,
                replies,
                got,
                on_before=on_before,
                on_now=on_now,
                sites_before=sites_before,
                sites_now=sites_now,
                ran=ran,
            )
        )
        on_before, sites_before = on_now, sites_now
        if on_cycle is not None:
            on_cycle()
    return result


# A realistic community ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Home:
    """A home's fixed equipment."""

    site: str
    pv_kwp: float
    base_kw: float
    water_heater_kw: float | None
    heat_pump_kw: tuple[float, float] | None
    """(min, max) of an inverter heat pump."""
    ev_kw: tuple[float, float] | None
    """(min, max) of an EV charger (6 A .. 16 or 32 A single phase)."""


class HomeDay(NamedTuple):
    """One home's draws for one day (independent of any strategy)."""

    net_load_kw: tuple[float, ...]
    """Per quarter hour: PV minus base load (positive = export)."""
    delay_s: tuple[float, ...]
    water_need_kwh: float
    heat_need_kwh: float
    ev_arrive_q: int
    ev_leave_q: int
    ev_need_kwh: float


class RealisticInputs(NamedTuple):
    homes: tuple[Home, ...]
    days: tuple[tuple[HomeDay, ...], ...]


class HomeLoads(NamedTuple):
    """A home's loads as its gateway configures them (None: it has none of that kind)."""

    water_heater: LoadSpec | None
    heat_pump: LoadSpec | None
    ev_charger: LoadSpec | None


def home_loads(home: Home) -> HomeLoads:
    """Water heaters switched whole, inverter heat pumps continuous, a 7.4 kW EV on a
    wallbox in 1 A steps, a 3.7 kW one on a portable cable behind a relay (whole)."""
    s = home.site
    wh = hp = ev = None
    if home.water_heater_kw is not None:
        kw = home.water_heater_kw
        wh = load_spec(f"{s}/water_heater", "water_heater", kw, kw)
    if home.heat_pump_kw is not None:
        hp = load_spec(f"{s}/heat_pump", "heat_pump", *home.heat_pump_kw, "continuous")
    if home.ev_kw is not None:
        lo, hi = home.ev_kw
        ev = load_spec(f"{s}/ev_charger", "ev_charger", lo, hi,
                       "steps" if hi > 4.0 else "none", priority=1)
    return HomeLoads(wh, hp, ev)


def pv_shape(quarter: int) -> float:
    """Clear-sky PV output as a fraction of peak: a sine squared from 06:00 to 21:00 (summer)."""
    hour = (quarter + 0.5) / 4.0
    if not 6.0 < hour < 21.0:
        return 0.0
    return math.sin(math.pi * (hour - 6.0) / 15.0) ** 2


def _base_shape(quarter: int) -> float:
    # A morning and an evening bump over a flat floor (a household's usual day).
    hour = quarter / 4.0
    return (
        1.0
        + 1.2 * math.exp(-(((hour - 7.5) / 1.2) ** 2))
        + 1.8 * math.exp(-(((hour - 19.5) / 1.8) ** 2))
    )


def draw_realistic(days: int, seed: int, homes: int = 30) -> RealisticInputs:
    """The community's equipment and ``days`` days of weather, use, needs and delays."""
    rng = random.Random(f"realistic:{seed}")
    width = max(2, len(str(homes)))
    equipment = []
    for i in range(1, homes + 1):
        hp_min = round(rng.uniform(1.0, 2.0), 1)
        equipment.append(
            Home(
                site=f"home-{i:0{width}d}",
                pv_kwp=0.0 if rng.random() < 0.3 else round(rng.uniform(3.0, 9.0), 1),
                base_kw=round(rng.uniform(0.2, 0.6), 2),
                water_heater_kw=round(rng.uniform(2.0, 3.0), 1) if rng.random() < 0.8 else None,
                heat_pump_kw=(hp_min, round(hp_min + rng.uniform(0.5, 2.0), 1))
                if rng.random() < 0.35
                else None,
                ev_kw=(1.4, rng.choice((3.7, 7.4))) if rng.random() < 0.4 else None,
            )
        )
    all_days = []
    for day in range(days):
        drng = random.Random(f"realistic:{seed}:{day}")
        cloud = drng.uniform(0.55, 1.0)
        sky = [cloud * drng.uniform(0.75, 1.0) for _ in range(QUARTERS_PER_DAY)]
        home_days = []
        for home in equipment:
            net = tuple(
                round(
                    home.pv_kwp * pv_shape(q) * sky[q]
                    - home.base_kw * _base_shape(q) * drng.uniform(0.6, 1.6),
                    3,
                )
                for q in range(QUARTERS_PER_DAY)
            )
            delays = tuple(
                drng.uniform(4.0, 14.0) if drng.random() < 0.1 else drng.uniform(0.3, 4.0)
                for _ in range(QUARTERS_PER_DAY)
            )
            hot = drng.random() < 0.3  # the tank is hot already: it offers 0 all day
            # Six EVs in ten are home for part of the day (arrive 06:00-13:00, stay 3-10 h).
            home_today = drng.random() < 0.6
            arrive = drng.randint(6 * 4, 13 * 4)
            leave = min(arrive + drng.randint(12, 40), QUARTERS_PER_DAY - 1)
            ev_need_kwh = round(drng.uniform(5.0, 20.0), 1) if home_today else 0.0
            water_kwh = 0.0 if hot else round(drng.uniform(2.0, 8.0), 1)
            heat_kwh = round(drng.uniform(2.0, 6.0), 1)
            home_days.append(
                HomeDay(
                    net,
                    delays,
                    water_kwh if home.water_heater_kw is not None else 0.0,
                    heat_kwh if home.heat_pump_kw is not None else 0.0,
                    arrive,
                    leave,
                    ev_need_kwh if home.ev_kw is not None else 0.0,
                )
            )
        all_days.append(tuple(home_days))
    return RealisticInputs(tuple(equipment), tuple(all_days))


@dataclass(slots=True)
class _HomeState:
    water_kwh: float
    heat_kwh: float
    ev_kwh: float
    hp_starts_q: list[int] = field(default_factory=list)
    on: set[str] = field(default_factory=set)


def _offerable(
    loads: HomeLoads, day: HomeDay, st: _HomeState, q: int, gateway: GatewayModel
) -> list[tuple[LoadOffer, Candidate]]:
    views: list[tuple[LoadOffer, Candidate]] = []
    if loads.water_heater is not None and st.water_kwh > 0.0:
        views.append(gateway_view(loads.water_heater, gateway, energy_kwh=st.water_kwh))
    if loads.heat_pump is not None and st.heat_kwh > 0.0:
        recent = [t for t in st.hp_starts_q if q - t < 4]
        if loads.heat_pump.id in st.on or len(recent) < HP_STARTS_PER_HOUR:
            views.append(gateway_view(loads.heat_pump, gateway, energy_kwh=st.heat_kwh))
    if loads.ev_charger is not None and day.ev_arrive_q <= q < day.ev_leave_q and st.ev_kwh > 0.0:
        until_s = (day.ev_leave_q - q) * QUARTER_S
        views.append(
            gateway_view(loads.ev_charger, gateway, until_s=until_s, energy_kwh=st.ev_kwh)
        )
    return views


def run_realistic(
    inputs: RealisticInputs,
    name: str,
    strategy: Strategy,
    *,
    seed: int,
    reply_timeout_s: float = DEFAULT_REPLY_TIMEOUT_S,
    gateway: GatewayModel = "modulating",
    on_cycle: OnCycle | None = None,
) -> RunResult:
    """Every quarter hour of every day through ``strategy``; loads change with what they got.

    Comfort misses: the kWh an EV still needed when it left (it must take them
    from the grid). Night cycles have no surplus and allocate nothing.
    """
    result = RunResult(name, "realistic")
    strategy_rng = random.Random(f"strategy:{seed}")
    state: StrategyState = {}
    sites_before: set[str] = set()
    on_before: set[str] = set()
    equipment = [home_loads(h) for h in inputs.homes]
    for day, home_days in enumerate(inputs.days):
        states = [_HomeState(d.water_need_kwh, d.heat_need_kwh, d.ev_need_kwh) for d in home_days]
        for q in range(QUARTERS_PER_DAY):
            replies = tuple(
                make_reply(h.site, d.net_load_kw[q], d.delay_s[q],
                           _offerable(loads, d, st, q, gateway))
                for h, loads, d, st in zip(inputs.homes, equipment, home_days, states, strict=True)
            )
            got = allocate(
                day * 1000 + q,
                replies,
                strategy,
                state,
                reply_timeout_s=reply_timeout_s,
                seed=strategy_rng.getrandbits(32),
            )
            state = got.state
            _note_method(result, state)
            on_now: set[str] = set()
            sites_now: set[str] = set()
            ran: dict[str, dict[str, float]] = {}
            for r, st, d in zip(replies, states, home_days, strict=True):
                chosen = r.run(got.alloc_kw.get(r.site, 0.0))
                _apply(r.site, chosen, st, q)
                if chosen:
                    ran[r.site] = chosen
                    sites_now.add(r.site)
                    on_now.update(chosen)
                if q + 1 == d.ev_leave_q and st.ev_kwh > 0.0:
                    misses = result.comfort_miss_by_day
                    misses[day] = misses.get(day, 0.0) + st.ev_kwh
            result.records.append(
                _record(
                    day,
                    replies,
                    got,
                    on_before=on_before,
                    on_now=on_now,
                    sites_before=sites_before,
                    sites_now=sites_now,
                    ran=ran,
                )
            )
            on_before, sites_before = on_now, sites_now
            if on_cycle is not None:
                on_cycle()
    return result


def _apply(site: str, chosen: Mapping[str, float], st: _HomeState, q: int) -> None:
    """A quarter hour of the chosen loads: their needs shrink; a heat pump start is noted."""
    for load_id, kw in chosen.items():
        kwh = kw * PERIOD_H
        kind = load_id.removeprefix(f"{site}/")
        if kind == "water_heater":
            st.water_kwh = max(st.water_kwh - kwh, 0.0)
        elif kind == "heat_pump":
            st.heat_kwh = max(st.heat_kwh - kwh, 0.0)
            if load_id not in st.on:
                st.hp_starts_q.append(q)
        elif kind == "ev_charger":
            st.ev_kwh = max(st.ev_kwh - kwh, 0.0)
    st.on = set(chosen)


def cycles_of(scenario: str, days: int) -> int:
    """How many cycles a scenario runs in ``days`` days (for a progress bar)."""
    return days * (STUDY_CYCLES_PER_DAY if scenario == "study" else QUARTERS_PER_DAY)


# Scale: one cycle with many sites ------------------------------------------------------


class ScaleInputs(NamedTuple):
    """One cycle's surplus and replies for the per-cycle timing at N sites."""

    surplus_kw: float
    offers: list[Offer]


def draw_scale(sites: int, seed: int, cycle_id: Hashable = "scale") -> ScaleInputs:
    """N replies that all arrive at once, each one whole load (min = max, 1.4-7.4 kW to 0.01).

    The surplus is half the offers, so an optimiser has a real choice to make:
    whole loads are the hard case (a subset sum); with loads that can modulate
    FIFO fills the surplus and ``milp`` skips its solver (``fifo_optimal``).
    """
    rng = random.Random(f"scale:{seed}:{sites}")
    width = max(2, len(str(sites)))
    offers = []
    for i in range(1, sites + 1):
        kw = round(rng.uniform(1.4, 7.4), 2)
        site = f"site-{i:0{width}d}"
        load = LoadOffer(f"{site}/load", kw, kw, "generic")
        offers.append(Offer(site, cycle_id, kw, 0.0, (load,)))
    surplus_kw = round(0.5 * math.fsum(o.flex_kw for o in offers), 2)
    return ScaleInputs(surplus_kw, offers)

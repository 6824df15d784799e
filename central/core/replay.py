"""A recorded day replayed through other strategies, and the figures side by side (pure).

The recorder keeps, per cycle, the surplus, how many sites were asked, the
reply deadline, every reply (site, arrival in seconds after the request,
flex, and the loads behind it) and every decision. ``Replayer`` feeds those
replies, cycle after cycle in order, to a strategy through the same core the
coordinator runs (``Cycle.open``, ``offer``, ``tick`` at the strategy's
timers and at the deadline): what that strategy would have decided on the
same day. A stateful strategy (``fair_rotation``'s ledger) carries its state
from cycle to cycle, from the state it is given (empty, or the one the
coordinator saved). ``RecordedReplayer`` gives the recorded run the same
treatment with every decision pinned to its stored kW, so the recorded and
the replayed figures come from one computation (``central.core.metrics``).

What a replay cannot know, and how it is handled:

- what the homes would have offered next: every cycle gets the replies that
  were recorded, so a tank another strategy would have heated still offers
  in the next cycle what it offered then (the first cycle is exact; later
  ones compare strategies on the same sequence of offers);
- the sites asked but silent: only their number is kept once a cycle has
  closed, so they are stood in for by placeholder ids that never reply (the
  cycle still waits for them until its deadline, as it did live);
- a reply's loads: kept since the recorder stores them; a reply without them
  (older records, or a gateway that lists none) counts as one load that can
  draw anything up to its flex (its allocation fully usable, no minimum).
  ``Run.allocations_without_loads`` says how many allocations that was;
- when a recorded decision was taken: the records hold the reply's arrival,
  not the decision's time; the pinned replay of the recorded strategy gives
  it (on arrival for first come first served, at the window or the close for
  the others);
- replies that never came because the live cycle had closed: gateways reply
  to every request at once, so the records hold nearly all of them (those
  that arrived after the close are recorded as ``closed`` and replayed);
- a strategy's randomness: the live coordinator opens every cycle with seed
  0, and so does the replay.

No I/O: the ``ems replay`` command reads the records and prints.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from central.core.cycle import EPSILON_KW, Cycle, CycleContext, Decision, LoadOffer, Offer
from central.core.metrics import (
    CycleRecord,
    RunMetrics,
    distances_to_ideal,
    pareto_front,
    relay_starts,
    summarize_run,
    usable_loads,
)
from central.core.strategy import Grant, Session, Strategy, StrategyState

SILENT_PREFIX = "(silent-"
"""Placeholder ids for sites asked that never replied (never a valid site id)."""
REPLAYED_OUTCOMES = frozenset({"accepted", "closed", "duplicate"})
"""Replies that reached the cycle they answered (not ``stale``, not ``not_requested``)."""
SAME_KW = 1e-9
RECORDED = "recorded"


class RecordedReply(NamedTuple):
    """One reply as the recorder kept it."""

    site: str
    arrival_s: float
    flex_kw: float
    outcome: str
    loads: tuple[LoadOffer, ...] | None = None
    """None: not recorded (records older than the loads column)."""


@dataclass(frozen=True, slots=True)
class RecordedCycle:
    """One recorded cycle: its inputs, every reply in arrival order, its decisions."""

    cycle: str
    strategy: str
    surplus_kw: float
    sites: int
    """How many sites were asked."""
    deadline_s: float
    replies: tuple[RecordedReply, ...] = ()
    decisions: tuple[Decision, ...] = ()
    site_ids: frozenset[str] | None = None
    """The sites asked, when still recorded (an open cycle); else only their number."""
    close_reason: str | None = None

    def offers(self) -> list[Offer]:
        """The replies that reached this cycle, as the core saw them, in arrival order.

        A decision with no reply recorded (a cycle rebuilt after a crash) gets
        the reply its decision row describes, at its rank.
        """
        offers = [
            Offer(r.site, self.cycle, r.flex_kw, r.arrival_s, r.loads or ())
            for r in self.replies
            if r.outcome in REPLAYED_OUTCOMES
        ]
        replied = {o.site for o in offers}
        for d in sorted(self.decisions, key=lambda d: d.rank):
            if d.site not in replied:
                offers.insert(min(d.rank - 1, len(offers)),
                              Offer(d.site, self.cycle, d.flex_kw, d.elapsed_s))
        return offers

    def asked(self, offers: Sequence[Offer]) -> frozenset[str]:
        """The sites asked: the recorded ids, else the repliers plus silent placeholders."""
        if self.site_ids is not None:
            return self.site_ids | {o.site for o in offers}
        repliers = {o.site for o in offers}
        silent = max(self.sites - len(repliers), 0)
        return frozenset(repliers) | {f"{SILENT_PREFIX}{i})" for i in range(silent)}


class CycleResult(NamedTuple):
    """What one strategy decided in one cycle, and when (seconds after the request)."""

    cycle: str
    decisions: tuple[Decision, ...]
    decided_at_s: Mapping[str, float]
    close_reason: str | None

    @property
    def allocated_kw(self) -> float:
        return math.fsum(d.alloc_kw for d in self.decisions)


@dataclass(slots=True)
class Run:
    """One strategy (or the recorded run) over the day."""

    name: str
    cycles: list[CycleResult] = field(default_factory=list)
    records: list[CycleRecord] = field(default_factory=list)
    state: StrategyState = field(default_factory=dict)
    methods: Counter[str] = field(default_factory=Counter)
    """How an optimising strategy decided its cycles (``solver``, ``fallback``, …)."""
    allocations_without_loads: int = 0
    """Positive allocations to replies whose loads are unknown (counted as fully usable)."""

    @property
    def metrics(self) -> RunMetrics:
        return summarize_run(self.records)


# Driving the core ------------------------------------------------------------


def drive(cycle: Cycle, offers: Sequence[Offer]) -> dict[str, float]:
    """Feed ``offers`` (arrival order) to ``cycle``, fire its timers, run it to its close.

    Returns when each site's decision was taken: on its reply's arrival, or at
    the timer or deadline that decided it.
    """
    decided_at: dict[str, float] = {}

    def note(decisions: Iterable[Decision], at_s: float) -> None:
        for d in decisions:
            decided_at.setdefault(d.site, at_s)

    last_tick_s = -math.inf
    for offer in offers:
        if cycle.close_reason is not None:
            return decided_at
        wake_s = cycle.next_wakeup_s()
        # A strategy that asks again for a time already past must not stall the run.
        while wake_s is not None and last_tick_s < wake_s <= offer.elapsed_s:
            note(cycle.tick(wake_s).decisions, wake_s)
            last_tick_s = wake_s
            wake_s = cycle.next_wakeup_s()
        if cycle.close_reason is not None:
            return decided_at
        note(cycle.offer(offer).decisions, offer.elapsed_s)
    deadline_s = cycle.context.deadline_s
    while cycle.close_reason is None:
        wake_s = cycle.next_wakeup_s()
        if wake_s is None or wake_s <= last_tick_s:
            wake_s = deadline_s
        note(cycle.tick(wake_s).decisions, wake_s)
        last_tick_s = wake_s
    return decided_at


class _PinnedSession:
    """A session whose decisions take the stored kW; *when* it decides stays the strategy's."""

    __slots__ = ("_inner", "_stored")

    def __init__(self, inner: Session, stored: Mapping[str, float]) -> None:
        self._inner = inner
        self._stored = stored

    def _pin(self, grants: Sequence[Grant]) -> list[Grant]:
        return [Grant(g.site, self._stored.get(g.site, g.alloc_kw)) for g in grants]

    def on_offer(self, offer: Offer, rank: int, remaining_kw: float) -> float | None:
        kw = self._inner.on_offer(offer, rank, remaining_kw)
        return None if kw is None else self._stored.get(offer.site, kw)

    def wakeup_s(self) -> float | None:
        return self._inner.wakeup_s()

    def on_timer(
        self, elapsed_s: float, pending: Sequence[Offer], remaining_kw: float
    ) -> Sequence[Grant]:
        return self._pin(self._inner.on_timer(elapsed_s, pending, remaining_kw))

    def on_close(self, pending: Sequence[Offer], remaining_kw: float) -> Sequence[Grant]:
        return self._pin(self._inner.on_close(pending, remaining_kw))

    def settle(self, decisions: Sequence[Decision]) -> StrategyState:
        return self._inner.settle(decisions)


class _Pinned:
    def __init__(self, inner: Strategy, stored: Mapping[str, float]) -> None:
        self.name = inner.name
        self._inner = inner
        self._stored = stored

    def begin(self, context: CycleContext, state: StrategyState) -> Session:
        return _PinnedSession(self._inner.begin(context, state), self._stored)


# One run over the day -----------------------------------------------------------


class Replayer:
    """One strategy over a recorded day, one cycle at a time (``step``), state carried.

    ``pinned``: the recorded run. Every decision is the stored one; the
    strategy (the one that ran, as far as it is known) only says when each was
    taken.
    """

    def __init__(
        self,
        name: str,
        strategy: Strategy,
        state: StrategyState | None = None,
        *,
        pinned: bool = False,
        modulating: bool = False,
    ) -> None:
        self.run = Run(name, state=dict(state or {}))
        self.strategy = strategy
        self.pinned = pinned
        self.modulating = modulating
        self._on_before: set[str] = set()
        self._sites_before: set[str] = set()

    def strategy_for(self, recorded: RecordedCycle) -> Strategy:
        """The strategy that runs ``recorded`` (the same one all day here)."""
        return self.strategy

    def step(self, recorded: RecordedCycle) -> CycleResult:
        """Replay one cycle (the day's cycles must come in order)."""
        offers = recorded.offers()
        strategy = self.strategy_for(recorded)
        if self.pinned:
            strategy = _Pinned(strategy, {d.site: d.alloc_kw for d in recorded.decisions})
        cycle, _ = Cycle.open(
            recorded.cycle,
            recorded.surplus_kw,
            recorded.asked(offers),
            strategy,
            self.run.state,
            deadline_s=max(recorded.deadline_s, 1e-3),
        )
        decided_at = drive(cycle, offers) if cycle.close_reason is None else {}
        self.run.state = cycle.settle(self.run.state)
        method = self.run.state.get("last_method")
        if isinstance(method, str) and recorded.surplus_kw > EPSILON_KW:
            self.run.methods[method] += 1  # without a surplus no strategy ran
        if self.pinned:
            # The records are the truth, whatever the re-run did.
            decisions = tuple(sorted(recorded.decisions, key=lambda d: d.rank))
            for d in decisions:
                decided_at.setdefault(d.site, d.elapsed_s)
            reason = recorded.close_reason or cycle.close_reason
        else:
            decisions = tuple(cycle.decisions)
            reason = cycle.close_reason
        result = CycleResult(recorded.cycle, decisions, decided_at, reason)
        self.run.cycles.append(result)
        self.run.records.append(self._record(recorded, offers, result))
        return result

    def _record(
        self, recorded: RecordedCycle, offers: Sequence[Offer], result: CycleResult
    ) -> CycleRecord:
        loads = {o.site: o.loads for o in offers}
        known = {r.site for r in recorded.replies if r.loads is not None and r.loads}
        usable = usable_mod = 0.0
        on_now: set[str] = set()
        sites_now: set[str] = set()
        alloc: dict[str, float] = {}
        for d in result.decisions:
            alloc[d.site] = alloc.get(d.site, 0.0) + d.alloc_kw
        for site, kw in alloc.items():
            if not kw > 0.0:
                continue
            if site in known:
                chosen = usable_loads(kw, loads[site], modulating=self.modulating)
                usable += math.fsum(p for _, p in chosen)
                usable_mod += math.fsum(p for _, p in usable_loads(kw, loads[site],
                                                                    modulating=True))
                # Load ids are per site (every home may have a "water-heater"); a site
                # id has no "/" (protocol ids), so "site/load" is unique.
                on_now.update(f"{site}/{load_id}" for load_id, _ in chosen)
                if chosen:
                    sites_now.add(site)
            else:
                # Loads unknown: one load that draws what it is given (see the module doc).
                self.run.allocations_without_loads += 1
                usable += kw
                usable_mod += kw
                on_now.add(f"{site}/")
                sites_now.add(site)
        record = CycleRecord(
            day=0,
            surplus_kw=recorded.surplus_kw,
            allocated_kw=math.fsum(alloc.values()),
            usable_kw=usable,
            usable_modulating_kw=usable_mod,
            decision_delays_s=tuple(
                result.decided_at_s[s] for s, kw in alloc.items()
                if kw > 0.0 and s in result.decided_at_s
            ),
            load_starts=relay_starts(self._on_before, on_now),
            site_starts=relay_starts(self._sites_before, sites_now),
            alloc_kw_by_site=alloc,
            offering_sites=frozenset(o.site for o in offers if o.flex_kw > 0.0),
        )
        self._on_before, self._sites_before = on_now, sites_now
        return record


class RecordedReplayer(Replayer):
    """The recorded run: stored decisions, timed by the strategy each cycle names.

    ``timing(name)`` builds the strategy a cycle was recorded with (None when
    it cannot: no longer registered); ``fallback`` times the others (``fifo``:
    every decision on its reply's arrival).
    """

    def __init__(
        self,
        timing: Callable[[str], Strategy | None],
        fallback: Strategy,
        *,
        modulating: bool = False,
    ) -> None:
        super().__init__(RECORDED, fallback, pinned=True, modulating=modulating)
        self._timing = timing

    def strategy_for(self, recorded: RecordedCycle) -> Strategy:
        return self._timing(recorded.strategy) or self.strategy


def replay(
    cycles: Iterable[RecordedCycle],
    strategy: Strategy,
    state: StrategyState | None = None,
    *,
    name: str | None = None,
    modulating: bool = False,
) -> Run:
    """``strategy`` over ``cycles`` (in order), its state carried from ``state``."""
    replayer = Replayer(name or strategy.name, strategy, state, modulating=modulating)
    for cycle in cycles:
        replayer.step(cycle)
    return replayer.run


def recorded_run(
    cycles: Iterable[RecordedCycle],
    timing: Callable[[str], Strategy | None],
    fallback: Strategy,
    *,
    modulating: bool = False,
) -> Run:
    """The recorded decisions as a ``Run``, timed by the strategy that took them."""
    replayer = RecordedReplayer(timing, fallback, modulating=modulating)
    for cycle in cycles:
        replayer.step(cycle)
    return replayer.run


# Comparing ----------------------------------------------------------------------


def changed_decisions(recorded: Run, replayed: Run) -> int:
    """How many (cycle, site) allocations differ between two runs of the same cycles.

    A site one run served and the other did not decide counts when the served
    kW is not 0.
    """
    changed = 0
    for a, b in zip(recorded.cycles, replayed.cycles, strict=True):
        left = {d.site: d.alloc_kw for d in a.decisions}
        right = {d.site: d.alloc_kw for d in b.decisions}
        for site in left.keys() | right.keys():
            if abs(left.get(site, 0.0) - right.get(site, 0.0)) > SAME_KW:
                changed += 1
    return changed


class Metric(NamedTuple):
    """One figure of the comparison: its key in ``RunMetrics.to_dict`` and how to show it."""

    key: str
    label: str
    unit: str
    """``%`` (a share 0..1 shown in percent), ``kWh``, ``kW``, ``s``, or empty (a count)."""
    better: int
    """+1 when higher is better, -1 when lower is, 0 when neither (an input)."""


METRICS: tuple[Metric, ...] = (
    Metric("cycles_with_surplus", "cycles with a surplus", "", 0),
    Metric("share_allocated", "share of the surplus allocated (mean)", "%", 1),
    Metric("energy_share_allocated", "energy share allocated", "%", 1),
    Metric("share_usable", "usable share (whole loads, mean)", "%", 1),
    Metric("energy_share_usable", "usable energy share", "%", 1),
    Metric("share_usable_modulating", "usable share if loads modulate", "%", 1),
    Metric("injection_without_kwh", "injection without coordination", "kWh", 0),
    Metric("injection_with_kwh", "injection left", "kWh", -1),
    Metric("injection_avoided_kwh", "injection avoided", "kWh", 1),
    Metric("injection_peak_without_kw", "injection peak without coordination", "kW", 0),
    Metric("injection_peak_kw", "injection peak left", "kW", -1),
    Metric("jain_daily", "Jain fairness over the day", "", 1),
    Metric("alloc_delay_mean_s", "time to allocation (mean)", "s", -1),
    Metric("alloc_delay_p95_s", "time to allocation (p95)", "s", -1),
    Metric("load_starts", "relay starts (loads)", "", -1),
    Metric("site_starts", "site starts", "", -1),
)
"""The figures compared, in table order."""

OBJECTIVES = ("1 - usable share", "1 - Jain", "relay starts", "p95 time to allocation (s)")
"""The multi-objective view, all minimised (comfort misses are not in the records)."""


def objectives(m: RunMetrics) -> list[float]:
    """A run's objective vector (``OBJECTIVES``); a missing figure counts as the worst."""
    return [
        1.0 - (m.share_usable if m.share_usable is not None else 0.0),
        1.0 - (m.jain_daily if m.jain_daily is not None else 0.0),
        float(m.load_starts),
        m.alloc_delay_p95_s if m.alloc_delay_p95_s is not None else 0.0,
    ]


def difference(a: float | int | None, b: float | int | None) -> float | None:
    """``b - a``, None when either is missing."""
    if a is None or b is None:
        return None
    return float(b) - float(a)


@dataclass(frozen=True, slots=True)
class Comparison:
    """The recorded run and each replay, figure by figure, with the multi-objective view."""

    recorded: RunMetrics
    replays: Mapping[str, RunMetrics]
    changed: Mapping[str, int]
    """Per replay, the allocations that differ from the recorded ones."""
    front: tuple[str, ...]
    """The runs (``recorded`` included) on the Pareto front of ``OBJECTIVES``."""
    distance: Mapping[str, float]
    """Each run's distance to the ideal point, normalised by the nadir of the front."""

    def value(self, run: str, key: str) -> float | int | None:
        metrics = self.recorded if run == RECORDED else self.replays[run]
        return metrics.to_dict()[key]

    def diff(self, run: str, key: str) -> float | None:
        """The replay's figure minus the recorded one."""
        return difference(self.value(RECORDED, key), self.value(run, key))


def compare(recorded: Run, replays: Sequence[Run]) -> Comparison:
    """The figures of ``recorded`` and of each replay, and where each stands."""
    base = recorded.metrics
    metrics = {run.name: run.metrics for run in replays}
    vectors = {RECORDED: objectives(base), **{n: objectives(m) for n, m in metrics.items()}}
    return Comparison(
        recorded=base,
        replays=metrics,
        changed={run.name: changed_decisions(recorded, run) for run in replays},
        front=tuple(pareto_front(vectors)),
        distance=distances_to_ideal(vectors),
    )

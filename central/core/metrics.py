"""How good an allocation run was: the figures that compare strategies (pure, no I/O).

Per cycle, a run records what was allocated and what the homes could really
use; ``summarize_run`` folds the cycles into the figures of the issue
"Allocation strategies beyond FIFO": share of the surplus allocated, usable
share, injection avoided and its peak, Jain's fairness index, time from the
request to the allocation, relay starts. The multi-objective helpers follow
the EV thesis (DOMAIN.md): Pareto dominance, distance to the ideal point
normalised by the nadir, and the C-metric between two fronts. Every
objective vector here is to be *minimised*.

``usable_loads`` is the coordinator's own estimate of what a reply's loads
can run on an allocation, from the reply alone: whole loads (each draws its
``max_kw`` or nothing), or with ``modulating=True`` anything in
``[min_kw, max_kw]``, which is what the core's minimum-power rule assumes.
Gateways reply with what each load can really run at (a whole load has
``min_kw == max_kw``: docs/protocol.md, "flex"). What the homes really run is
the gateway's own plan (``gateway.ems.plan``, which the core may not import):
the strategy benchmark computes ``CycleRecord.usable_kw`` with it
(``ems/simulation/scenarios.py``).
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import combinations
from typing import NamedTuple

from central.core.cycle import LoadOffer

PERIOD_H = 0.25
"""One cycle is one 15-minute period: a kW allocated lasts a quarter hour."""
EXACT_MAX_LOADS = 12
"""Up to this many loads a site's best subset is found exactly (4k subsets); greedy beyond."""
TOL_KW = 1e-6
"""Float dust: a load this close above what is left still fits (the gateway's tolerance)."""

Vector = Sequence[float]


# Usable power --------------------------------------------------------------


def _runnable(loads: Iterable[LoadOffer]) -> list[LoadOffer]:
    return [
        load for load in loads if 0.0 < load.max_kw < math.inf and 0.0 <= load.min_kw <= load.max_kw
    ]


def usable_loads(
    alloc_kw: float, loads: Sequence[LoadOffer], *, modulating: bool = False
) -> tuple[tuple[str, float], ...]:
    """The loads that run on ``alloc_kw`` and the power each draws, the most power in all.

    Whole loads (default): each chosen load draws its ``max_kw``; the chosen
    set has the largest total not above ``alloc_kw``. Modulating: each chosen
    load draws at least its ``min_kw`` and at most its ``max_kw``; the total is
    ``min(sum max, alloc)`` for the best set whose minimums fit. Ties go to
    fewer loads, then to the earlier ones.
    """
    if not alloc_kw > 0.0:
        return ()
    cand = _runnable(loads)
    floor = [load.max_kw if not modulating else load.min_kw for load in cand]
    cand = [c for c, f in zip(cand, floor, strict=True) if f <= alloc_kw + TOL_KW]
    if not cand:
        return ()

    def value(subset: Sequence[LoadOffer]) -> float:
        if not modulating:
            return math.fsum(load.max_kw for load in subset)
        return min(math.fsum(load.max_kw for load in subset), alloc_kw)

    def fits(subset: Sequence[LoadOffer]) -> bool:
        low = math.fsum((load.min_kw if modulating else load.max_kw) for load in subset)
        return low <= alloc_kw + TOL_KW

    best: tuple[LoadOffer, ...] = ()
    best_kw = 0.0
    if len(cand) <= EXACT_MAX_LOADS:
        for size in range(1, len(cand) + 1):
            for subset in combinations(cand, size):
                if fits(subset):
                    kw = value(subset)
                    if kw > best_kw + TOL_KW:
                        best, best_kw = subset, kw
    else:
        chosen: list[LoadOffer] = []
        for load in sorted(cand, key=lambda c: -c.max_kw):
            if fits([*chosen, load]):
                chosen.append(load)
        best = tuple(chosen)
    if not modulating:
        return tuple((load.id, load.max_kw) for load in best)
    # Each chosen load at its minimum, then the rest of the allocation in order, up to max.
    left = min(alloc_kw, math.fsum(load.max_kw for load in best)) - math.fsum(
        load.min_kw for load in best
    )
    drawn: list[tuple[str, float]] = []
    for load in best:
        extra = min(max(left, 0.0), load.max_kw - load.min_kw)
        left -= extra
        drawn.append((load.id, load.min_kw + extra))
    return tuple(drawn)


def usable_kw(alloc_kw: float, loads: Sequence[LoadOffer], *, modulating: bool = False) -> float:
    """The part of ``alloc_kw`` that really runs loads (see ``usable_loads``)."""
    return math.fsum(kw for _, kw in usable_loads(alloc_kw, loads, modulating=modulating))


# Simple statistics -------------------------------------------------------------


def jain_index(values: Iterable[float]) -> float | None:
    """Jain's fairness index (sum x)^2 / (n sum x^2), in [1/n, 1]; None with no values.

    All zeros count as perfectly fair (everyone got the same: nothing).
    """
    xs = [max(float(x), 0.0) for x in values]
    if not xs:
        return None
    square_sum = math.fsum(x * x for x in xs)
    if square_sum == 0.0:
        return 1.0
    total = math.fsum(xs)
    return total * total / (len(xs) * square_sum)


def jain_over_days(days: Sequence[Mapping[str, float]]) -> float | None:
    """Jain's index of each site's total over several days (e.g. a month of daily kWh).

    A site missing from a day got 0 that day; the sites are all that appear in any day.
    """
    totals: dict[str, float] = {}
    for day in days:
        for site, kwh in day.items():
            totals[site] = totals.get(site, 0.0) + kwh
    return jain_index(totals.values())


def mean(values: Sequence[float]) -> float | None:
    """Arithmetic mean; None with no values."""
    return math.fsum(values) / len(values) if values else None


def percentile(values: Sequence[float], q: float) -> float | None:
    """The nearest-rank ``q``-th percentile (0 < q <= 100); None with no values."""
    if not 0.0 < q <= 100.0:
        raise ValueError(f"q must be in (0, 100], got {q!r}")
    if not values:
        return None
    ordered = sorted(values)
    rank = math.ceil(q / 100.0 * len(ordered))
    return ordered[max(rank, 1) - 1]


def relay_starts(previous: Collection[str], current: Collection[str]) -> int:
    """How many of ``current`` (loads or sites on now) were not on in the previous cycle."""
    before = set(previous)
    return sum(1 for item in set(current) if item not in before)


# One run ---------------------------------------------------------------------


class CycleRecord(NamedTuple):
    """One cycle of a run, as the metrics need it."""

    day: int
    surplus_kw: float
    allocated_kw: float
    usable_kw: float
    """What the chosen loads really draw (the homes' own plans)."""
    usable_modulating_kw: float
    """The same if loads could draw anything between their minimum and maximum."""
    decision_delays_s: tuple[float, ...]
    """Seconds from the request to each positive allocation."""
    load_starts: int
    site_starts: int
    alloc_kw_by_site: Mapping[str, float]
    offering_sites: frozenset[str]
    """Sites that offered more than 0 kW this cycle (the ones fairness is about)."""


@dataclass(frozen=True, slots=True)
class RunMetrics:
    """The figures of one strategy over one run (several days of cycles).

    Shares are fractions 0..1: ``*_share`` is the mean over cycles with a
    surplus of (kW / S); ``*_energy_share`` the total over the total surplus.
    Injection is what the community still exports once the usable power is
    absorbed: an allocation no load can use is injected anyway.
    """

    cycles: int
    cycles_with_surplus: int
    days: int
    share_allocated: float | None
    energy_share_allocated: float | None
    share_usable: float | None
    energy_share_usable: float | None
    share_usable_modulating: float | None
    injection_without_kwh: float
    injection_with_kwh: float
    injection_avoided_kwh: float
    injection_peak_without_kw: float
    injection_peak_kw: float
    jain_daily: float | None
    """Mean over days of Jain's index of each offering site's allocated kWh that day."""
    jain_all_days: float | None
    """Jain's index of each site's allocated kWh over the whole run (the month view)."""
    alloc_delay_mean_s: float | None
    alloc_delay_p95_s: float | None
    load_starts: int
    site_starts: int
    comfort_miss_kwh: float

    @property
    def load_starts_per_day(self) -> float:
        return self.load_starts / self.days if self.days else 0.0

    def to_dict(self) -> dict[str, float | int | None]:
        """A JSON-ready view."""
        data: dict[str, float | int | None] = {
            name: getattr(self, name) for name in self.__dataclass_fields__
        }
        data["load_starts_per_day"] = self.load_starts_per_day
        return data


def daily_kwh(cycles: Iterable[CycleRecord]) -> dict[int, dict[str, float]]:
    """Per day, each offering site's allocated kWh (0 for a site that offered and got nothing)."""
    days: dict[int, dict[str, float]] = {}
    for c in cycles:
        day = days.setdefault(c.day, {})
        for site in c.offering_sites:
            day.setdefault(site, 0.0)
        for site, kw in c.alloc_kw_by_site.items():
            if kw > 0.0:
                day[site] = day.get(site, 0.0) + kw * PERIOD_H
    return days


def summarize_run(cycles: Sequence[CycleRecord], comfort_miss_kwh: float = 0.0) -> RunMetrics:
    """Fold a run's cycles into its ``RunMetrics``."""
    with_surplus = [c for c in cycles if c.surplus_kw > 0.0]
    surplus_sum = math.fsum(c.surplus_kw for c in with_surplus)

    def share(kws: Sequence[float]) -> tuple[float | None, float | None]:
        per_cycle = [kw / c.surplus_kw for kw, c in zip(kws, with_surplus, strict=True)]
        energy = math.fsum(kws) / surplus_sum if surplus_sum > 0.0 else None
        return mean(per_cycle), energy

    alloc_share, alloc_energy = share([c.allocated_kw for c in with_surplus])
    usable_share, usable_energy = share([c.usable_kw for c in with_surplus])
    modulating_share, _ = share([c.usable_modulating_kw for c in with_surplus])
    without = [max(c.surplus_kw, 0.0) for c in cycles]
    with_ = [max(c.surplus_kw - c.usable_kw, 0.0) for c in cycles]
    per_day = daily_kwh(cycles)
    dailies = [j for j in (jain_index(d.values()) for d in per_day.values()) if j is not None]
    delays = [d for c in cycles for d in c.decision_delays_s]
    return RunMetrics(
        cycles=len(cycles),
        cycles_with_surplus=len(with_surplus),
        days=len({c.day for c in cycles}),
        share_allocated=alloc_share,
        energy_share_allocated=alloc_energy,
        share_usable=usable_share,
        energy_share_usable=usable_energy,
        share_usable_modulating=modulating_share,
        injection_without_kwh=math.fsum(without) * PERIOD_H,
        injection_with_kwh=math.fsum(with_) * PERIOD_H,
        injection_avoided_kwh=(math.fsum(without) - math.fsum(with_)) * PERIOD_H,
        injection_peak_without_kw=max(without, default=0.0),
        injection_peak_kw=max(with_, default=0.0),
        jain_daily=mean(dailies),
        jain_all_days=jain_over_days(list(per_day.values())),
        alloc_delay_mean_s=mean(delays),
        alloc_delay_p95_s=percentile(delays, 95.0),
        load_starts=sum(c.load_starts for c in cycles),
        site_starts=sum(c.site_starts for c in cycles),
        comfort_miss_kwh=comfort_miss_kwh,
    )


# Several objectives at once (all minimised) -------------------------------------------


def weakly_dominates(a: Vector, b: Vector) -> bool:
    """``a`` is no worse than ``b`` on every objective."""
    return all(x <= y for x, y in zip(a, b, strict=True))


def dominates(a: Vector, b: Vector) -> bool:
    """Pareto dominance: ``a`` no worse than ``b`` everywhere and better somewhere."""
    return weakly_dominates(a, b) and any(x < y for x, y in zip(a, b, strict=True))


def pareto_front(points: Mapping[str, Vector]) -> list[str]:
    """The names whose vectors no other vector dominates, in the mapping's order."""
    return [
        name
        for name, p in points.items()
        if not any(dominates(q, p) for other, q in points.items() if other != name)
    ]


def ideal_point(points: Iterable[Vector]) -> list[float]:
    """The best value of each objective over ``points``."""
    return [min(column) for column in zip(*points, strict=True)]


def nadir_point(points: Iterable[Vector]) -> list[float]:
    """The worst value of each objective over ``points`` (pass the Pareto front)."""
    return [max(column) for column in zip(*points, strict=True)]


def normalised_distance(point: Vector, ideal: Vector, nadir: Vector) -> float:
    """Euclidean distance to ``ideal``, each objective scaled by (nadir - ideal).

    An objective on which ideal and nadir agree cannot be scaled; it counts 0
    when the point reaches the ideal there and 1 when it is worse.
    """
    total = 0.0
    for f, lo, hi in zip(point, ideal, nadir, strict=True):
        span = hi - lo
        if span > 0.0:
            total += ((f - lo) / span) ** 2
        elif f > lo:
            total += 1.0
    return math.sqrt(total)


def distances_to_ideal(points: Mapping[str, Vector]) -> dict[str, float]:
    """Each point's ``normalised_distance``, ideal and nadir taken over the Pareto front."""
    if not points:
        return {}
    front = [points[name] for name in pareto_front(points)]
    ideal, nadir = ideal_point(front), nadir_point(front)
    return {name: normalised_distance(p, ideal, nadir) for name, p in points.items()}


def c_metric(a: Sequence[Vector], b: Sequence[Vector]) -> float | None:
    """C(A, B): the share of B weakly dominated by some member of A (Zitzler); None if B is empty.

    C(A, B) = 1 means every point of B is matched or beaten by A; it is not
    symmetric, so compare C(A, B) with C(B, A).
    """
    if not b:
        return None
    return sum(1 for q in b if any(weakly_dominates(p, q) for p in a)) / len(b)

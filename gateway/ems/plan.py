"""Choosing which loads to run on a given power, and at what set point: a small knapsack.

A whole load (a relay) draws its running power or nothing; a share below its
minimum is useless (DOMAIN.md). A modulating load runs at a set point: any
power in ``[min_kw, kw]`` (continuous: an inverter heat pump) or one of its
``steps_kw`` (a wallbox taking 6-32 A in 1 A steps). A plan never uses more
than the power it is given and never runs a load below its minimum.

Among the plans that fit, prefer higher priorities first (tier by tier, the
most power in the highest tier), then the nearest deadline, then the most
power in all, then fewer loads. Within a chosen set every load first gets
its minimum; the power left over raises the modulating loads, highest tier
first, and within a tier the nearest deadline first, to the largest
achievable total (stepped loads exactly, by enumerating their reachable sums).
Exact over subsets for up to 14 candidates (16k subsets); greedy in that
order beyond.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import combinations, pairwise

from gateway.ems.loads import LoadSpec

EXACT_MAX = 14
TOLERANCE_KW = 1e-6
_UNITS_PER_KW = 1_000_000  # stepped sums in exact integers (1 mW)
_MAX_REACHABLE = 20_000  # distinct stepped sums kept per tier (bounds the work)


@dataclass(frozen=True, slots=True)
class Candidate:
    """A load that could run: its largest power, priority and deadline (seconds from now).

    ``min_kw`` None: a whole load drawing ``kw``. Otherwise it modulates: any
    power in ``[min_kw, kw]``, or, with ``steps_kw``, one of those powers.
    """

    id: str
    kw: float
    priority: int = 0
    deadline_s: float | None = None
    min_kw: float | None = None
    steps_kw: tuple[float, ...] = ()
    # Derived once (the knapsack reads them for every subset).
    least_kw: float = field(init=False, repr=False, compare=False)
    """The smallest power it runs at."""
    modulates: bool = field(init=False, repr=False, compare=False)
    """Whether it runs at a set point (else whole, at ``kw``)."""

    def __post_init__(self) -> None:
        if self.steps_kw:
            least = self.steps_kw[0]
        else:
            least = self.kw if self.min_kw is None else self.min_kw
        modulates = bool(self.steps_kw) or (self.min_kw is not None and self.min_kw < self.kw)
        object.__setattr__(self, "least_kw", least)
        object.__setattr__(self, "modulates", modulates)


@dataclass(frozen=True, slots=True)
class Run:
    """A chosen load and the power it runs at (its set point)."""

    id: str
    kw: float


def candidate_of(spec: LoadSpec, deadline_s: float | None = None) -> Candidate:
    """The planning view of a configured load (``LoadSpec``)."""
    if spec.modulation == "steps":
        return Candidate(spec.id, spec.most_kw, spec.priority, deadline_s,
                         spec.least_kw, spec.steps_kw)
    if spec.modulation == "continuous":
        return Candidate(spec.id, spec.most_kw, spec.priority, deadline_s, spec.least_kw)
    return Candidate(spec.id, spec.run_kw, spec.priority, deadline_s)


def _valid(c: Candidate) -> bool:
    if not c.kw > 0:
        return False
    if c.steps_kw:
        return c.steps_kw[0] > 0 and all(b > a for a, b in pairwise(c.steps_kw))
    return c.min_kw is None or 0 < c.min_kw <= c.kw


def _units(kw: float) -> int:
    return round(kw * _UNITS_PER_KW)


Reachable = tuple[list[int], dict[int, tuple[int, ...]]]
"""A group of stepped loads' reachable rises: sorted sums (1 mW units), the steps of each."""


def _reachable(stepped: Sequence[Candidate], budget: int | None) -> Reachable | None:
    """Every sum of the stepped loads' rises above their first step (within ``budget`` when
    given), with the steps that reach it; None past ``_MAX_REACHABLE`` sums."""
    reachable: dict[int, tuple[int, ...]] = {0: ()}
    for c in stepped:
        base = _units(c.steps_kw[0])
        grown: dict[int, tuple[int, ...]] = {}
        for total, path in reachable.items():
            for i, step in enumerate(c.steps_kw):
                value = total + _units(step) - base
                if (budget is None or value <= budget) and value not in grown:
                    grown[value] = (*path, i)
        if len(grown) > _MAX_REACHABLE:
            if budget is None:
                return None
            grown = dict(sorted(grown.items(), reverse=True)[:_MAX_REACHABLE])
        reachable = grown
    return sorted(reachable), reachable


def _raise_tier(
    members: Sequence[Candidate], left_kw: float, cache: dict[tuple[str, ...], Reachable | None]
) -> dict[str, float]:
    """Set points for one tier's modulating loads: the most power above their minimums
    within ``left_kw``.

    The continuous loads take whatever the stepped ones leave (up to their room),
    so the best plan is the largest reachable stepped sum within ``left_kw``. The
    stepped loads' sums are enumerated once per group (``cache``, one plan).
    """
    stepped = [c for c in members if c.steps_kw]
    smooth = [c for c in members if not c.steps_kw]
    budget = _units(left_kw + TOLERANCE_KW)
    powers: dict[str, float] = {}
    best = 0
    if stepped:
        group = tuple(c.id for c in stepped)
        if group not in cache:
            cache[group] = _reachable(stepped, None)
        found = cache[group]
        if found is None:  # too many sums to keep for every budget: this one only
            found = _reachable(stepped, budget)
            assert found is not None
        sums, paths = found
        best = sums[max(bisect_right(sums, budget) - 1, 0)]
        for c, i in zip(stepped, paths[best], strict=True):
            powers[c.id] = c.steps_kw[i]
    spare = max(left_kw - best / _UNITS_PER_KW, 0.0)
    for c in smooth:
        give = min(spare, c.kw - c.least_kw)
        powers[c.id] = c.least_kw + give
        spare -= give
    return powers


def _urgency_order(c: Candidate) -> float:
    return c.deadline_s if c.deadline_s is not None else float("inf")


def _powers(
    chosen: Sequence[Candidate],
    power_kw: float,
    cache: dict[tuple[str, ...], Reachable | None],
) -> list[float] | None:
    """Each chosen load's power within ``power_kw``; None when their minimums do not fit."""
    floor = 0.0
    modulating = False
    for c in chosen:
        floor += c.least_kw
        modulating = modulating or c.modulates
    if floor > power_kw + TOLERANCE_KW:
        return None
    if not modulating:
        return [c.least_kw for c in chosen]
    left = power_kw - floor
    powers = {c.id: c.least_kw for c in chosen}
    for tier in sorted({c.priority for c in chosen}, reverse=True):
        members = sorted((c for c in chosen if c.priority == tier and c.modulates),
                         key=_urgency_order)
        if not members or left <= TOLERANCE_KW:
            continue
        for load, kw in _raise_tier(members, left, cache).items():
            left -= kw - powers[load]
            powers[load] = kw
    return [powers[c.id] for c in chosen]


def set_points(chosen: Sequence[Candidate], power_kw: float) -> list[Run] | None:
    """Set points for ``chosen`` within ``power_kw``; None when their minimums do not fit."""
    powers = _powers(chosen, power_kw, {})
    if powers is None:
        return None
    return [Run(c.id, kw) for c, kw in zip(chosen, powers, strict=True)]


def _key(
    powers: Sequence[float], chosen: Sequence[Candidate], tiers: Sequence[int]
) -> tuple[float, ...]:
    # Rounded: 1.1 + 2.2 = 3.3000000000000003 must not outrank a deadline.
    if len(tiers) == 1:
        per_tier = [round(sum(powers), 6)]
    else:
        per_tier = [
            round(sum(kw for kw, c in zip(powers, chosen, strict=True) if c.priority == p), 6)
            for p in tiers
        ]
    urgency = sum(1.0 / (1.0 + c.deadline_s) for c in chosen if c.deadline_s is not None)
    return (*per_tier, round(urgency, 9), round(sum(powers), 6))


def choose_loads(candidates: Sequence[Candidate], power_kw: float) -> list[Run]:
    """The loads to run within ``power_kw`` (never above it) and their set points."""
    fitting = [c for c in candidates if _valid(c) and c.least_kw <= power_kw + TOLERANCE_KW]
    if not fitting:
        return []
    tiers = sorted({c.priority for c in fitting}, reverse=True)
    cache: dict[tuple[str, ...], Reachable | None] = {}
    if len(fitting) <= EXACT_MAX:
        best: tuple[tuple[Candidate, ...], list[float]] = ((), [])
        best_key = _key([], (), tiers)
        for r in range(1, len(fitting) + 1):
            for combo in combinations(fitting, r):
                powers = _powers(combo, power_kw, cache)
                if powers is not None:
                    key = _key(powers, combo, tiers)
                    if key > best_key:
                        best, best_key = (combo, powers), key
        return [Run(c.id, kw) for c, kw in zip(*best, strict=True)]
    order = sorted(fitting, key=lambda c: (-c.priority, _urgency_order(c), -c.kw))
    chosen: list[Candidate] = []
    left = power_kw
    for c in order:
        if c.least_kw <= left + TOLERANCE_KW:
            chosen.append(c)
            left -= c.least_kw
    return set_points(chosen, power_kw) or []

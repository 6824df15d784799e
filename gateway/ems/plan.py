"""Choosing which loads to run on a given power: a small knapsack.

Loads are switched by relays: one draws its running power or nothing, and a
share below its minimum is useless (DOMAIN.md). Among the subsets that fit
the power, prefer higher priorities first (tier by tier, the most power in
the highest tier), then the nearest deadline, then the most power in all.
Exact for up to 14 candidates (16k subsets); greedy in that order beyond.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import combinations

EXACT_MAX = 14
TOLERANCE_KW = 1e-6


@dataclass(frozen=True, slots=True)
class Candidate:
    """A load that could run: its power, priority and deadline (seconds from now)."""

    id: str
    kw: float
    priority: int = 0
    deadline_s: float | None = None


def _key(chosen: Sequence[Candidate], tiers: Sequence[int]) -> tuple[float, ...]:
    # Rounded: 1.1 + 2.2 = 3.3000000000000003 must not outrank a deadline.
    per_tier = [round(sum(c.kw for c in chosen if c.priority == p), 6) for p in tiers]
    urgency = sum(1.0 / (1.0 + c.deadline_s) for c in chosen if c.deadline_s is not None)
    return (*per_tier, round(urgency, 9), round(sum(c.kw for c in chosen), 6))


def choose_loads(candidates: Sequence[Candidate], power_kw: float) -> list[Candidate]:
    """The loads to switch on within ``power_kw`` (never above it)."""
    fitting = [c for c in candidates if c.kw <= power_kw + TOLERANCE_KW and c.kw > 0]
    if not fitting:
        return []
    tiers = sorted({c.priority for c in fitting}, reverse=True)
    if len(fitting) <= EXACT_MAX:
        best: tuple[Candidate, ...] = ()
        best_key = _key(best, tiers)
        for r in range(1, len(fitting) + 1):
            for combo in combinations(fitting, r):
                if sum(c.kw for c in combo) <= power_kw + TOLERANCE_KW:
                    key = _key(combo, tiers)
                    if key > best_key:
                        best, best_key = combo, key
        return sorted(best, key=lambda c: fitting.index(c))
    order = sorted(
        fitting,
        key=lambda c: (-c.priority, c.deadline_s if c.deadline_s is not None else float("inf"),
                       -c.kw),
    )
    chosen: list[Candidate] = []
    left = power_kw
    for c in order:
        if c.kw <= left + TOLERANCE_KW:
            chosen.append(c)
            left -= c.kw
    return chosen

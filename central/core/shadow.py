"""Shadow scoring: what another strategy would have given on the same replies (pure).

The coordinator executes one strategy. In shadow mode it also replays each
closed cycle, for every configured shadow strategy, through this same core:
a fresh ``Cycle`` opened with the live cycle's inputs (surplus, sites asked,
deadline, seed), fed exactly the replies the live cycle accepted, in their
arrival order and with their arrival times, its timers fired at the times it
asks for, run to its own close (as ``ems replay`` drives a recorded day).
The decisions it takes are scored with ``central.core.metrics``.

Each shadow strategy carries its own state (fair_rotation's ledger) from one
shadow run to the next; the executed strategy's state is never read or
written here. Nothing here reads a clock: the caller measures compute time.

Replies that came after the live cycle closed are not seen (the live cycle
ignored them, so no strategy is credited with them): a shadow strategy that
would have waited for them decides, at its timer or its deadline, on what came.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from central.core.cycle import CLOSE_DEADLINE, Cycle, Decision, Offer
from central.core.metrics import jain_index, usable_kw
from central.core.replay import drive
from central.core.strategy import Strategy, StrategyState

FALLBACK_METHOD = "fallback"
"""The ``last_method`` a solving strategy's state records when it fell back (milp, window)."""


@dataclass(frozen=True, slots=True)
class ShadowInputs:
    """One closed live cycle, as a shadow run needs it."""

    cycle: Hashable
    surplus_kw: float
    sites: frozenset[str]
    deadline_s: float
    replies: tuple[Offer, ...]
    """The replies the live cycle accepted, in arrival order (``elapsed_s`` = arrival)."""
    seed: int = 0


class TimedDecision(NamedTuple):
    """A decision and the time it was taken (seconds after the request)."""

    decision: Decision
    decided_s: float


class ShadowScore(NamedTuple):
    """How good one strategy's allocation of one cycle was (``central.core.metrics``)."""

    surplus_kw: float
    allocated_kw: float
    usable_kw: float
    """What the sites' loads can draw of it (whole-load rule); a site that listed no
    loads counts as able to use what it offered (its ``flex_kw`` is all it said)."""
    share: float | None
    """``allocated_kw / surplus_kw`` (None without a surplus)."""
    usable_share: float | None
    sites_served: int
    """Sites allocated more than 0 kW."""
    jain: float | None
    """Jain's index of the allocations over the sites that offered more than 0 kW."""
    elapsed_s: float | None
    """Mean seconds from the request to each positive allocation (time to allocation)."""
    fallback: bool
    """The strategy's solver gave no usable answer and it fell back (``milp``, ``window``)."""


@dataclass(frozen=True, slots=True)
class ShadowOutcome:
    """One strategy's shadow run of one cycle: its decisions, score and next state."""

    strategy: str
    decisions: tuple[TimedDecision, ...]
    close_reason: str
    score: ShadowScore
    state: StrategyState


STATUS_OK = "ok"
STATUS_ERROR = "error"
STATUS_SKIPPED = "skipped"
SKIPPED_LATE = "skipped: late"
"""The error text of a run skipped because the previous cycle's run was still going."""


class ShadowRecord(NamedTuple):
    """One recorded shadow row: one strategy on one cycle (``Recorder.shadow_scores``)."""

    cycle: str
    strategy: str
    status: str  # STATUS_OK, STATUS_ERROR or STATUS_SKIPPED
    surplus_kw: float
    allocated_kw: float | None
    usable_kw: float | None
    share: float | None
    sites_served: int | None
    jain: float | None
    elapsed_s: float | None
    fallback: bool
    compute_s: float | None
    error: str | None

    @classmethod
    def scored(
        cls, cycle: str, strategy: str, s: ShadowScore, compute_s: float | None
    ) -> ShadowRecord:
        """The row of a run that gave a score."""
        return cls(
            cycle, strategy, STATUS_OK, s.surplus_kw, s.allocated_kw, s.usable_kw, s.share,
            s.sites_served, s.jain, s.elapsed_s, s.fallback, compute_s, None,
        )

    @classmethod
    def failed(
        cls, cycle: str, strategy: str, surplus_kw: float, status: str, error: str,
        compute_s: float | None = None,
    ) -> ShadowRecord:
        """The row of a run that failed (``STATUS_ERROR``) or never ran (``STATUS_SKIPPED``)."""
        return cls(
            cycle, strategy, status, surplus_kw, None, None, None, None, None, None, False,
            compute_s, error,
        )

    @property
    def usable_share(self) -> float | None:
        if self.usable_kw is None or not self.surplus_kw > 0.0:
            return None
        return self.usable_kw / self.surplus_kw


class ShadowTotals(NamedTuple):
    """One strategy's shadow rows summed over a range (``Recorder.shadow_summary``)."""

    strategy: str
    cycles: int
    """Cycles scored (status ok)."""
    errors: int
    skipped: int
    surplus_kw: float
    """Sum over the cycles scored; so are ``allocated_kw``, ``usable_kw``, ``sites_served``."""
    allocated_kw: float
    usable_kw: float
    sites_served: int
    jain_mean: float | None
    elapsed_mean_s: float | None
    fallbacks: int
    compute_mean_s: float | None
    compute_max_s: float | None

    @property
    def share(self) -> float | None:
        """Sum allocated over sum surplus: the energy share (cycles are equally long)."""
        return self.allocated_kw / self.surplus_kw if self.surplus_kw > 0.0 else None

    @property
    def usable_share(self) -> float | None:
        return self.usable_kw / self.surplus_kw if self.surplus_kw > 0.0 else None


def replay(
    inputs: ShadowInputs, strategy: Strategy, state: StrategyState
) -> tuple[Cycle, list[TimedDecision]]:
    """Run ``strategy`` on ``inputs`` through the core; the closed cycle and its timed decisions.

    Driven as ``ems replay`` drives a recorded day (``central.core.replay.drive``):
    before each reply, every timer the cycle asked for by the reply's arrival
    fires; after the last reply, its timers and at worst its deadline close it.
    """
    cycle, step = Cycle.open(
        inputs.cycle, inputs.surplus_kw, inputs.sites, strategy, state,
        deadline_s=inputs.deadline_s, seed=inputs.seed,
    )
    if cycle.close_reason is not None:
        return cycle, [TimedDecision(d, 0.0) for d in step.decisions]
    decided_at = drive(cycle, inputs.replies)
    deadline_s = inputs.deadline_s
    return cycle, [TimedDecision(d, decided_at.get(d.site, deadline_s)) for d in cycle.decisions]


def score(
    inputs: ShadowInputs, decisions: Sequence[TimedDecision], *, fallback: bool = False
) -> ShadowScore:
    """Score ``decisions`` taken on ``inputs`` (a shadow run's, or the live cycle's)."""
    offers = {o.site: o for o in inputs.replies}
    allocated = math.fsum(td.decision.alloc_kw for td in decisions)
    usable = 0.0
    served = 0
    delays: list[float] = []
    alloc_by_site: dict[str, float] = {}
    for td in decisions:
        d = td.decision
        alloc_by_site[d.site] = alloc_by_site.get(d.site, 0.0) + d.alloc_kw
        if d.alloc_kw <= 0.0:
            continue
        served += 1
        delays.append(td.decided_s)
        offer = offers.get(d.site)
        if offer is not None and offer.loads:
            usable += usable_kw(d.alloc_kw, offer.loads)
        else:
            usable += d.alloc_kw
    surplus = inputs.surplus_kw
    offering = [s for s, o in offers.items() if o.flex_kw > 0.0]
    return ShadowScore(
        surplus_kw=surplus,
        allocated_kw=allocated,
        usable_kw=usable,
        share=allocated / surplus if surplus > 0.0 else None,
        usable_share=usable / surplus if surplus > 0.0 else None,
        sites_served=served,
        jain=jain_index(alloc_by_site.get(s, 0.0) for s in offering),
        elapsed_s=math.fsum(delays) / len(delays) if delays else None,
        fallback=fallback,
    )


def run_shadow(
    inputs: ShadowInputs, name: str, strategy: Strategy, state: StrategyState
) -> ShadowOutcome:
    """Replay ``inputs`` with ``strategy`` (registered as ``name``) from its own ``state``."""
    cycle, timed = replay(inputs, strategy, state)
    next_state = cycle.settle(state)
    fallback = next_state.get("last_method") == FALLBACK_METHOD
    return ShadowOutcome(
        strategy=name,
        decisions=tuple(timed),
        close_reason=cycle.close_reason or CLOSE_DEADLINE,
        score=score(inputs, timed, fallback=fallback),
        state=next_state,
    )

"""The study's summer-day simulation (DOMAIN.md), run through the real core.

Per cycle (one 15-minute period): the number of active sites is a uniform
integer in 5..30; each site's net load a uniform integer in -5..10 kW
(positive = export); a site that exports offers 0 kW, the others offer
uniform(0, 5) kW rounded to 0.01; every site replies after uniform(1, 10) s;
S is the sum of the net loads. The coordinator asks every active site and the
cycle allocates with the chosen strategy as the replies arrive.

Randomness comes only from the ``random.Random`` passed in, and the draws do
not depend on the strategy, so one seed gives the same community to every
strategy. ``summarize`` turns the cycles into the study's figures.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from central.core import Cycle, Offer, Strategy, StrategyState
from ems.simulation.driver import drive

PERIOD_H = 0.25
"""One cycle is one 15-minute period: an injected kW lasts a quarter hour."""


@dataclass(frozen=True, slots=True)
class SummerDayModel:
    """The random model of one cycle's community (defaults: the study's)."""

    min_sites: int = 5
    max_sites: int = 30
    members: int = 30
    """Size of the community the active sites are drawn from (ids site-01..)."""
    min_net_load_kw: int = -5
    max_net_load_kw: int = 10
    max_flex_kw: float = 5.0
    min_delay_s: float = 1.0
    max_delay_s: float = 10.0

    def __post_init__(self) -> None:
        if not 1 <= self.min_sites <= self.max_sites <= self.members:
            raise ValueError("need 1 <= min_sites <= max_sites <= members")
        if self.min_net_load_kw > self.max_net_load_kw:
            raise ValueError("need min_net_load_kw <= max_net_load_kw")
        if self.max_flex_kw < 0 or not 0 <= self.min_delay_s <= self.max_delay_s:
            raise ValueError("need max_flex_kw >= 0 and 0 <= min_delay_s <= max_delay_s")

    def member_ids(self) -> tuple[str, ...]:
        width = max(2, len(str(self.members)))
        return tuple(f"site-{i:0{width}d}" for i in range(1, self.members + 1))


class CycleDraw(NamedTuple):
    """One cycle's random inputs: the active sites, in the order they were drawn."""

    sites: tuple[str, ...]
    net_loads_kw: tuple[int, ...]
    flex_kw: tuple[float, ...]
    delays_s: tuple[float, ...]

    @property
    def surplus_kw(self) -> float:
        return float(sum(self.net_loads_kw))


class CycleOutcome(NamedTuple):
    """One simulated cycle, as the study's tables and figures need it."""

    cycle: int
    sites: int
    surplus_kw: float
    offered_kw: float
    allocated_kw: float
    close_reason: str

    @property
    def share_used(self) -> float | None:
        """Allocated / surplus (0..1); None when there is no surplus (S <= 0)."""
        return self.allocated_kw / self.surplus_kw if self.surplus_kw > 0 else None

    @property
    def injected_without_kw(self) -> float:
        """What the community injects with nobody coordinating: its net export."""
        return self.surplus_kw if self.surplus_kw > 0 else 0.0

    @property
    def injected_with_kw(self) -> float:
        """What it still injects once the allocated power is absorbed."""
        rest = self.surplus_kw - self.allocated_kw
        return rest if rest > 0 else 0.0


def draw_cycle(rng: random.Random, model: SummerDayModel, members: Sequence[str]) -> CycleDraw:
    """Draw one cycle's community from ``rng`` (active sites, net loads, offers, delays)."""
    count = rng.randint(model.min_sites, model.max_sites)
    sites = tuple(rng.sample(members, count))
    randint, uniform = rng.randint, rng.uniform
    lo_kw, hi_kw, max_flex_kw = model.min_net_load_kw, model.max_net_load_kw, model.max_flex_kw
    net_loads_kw = tuple(randint(lo_kw, hi_kw) for _ in range(count))
    flex_kw = tuple(0.0 if nl > 0 else round(uniform(0.0, max_flex_kw), 2) for nl in net_loads_kw)
    lo_s, hi_s = model.min_delay_s, model.max_delay_s
    delays_s = tuple(uniform(lo_s, hi_s) for _ in range(count))
    return CycleDraw(sites, net_loads_kw, flex_kw, delays_s)


def run_draw(
    cycle_id: int,
    draw: CycleDraw,
    strategy: Strategy,
    state: StrategyState,
    *,
    reply_timeout_s: float,
    seed: int = 0,
) -> tuple[CycleOutcome, StrategyState]:
    """Run one drawn cycle through the core; return its outcome and the next strategy state."""
    surplus_kw = draw.surplus_kw
    cycle, _ = Cycle.open(
        cycle_id,
        surplus_kw,
        draw.sites,
        strategy,
        state,
        deadline_s=reply_timeout_s,
        seed=seed,
    )
    if cycle.close_reason is None:
        offers = sorted(
            map(Offer, draw.sites, [cycle_id] * len(draw.sites), draw.flex_kw, draw.delays_s),
            key=_elapsed,
        )
        drive(cycle, offers)
    assert cycle.close_reason is not None
    outcome = CycleOutcome(
        cycle_id,
        len(draw.sites),
        surplus_kw,
        math.fsum(draw.flex_kw),
        cycle.allocated_kw,
        cycle.close_reason,
    )
    return outcome, cycle.settle(state)


def _elapsed(offer: Offer) -> float:
    return offer.elapsed_s


def run_summer_day(
    cycles: int,
    seed: int,
    strategy: Strategy,
    *,
    reply_timeout_s: float = 15.0,
    model: SummerDayModel | None = None,
) -> Iterator[CycleOutcome]:
    """Simulate ``cycles`` periods (numbered from 1) with ``random.Random(seed)``.

    The strategy's state is carried from one cycle to the next, as the live
    coordinator does. Each cycle also gets its own seed for the strategy,
    drawn from a second generator so the community draws never depend on it.
    """
    if cycles < 0:
        raise ValueError("cycles must be >= 0")
    model = model or SummerDayModel()
    members = model.member_ids()
    rng = random.Random(seed)
    strategy_rng = random.Random(f"strategy:{seed}")
    state: StrategyState = {}
    for cycle_id in range(1, cycles + 1):
        draw = draw_cycle(rng, model, members)
        outcome, state = run_draw(
            cycle_id,
            draw,
            strategy,
            state,
            reply_timeout_s=reply_timeout_s,
            seed=strategy_rng.getrandbits(32),
        )
        yield outcome


# Summary -----------------------------------------------------------------

SIZE_CLASSES: tuple[tuple[str, int, int], ...] = (
    ("<10", 0, 9),
    ("10-20", 10, 19),
    ("20-30", 20, 30),
)
"""Community-size classes (label, lowest, highest number of active sites)."""

SURPLUS_CLASSES: tuple[tuple[str, float, float], ...] = (
    ("<30", 0.0, 30.0),
    ("30-60", 30.0, 60.0),
    ("60-90", 60.0, 90.0),
    ("90-110", 90.0, 110.0),
    (">110", 110.0, math.inf),
)
"""Surplus classes (label, low, high) in kW: low <= S < high, except 90-110, closed.

The study quotes "surpluses of 90-110 kW" inclusive; the other bounds are
half-open so every positive surplus falls in exactly one class.
"""


def size_class(sites: int) -> str:
    """The size-class label of a cycle with ``sites`` active sites."""
    for label, lo, hi in SIZE_CLASSES:
        if lo <= sites <= hi:
            return label
    return f">{SIZE_CLASSES[-1][2]}"


def surplus_class(surplus_kw: float) -> str | None:
    """The surplus-class label of a positive surplus (None for S <= 0)."""
    if not surplus_kw > 0:
        return None
    for label, lo, hi in SURPLUS_CLASSES:
        if lo <= surplus_kw < hi or (label == "90-110" and surplus_kw == hi):
            return label
    return None


@dataclass(slots=True)
class ClassStats:
    """The figures of one class of cycles."""

    label: str
    cycles: int = 0
    cycles_with_surplus: int = 0
    share_sum: float = 0.0
    peak_injected_without_kw: float = 0.0
    peak_injected_with_kw: float = 0.0

    @property
    def mean_share(self) -> float | None:
        if not self.cycles_with_surplus:
            return None
        return self.share_sum / self.cycles_with_surplus

    def add(self, outcome: CycleOutcome) -> None:
        self.cycles += 1
        share = outcome.share_used
        if share is not None:
            self.cycles_with_surplus += 1
            self.share_sum += share
        self.peak_injected_without_kw = max(
            self.peak_injected_without_kw, outcome.injected_without_kw
        )
        self.peak_injected_with_kw = max(self.peak_injected_with_kw, outcome.injected_with_kw)

    def to_dict(self) -> dict[str, object]:
        return {
            "cycles": self.cycles,
            "cycles_with_surplus": self.cycles_with_surplus,
            "mean_share": self.mean_share,
            "peak_injected_without_kw": self.peak_injected_without_kw if self.cycles else None,
            "peak_injected_with_kw": self.peak_injected_with_kw if self.cycles else None,
        }


@dataclass(slots=True)
class Summary:
    """The study's figures over a run.

    ``mean_share`` is the mean, over the cycles with a surplus (S > 0), of
    allocated / S: a cycle with no surplus sends no request and has no share
    to count. This is the definition that gives the study's 0.44
    (``mean_share_all_cycles`` counts S <= 0 cycles as 0 and gives about
    0.43). ``energy_share`` weighs each cycle by its surplus: total allocated
    over total surplus.
    """

    cycles: int = 0
    cycles_with_surplus: int = 0
    share_sum: float = 0.0
    share_sq_sum: float = 0.0
    surplus_kw_sum: float = 0.0
    allocated_kw_sum: float = 0.0
    injected_without_kw_sum: float = 0.0
    injected_with_kw_sum: float = 0.0
    peak_injected_without_kw: float = 0.0
    peak_injected_with_kw: float = 0.0
    close_reasons: dict[str, int] = field(default_factory=dict)
    by_size: dict[str, ClassStats] = field(
        default_factory=lambda: {label: ClassStats(label) for label, _, _ in SIZE_CLASSES}
    )
    by_surplus: dict[str, ClassStats] = field(
        default_factory=lambda: {label: ClassStats(label) for label, _, _ in SURPLUS_CLASSES}
    )

    def add(self, outcome: CycleOutcome) -> None:
        """Count one more cycle."""
        self.cycles += 1
        share = outcome.share_used
        if share is not None:
            self.cycles_with_surplus += 1
            self.share_sum += share
            self.share_sq_sum += share * share
            self.surplus_kw_sum += outcome.surplus_kw
            self.allocated_kw_sum += outcome.allocated_kw
        without_kw = outcome.injected_without_kw
        with_kw = outcome.injected_with_kw
        self.injected_without_kw_sum += without_kw
        self.injected_with_kw_sum += with_kw
        self.peak_injected_without_kw = max(self.peak_injected_without_kw, without_kw)
        self.peak_injected_with_kw = max(self.peak_injected_with_kw, with_kw)
        reason = outcome.close_reason
        self.close_reasons[reason] = self.close_reasons.get(reason, 0) + 1
        label = size_class(outcome.sites)
        if label not in self.by_size:
            self.by_size[label] = ClassStats(label)
        self.by_size[label].add(outcome)
        surplus_label = surplus_class(outcome.surplus_kw)
        if surplus_label is not None:
            self.by_surplus[surplus_label].add(outcome)

    @property
    def mean_share(self) -> float | None:
        """Mean of allocated / S over the cycles with S > 0 (None if there were none)."""
        if not self.cycles_with_surplus:
            return None
        return self.share_sum / self.cycles_with_surplus

    @property
    def share_stdev(self) -> float | None:
        """Population standard deviation of the per-cycle share (cycles with S > 0)."""
        n = self.cycles_with_surplus
        if not n:
            return None
        mean = self.share_sum / n
        return math.sqrt(max(self.share_sq_sum / n - mean * mean, 0.0))

    @property
    def mean_share_all_cycles(self) -> float | None:
        """Mean share counting cycles with S <= 0 as 0."""
        return self.share_sum / self.cycles if self.cycles else None

    @property
    def energy_share(self) -> float | None:
        """Total allocated over total surplus (cycles with S > 0)."""
        return self.allocated_kw_sum / self.surplus_kw_sum if self.surplus_kw_sum > 0 else None

    @property
    def injected_without_kwh(self) -> float:
        return self.injected_without_kw_sum * PERIOD_H

    @property
    def injected_with_kwh(self) -> float:
        return self.injected_with_kw_sum * PERIOD_H

    @property
    def mean_injected_without_kw(self) -> float:
        """Mean injected power per cycle with nobody coordinating (all cycles)."""
        return self.injected_without_kw_sum / self.cycles if self.cycles else 0.0

    @property
    def mean_injected_with_kw(self) -> float:
        """Mean injected power per cycle with coordination (all cycles)."""
        return self.injected_with_kw_sum / self.cycles if self.cycles else 0.0

    def to_dict(self) -> dict[str, object]:
        """A JSON-ready view (shares are fractions 0..1)."""
        return {
            "cycles": self.cycles,
            "cycles_with_surplus": self.cycles_with_surplus,
            "mean_share": self.mean_share,
            "share_stdev": self.share_stdev,
            "mean_share_all_cycles": self.mean_share_all_cycles,
            "energy_share": self.energy_share,
            "by_size": {label: stats.to_dict() for label, stats in self.by_size.items()},
            "by_surplus": {label: stats.to_dict() for label, stats in self.by_surplus.items()},
            "injection": {
                "period_h": PERIOD_H,
                "without_kwh": self.injected_without_kwh,
                "with_kwh": self.injected_with_kwh,
                "mean_without_kw": self.mean_injected_without_kw,
                "mean_with_kw": self.mean_injected_with_kw,
                "peak_without_kw": self.peak_injected_without_kw,
                "peak_with_kw": self.peak_injected_with_kw,
            },
            "close_reasons": dict(sorted(self.close_reasons.items())),
        }


def summarize(
    outcomes: Iterator[CycleOutcome] | Sequence[CycleOutcome],
    on_cycle: Callable[[CycleOutcome], None] | None = None,
) -> Summary:
    """Fold cycles into a ``Summary``; ``on_cycle`` sees each cycle as it is counted."""
    summary = Summary()
    for outcome in outcomes:
        summary.add(outcome)
        if on_cycle is not None:
            on_cycle(outcome)
    return summary

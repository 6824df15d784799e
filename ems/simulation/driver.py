"""Drive the pure allocation core with simulated replies and simulated time.

The simulator plays the coordinator's shell: it opens a cycle with the
community's surplus, feeds the gateways' replies in order of arrival (each
stamped with its reply delay as ``elapsed_s``), fires the cycle's timers
between replies and runs it to its close. No broker, no clock, no sleeping:
time is the number of seconds since the request, as the core wants it.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence
from typing import NamedTuple

from central.core import Cycle, Offer, Strategy, StrategyState
from central.core.replay import drive as drive_core


class SiteInput(NamedTuple):
    """One simulated site in one cycle: what it reports and how it replies."""

    site: str
    net_load_kw: float
    """Net load as the study counts it: positive = the site exports."""
    flex_kw: float
    """What the site offers to absorb when asked (0 for an exporting site)."""
    delay_s: float
    """Seconds between the request and the site's reply."""


def surplus_of(sites: Iterable[SiteInput]) -> float:
    """The community surplus S: the sum of the sites' net loads (kW)."""
    return float(sum(site.net_load_kw for site in sites))


def offers_in_arrival_order(cycle: Hashable, sites: Iterable[SiteInput]) -> list[Offer]:
    """The sites' replies as the core sees them, sorted by reply delay (ties: input order)."""
    offers = [Offer(s.site, cycle, s.flex_kw, s.delay_s) for s in sites]
    offers.sort(key=_elapsed)
    return offers


def _elapsed(offer: Offer) -> float:
    return offer.elapsed_s


def drive(cycle: Cycle, offers: Iterable[Offer]) -> None:
    """Feed replies (in arrival order) into ``cycle`` and run it to its close.

    Before each reply, every timer the cycle asked for at or before the
    reply's arrival fires (``tick``). After the last reply, time runs on to
    the cycle's next wake-ups and at worst its deadline, so the cycle always
    ends closed. Replies after the close are dropped, as the coordinator
    cancels them. One driver for the simulator, replay and shadow mode:
    :func:`central.core.replay.drive`.
    """
    drive_core(cycle, list(offers))


def run_cycle(
    cycle_id: Hashable,
    sites: Sequence[SiteInput],
    strategy: Strategy,
    state: StrategyState | None = None,
    *,
    reply_timeout_s: float,
    seed: int = 0,
) -> tuple[Cycle, StrategyState]:
    """Run one cycle through the core; return the closed cycle and the strategy's next state.

    Every site is asked (the coordinator requests all online sites at once);
    with no surplus the core closes the cycle at once and nobody is asked.
    """
    cycle, _ = Cycle.open(
        cycle_id,
        surplus_of(sites),
        [s.site for s in sites],
        strategy,
        state,
        deadline_s=reply_timeout_s,
        seed=seed,
    )
    if cycle.close_reason is None:
        drive(cycle, offers_in_arrival_order(cycle_id, sites))
    return cycle, cycle.settle(state)

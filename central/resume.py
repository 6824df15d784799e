"""Rebuilding a cycle the coordinator did not close, from its records.

A coordinator killed mid-cycle leaves in the recorder the cycle's inputs (surplus,
sites asked, reply-by, period), every reply it accepted and every decision it
committed (and maybe published). The restarted coordinator must never decide a
stored decision again, differently or not (faults §3, "Coordinator crash
mid-cycle"). So it re-opens the pure core's ``Cycle`` with the stored inputs and
replays the accepted replies in arrival order through ``offer_many``; the
strategy is wrapped so that a site with a stored decision gets exactly its
stored kW, which keeps ``remaining_kw``, ranks and the waiting set where they
were. Replies accepted but still undecided (a strategy that decides at a timer
or at close) are handed to the strategy again, as when they first arrived.

No I/O here: the coordinator reads the records and publishes; this only
rebuilds state.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from central.core.cycle import Cycle, CycleContext, Decision, Offer
from central.core.strategy import Grant, Session, Strategy, StrategyState
from central.recorder import ReplyRow, StoredCycle


class ReplaySession:
    """A strategy's session that answers stored decisions with their stored kW."""

    __slots__ = ("_frozen", "_inner", "_stored")

    def __init__(self, inner: Session, stored: Mapping[str, float], frozen: bool) -> None:
        self._inner = inner
        self._stored = stored
        self._frozen = frozen

    def on_offer(self, offer: Offer, rank: int, remaining_kw: float) -> float | None:
        kw = self._stored.get(offer.site)
        if kw is not None:
            return kw
        if self._frozen:
            return None  # past its reply-by: rebuild the state, decide nothing new
        return self._inner.on_offer(offer, rank, remaining_kw)

    def wakeup_s(self) -> float | None:
        return None if self._frozen else self._inner.wakeup_s()

    def on_timer(
        self, elapsed_s: float, pending: Sequence[Offer], remaining_kw: float
    ) -> Sequence[Grant]:
        return () if self._frozen else self._inner.on_timer(elapsed_s, pending, remaining_kw)

    def on_close(self, pending: Sequence[Offer], remaining_kw: float) -> Sequence[Grant]:
        return () if self._frozen else self._inner.on_close(pending, remaining_kw)

    def settle(self, decisions: Sequence[Decision]) -> StrategyState:
        return self._inner.settle(decisions)


class ReplayStrategy:
    """``strategy`` for one rebuilt cycle, its stored decisions fixed in advance."""

    def __init__(self, inner: Strategy, stored: Mapping[str, float], frozen: bool) -> None:
        self.name = inner.name
        self._inner = inner
        self._stored = stored
        self._frozen = frozen

    def begin(self, context: CycleContext, state: StrategyState) -> Session:
        return ReplaySession(self._inner.begin(context, state), self._stored, self._frozen)


@dataclass(slots=True)
class Rebuilt:
    """A cycle rebuilt from its records, and what the replay produced."""

    cycle: Cycle
    period_start: datetime
    deadline_s: float
    stored: list[Decision]  # as committed: republished as they are, never recomputed
    new: list[Decision]  # decisions the replay took that the records lack (see ``rebuild``)
    closed: str | None  # the core closed during the replay (the crash hit before the close)
    mismatched: list[str]  # sites whose replayed decision differs from the stored one


def rebuild(
    stored: StoredCycle,
    replies: Sequence[ReplyRow],
    decisions: Sequence[Decision],
    strategy: Strategy,
    state: StrategyState,
    *,
    frozen: bool,
    default_deadline_s: float,
) -> Rebuilt:
    """Re-open ``stored`` in the core and replay its accepted ``replies`` in arrival order.

    ``frozen``: the cycle may decide nothing new (its reply-by has passed): undecided
    replies stay pending and the strategy's timers and last word are switched off.
    Otherwise an accepted reply the records hold no decision for is decided as it
    would have been on arrival (``new``: the coordinator records and publishes it).
    """
    period_start = datetime.fromisoformat(stored.cycle)
    if stored.reply_by is not None:
        deadline_s = (stored.reply_by - stored.opened_at).total_seconds()
    else:
        deadline_s = default_deadline_s
    deadline_s = max(deadline_s, 1e-3)
    by_site = {d.site: d for d in decisions}
    kw = {d.site: d.alloc_kw for d in decisions}
    replay = ReplayStrategy(strategy, kw, frozen)
    accepted = [r for r in replies if r.outcome == "accepted"]
    sites = stored.site_ids
    if sites is None:  # recorded before the ids were kept: those who replied
        sites = frozenset(r.site for r in accepted) | frozenset(by_site)
    cycle, step = Cycle.open(
        period_start, stored.surplus_kw, sites, replay, state, deadline_s=deadline_s,
    )
    offers = [Offer(r.site, period_start, r.flex_kw, r.arrival_s) for r in accepted]
    replied = {r.site for r in accepted}
    # A decision without its accepted reply cannot come from this coordinator (both
    # are committed in one transaction); replay it from the decision, at its rank.
    for d in sorted(decisions, key=lambda d: d.rank):
        if d.site not in replied:
            offers.insert(min(d.rank - 1, len(offers)),
                          Offer(d.site, period_start, d.flex_kw, d.elapsed_s))
    if step.closed is None:
        more = cycle.offer_many(offers)
        step.decisions.extend(more.decisions)
        step.closed = more.closed
    replayed = {d.site: d for d in step.decisions}
    new = [d for d in step.decisions if d.site not in by_site]
    mismatched = [
        s for s, d in by_site.items()
        if s not in replayed or replayed[s].rank != d.rank
        or abs(replayed[s].alloc_kw - d.alloc_kw) > 1e-9
    ]
    return Rebuilt(
        cycle, period_start, deadline_s, sorted(decisions, key=lambda d: d.rank), new,
        step.closed, mismatched,
    )

"""One allocation cycle as a deterministic state machine (PROTOCOL.md, "One cycle").

The caller feeds it, in order: the surplus and the sites online at request
time (``Cycle.open``), then each reply as it arrives (``offer``), and timer
events (``tick``) up to the deadline. Every call returns a ``Step``: the
decisions taken (site, kW, rank) to publish at once, the replies it ignored
and why, and the close reason once the cycle has closed.

Time is a number of seconds since the request, given by the caller: the core
never reads a clock. The cycle enforces the contract whatever the strategy
says: never more than the surplus in total, never more than a site's offer,
each site at most once, rank = arrival order, nothing after close, replies
for another cycle ignored as stale.
"""

from __future__ import annotations

from collections.abc import Collection, Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from central.core.strategy import Grant, Session, Strategy, StrategyState

EPSILON_KW = 1e-9
"""Below this the surplus counts as used up (floating-point dust)."""

CLOSE_EXHAUSTED = "exhausted"
CLOSE_ALL_REPLIED = "all_replied"
CLOSE_DEADLINE = "deadline"
CLOSE_NO_SURPLUS = "no_surplus"


class LoadOffer(NamedTuple):
    """One flexible load behind a reply, as the core needs it."""

    id: str
    min_kw: float
    max_kw: float
    kind: str = "generic"
    priority: int | None = None
    until_s: float | None = None  # seconds after the request by which it must be done
    energy_kwh: float | None = None


class Offer(NamedTuple):
    """A reply as the core sees it: who, for which cycle, how much, when."""

    site: str
    cycle: Hashable
    flex_kw: float
    elapsed_s: float = 0.0
    loads: tuple[LoadOffer, ...] = ()


class Decision(NamedTuple):
    """An allocation: ``alloc_kw`` to ``site``, whose reply arrived ``rank``-th."""

    site: str
    alloc_kw: float
    rank: int
    flex_kw: float
    elapsed_s: float


class Ignored(NamedTuple):
    """A reply the cycle did not act on, and why (stale, duplicate, closed, …)."""

    offer: Offer
    reason: str


@dataclass(slots=True)
class Step:
    """What one call to the cycle produced."""

    decisions: list[Decision] = field(default_factory=list)
    ignored: list[Ignored] = field(default_factory=list)
    closed: str | None = None


@dataclass(frozen=True, slots=True)
class CycleContext:
    """What a strategy may know about the cycle it serves."""

    cycle: Hashable
    surplus_kw: float
    sites: frozenset[str]
    deadline_s: float
    seed: int = 0


def clamp(kw: float, flex_kw: float, remaining_kw: float) -> float:
    """``kw`` within ``[0, min(flex, remaining)]``; a negative or NaN offer counts as 0."""
    cap = flex_kw if flex_kw >= 0.0 else 0.0
    if not kw <= cap:
        kw = cap
    if kw > remaining_kw:
        kw = remaining_kw
    return kw if kw > 0.0 else 0.0


class Cycle:
    """The state of one allocation cycle. Build it with ``Cycle.open``."""

    __slots__ = (
        "_closed_step",
        "_deadline_s",
        "_expected",
        "_pending",
        "_rank",
        "_session",
        "_waiting",
        "allocated_kw",
        "close_reason",
        "context",
        "decisions",
        "remaining_kw",
    )

    def __init__(self, context: CycleContext, session: Session | None) -> None:
        self.context = context
        self._session = session
        self._expected = context.sites
        self._deadline_s = context.deadline_s
        # Sites asked and not yet heard from: one set operation per reply.
        self._waiting: set[str] = set(context.sites)
        self._pending: dict[str, tuple[Offer, int]] = {}
        self._rank = 0
        self.remaining_kw = max(context.surplus_kw, 0.0)
        self.allocated_kw = 0.0
        self.decisions: list[Decision] = []
        self.close_reason: str | None = None
        self._closed_step: Step | None = None

    @classmethod
    def open(
        cls,
        cycle: Hashable,
        surplus_kw: float,
        sites: Collection[str],
        strategy: Strategy,
        state: StrategyState | None = None,
        *,
        deadline_s: float,
        seed: int = 0,
    ) -> tuple[Cycle, Step]:
        """Open a cycle. With no surplus it is closed at once (``no_surplus``)."""
        if not deadline_s > 0:
            raise ValueError("deadline_s must be positive")
        context = CycleContext(cycle, float(surplus_kw), frozenset(sites), float(deadline_s), seed)
        if not surplus_kw > EPSILON_KW:
            self = cls(context, None)
            return self, self._close(CLOSE_NO_SURPLUS, Step())
        self = cls(context, strategy.begin(context, state or {}))
        step = Step()
        if not self._expected:
            self._close(CLOSE_ALL_REPLIED, step)
        return self, step

    # Queries ---------------------------------------------------------------
    @property
    def cycle(self) -> Hashable:
        return self.context.cycle

    @property
    def closed(self) -> bool:
        return self.close_reason is not None

    @property
    def replies(self) -> int:
        return len(self._expected) - len(self._waiting)

    def next_wakeup_s(self) -> float | None:
        """When the caller should call ``tick`` next (seconds after the request)."""
        if self.close_reason is not None:
            return None
        wake = self._session.wakeup_s() if self._session is not None else None
        if wake is None or wake > self._deadline_s:
            return self._deadline_s
        return wake

    # Events ----------------------------------------------------------------
    def offer(self, offer: Offer) -> Step:
        """Feed one reply, in arrival order."""
        return self.offer_many((offer,))

    def offer_many(self, offers: Iterable[Offer]) -> Step:
        """Feed several replies in arrival order (a burst drained from a queue).

        Same rules as ``offer``, one call per burst: the loop keeps its state in
        locals because this is the coordinator's hot path (100k replies a cycle
        at scale).
        """
        step = Step()
        if self.close_reason is not None or self._session is None:
            step.ignored.extend(Ignored(o, "closed") for o in offers)
            return step
        cycle_id = self.context.cycle
        waiting = self._waiting
        expected = self._expected
        deadline = self._deadline_s
        on_offer = self._session.on_offer
        pending = self._pending
        step_decisions = step.decisions
        ignored = step.ignored
        remaining = self.remaining_kw
        rank = self._rank
        # tuple.__new__ skips NamedTuple's Python-level __new__: half the cost.
        new_tuple = tuple.__new__
        it = iter(offers)
        for offer in it:
            site, ocycle, flex, elapsed, _ = offer
            if ocycle != cycle_id:
                ignored.append(Ignored(offer, "stale"))
                continue
            try:
                waiting.remove(site)
            except KeyError:
                why = "duplicate" if site in expected else "not_requested"
                ignored.append(Ignored(offer, why))
                continue
            if elapsed >= deadline:
                waiting.add(site)  # it did not reply in time
                self._sync(remaining, rank, step_decisions)
                self._close(CLOSE_DEADLINE, step)
                ignored.append(Ignored(offer, "closed"))
                ignored.extend(Ignored(o, "closed") for o in it)
                return step
            rank += 1
            kw = on_offer(offer, rank, remaining)
            if kw is None:
                pending[site] = (offer, rank)
            else:
                # The contract, whatever the strategy said: 0 <= kw <= min(flex, remaining).
                # Written so that every comparison with a NaN sends it to the slow path.
                if not (0.0 < kw <= flex and kw <= remaining):
                    kw = clamp(kw, flex, remaining)
                remaining -= kw
                step_decisions.append(new_tuple(Decision, (site, kw, rank, flex, elapsed)))
            if remaining <= EPSILON_KW or not waiting:
                self._sync(remaining, rank, step_decisions)
                self._close(CLOSE_EXHAUSTED if remaining <= EPSILON_KW else CLOSE_ALL_REPLIED, step)
                ignored.extend(Ignored(o, "closed") for o in it)
                return step
        self._sync(remaining, rank, step_decisions)
        return step

    def _sync(self, remaining: float, rank: int, decided: list[Decision]) -> None:
        # Write the hot loop's locals back before anything else reads them.
        self.allocated_kw += self.remaining_kw - remaining
        self.remaining_kw = remaining
        self._rank = rank
        self.decisions.extend(decided)

    def tick(self, elapsed_s: float) -> Step:
        """Time has reached ``elapsed_s`` after the request: run timers, close at the deadline."""
        step = Step()
        if self.close_reason is not None:
            return step
        if elapsed_s >= self._deadline_s:
            return self._close(CLOSE_DEADLINE, step)
        session = self._session
        assert session is not None
        wake = session.wakeup_s()
        if wake is not None and elapsed_s >= wake:
            grants = session.on_timer(elapsed_s, self._pending_offers(), self.remaining_kw)
            self._apply(grants, step)
            self._check_done(step)
        return step

    def close(self, reason: str = CLOSE_DEADLINE) -> Step:
        """Close now (e.g. the service stops); pending offers get the strategy's last word."""
        step = Step()
        if self.close_reason is None:
            self._close(reason, step)
        return step

    # Internals -------------------------------------------------------------
    def _decide(self, offer: Offer, rank: int, kw: float, step: Step) -> None:
        # The contract, whatever the strategy said: 0 <= kw <= min(offer, remaining).
        remaining = self.remaining_kw
        kw = clamp(kw, offer.flex_kw, remaining)
        self.remaining_kw = remaining - kw
        self.allocated_kw += kw
        decision = Decision(offer.site, kw, rank, offer.flex_kw, offer.elapsed_s)
        self.decisions.append(decision)
        step.decisions.append(decision)

    def _pending_offers(self) -> list[Offer]:
        return [offer for offer, _ in self._pending.values()]

    def _apply(self, grants: Sequence[Grant], step: Step) -> None:
        for site, kw in grants:
            entry = self._pending.pop(site, None)
            if entry is None:
                continue  # not pending: already decided, never replied, or granted twice
            offer, rank = entry
            self._decide(offer, rank, kw, step)

    def _check_done(self, step: Step) -> None:
        if self.close_reason is not None:
            return
        if self.remaining_kw <= EPSILON_KW:
            self._close(CLOSE_EXHAUSTED, step)
        elif not self._waiting and not self._pending:
            self._close(CLOSE_ALL_REPLIED, step)

    def _close(self, reason: str, step: Step) -> Step:
        session = self._session
        if session is not None and self._pending:
            grants = session.on_close(self._pending_offers(), self.remaining_kw)
            self._apply(grants, step)
            # Whatever the strategy left undecided gets nothing, explicitly.
            for offer, rank in sorted(self._pending.values(), key=lambda e: e[1]):
                self._decide(offer, rank, 0.0, step)
            self._pending.clear()
        self.close_reason = reason
        step.closed = reason
        self._closed_step = step
        return step

    def settle(self, state: StrategyState | None = None) -> StrategyState:
        """The strategy state to carry into the next cycle (call once closed)."""
        if self._session is None:
            return state or {}
        return self._session.settle(self.decisions)

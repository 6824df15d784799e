"""Allocation strategies: one ``Protocol``, an explicit registry.

A strategy is a value. For each cycle, ``begin(context, state)`` opens a
``Session``; the cycle then shows it every accepted reply in arrival order
(``on_offer``), wakes it at the time it asks for (``on_timer``), and asks it
for its last decisions when the cycle closes (``on_close``). A session may
decide at once (first come, first served returns a kW from ``on_offer``) or
later (returns ``None`` and grants from ``on_timer``/``on_close``). Whatever
it returns, the cycle enforces the invariants: never more than the surplus,
never more than a site's offer, each site at most once. ``settle`` hands back
the state the strategy carries to the next cycle (e.g. a fairness ledger).

Adding a strategy is one module under ``central/core/strategies/`` plus one
line in ``STRATEGIES``; the cycle does not change.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

if TYPE_CHECKING:
    from central.core.cycle import CycleContext, Decision, Offer

StrategyState = Mapping[str, Any]
"""What a strategy carries from cycle to cycle (a ledger, a rotation pointer)."""


class Grant(NamedTuple):
    """A strategy's decision for one pending site: the kW it should get."""

    site: str
    alloc_kw: float


class Session(Protocol):
    """One strategy's work on one cycle."""

    def on_offer(self, offer: Offer, rank: int, remaining_kw: float) -> float | None:
        """Decide at once (return kW, 0 allowed) or later (return None)."""
        ...

    def wakeup_s(self) -> float | None:
        """Seconds after the request at which ``on_timer`` wants to run, if any."""
        ...

    def on_timer(
        self, elapsed_s: float, pending: Sequence[Offer], remaining_kw: float
    ) -> Sequence[Grant]:
        """Grants for pending offers when the asked-for time has come."""
        ...

    def on_close(self, pending: Sequence[Offer], remaining_kw: float) -> Sequence[Grant]:
        """Last grants for the offers still pending when the cycle closes."""
        ...

    def settle(self, decisions: Sequence[Decision]) -> StrategyState:
        """The state to carry to the next cycle, given this cycle's decisions."""
        ...


class Strategy(Protocol):
    """A named allocation rule."""

    name: str

    def begin(self, context: CycleContext, state: StrategyState) -> Session:
        """Open a session for one cycle."""
        ...


StrategyFactory = Callable[..., Strategy]
"""Builds a strategy; keyword arguments are its parameters (window lengths, time limits)."""


# Each factory imports its module when called, so that loading the registry
# loads no solver. Parameters not given take the module's defaults.
def _fifo(**options: Any) -> Strategy:
    from central.core.strategies.fifo import Fifo

    return Fifo(**options)


def _fifo_min_power(**options: Any) -> Strategy:
    from central.core.strategies.fifo_min_power import FifoMinPower

    return FifoMinPower(**options)


def _proportional(**options: Any) -> Strategy:
    from central.core.strategies.proportional import Proportional

    return Proportional(**options)


def _equal(**options: Any) -> Strategy:
    from central.core.strategies.equal import Equal

    return Equal(**options)


def _deadline(**options: Any) -> Strategy:
    from central.core.strategies.deadline import Deadline

    return Deadline(**options)


def _fair_rotation(**options: Any) -> Strategy:
    from central.core.strategies.fair_rotation import FairRotation

    return FairRotation(**options)


def _milp(**options: Any) -> Strategy:
    from central.core.strategies.milp import Milp

    return Milp(**options)


def _window(**options: Any) -> Strategy:
    from central.core.strategies.window import Window

    return Window(**options)


STRATEGIES: dict[str, StrategyFactory] = {
    "fifo": _fifo,
    "fifo_min_power": _fifo_min_power,
    "proportional": _proportional,
    "equal": _equal,
    "deadline": _deadline,
    "fair_rotation": _fair_rotation,
    "milp": _milp,
    "window": _window,
}
"""Every strategy the coordinator can run, by the name the config uses."""


def get_strategy(name: str, **options: Any) -> Strategy:
    """The strategy registered as ``name``, built with ``options``.

    ``KeyError`` lists the known names; a bad option raises ``TypeError``
    (unknown name) or ``ValueError`` (bad value) from the strategy itself.
    """
    try:
        factory = STRATEGIES[name]
    except KeyError:
        known = ", ".join(sorted(STRATEGIES))
        raise KeyError(f"unknown strategy {name!r}; known: {known}") from None
    return factory(**options)

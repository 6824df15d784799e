"""The optimal split of one cycle's surplus with semi-continuous loads (HiGHS).

Each site s takes x_s in {0} U [min_s, flex_s] (min_s: the smallest
``min_kw`` it offered, 0 if it listed no loads); sum x_s <= S; maximise
sum w_s x_s with w_s = 1 + priority_weight * priority_s (priority_weight 0:
maximise the power used). HiGHS solves it natively with semi-continuous
variables (reference/mqtt-performance.md §5: 0.01 s at 30 sites, 0.06 s at
1k, 3 s at 10k; no usable answer within 120 s at 100k).

``allocate_optimum`` never fails: on a time-out, a non-optimal status, a
solution that breaks the model, or any solver exception it falls back to the
``fifo_min_power`` rule on the same offers in arrival order, and says so in
its ``Outcome``. It skips the solver when the answer is known: everyone gets
its offer when the offers fit, and, with equal weights, FIFO is optimal when
it uses up the surplus (the trivial upper bound).

The solver call is CPU work bounded by ``time_limit_s`` (HiGHS measures that
limit itself; the core reads no clock). The live coordinator should run a
session's ``on_close``/``on_timer`` off the event loop for large N.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, NamedTuple

from central.core.strategies.rules import (
    TOL_KW,
    fill_in_order,
    site_min_kw,
    site_priority,
    usable_kw,
)
from central.core.strategy import Grant

if TYPE_CHECKING:
    from central.core.cycle import Offer

DEFAULT_TIME_LIMIT_S = 2.0
SOLUTION_TOL_KW = 1e-6
"""How far off its bounds HiGHS may land (its feasibility tolerance) before we distrust it."""


class Problem(NamedTuple):
    """One semi-continuous knapsack: bounds and weights per candidate site, the cap."""

    min_kw: list[float]
    max_kw: list[float]
    weight: list[float]
    cap_kw: float


class SolverError(Exception):
    """The solver gave no optimal answer; ``reason`` says why (status or exception)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


Solver = Callable[[Problem, float], list[float]]
"""``solve(problem, time_limit_s) -> x`` per site, or raises (any exception = fallback)."""


class Outcome(NamedTuple):
    """Grants for the offers, and how they were found."""

    grants: list[Grant]
    method: str  # "all_fit", "fifo_optimal", "nothing_fits", "solver", "fallback"
    fallback_reason: str | None = None

    @property
    def fallback_used(self) -> bool:
        return self.method == "fallback"


LARGE_PROBLEM_SITES = 5000


def solve_with_highs(problem: Problem, time_limit_s: float) -> list[float]:
    """Solve ``problem`` with HiGHS's semi-continuous variables; ``SolverError`` unless optimal."""
    import highspy  # deferred: the registry imports this module on every start

    n = len(problem.min_kw)
    h = highspy.Highs()  # type: ignore[no-untyped-call]  # its stub leaves __init__ untyped
    h.setOptionValue("output_flag", False)
    h.setOptionValue("time_limit", float(time_limit_s))
    # HiGHS does not check time_limit during presolve, which alone took ~8 s at
    # 10k sites whatever the limit; without it 1k solve in 0.04 s, 10k in 0.3 s
    # (bench strategies --scale). Large communities accept a 1 % gap (the
    # issue's tolerance); small ones keep HiGHS's default, near-exact gap.
    h.setOptionValue("presolve", "off")
    if n > LARGE_PROBLEM_SITES:
        h.setOptionValue("mip_rel_gap", 0.01)
    lp = highspy.HighsLp()
    lp.num_col_ = n
    lp.num_row_ = 1
    lp.sense_ = highspy.ObjSense.kMaximize
    lp.col_cost_ = list(problem.weight)
    lp.col_lower_ = list(problem.min_kw)
    lp.col_upper_ = list(problem.max_kw)
    lp.row_lower_ = [-highspy.kHighsInf]
    lp.row_upper_ = [problem.cap_kw]
    lp.a_matrix_.format_ = highspy.MatrixFormat.kColwise
    lp.a_matrix_.start_ = list(range(n + 1))
    lp.a_matrix_.index_ = [0] * n
    lp.a_matrix_.value_ = [1.0] * n
    semi = highspy.HighsVarType.kSemiContinuous
    cont = highspy.HighsVarType.kContinuous
    lp.integrality_ = [semi if m > 0.0 else cont for m in problem.min_kw]
    if h.passModel(lp) != highspy.HighsStatus.kOk:
        raise SolverError("model_rejected")
    h.run()
    status = h.getModelStatus()
    if status != highspy.HighsModelStatus.kOptimal:
        raise SolverError(f"status:{h.modelStatusToString(status)}")
    return [float(x) for x in h.getSolution().col_value]


def _checked(problem: Problem, x: Sequence[float]) -> list[float] | None:
    """``x`` snapped onto the model's bounds, or None if it is not a solution."""
    if len(x) != len(problem.min_kw):
        return None
    out: list[float] = []
    for xi, lo, hi in zip(x, problem.min_kw, problem.max_kw, strict=True):
        if not math.isfinite(xi):
            return None
        if xi <= SOLUTION_TOL_KW:
            out.append(0.0)
        elif lo - SOLUTION_TOL_KW <= xi <= hi + SOLUTION_TOL_KW:
            out.append(min(max(xi, lo), hi))
        else:
            return None
    excess = sum(out) - problem.cap_kw
    if excess > SOLUTION_TOL_KW * max(1, len(out)):
        return None
    if excess > 0.0:
        # Solver tolerance: take the dust off a site with room above its minimum,
        # so the cycle's clamp never pushes a share below a minimum.
        for i, (xi, lo) in enumerate(zip(out, problem.min_kw, strict=True)):
            if xi - lo >= excess:
                out[i] = xi - excess
                break
        else:
            return None
    return out


def allocate_optimum(
    offers: Sequence[Offer],
    remaining_kw: float,
    *,
    time_limit_s: float = DEFAULT_TIME_LIMIT_S,
    priority_weight: float = 0.0,
    solve: Solver = solve_with_highs,
) -> Outcome:
    """The best split of ``remaining_kw`` over ``offers`` (arrival order), with a fallback."""
    cap = usable_kw(remaining_kw)
    flex = [usable_kw(o.flex_kw) for o in offers]
    fifo = fill_in_order(offers, cap)
    if sum(flex) <= cap:
        return Outcome([Grant(o.site, f) for o, f in zip(offers, flex, strict=True)], "all_fit")
    if priority_weight == 0.0 and sum(g.alloc_kw for g in fifo) >= cap - TOL_KW:
        return Outcome(fifo, "fifo_optimal")
    # Candidates: sites whose minimum fits both their offer and the surplus.
    index: list[int] = []
    mins: list[float] = []
    maxs: list[float] = []
    weights: list[float] = []
    for i, o in enumerate(offers):
        lo, hi = site_min_kw(o), min(flex[i], cap)
        if hi > 0.0 and lo <= hi + TOL_KW:
            index.append(i)
            mins.append(min(lo, hi))
            maxs.append(hi)
            weights.append(1.0 + priority_weight * site_priority(o))
    if not index:
        return Outcome([Grant(o.site, 0.0) for o in offers], "nothing_fits")
    problem = Problem(mins, maxs, weights, cap)
    try:
        raw = solve(problem, time_limit_s)
    except SolverError as exc:
        return Outcome(fifo, "fallback", exc.reason)
    except Exception as exc:  # any solver fault must not lose the cycle: fall back
        return Outcome(fifo, "fallback", f"error:{type(exc).__name__}: {exc}")
    x = _checked(problem, raw)
    if x is None:
        return Outcome(fifo, "fallback", "invalid_solution")
    value = sum(w * xi for w, xi in zip(weights, x, strict=True))
    fifo_kw = {g.site: g.alloc_kw for g in fifo}
    fifo_value = sum(w * fifo_kw[offers[i].site] for w, i in zip(weights, index, strict=True))
    if fifo_value > value + SOLUTION_TOL_KW:
        # Within the solver's gap FIFO can be better (§5, 10k sites): keep the better.
        return Outcome(fifo, "fallback", "fifo_better")
    given = dict(zip(index, x, strict=True))
    return Outcome([Grant(o.site, given.get(i, 0.0)) for i, o in enumerate(offers)], "solver")

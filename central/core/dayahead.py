"""The study's model 1 as a day-ahead plan: one LP over the day's quarter hours.

DOMAIN.md, "Model 1": max sum_{u,h} x(u,h) s.t. sum_u x(u,h) <= S(h) and
0 <= x(u,h) <= Pmax(u,h), h = 96 quarter hours. Solved with HiGHS
(reference/mqtt-performance.md §5: 0.004 s at 30 sites, 0.14 s at 1k, 3.7 s
at 10k with highspy). A negative surplus S(h) counts as 0 (nothing to hand
out; x >= 0 would otherwise make the LP infeasible).

Without energy caps the LP separates by quarter hour, so the per-quarter
greedy fill is optimal too (the tests use it as the oracle); the LP is the
shape on which energy caps or priorities can be added.

Pure: no clock, no I/O; the solve is CPU work bounded by ``time_limit_s``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

QUARTERS = 96


class PlanError(Exception):
    """The plan could not be solved; ``reason`` is the solver's status."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _pmax_rows(
    pmax_by_site: Sequence[float] | Sequence[Sequence[float]], quarters: int
) -> list[list[float]]:
    rows: list[list[float]] = []
    for u, p in enumerate(pmax_by_site):
        if isinstance(p, Sequence):
            row = [float(v) for v in p]
            if len(row) != quarters:
                raise ValueError(f"pmax of site {u} has {len(row)} values, expected {quarters}")
        elif isinstance(p, int | float):
            row = [float(p)] * quarters
        else:
            raise TypeError(f"pmax of site {u} must be a number or a sequence, got {p!r}")
        rows.append([v if 0.0 < v < math.inf else 0.0 for v in row])
    return rows


def plan_day(
    surplus_by_quarter: Sequence[float],
    pmax_by_site: Sequence[float] | Sequence[Sequence[float]],
    *,
    time_limit_s: float = 30.0,
) -> list[list[float]]:
    """x[u][h], the kW planned for site u in quarter h, maximising the surplus used.

    ``surplus_by_quarter``: S(h), usually 96 values. ``pmax_by_site``: per
    site either one kW for the whole day or one per quarter.
    """
    import highspy  # deferred: only the planner needs it

    surplus = [s if 0.0 < s < math.inf else 0.0 for s in (float(v) for v in surplus_by_quarter)]
    quarters = len(surplus)
    pmax = _pmax_rows(pmax_by_site, quarters)
    sites = len(pmax)
    if sites == 0 or quarters == 0:
        return [[] for _ in range(sites)]
    # Column j = u * quarters + h; row h: sum_u x(u, h) <= S(h).
    n = sites * quarters
    h = highspy.Highs()  # type: ignore[no-untyped-call]  # its stub leaves __init__ untyped
    h.setOptionValue("output_flag", False)
    h.setOptionValue("time_limit", float(time_limit_s))
    lp = highspy.HighsLp()
    lp.num_col_ = n
    lp.num_row_ = quarters
    lp.sense_ = highspy.ObjSense.kMaximize
    lp.col_cost_ = [1.0] * n
    lp.col_lower_ = [0.0] * n
    lp.col_upper_ = [v for row in pmax for v in row]
    lp.row_lower_ = [-highspy.kHighsInf] * quarters
    lp.row_upper_ = surplus
    lp.a_matrix_.format_ = highspy.MatrixFormat.kColwise
    lp.a_matrix_.start_ = list(range(n + 1))
    lp.a_matrix_.index_ = [j % quarters for j in range(n)]
    lp.a_matrix_.value_ = [1.0] * n
    if h.passModel(lp) != highspy.HighsStatus.kOk:
        raise PlanError("model_rejected")
    h.run()
    status = h.getModelStatus()
    if status != highspy.HighsModelStatus.kOptimal:
        raise PlanError(h.modelStatusToString(status))
    x = list(h.getSolution().col_value)
    return [
        [min(max(float(x[u * quarters + q]), 0.0), pmax[u][q]) for q in range(quarters)]
        for u in range(sites)
    ]

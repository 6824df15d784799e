"""``choose_loads``: the small knapsack behind an allocation (gateway/ems/plan.py).

Relays switch whole loads: a chosen load draws its running power or nothing,
so the chosen set must fit the power (never above it). Modulating loads run
at a set point: anywhere in [min, max] (continuous) or one of their steps.
Among the plans that fit, the docstring's order: the most power in the
highest priority tier, tier by tier, then the nearest deadline, then the most
power in all. Exact for up to ``EXACT_MAX`` candidates (checked here against
a brute force of our own, in exact integer arithmetic), greedy in that order
beyond.
"""

from __future__ import annotations

from itertools import combinations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.ems.loads import LoadSpec
from gateway.ems.plan import EXACT_MAX, TOLERANCE_KW, Candidate, Run, candidate_of, choose_loads

PROPS = settings(max_examples=200, deadline=None)
FEWER = settings(max_examples=80, deadline=None)


def total_kw(chosen: list[Run]) -> float:
    return sum(c.kw for c in chosen)


def ids(chosen: list[Run]) -> list[str]:
    return [c.id for c in chosen]


def setpoints(chosen: list[Run]) -> dict[str, float]:
    return {r.id: round(r.kw, 6) for r in chosen}


# Examples ------------------------------------------------------------------------------------


def test_nothing_to_choose_from() -> None:
    assert choose_loads([], 10.0) == []


def test_no_power_chooses_nothing() -> None:
    assert choose_loads([Candidate("a", 1.0)], 0.0) == []


def test_a_load_above_the_power_is_never_chosen_even_partly() -> None:
    assert choose_loads([Candidate("wh", 2.2)], 2.1) == []


def test_loads_drawing_nothing_or_less_are_ignored() -> None:
    chosen = choose_loads([Candidate("zero", 0.0), Candidate("neg", -1.0), Candidate("a", 1.0)], 5)
    assert ids(chosen) == ["a"]


def test_exact_fit_is_accepted() -> None:
    assert ids(choose_loads([Candidate("a", 1.5), Candidate("b", 2.5)], 4.0)) == ["a", "b"]


def test_tolerance_admits_rounding_noise_only() -> None:
    assert ids(choose_loads([Candidate("a", 2.0 + TOLERANCE_KW / 2)], 2.0)) == ["a"]
    assert choose_loads([Candidate("a", 2.0 + 10 * TOLERANCE_KW)], 2.0) == []


def test_the_combination_that_fills_the_power_beats_the_largest_single_load() -> None:
    cands = [Candidate("big", 3.0), Candidate("x", 2.0), Candidate("y", 2.0)]
    assert sorted(ids(choose_loads(cands, 4.0))) == ["x", "y"]


def test_a_higher_priority_tier_comes_before_more_power() -> None:
    cands = [Candidate("ev", 1.0, priority=5), Candidate("hp", 3.0, priority=0)]
    assert ids(choose_loads(cands, 3.0)) == ["ev"]


def test_within_the_top_tier_the_most_power_then_lower_tiers_fill_the_rest() -> None:
    cands = [
        Candidate("a", 1.0, priority=2),
        Candidate("b", 2.0, priority=2),
        Candidate("c", 1.0, priority=1),
        Candidate("d", 0.5, priority=0),
    ]
    # 4.0 kW: the whole top tier (3.0) first, then tier 1 (1.0); no room for d.
    assert ids(choose_loads(cands, 4.0)) == ["a", "b", "c"]


def test_same_power_the_nearest_deadline_wins() -> None:
    cands = [
        Candidate("late", 2.0, deadline_s=7200),
        Candidate("none", 2.0),
        Candidate("soon", 2.0, deadline_s=600),
    ]
    assert ids(choose_loads(cands, 2.0)) == ["soon"]


def test_the_chosen_loads_keep_the_input_order() -> None:
    cands = [Candidate(f"l{i}", 1.0, priority=i % 3) for i in range(6)]
    assert ids(choose_loads(cands, 10.0)) == [f"l{i}" for i in range(6)]


def test_float_noise_in_equal_tier_sums_does_not_override_the_deadline() -> None:
    cands = [Candidate("a", 1.1), Candidate("b", 2.2), Candidate("ev", 3.3, deadline_s=600)]
    assert ids(choose_loads(cands, 3.3)) == ["ev"]


def test_greedy_path_beyond_exact_max_takes_priority_then_deadline_then_power() -> None:
    cands = [Candidate(f"x{i}", 1.0) for i in range(EXACT_MAX)]
    cands += [
        Candidate("urgent", 1.0, deadline_s=60),
        Candidate("vip", 2.0, priority=3),
        Candidate("big", 1.5),
    ]
    chosen = ids(choose_loads(cands, 4.0))
    # vip (priority) then urgent (deadline) then big (most power): 4.5 > 4.0, so a 1 kW one.
    assert chosen[:2] == ["vip", "urgent"]
    assert "big" not in chosen
    assert len(chosen) == 3
    assert total_kw(choose_loads(cands, 4.0)) <= 4.0


# Properties ----------------------------------------------------------------------------------

# Powers in tenths of a kW, so that the brute force below decides in exact integers.
tenths = st.integers(min_value=1, max_value=40)


@st.composite
def small_sets(draw: st.DrawFn, max_size: int = 9, deadlines: bool = True) -> tuple[
    list[Candidate], list[int], int
]:
    n = draw(st.integers(min_value=0, max_value=max_size))
    kws = draw(st.lists(tenths, min_size=n, max_size=n))
    cands = []
    for i, k in enumerate(kws):
        deadline = draw(st.none() | st.sampled_from([60.0, 600.0, 3600.0, 7200.0])) if (
            deadlines
        ) else None
        cands.append(Candidate(f"l{i}", k / 10, draw(st.integers(0, 2)), deadline))
    power = draw(st.integers(min_value=0, max_value=120))
    return cands, kws, power


def tier_vector(chosen: list[int], cands: list[Candidate], kws: list[int]) -> tuple[int, ...]:
    """Power (in tenths) per priority tier, highest tier first."""
    tiers = sorted({c.priority for c in cands}, reverse=True)
    return tuple(sum(kws[i] for i in chosen if cands[i].priority == p) for p in tiers)


def brute_force_best_tiers(cands: list[Candidate], kws: list[int], power: int) -> tuple[int, ...]:
    best = tier_vector([], cands, kws)
    for r in range(1, len(cands) + 1):
        for combo in combinations(range(len(cands)), r):
            if sum(kws[i] for i in combo) <= power:
                best = max(best, tier_vector(list(combo), cands, kws))
    return best


@PROPS
@given(small_sets())
def test_exact_path_is_the_brute_force_optimum_by_tier_then_power(
    case: tuple[list[Candidate], list[int], int],
) -> None:
    cands, kws, power = case
    chosen = choose_loads(cands, power / 10)
    index = {c.id: i for i, c in enumerate(cands)}
    chosen_i = [index[c.id] for c in chosen]
    assert len(set(chosen_i)) == len(chosen_i)
    assert sum(kws[i] for i in chosen_i) <= power
    assert tier_vector(chosen_i, cands, kws) == brute_force_best_tiers(cands, kws, power)


@PROPS
@given(
    st.lists(
        st.tuples(
            st.integers(1, 4),
            st.integers(0, 1),
            st.none() | st.sampled_from([60.0, 600.0, 3600.0]),
        ),
        max_size=8,
    ),
    st.integers(0, 12),
)
def test_among_equal_tiers_the_most_urgent_set_is_chosen(
    rows: list[tuple[int, int, float | None]], power: int
) -> None:
    # Whole kW: float sums are exact, so only the deadline separates equal tier vectors.
    cands = [Candidate(f"l{i}", float(k), p, d) for i, (k, p, d) in enumerate(rows)]
    kws = [k for k, _, _ in rows]

    def urgency(sel: list[int]) -> float:
        return sum(
            1.0 / (1.0 + d) for i in sel if (d := cands[i].deadline_s) is not None
        )

    index = {c.id: i for i, c in enumerate(cands)}
    chosen = [index[c.id] for c in choose_loads(cands, float(power))]
    best_tiers = brute_force_best_tiers(cands, kws, power)
    assert tier_vector(chosen, cands, kws) == best_tiers
    best_urgency = max(
        urgency(list(combo))
        for r in range(len(cands) + 1)
        for combo in combinations(range(len(cands)), r)
        if sum(kws[i] for i in combo) <= power
        and tier_vector(list(combo), cands, kws) == best_tiers
    )
    assert urgency(chosen) >= best_urgency - 1e-12


candidates_any = st.lists(
    st.builds(
        Candidate,
        id=st.just(""),
        # Real loads draw at least some watts; subnormal powers vanish in float sums.
        kw=st.sampled_from([0.0, -1.0]) | st.floats(min_value=0.01, max_value=12.0),
        priority=st.integers(0, 3),
        deadline_s=st.none() | st.floats(min_value=0, max_value=86_400),
    ),
    max_size=30,
).map(lambda cs: [Candidate(f"l{i}", c.kw, c.priority, c.deadline_s) for i, c in enumerate(cs)])


@FEWER
@given(candidates_any, st.floats(min_value=0.0, max_value=40.0, allow_nan=False))
def test_never_above_the_power_and_nothing_left_out_that_still_fits(
    cands: list[Candidate], power_kw: float
) -> None:
    chosen = choose_loads(cands, power_kw)
    chosen_ids = ids(chosen)
    assert len(set(chosen_ids)) == len(chosen_ids)
    assert set(chosen_ids) <= {c.id for c in cands}
    assert total_kw(chosen) <= power_kw + TOLERANCE_KW + 1e-9
    assert all(c.kw > 0 for c in chosen)
    # Maximal: any load left out no longer fits what is left (either path).
    left = power_kw - total_kw(chosen)
    for c in cands:
        if c.id not in chosen_ids and c.kw > 0:
            assert c.kw > left + TOLERANCE_KW - 1e-9


@PROPS
@given(
    st.lists(
        st.tuples(
            st.floats(min_value=0.1, max_value=2.0),
            st.integers(0, 3),
            st.none() | st.floats(min_value=0, max_value=86_400),
        ),
        min_size=EXACT_MAX + 1,
        max_size=40,
    ),
    # Every load fits alone, so more than EXACT_MAX candidates take the greedy path.
    st.floats(min_value=2.0, max_value=60.0),
)
def test_greedy_path_never_exceeds_the_power_and_serves_the_first_in_its_order(
    rows: list[tuple[float, int, float | None]], power_kw: float
) -> None:
    cands = [Candidate(f"l{i}", kw, p, d) for i, (kw, p, d) in enumerate(rows)]
    chosen = choose_loads(cands, power_kw)
    assert total_kw(chosen) <= power_kw + TOLERANCE_KW + 1e-9
    order = sorted(
        cands,
        key=lambda c: (-c.priority, c.deadline_s if c.deadline_s is not None else float("inf"),
                       -c.kw),
    )
    first_fitting = next((c for c in order if c.kw <= power_kw), None)
    if first_fitting is not None:
        assert first_fitting.id in ids(chosen)
    else:
        assert chosen == []


# Modulating loads ------------------------------------------------------------------------------

WALLBOX_1PH = tuple(round(a * 0.23, 2) for a in range(6, 33))  # 6-32 A in 1 A steps, 230 V


def test_a_continuous_load_runs_at_the_power_given() -> None:
    hp = Candidate("hp", 2.0, min_kw=1.0)
    assert setpoints(choose_loads([hp], 1.4)) == {"hp": 1.4}
    assert setpoints(choose_loads([hp], 5.0)) == {"hp": 2.0}  # never above its max
    assert choose_loads([hp], 0.9) == []  # never below its min


def test_a_stepped_load_runs_at_its_largest_step_within_the_power() -> None:
    ev = Candidate("ev", WALLBOX_1PH[-1], min_kw=WALLBOX_1PH[0], steps_kw=WALLBOX_1PH)
    assert setpoints(choose_loads([ev], 3.0)) == {"ev": 2.99}  # 13 A
    assert setpoints(choose_loads([ev], 1.38)) == {"ev": 1.38}
    assert choose_loads([ev], 1.37) == []


def test_a_whole_load_and_a_modulating_one_share_the_power() -> None:
    wh = Candidate("wh", 2.2)
    hp = Candidate("hp", 2.0, min_kw=1.0)
    # 4.0 kW: the water heater whole, the heat pump on the 1.8 kW left.
    assert setpoints(choose_loads([wh, hp], 4.0)) == {"wh": 2.2, "hp": 1.8}
    # 3.0 kW: both cannot run (2.2 + 1.0 > 3.0); the heat pump alone gives only 2.0.
    assert setpoints(choose_loads([wh, hp], 3.0)) == {"wh": 2.2}


def test_the_higher_tier_is_raised_first() -> None:
    ev = Candidate("ev", 3.7, priority=2, min_kw=1.4)
    hp = Candidate("hp", 2.0, priority=0, min_kw=1.0)
    # 5.0 kW: both at their minimums (2.4), then the EV up to its max, the rest to the HP.
    assert setpoints(choose_loads([ev, hp], 5.0)) == {"ev": 3.7, "hp": 1.3}


def test_two_stepped_loads_reach_the_best_sum_of_steps() -> None:
    a = Candidate("a", 1.4, min_kw=1.0, steps_kw=(1.0, 1.4))
    b = Candidate("b", 1.3, min_kw=1.0, steps_kw=(1.0, 1.3))
    c = Candidate("c", 1.3, min_kw=1.0, steps_kw=(1.0, 1.3))
    # 3.6 kW: 1.0 + 1.3 + 1.3 beats 1.4 + 1.0 + 1.0 (3.4).
    assert total_kw(choose_loads([a, b, c], 3.6)) == pytest.approx(3.6)


def test_candidate_of_a_spec_follows_its_modulation() -> None:
    whole = LoadSpec("wh", nominal_kw=2.0, min_kw=1.5, max_kw=2.5)
    assert candidate_of(whole) == Candidate("wh", 2.0)  # a relay: its running power only
    hp = LoadSpec("hp", nominal_kw=1.5, min_kw=1.0, max_kw=2.0, modulation="continuous")
    assert candidate_of(hp, 60.0) == Candidate("hp", 2.0, 0, 60.0, 1.0)
    ev = LoadSpec("ev", nominal_kw=7.36, min_kw=1.38, max_kw=7.36, modulation="steps",
                  steps_kw=WALLBOX_1PH, priority=1)
    assert candidate_of(ev) == Candidate("ev", 7.36, 1, None, 1.38, WALLBOX_1PH)


@st.composite
def modulating_sets(draw: st.DrawFn) -> tuple[list[Candidate], int]:
    """1-5 loads in tenths of a kW: whole, continuous [lo, hi] or steps; one priority tier."""
    cands = []
    for i in range(draw(st.integers(1, 5))):
        lo = draw(st.integers(1, 30))
        kind = draw(st.sampled_from(["whole", "continuous", "steps"]))
        if kind == "whole":
            cands.append(Candidate(f"l{i}", lo / 10))
        elif kind == "continuous":
            hi = lo + draw(st.integers(1, 20))
            cands.append(Candidate(f"l{i}", hi / 10, min_kw=lo / 10))
        else:
            rises = draw(st.lists(st.integers(1, 10), min_size=1, max_size=4))
            steps = [lo]
            for r in rises:
                steps.append(steps[-1] + r)
            cands.append(Candidate(f"l{i}", steps[-1] / 10, min_kw=lo / 10,
                                   steps_kw=tuple(t / 10 for t in steps)))
    return cands, draw(st.integers(0, 120))


def achievable_tenths(c: Candidate) -> set[int]:
    """Every power (in tenths) a load can run at, brute force."""
    if c.steps_kw:
        return {round(t * 10) for t in c.steps_kw}
    lo = round(c.least_kw * 10)
    return set(range(lo, round(c.kw * 10) + 1))


def brute_force_best_total(cands: list[Candidate], power: int) -> int:
    """The most power (tenths) any choice of loads and set points uses within ``power``."""
    sums = {0}
    for c in cands:
        sums = sums | {s + p for s in sums for p in achievable_tenths(c) if s + p <= power}
    return max(sums)


@PROPS
@given(modulating_sets())
def test_modulating_plans_use_the_most_power_that_fits(case: tuple[list[Candidate], int]) -> None:
    cands, power = case
    chosen = choose_loads(cands, power / 10)
    by_id = {c.id: c for c in cands}
    for run in chosen:
        c = by_id[run.id]
        # Never below a load's minimum, never a power it cannot take.
        assert round(run.kw * 10, 6) in {float(p) for p in achievable_tenths(c)}, run
    used = total_kw(chosen)
    assert used <= power / 10 + TOLERANCE_KW
    # Continuous loads in tenths are a lower bound of what they can do: the plan
    # reaches at least the brute force over those powers.
    assert used >= brute_force_best_total(cands, power) / 10 - 1e-6

"""The pure grid-signal core: RTE's days and hours, parsing, overrides, shed windows, DST."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from central.core.grid import (
    BASELINE_LEVEL,
    GridDataError,
    GridSchedule,
    ShedWindow,
    Signals,
    day_hours,
    day_start,
    hour_start,
    locate,
    override_problem,
    parse_signals,
)
from ems.rte_standin import make_day, make_signals

PARIS = ZoneInfo("Europe/Paris")
SPRING = date(2026, 3, 29)  # 02:00 -> 03:00: 23 hours
AUTUMN = date(2026, 10, 25)  # 03:00 -> 02:00: 25 hours
WINTER = date(2026, 1, 15)


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


# Days and hours ----------------------------------------------------------------------


def test_day_lengths_in_paris() -> None:
    assert day_hours(WINTER, PARIS) == 24
    assert day_hours(SPRING, PARIS) == 23
    assert day_hours(AUTUMN, PARIS) == 25


def test_hours_count_from_local_midnight_across_dst() -> None:
    assert day_start(WINTER, PARIS) == utc(2026, 1, 14, 23)
    # Spring: hour 2 is the hour after 01:00 winter time, i.e. 03:00 summer time.
    assert hour_start(SPRING, 2, PARIS) == utc(2026, 3, 29, 1)
    assert hour_start(SPRING, 2, PARIS).astimezone(PARIS).hour == 3
    # Autumn: hours 2 and 3 are both "02:00" on the wall clock, an hour apart.
    h2, h3 = hour_start(AUTUMN, 2, PARIS), hour_start(AUTUMN, 3, PARIS)
    assert (h2.astimezone(PARIS).hour, h3.astimezone(PARIS).hour) == (2, 2)
    assert h3 - h2 == timedelta(hours=1)
    assert hour_start(AUTUMN, 25, PARIS) == day_start(AUTUMN + timedelta(days=1), PARIS)


def test_locate_needs_an_aware_instant() -> None:
    with pytest.raises(ValueError):
        locate(datetime(2026, 1, 15, 12), PARIS)


@settings(max_examples=300, deadline=None)
@given(st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2040, 1, 1),
                    timezones=st.just(UTC)))
def test_locate_and_hour_start_agree(at: datetime) -> None:
    day, hour = locate(at, PARIS)
    assert 0 <= hour < day_hours(day, PARIS)
    start = hour_start(day, hour, PARIS)
    assert start <= at < start + timedelta(hours=1)
    assert at.astimezone(PARIS).date() == day


@settings(max_examples=200, deadline=None)
@given(st.dates(min_value=date(2000, 1, 1), max_value=date(2040, 1, 1)))
def test_days_are_contiguous_and_23_to_25_hours(day: date) -> None:
    n = day_hours(day, PARIS)
    assert n in (23, 24, 25)
    assert hour_start(day, n, PARIS) == day_start(day + timedelta(days=1), PARIS)
    assert [locate(hour_start(day, h, PARIS), PARIS) for h in range(n)] == [
        (day, h) for h in range(n)
    ]


# Parsing -----------------------------------------------------------------------------


def test_parses_four_unordered_days_sorted() -> None:
    body = make_signals(WINTER, {2: [1] * 7 + [3, 3] + [1] * 15})
    assert [d["jour"][:10] for d in body["signals"]] == [
        "2026-01-18", "2026-01-16", "2026-01-17", "2026-01-15"]
    signals = parse_signals(body, PARIS)
    assert [d.day for d in signals.days] == [WINTER + timedelta(days=i) for i in range(4)]
    assert signals.day(date(2026, 1, 17)).levels[7:9] == (3, 3)  # type: ignore[union-attr]
    assert signals.notes == ()
    assert signals.generated_at == utc(2026, 1, 14, 22)


def test_parses_rte_spelling_exactly() -> None:
    body = {"signals": [{
        "GenerationFichier": "2022-12-04T23:00:00+01:00",
        "jour": "2022-12-05T00:00:00+01:00",
        "dvalue": 2,
        "message": "Pas d\u2019alerte.",
        "values": [{"pas": h, "hvalue": 2 if h == 18 else (0 if h < 4 else 1)}
                   for h in range(24)],
    }]}
    (day,) = parse_signals(body, PARIS).days
    assert day.day == date(2022, 12, 5)
    assert day.levels[:4] == (0, 0, 0, 0) and day.levels[18] == 2
    assert day.dvalue == 2 and day.message.startswith("Pas")
    assert day.generated_at == utc(2022, 12, 4, 22)


def test_dst_days_have_23_and_25_entries() -> None:
    spring = make_day(SPRING, [1] * 20 + [3, 3, 3])
    autumn = make_day(AUTUMN, [2] * 25)
    assert len(spring["values"]) == 23 and len(autumn["values"]) == 25
    signals = parse_signals({"signals": [autumn, spring]}, PARIS)
    assert [len(d.levels) for d in signals.days] == [23, 25]
    assert signals.notes == ()


def test_a_dst_day_with_24_wall_clock_entries_is_read_by_wall_clock() -> None:
    # Spring: wall hour 2 does not exist; hours 2.. are 03:00.. on the wall.
    entries = make_day(SPRING, list(range(24)))
    entries["values"] = [{"pas": h, "hvalue": min(3, h // 6)} for h in range(24)]
    (day,) = parse_signals({"signals": [entries]}, PARIS).days
    assert len(day.levels) == 23
    assert day.levels[2] == min(3, 3 // 6)  # wall 03:00
    assert day.levels[22] == 3  # wall 23:00
    # Autumn: wall hour 2 happens twice, both get pas 2's value.
    autumn = make_day(AUTUMN)
    autumn["values"] = [{"pas": h, "hvalue": 3 if h == 2 else 1} for h in range(24)]
    parsed = parse_signals({"signals": [autumn]}, PARIS)
    (aday,) = parsed.days
    assert len(aday.levels) == 25
    assert [h for h, lv in enumerate(aday.levels) if lv == 3] == [2, 3]
    assert any("wall-clock" in n for n in parsed.notes)


def test_a_24_hour_day_with_23_entries_is_filled_from_a_neighbour() -> None:
    # The openHAB fixture: 2022-09-22 has only pas 0..22.
    raw = make_day(date(2022, 9, 22), [1] * 22 + [2])
    signals = parse_signals({"signals": [raw]}, PARIS)
    (day,) = signals.days
    assert len(day.levels) == 24
    assert day.levels[23] == 2 and day.filled == (23,)
    assert any("missing" in n for n in signals.notes)


def test_invalid_entries_are_skipped_and_noted() -> None:
    raw = make_day(WINTER)
    raw["values"][5] = {"pas": 5, "hvalue": 7}
    raw["values"][6] = {"pas": 6, "hvalue": True}
    raw["values"][7] = {"pas": "7", "hvalue": 1}
    raw["values"].append({"pas": 30, "hvalue": 1})
    signals = parse_signals({"signals": [raw, {"jour": "nonsense"}, 3]}, PARIS)
    (day,) = signals.days
    assert day.filled == (5, 6, 7)
    assert len(signals.notes) >= 4


@pytest.mark.parametrize(
    "body",
    [[], "x", {"signals": {}}, {"nope": []}, {"signals": []},
     {"signals": [{"jour": "2026-01-15T00:00:00+01:00", "values": [{"pas": 0, "hvalue": 9}]}]}],
)
def test_unusable_answers_raise(body: object) -> None:
    with pytest.raises(GridDataError):
        parse_signals(body, PARIS)


def test_days_given_in_utc_are_paris_days() -> None:
    raw = make_day(WINTER)
    raw["jour"] = "2026-01-14T23:00:00Z"
    assert parse_signals({"signals": [raw]}, PARIS).days[0].day == WINTER


# The schedule ------------------------------------------------------------------------


def schedule_of(levels: dict[int, list[int]], overrides: dict | None = None,
                first: date = WINTER) -> GridSchedule:
    return GridSchedule(parse_signals(make_signals(first, levels), PARIS), overrides, tz=PARIS)


def test_overrides_merge_on_top_of_rte() -> None:
    s = schedule_of({}, {(WINTER, 10): 3, (WINTER, 11): 0})
    assert s.level_at(WINTER, 10) == 3 and s.level_at(WINTER, 11) == 0
    assert s.level_at(WINTER, 12) == 1
    assert s.is_override(WINTER, 10) and not s.is_override(WINTER, 12)
    assert s.source_of(WINTER) == "manual"
    assert s.source_of(WINTER + timedelta(days=1)) == "ecowatt"
    assert s.day_level(WINTER) == 3
    assert s.level_at(WINTER, 24) is None
    assert s.level_at(WINTER + timedelta(days=9), 0) is None


def test_an_override_lowers_the_day_level() -> None:
    s = schedule_of({0: [1] * 8 + [3] + [1] * 15}, {(WINTER, 8): 1})
    assert s.day_level(WINTER) == 1


def test_override_only_days_use_the_baseline() -> None:
    s = GridSchedule(None, {(SPRING, 22): 3}, tz=PARIS)
    hours = s.hours(SPRING)
    assert hours is not None and len(hours) == 23
    assert hours[:22] == (BASELINE_LEVEL,) * 22 and hours[22] == 3
    assert s.days() == (SPRING,)


def test_overrides_of_hours_a_day_does_not_have_are_ignored() -> None:
    s = GridSchedule(None, {(SPRING, 23): 3, (WINTER, 5): 9}, tz=PARIS)
    assert s.days() == ()


def test_signal_view_at_an_instant() -> None:
    s = schedule_of({0: [1] * 18 + [2, 3] + [1] * 4})
    view = s.signal_at(utc(2026, 1, 15, 17, 30))  # 18:30 in Paris
    assert view is not None
    assert (view.day, view.hour, view.level, view.day_level, view.source) == (
        WINTER, 18, 2, 3, "ecowatt")
    assert len(view.hours) == 24
    assert s.signal_at(utc(2026, 2, 1)) is None


def test_shed_window_spans_contiguous_hours_and_midnight() -> None:
    s = schedule_of({0: [1] * 22 + [2, 3], 1: [3, 2] + [1] * 22})
    w = s.shed_window(utc(2026, 1, 15, 12), 2)
    # 22:00 Paris on the 15th to 02:00 Paris on the 16th.
    assert w == ShedWindow(3, utc(2026, 1, 15, 21), utc(2026, 1, 16, 1), "ecowatt")
    # Inside the window: from stays at its start; the level is what is still ahead.
    assert s.shed_window(utc(2026, 1, 16, 0, 30), 2) == ShedWindow(
        2, utc(2026, 1, 15, 21), utc(2026, 1, 16, 1), "ecowatt")
    assert s.shed_window(utc(2026, 1, 16, 1), 2) is None
    assert s.shed_window(utc(2026, 1, 15, 12), 3) == ShedWindow(
        3, utc(2026, 1, 15, 22), utc(2026, 1, 15, 23) + timedelta(hours=1), "ecowatt")


def test_shed_window_is_the_current_one_then_the_next() -> None:
    s = schedule_of({0: [1] * 8 + [2, 2] + [1] * 8 + [3] + [1] * 5})
    first = s.shed_window(utc(2026, 1, 15, 7, 10), 2)
    assert first is not None and (first.from_at, first.until_at) == (
        utc(2026, 1, 15, 7), utc(2026, 1, 15, 9))
    second = s.shed_window(utc(2026, 1, 15, 9), 2)
    assert second is not None and (second.level, second.from_at) == (3, utc(2026, 1, 15, 17))


def test_a_manual_hour_makes_the_window_manual() -> None:
    s = schedule_of({0: [1] * 10 + [2] + [1] * 13}, {(WINTER, 11): 3})
    w = s.shed_window(utc(2026, 1, 15, 0), 2)
    assert w == ShedWindow(3, utc(2026, 1, 15, 9), utc(2026, 1, 15, 11), "manual")


def test_an_unknown_day_ends_a_window() -> None:
    s = GridSchedule(None, {(WINTER, 23): 3, (WINTER + timedelta(days=2), 0): 3}, tz=PARIS)
    w = s.shed_window(utc(2026, 1, 15), 2)
    assert w is not None and w.until_at == utc(2026, 1, 15, 23)


def test_shed_window_across_the_spring_dst_change() -> None:
    s = GridSchedule(None, {(SPRING, h): 3 for h in range(1, 4)}, tz=PARIS)
    w = s.shed_window(utc(2026, 3, 28, 12), 2)
    assert w is not None
    # 01:00 winter time (00:00Z) to 05:00 summer time (03:00Z): three real hours.
    assert (w.from_at, w.until_at) == (utc(2026, 3, 29, 0), utc(2026, 3, 29, 3))


def test_threshold_must_be_a_shedding_level() -> None:
    with pytest.raises(ValueError):
        schedule_of({}).shed_window(utc(2026, 1, 15), 0)


levels_st = st.integers(0, 3)


@st.composite
def dst_schedules(draw: st.DrawFn) -> tuple[GridSchedule, datetime, int]:
    first = draw(st.sampled_from([SPRING, AUTUMN, WINTER, date(2027, 3, 28), date(2027, 10, 31)]))
    first -= timedelta(days=draw(st.integers(0, 3)))
    days = [make_day(first + timedelta(days=i),
                     draw(st.lists(levels_st, min_size=n, max_size=n)))
            for i in range(4)
            for n in [day_hours(first + timedelta(days=i), PARIS)]]
    overrides = draw(st.dictionaries(
        st.tuples(st.just(first + timedelta(days=draw(st.integers(0, 3)))), st.integers(0, 24)),
        levels_st, max_size=6))
    sched = GridSchedule(parse_signals({"signals": days}, PARIS), overrides, tz=PARIS)
    at = day_start(first, PARIS) + timedelta(minutes=draw(st.integers(-120, 4 * 25 * 60)))
    return sched, at, draw(st.integers(1, 3))


@settings(max_examples=200, deadline=None)
@given(dst_schedules())
def test_shed_window_invariants_over_dst_days(case: tuple[GridSchedule, datetime, int]) -> None:
    sched, at, threshold = case
    for day in sched.days():
        hours = sched.hours(day)
        assert hours is not None and len(hours) == day_hours(day, PARIS)
        assert sched.day_level(day) == max(hours)
    w = sched.shed_window(at, threshold)
    if w is None:
        # No hour from now on reaches the threshold.
        day, hour = locate(at, PARIS)
        t = hour_start(day, hour, PARIS)
        for _ in range(24 * 5):
            lv = sched.level_at_time(t)
            assert lv is None or lv < threshold
            t += timedelta(hours=1)
        return
    assert w.from_at < w.until_at and w.until_at > at
    assert w.from_at.minute == 0 and w.until_at.minute == 0
    hours_in = []
    t = w.from_at
    while t < w.until_at:
        lv = sched.level_at_time(t)
        assert lv is not None and lv >= threshold
        hours_in.append((t, lv))
        t += timedelta(hours=1)
    assert w.level == max(lv for t, lv in hours_in if t + timedelta(hours=1) > at)
    for edge in (w.from_at - timedelta(hours=1), w.until_at):
        lv = sched.level_at_time(edge)
        assert lv is None or lv < threshold
    if w.from_at > at:  # the next window: nothing at or above the threshold before it
        t = hour_start(*locate(at, PARIS), PARIS)
        while t < w.from_at:
            lv = sched.level_at_time(t)
            assert lv is None or lv < threshold
            t += timedelta(hours=1)


def test_override_problems() -> None:
    now = utc(2026, 3, 29, 10)
    assert override_problem(SPRING, 22, now, PARIS) is None
    assert "23 hours" in (override_problem(SPRING, 23, now, PARIS) or "")
    assert "ended" in (override_problem(SPRING, 3, now, PARIS) or "")
    assert override_problem(SPRING, 12, now, PARIS) is None  # the current hour (12:00 CEST)
    assert "ahead" in (override_problem(date(2026, 6, 1), 0, now, PARIS) or "")


def test_empty_signals() -> None:
    s = GridSchedule(Signals(), None, tz=PARIS)
    assert s.days() == () and s.signal_at(utc(2026, 1, 1)) is None
    assert s.shed_window(utc(2026, 1, 1)) is None

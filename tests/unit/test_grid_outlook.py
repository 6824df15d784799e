"""The gateway's grid outlook: local hours to UTC windows, DST days, merging."""

from __future__ import annotations

from datetime import UTC, date, datetime
from zoneinfo import ZoneInfo

from gateway.ems.grid import GridOutlook, Window, hour_starts, merge, signal_windows

PARIS = ZoneInfo("Europe/Paris")


def test_a_normal_day_has_24_hours_starting_at_local_midnight() -> None:
    starts = hour_starts(date(2026, 1, 15), PARIS)
    assert len(starts) == 24
    assert starts[0] == datetime(2026, 1, 14, 23, 0, tzinfo=UTC)
    assert starts[18] == datetime(2026, 1, 15, 17, 0, tzinfo=UTC)


def test_dst_days_have_23_and_25_hours() -> None:
    spring = hour_starts(date(2026, 3, 29), PARIS)
    autumn = hour_starts(date(2026, 10, 25), PARIS)
    assert len(spring) == 23 and len(autumn) == 25
    # Spring: the local 02:00 hour does not exist; index 2 is 03:00 local (01:00 UTC).
    assert spring[2] == datetime(2026, 3, 29, 1, 0, tzinfo=UTC)


def test_windows_follow_the_hours_and_merge_contiguous_stress() -> None:
    hours = [1] * 24
    hours[18] = hours[19] = 3
    hours[8] = 2
    windows = signal_windows(date(2026, 1, 15), hours, PARIS)
    assert len(windows) == 24
    stress = merge(windows, 2)
    assert stress == [
        Window(datetime(2026, 1, 15, 7, tzinfo=UTC), datetime(2026, 1, 15, 8, tzinfo=UTC), 2),
        Window(datetime(2026, 1, 15, 17, tzinfo=UTC), datetime(2026, 1, 15, 19, tzinfo=UTC), 3),
    ]
    assert merge(windows, 3) == [stress[1]]


def test_the_hour_s_own_level_wins_where_the_signal_covers_it() -> None:
    hours = [1] * 24
    hours[17], hours[18] = 2, 3  # orange then red: the shed window says 3 for both
    shed = Window(datetime(2026, 1, 15, 16, tzinfo=UTC), datetime(2026, 1, 15, 18, tzinfo=UTC), 3)
    outlook = GridOutlook.build(date(2026, 1, 15), hours, shed, PARIS)
    assert outlook.level_at(datetime(2026, 1, 15, 16, 30, tzinfo=UTC)) == 2  # 17:30 Paris
    assert outlook.level_at(datetime(2026, 1, 15, 17, 30, tzinfo=UTC)) == 3
    assert outlook.level_at(datetime(2026, 1, 15, 12, 0, tzinfo=UTC)) == 1
    # Beyond the signal's day only the shed window speaks.
    late = Window(datetime(2026, 1, 16, 7, tzinfo=UTC), datetime(2026, 1, 16, 9, tzinfo=UTC), 2)
    outlook = GridOutlook.build(date(2026, 1, 15), hours, late, PARIS)
    assert outlook.level_at(datetime(2026, 1, 16, 8, tzinfo=UTC)) == 2
    assert outlook.level_at(datetime(2026, 1, 17, 12, 0, tzinfo=UTC)) == 0  # unknown
    ahead = outlook.windows_from(2, datetime(2026, 1, 15, 12, tzinfo=UTC))
    assert [w.level for w in ahead] == [3, 2]  # the orange-red evening, then the late shed


def test_no_signal_means_level_zero_and_no_windows() -> None:
    outlook = GridOutlook.build(None, None, None, PARIS)
    now = datetime(2026, 1, 15, 12, tzinfo=UTC)
    assert outlook.level_at(now) == 0 and outlook.windows_from(1, now) == []

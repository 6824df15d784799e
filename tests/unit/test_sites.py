"""What the coordinator knows of each site (central/core/sites.py).

PROTOCOL.md "One cycle", step 1: the surplus S is the sum of the latest
``net_export_kw`` of the sites heard from in the last period. Times are the
coordinator's own receive times, passed in.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from central.core import SiteBook

NOW = datetime(2026, 6, 21, 12, 15, tzinfo=UTC)
PERIOD_S = 900.0


def ago(seconds: float) -> datetime:
    return NOW - timedelta(seconds=seconds)


def test_reference_case_0_sums_to_minus_7() -> None:
    book = SiteBook()
    for i, kw in enumerate([-5.0, 5.0, -9.0, 2.0, 0.0]):
        book.set_netload(f"s{i}", kw, ago(60))
    view = book.surplus(NOW, PERIOD_S)
    assert view.surplus_kw == -7.0
    assert view.contributing == ("s0", "s1", "s2", "s3", "s4")
    assert view.stale == ()


def test_surplus_sums_only_fresh_net_loads_and_lists_the_stale() -> None:
    book = SiteBook()
    book.set_netload("fresh", 4.0, ago(10))
    book.set_netload("edge", 3.0, ago(PERIOD_S))  # exactly one period old: still fresh
    book.set_netload("old", 100.0, ago(PERIOD_S + 0.001))
    book.set_netload("ancient", -50.0, ago(86_400))
    view = book.surplus(NOW, PERIOD_S)
    assert view.surplus_kw == 7.0
    assert set(view.contributing) == {"fresh", "edge"}
    assert set(view.stale) == {"old", "ancient"}


def test_sites_without_a_net_load_are_neither_fresh_nor_stale() -> None:
    book = SiteBook()
    book.set_status("quiet", True, ago(5))
    view = book.surplus(NOW, PERIOD_S)
    assert view.surplus_kw == 0.0
    assert view.contributing == () and view.stale == ()


def test_latest_net_load_wins() -> None:
    book = SiteBook()
    book.set_netload("s1", 8.0, ago(600))
    book.set_netload("s1", -2.0, ago(30))
    assert book.surplus(NOW, PERIOD_S).surplus_kw == -2.0
    record = book.get("s1")
    assert record is not None
    assert (record.net_export_kw, record.netload_at) == (-2.0, ago(30))


def test_a_refreshed_site_becomes_fresh_again() -> None:
    book = SiteBook()
    book.set_netload("s1", 5.0, ago(2 * PERIOD_S))
    assert book.surplus(NOW, PERIOD_S).stale == ("s1",)
    book.set_netload("s1", 6.0, ago(1))
    view = book.surplus(NOW, PERIOD_S)
    assert (view.surplus_kw, view.contributing, view.stale) == (6.0, ("s1",), ())


def test_surplus_is_a_function_of_the_given_time() -> None:
    book = SiteBook()
    book.set_netload("s1", 5.0, NOW)
    assert book.surplus(NOW + timedelta(seconds=PERIOD_S), PERIOD_S).surplus_kw == 5.0
    later = book.surplus(NOW + timedelta(seconds=PERIOD_S + 1), PERIOD_S)
    assert later.surplus_kw == 0.0 and later.stale == ("s1",)


def test_online_sites_follow_the_last_status() -> None:
    book = SiteBook()
    assert book.online_sites() == frozenset()
    book.set_status("a", True, ago(100))
    book.set_status("b", True, ago(90))
    book.set_status("c", False, ago(80))
    assert book.online_sites() == frozenset({"a", "b"})
    book.set_status("a", False, ago(50))  # its will: offline
    book.set_status("c", True, ago(40))
    assert book.online_sites() == frozenset({"b", "c"})
    book.set_status("a", True, ago(10))
    assert book.online_sites() == frozenset({"a", "b", "c"})


def test_a_net_load_alone_does_not_make_a_site_online() -> None:
    book = SiteBook()
    book.set_netload("s1", 3.0, ago(5))
    assert book.online_sites() == frozenset()


def test_an_offline_site_heard_from_in_the_period_still_counts_in_the_surplus() -> None:
    # PROTOCOL.md: S sums the sites heard from in the last period, whatever their status.
    book = SiteBook()
    book.set_status("s1", False, ago(5))
    book.set_netload("s1", 3.0, ago(60))
    assert book.surplus(NOW, PERIOD_S).surplus_kw == 3.0


def test_status_keeps_version_loads_and_time() -> None:
    book = SiteBook()
    record = book.set_status("s1", True, ago(5), version="1.2.0", loads=("wh", "hp"))
    assert record is book.get("s1")
    assert (record.site, record.online, record.version, record.loads) == (
        "s1",
        True,
        "1.2.0",
        ("wh", "hp"),
    )
    assert record.status_at == ago(5)
    book.set_status("s1", False, ago(1))
    assert (record.online, record.version, record.loads) == (False, "unknown", ())


def test_records_get_and_len() -> None:
    book = SiteBook()
    assert len(book) == 0 and book.get("s1") is None and book.records() == []
    book.set_status("s1", True, ago(5))
    book.set_netload("s2", 1.0, ago(5))
    book.set_netload("s1", 2.0, ago(5))
    assert len(book) == 2
    assert [r.site for r in book.records()] == ["s1", "s2"]


def test_without_an_allow_list_every_site_is_known() -> None:
    book = SiteBook()
    assert book.allowed is None
    assert book.knows("anything") and book.knows("s1")


def test_allow_list_decides_who_is_known() -> None:
    book = SiteBook(allowed=frozenset({"s1", "s2"}))
    assert book.knows("s1") and book.knows("s2")
    assert not book.knows("s3")
    assert not book.knows("")


def test_an_empty_allow_list_knows_nobody() -> None:
    assert not SiteBook(allowed=frozenset()).knows("s1")


@settings(max_examples=100, deadline=None)
@given(
    entries=st.dictionaries(
        st.integers(0, 999).map(lambda i: f"s{i}"),
        st.tuples(
            st.integers(-5000, 10_000).map(lambda cents: cents / 100),
            st.integers(0, 2 * int(PERIOD_S)),
        ),
        max_size=30,
    )
)
def test_surplus_is_the_sum_of_fresh_values(entries: dict[str, tuple[float, int]]) -> None:
    book = SiteBook()
    for site, (kw, age_s) in entries.items():
        book.set_netload(site, kw, ago(age_s))
    view = book.surplus(NOW, PERIOD_S)
    fresh = {s for s, (_, age) in entries.items() if age <= PERIOD_S}
    assert set(view.contributing) == fresh
    assert set(view.stale) == set(entries) - fresh
    assert len(view.contributing) + len(view.stale) == len(entries)
    assert view.surplus_kw == pytest.approx(sum(entries[s][0] for s in fresh), abs=1e-9)

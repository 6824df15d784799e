"""The operator page in a real browser (headless Chromium, Playwright) on a live coordinator.

The coordinator, its page, a real Mosquitto, RTE on loopback and three
simulated homes run in the background (``conftest.Community``); one cycle has
run and been reported before the first test. Each test opens the page in a
fresh browser context and reads it as an operator would.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

import httpx
import pytest
from livecommunity import SHADOW, TOKEN, Community, PageWatch, paris_today
from playwright.sync_api import expect

from central.recorder import Recorder

pytestmark = [pytest.mark.integration, pytest.mark.browser]


def open_page(page: Any) -> None:
    page.goto("/")
    expect(page.locator("#live")).to_have_text("live")
    expect(page.locator("#community")).to_have_text("c1")


def tile(page: Any, label: str) -> Any:
    return page.locator("#tiles .tile", has=page.locator("span", has_text=re.compile(
        f"^{re.escape(label)}$"))).locator("b")


def site_cells(page: Any, site: str) -> Any:
    row = page.locator("#sites tbody tr", has=page.locator("td:first-child", has_text=site))
    return row.locator("td")


def hour_cell(page: Any, day: str, hour: int) -> Any:
    return page.locator(f'#grid-hours [title^="{day} {hour}:00 level"]')


def overrides(community: Community) -> dict[Any, int]:
    reader = Recorder.reader(community.settings.recorder.url)
    try:
        return reader.grid_overrides()
    finally:
        reader.close()


def assert_clean(watch: PageWatch) -> None:
    assert watch.errors == [], f"console errors: {watch.errors}"
    assert watch.off_loopback == [], f"requests off loopback: {watch.off_loopback}"


def test_page_shows_the_community_and_its_sites(
    page: Any, watch: PageWatch, community: Community
) -> None:
    open_page(page)
    expect(tile(page, "surplus kW")).to_have_text("5.00")
    expect(tile(page, "allocated kW")).to_have_text("4.00")
    expect(tile(page, "injected now kW")).to_have_text("6.00")
    expect(tile(page, "sites online")).to_have_text("3 / 3")
    expect(tile(page, "degraded")).to_have_text("0")
    level = httpx.get(f"{community.base_url}/api/community").json()["grid_level"]
    assert level in (0, 1, 2, 3)
    expect(tile(page, "grid level")).to_have_text(str(level))
    expect(page.locator("#cycle-line")).to_contain_text(
        f"cycle {community.first_cycle}: closed (all_replied), 3/3 replies")

    expect(page.locator("#sites tbody tr")).to_have_count(3)
    for site in ("s0", "s1"):
        cells = site_cells(page, site)
        expect(cells.nth(1)).to_have_text("online")
        expect(cells.nth(2)).to_have_text("3.00")  # net load
        expect(cells.nth(3)).to_have_text(re.compile(r"^\d+$"))  # its age, s
        expect(cells.nth(4)).to_have_text(community.first_cycle)
        expect(cells.nth(5)).to_have_text(re.compile(r"^\d+\.\d{3}$"))  # reply delay, s
        expect(cells.nth(6)).to_have_text("2.00")  # flex offered
        expect(cells.nth(7)).to_have_text("2.00")  # allocated
        expect(cells.nth(8)).to_have_text(re.compile(r"^[12]$"))  # rank
        expect(cells.nth(9)).to_have_text("50.0 %")
    expect(site_cells(page, "s2").nth(2)).to_have_text("-1.00")
    # The share over all the records (this run only, here: see test_long_run_share.py).
    expect(page.locator("#sites thead")).to_contain_text("long-run share")
    assert_clean(watch)


def test_a_cycle_shows_live_without_reload(
    page: Any, watch: PageWatch, community: Community
) -> None:
    open_page(page)
    expect(tile(page, "allocated kW")).not_to_have_text("–")
    page.evaluate("window.__sameDocument = true")
    before = page.locator("#cycle-line").inner_text()

    cycle = community.cycle(flex_kw=1.0, reported_export_kwh=0.25)

    assert cycle not in before
    expect(page.locator("#cycle-line")).to_contain_text(f"cycle {cycle}: closed")
    expect(tile(page, "allocated kW")).to_have_text("2.00")
    for site in ("s0", "s1"):
        expect(site_cells(page, site).nth(4)).to_have_text(cycle)
        expect(site_cells(page, site).nth(7)).to_have_text("1.00")
        expect(site_cells(page, site).nth(6)).to_have_text("1.00")
    assert page.evaluate("window.__sameDocument") is True  # no reload happened
    assert_clean(watch)


def test_history_charts_draw_the_cycles(
    page: Any, watch: PageWatch, community: Community
) -> None:
    open_page(page)
    for chart in ("#chart-today", "#chart-week"):
        svg = page.locator(chart)
        for series in ("surplus_kw", "allocated_kw", "injected_kw"):
            expect(svg.locator(f'[data-series="{series}"]').first).to_be_attached()
        # The first cycle's points, with their values for the operator's pointer.
        point = svg.locator(f'circle[data-cycle="{community.first_cycle}"]')
        expect(point).to_have_count(3)
        titles = point.locator("title").all_text_contents()
        assert any("allocated 4.00 kW" in t for t in titles), titles
        assert any("surplus 5.00 kW" in t for t in titles), titles
        assert any("injected 1.00 kW" in t for t in titles), titles  # 2 × 0.5 kWh over 1 h
        expect(svg.locator("text", has_text="no cycles")).to_have_count(0)
    box = page.locator("#chart-today").bounding_box()
    assert box is not None and box["width"] > 100 and box["height"] > 100
    assert_clean(watch)


def test_ecowatt_days_hour_by_hour(page: Any, watch: PageWatch, community: Community) -> None:
    open_page(page)
    grid = httpx.get(f"{community.base_url}/api/grid").json()
    today = paris_today().isoformat()
    tomorrow = (paris_today() + timedelta(days=1)).isoformat()
    expect(page.locator("#grid-meta")).to_contain_text("Europe/Paris")
    expect(page.locator("#grid-meta")).to_contain_text("RTE polled")
    [day] = [d for d in grid["days"] if d["day"] == today]
    assert 3 in [h["level"] for h in day["hours"]]  # RTE's red hour made it through
    for h, hour in enumerate(day["hours"]):
        cell = hour_cell(page, today, h)
        expect(cell).to_have_text(str(hour["level"]))
        expect(cell).to_have_class(re.compile(rf"\blv{hour['level']}\b"))
    expect(hour_cell(page, tomorrow, 0)).to_have_count(1)
    expect(page.locator("#grid-hours .now")).to_have_count(1)
    assert_clean(watch)


def test_shadow_strategies_score_each_cycle_live(
    page: Any, watch: PageWatch, community: Community
) -> None:
    open_page(page)
    expect(page.locator("#shadow-off")).to_be_hidden()
    expect(page.locator("#shadow-meta")).to_have_text("(executed: fifo)")

    def week_cycles(name: str) -> Any:  # the "cycles" cell of the last 7 days
        return page.locator(f'#shadow-table tr[data-strategy="{name}"] td').nth(10)

    for name in SHADOW:
        expect(week_cycles(name)).to_have_text(re.compile(rf"^{community.cycles_run}\b"))
    community.cycle(flex_kw=2.0, reported_export_kwh=0.5)
    for name in SHADOW:  # the "shadow" event brought the new scores, no reload
        expect(week_cycles(name)).to_have_text(re.compile(rf"^{community.cycles_run}\b"))
    assert_clean(watch)


def test_override_with_the_admin_token(
    page: Any, watch: PageWatch, community: Community
) -> None:
    tomorrow = paris_today() + timedelta(days=1)
    day = tomorrow.isoformat()
    open_page(page)
    expect(hour_cell(page, day, 18)).not_to_have_class(re.compile(r"\bovr\b"))
    form = page.locator("#override")
    form.locator('[name="day"]').fill(day)
    form.locator('[name="hour"]').fill("18")
    form.locator('[name="level"]').select_option("3")
    form.locator('[name="token"]').fill(TOKEN)
    form.locator('button[type="submit"]').click()
    expect(page.locator("#override-result")).to_have_text("queued")
    cell = hour_cell(page, day, 18)
    expect(cell).to_have_text("3")
    expect(cell).to_have_class(re.compile(r"\bovr\b"))
    expect(cell).to_have_attribute("title", re.compile(r"level 3 \(override; RTE 1\)"))
    assert overrides(community).get((tomorrow, 18)) == 3
    assert_clean(watch)


def test_override_refused_without_or_with_a_wrong_token(
    page: Any, watch: PageWatch, community: Community
) -> None:
    tomorrow = paris_today() + timedelta(days=1)
    day = tomorrow.isoformat()
    open_page(page)
    form = page.locator("#override")
    result = page.locator("#override-result")
    form.locator('[name="day"]').fill(day)
    form.locator('[name="hour"]').fill("19")
    form.locator('[name="level"]').select_option("3")
    for token, refusal in (("", "401: admin token required"),
                           ("not-the-admin-token", "403: wrong admin token")):
        form.locator('[name="token"]').fill(token)
        form.locator('button[type="submit"]').click()
        expect(result).to_have_text(refusal)
        expect(result).to_have_class("error")
    # The grid service takes overrides in order: once a later accepted one shows, a
    # refused one that had slipped through would show too.
    form.locator('[name="hour"]').fill("20")
    form.locator('[name="level"]').select_option("2")
    form.locator('[name="token"]').fill(TOKEN)
    form.locator('button[type="submit"]').click()
    expect(hour_cell(page, day, 20)).to_have_class(re.compile(r"\bovr\b"))
    expect(hour_cell(page, day, 19)).not_to_have_class(re.compile(r"\bovr\b"))
    expect(hour_cell(page, day, 19)).to_have_text("1")
    stored = overrides(community)
    assert (tomorrow, 19) not in stored and stored.get((tomorrow, 20)) == 2
    # The browser's console reports the refused fetches (401, 403): those are expected.
    refusals = [e for e in watch.errors if "401" in e or "403" in e]
    assert len(refusals) == len(watch.errors) == 2, watch.errors
    assert watch.off_loopback == []

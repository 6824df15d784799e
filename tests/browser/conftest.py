"""Fixtures of the operator page's browser tests.

``community`` (one per module): a live coordinator, its page and three homes
(``livecommunity.Community``). ``browser`` (one per module): Debian's chromium
driven by Playwright, with the flags this closed machine needs; the tests skip,
saying why, only when no chromium can be found. ``page``: a fresh context and
tab per test that records console errors (``watch``) and refuses, and records,
any request that leaves loopback.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import pytest
from livecommunity import (
    CHROMIUM_ARGS,
    LOOPBACK,
    PARIS,
    RTE_SECRET,
    TODAY_LEVELS,
    Community,
    PageWatch,
    chromium_path,
)

from ems.rte_standin import RteStandIn, make_signals


@pytest.fixture(scope="module")
def rte() -> Iterator[RteStandIn]:
    with RteStandIn(client_id="browser-rte", client_secret=RTE_SECRET) as standin:
        today = datetime.now(PARIS).date()
        standin.set_signals(make_signals(today, {0: TODAY_LEVELS}))
        yield standin


@pytest.fixture(scope="module")
def community(
    mosquitto: Any, rte: RteStandIn, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Community]:
    root = f"b{uuid.uuid4().hex[:10]}"
    with Community(mosquitto, root, tmp_path_factory.mktemp("community"), rte) as live:
        yield live


# The browser --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    path = chromium_path()
    if path is None:
        pytest.skip("no chromium found (/usr/bin/chromium; scripts/system-deps installs "
                    "Debian's, or set EMS_CHROMIUM)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        # Playwright gives each launch a fresh temporary --user-data-dir of its own.
        chromium = pw.chromium.launch(
            executable_path=path, headless=True, args=CHROMIUM_ARGS, timeout=60_000)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def watch() -> PageWatch:
    return PageWatch()


@pytest.fixture
def page(browser: Any, community: Community, watch: PageWatch) -> Iterator[Any]:
    context = browser.new_context(base_url=community.base_url, timezone_id="Europe/Paris")
    context.set_default_timeout(10_000)

    def guard(route: Any) -> None:
        host = urlsplit(route.request.url).hostname or ""
        if route.request.url.startswith(("data:", "blob:")) or host in LOOPBACK:
            route.continue_()
        else:
            watch.off_loopback.append(route.request.url)
            route.abort()

    context.route("**/*", guard)
    tab = context.new_page()
    tab.on("console", lambda msg: watch.errors.append(msg.text) if msg.type == "error" else None)
    tab.on("pageerror", lambda exc: watch.errors.append(f"uncaught: {exc}"))
    try:
        yield tab
    finally:
        context.close()

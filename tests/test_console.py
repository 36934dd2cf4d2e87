"""The web console in a real headless Chromium: pages render, an uploaded picture finds its match.

Skipped, with a message saying how to get one, when no Chromium is installed (`.ci/run` installs
Debian's `chromium`). The browser talks to a real daemon process.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from browser import ARGS, CHROMIUM, needs_chromium
from conftest import b64, brief
from daemon import Daemon
from images import jpeg

pytestmark = needs_chromium


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    d = Daemon(tmp_path_factory.mktemp("console"))
    d.start()
    d.rts("signup", appid="shop")
    for seed in range(6):
        d.rts("add", appid="shop", image=b64(jpeg(seed)), features=[brief(f"product {seed}")])
    yield d
    d.stop()


@pytest.fixture(scope="module")
def page():
    playwright = pytest.importorskip("playwright.sync_api")
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        yield browser.new_page()
        browser.close()


def test_overview_lists_libraries_and_jobs(daemon, page, tmp_path: Path):
    folder = tmp_path / "incoming"
    folder.mkdir()
    for seed in (40, 41, 42):
        (folder / f"{seed}.jpg").write_bytes(jpeg(seed))
    page.goto(daemon.url("admin", "/"))
    assert "same_search" in page.title()
    assert page.locator("table.libraries td a", has_text="shop").count() == 1
    assert "efficientnet_lite0" in page.locator("#status").inner_text()
    page.select_option("#new-job select", "shop")
    page.fill("#new-job input[name=dir]", str(folder))
    page.click("#new-job button")
    page.wait_for_selector("#jobs tr[data-status=done]", timeout=60_000)
    assert "3/3" in page.locator("#jobs tr").first.inner_text()
    assert page.locator("#jobs tr td.near").first.inner_text() == "0"


def test_upload_a_picture_and_see_its_match_first(daemon, page, tmp_path: Path):
    query = tmp_path / "query.jpg"
    query.write_bytes(jpeg(3))
    page.goto(daemon.url("admin", "/libraries/shop"))
    page.set_input_files("#file", str(query))
    page.wait_for_selector("#results .card", timeout=30_000)
    first = page.locator("#results .card").first
    assert first.locator(".brief").inner_text() == "product 3"
    assert float(first.locator(".score").inner_text()) > 0.99
    # the thumbnail loads (after the card appears)
    page.wait_for_function("document.querySelector('#results .card img')?.naturalWidth > 0")
    page.screenshot(path=str(tmp_path / "console-search.png"))
    first.click()
    page.wait_for_selector(".detail")
    assert page.locator(".detail .brief").inner_text() == "product 3"
    page.click("#similar")
    page.wait_for_selector("#results .card")
    assert page.locator("#results .card .brief").first.inner_text() == "product 3"


def test_links_carry_names_that_need_encoding(daemon, page, tmp_path: Path):
    """An appid with a space, '/', '..', '%', '#', '?' and non-ASCII leads to its own pages and thumbnails."""
    name = "q a/..%#?é"
    assert daemon.rts("signup", appid=name)["err_no"] == 0
    # "." and ".." are refused: a browser resolves them as path segments however they are encoded.
    assert daemon.rts("signup", appid="..")["err_no"] == 1
    for seed in (20, 21):
        added = daemon.rts("add", appid=name, image=b64(jpeg(seed)), features=[brief(f"odd {seed}")])
        assert added["err_no"] == 0
    page.goto(daemon.url("admin", "/"))
    page.locator("table.libraries td a", has_text=name).click()
    page.wait_for_selector("#dropzone")
    assert page.locator("h1").inner_text() == name
    page.wait_for_function(
        "[...document.querySelectorAll('.grid img')].every((i) => i.complete && i.naturalWidth > 0)"
    )
    query = tmp_path / "odd.jpg"
    query.write_bytes(jpeg(21))
    page.set_input_files("#file", str(query))
    page.wait_for_selector("#results .card")
    first = page.locator("#results .card").first
    assert first.locator(".brief").inner_text() == "odd 21"
    page.wait_for_function("document.querySelector('#results .card img')?.naturalWidth > 0")
    first.click()
    page.wait_for_selector(".detail")
    assert page.locator(".detail .brief").inner_text() == "odd 21"
    page.wait_for_function("document.querySelector('.detail img')?.naturalWidth > 0")
    page.click("#similar")
    page.wait_for_selector("#results .card")
    assert page.locator("#results .card .brief").first.inner_text() == "odd 21"
    page.locator("main p a", has_text=name).click()
    page.wait_for_selector("#dropzone")
    assert page.locator("h1").inner_text() == name


def test_the_library_page_starts_a_rebuild_and_follows_it_to_the_end(daemon, page):
    page.goto(daemon.url("admin", "/libraries/shop"))
    assert page.locator("#rebuild").inner_text() == "No rebuild since the daemon started."
    page.click("#rebuild-start")
    # The POST answers at once with the rebuild running; the line refreshes itself until it ends.
    page.wait_for_selector("#rebuild[data-state=done]", timeout=30_000)
    assert page.locator("#rebuild").inner_text().startswith("Last rebuild (manual): done after")
    assert not page.locator("#rebuild-start").is_disabled()
    page.reload()
    assert page.locator("#rebuild").inner_text().startswith("Last rebuild (manual): done after")

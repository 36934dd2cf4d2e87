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


# ---- a console that keeps up: live overview, search layout and "more", placeholder thumbnails


def test_overview_refreshes_items_job_message_and_uptime_while_a_job_runs(daemon, page, tmp_path: Path):
    """The library table's item count follows an import as it runs, without a reload."""
    folder = tmp_path / "live"
    folder.mkdir()
    for seed in range(60, 64):
        (folder / f"{seed}.jpg").write_bytes(jpeg(seed))
    assert daemon.rts("signup", appid="live")["err_no"] == 0
    page.goto(daemon.url("admin", "/"))
    count = page.locator("table.libraries tr[data-appid=live] td.items")
    assert count.inner_text() == "0"
    uptime = page.locator("#uptime").inner_text()
    page.select_option("#new-job select", "live")
    page.fill("#new-job input[name=dir]", str(folder))
    page.click("#new-job button")
    page.wait_for_function(
        "document.querySelector('table.libraries tr[data-appid=live] td.items').textContent === '4'",
        timeout=60_000,
    )
    page.wait_for_selector("#new-job .message:has-text('done (4/4)')", timeout=10_000)
    page.wait_for_function(f"document.getElementById('uptime').textContent !== {uptime!r}", timeout=5_000)


def test_search_shows_count_time_more_and_the_query_beside_the_results(daemon, page, tmp_path: Path):
    assert daemon.rts("signup", appid="many")["err_no"] == 0
    for seed in range(100, 130):
        added = daemon.rts("add", appid="many", image=b64(jpeg(seed)), features=[brief(f"many {seed}")])
        assert added["err_no"] == 0
    query = tmp_path / "q.jpg"
    query.write_bytes(jpeg(105))
    page.goto(daemon.url("admin", "/libraries/many"))
    assert page.locator("#more").is_hidden() and page.locator("#query").is_hidden()
    page.set_input_files("#file", str(query))
    page.wait_for_selector("#search-status[data-count='24']", timeout=30_000)
    status = page.locator("#search-status").inner_text()
    assert status.startswith("24 results in ") and " ms (more available), by descending score" in status
    assert page.locator("#results .card .brief").first.inner_text() == "many 105"
    figure, results = page.locator("#query").bounding_box(), page.locator("#results").bounding_box()
    assert figure and results and figure["x"] + figure["width"] <= results["x"]  # beside, not below
    assert abs(figure["y"] - results["y"]) < 80
    page.wait_for_function("document.getElementById('query-image').naturalWidth > 0")
    page.click("#more")
    page.wait_for_selector("#search-status[data-count='30']", timeout=30_000)
    assert page.locator("#more").is_hidden()
    assert page.locator("#search-status").inner_text().startswith("30 results in ")
    briefs = page.locator("#results .card .brief").all_inner_texts()
    assert sorted(briefs) == sorted(f"many {seed}" for seed in range(100, 130))
    page.fill("#min-score", "0.99")  # a score filter: only the picture itself scores that high
    page.set_input_files("#file", [])
    page.set_input_files("#file", str(query))
    page.wait_for_selector("#search-status[data-count='1']", timeout=30_000)
    assert page.locator("#more").is_hidden()


def test_items_without_thumbnail_show_a_placeholder_image(daemon, page, tmp_path: Path):
    """A library loaded from an export (vectors, no thumbnails) shows placeholder tiles, not
    broken images, on its page and in search results."""
    client = daemon.client()
    client.import_library("from-export", client.export_library("shop", vectors=True))
    page.goto(daemon.url("admin", "/libraries/from-export"))
    page.wait_for_function(
        "[...document.querySelectorAll('.grid img')].every((i) => i.complete && i.naturalWidth > 0)"
    )
    assert page.locator(".grid img").count() >= 6
    query = tmp_path / "q.jpg"
    query.write_bytes(jpeg(2))
    page.set_input_files("#file", str(query))
    page.wait_for_selector("#results .card")
    page.wait_for_function(
        "[...document.querySelectorAll('#results img')].every((i) => i.complete && i.naturalWidth > 0)"
    )


def test_the_job_form_starts_a_sync_and_the_item_page_deletes(daemon, page, tmp_path: Path):
    folder = tmp_path / "followed"
    folder.mkdir()
    for seed in (70, 71):
        (folder / f"{seed}.jpg").write_bytes(jpeg(seed))
    assert daemon.rts("signup", appid="followed")["err_no"] == 0
    page.goto(daemon.url("admin", "/"))
    page.select_option("#new-job select[name=appid]", "followed")
    page.fill("#new-job input[name=dir]", str(folder))
    page.select_option("#new-job select[name=kind]", "sync")
    page.check("#new-job input[name=remove_missing]")
    page.click("#new-job button")
    page.wait_for_selector("#new-job .message:has-text('done (2/2)')", timeout=60_000)
    assert f"sync {folder} (removes gone files)" in page.locator("#jobs tr").first.inner_text()
    (folder / "70.jpg").unlink()
    page.click("#new-job button")
    page.wait_for_function(
        "document.querySelector('table.libraries tr[data-appid=followed] td.items').textContent === '1'",
        timeout=60_000,
    )
    page.wait_for_selector("#jobs tr[data-status=done]:has-text('1 removed')", timeout=10_000)

    page.goto(daemon.url("admin", "/libraries/followed"))
    page.locator(".grid .card").first.click()
    page.wait_for_selector("#delete-item")
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("#delete-item")
    page.wait_for_url("**/libraries/followed")
    assert page.locator(".grid .card").count() == 0


def _wait_schedule(client, appid: str, check) -> dict:
    import time

    deadline = time.monotonic() + 60
    while not check(schedule := client.sync_schedule(appid)):
        assert time.monotonic() < deadline, schedule
        time.sleep(0.05)
    return schedule


def test_the_library_page_shows_its_sync_schedule_and_syncs_now(daemon, page, tmp_path: Path):
    folder = tmp_path / "scheduled"
    folder.mkdir()
    for seed in (80, 81):
        (folder / f"{seed}.jpg").write_bytes(jpeg(seed))
    client = daemon.client()
    client.create_library("scheduled")
    client.set_sync("scheduled", str(folder), "2h", remove_missing=True)  # due at once
    _wait_schedule(client, "scheduled", lambda s: s["last_job"] and s["last_job"]["status"] == "done")
    (folder / "82.jpg").write_bytes(jpeg(82))

    page.goto(daemon.url("admin", "/libraries/scheduled"))
    assert page.inner_text("#sync-folder") == str(folder) and page.inner_text("#sync-every") == "2h"
    assert "removes the items whose file is gone" in page.inner_text("#sync-schedule")
    assert page.inner_text("#sync-result").endswith(
        "done: 2 added, 0 updated, 0 removed, 0 unchanged, 0 failed"
    )
    assert page.inner_text("#sync-last-run") != "never" and page.inner_text("#sync-next-run") != "never"
    assert page.input_value("#sync-form input[name=every]") == "2h"
    page.click("#sync-now")
    page.wait_for_selector("#sync-status:has-text('started')")
    page.wait_for_selector("#sync-result:has-text('done: 1 added')", timeout=60_000)
    assert client.library("scheduled")["items"] == 3


def test_edit_a_brief_on_the_item_page_and_from_search_results(daemon, page):
    client = daemon.client("notes")
    client.signup()
    sign = client.add(jpeg(90), "before")
    other = client.add(jpeg(91), "other")
    path = f"/libraries/notes/items/{sign}"

    page.goto(daemon.url("admin", path))
    page.fill("#edit-item input[name=brief_text]", "after")
    page.fill("#edit-item input[name=tag1]", "3")
    page.fill("#edit-item input[name=tag2]", "4")
    page.click("#edit-item button")
    page.wait_for_selector("#edit-status:has-text('Saved.')")
    assert (page.inner_text("#item-brief"), page.inner_text("#item-tags")) == ("after", "3, 4")
    assert client.item("notes", sign).brief == b"after" and client.item("notes", sign).tags == (3, 4)

    page.click("#similar")  # the item itself comes first, then the other one
    page.wait_for_selector("#results .card:nth-child(2)")
    first = page.locator("#results .card").first
    first.locator(".hit-edit").click()
    first.locator(".brief-edit").fill("from the results")
    first.locator(".brief-edit").press("Enter")
    page.wait_for_selector("#results .card .brief:has-text('from the results')")
    assert page.url.endswith(path)  # the card's link was not followed
    assert client.item("notes", sign).brief == b"from the results"
    page.once("dialog", lambda dialog: dialog.accept())
    page.locator("#results .card").nth(1).locator(".hit-remove").click()
    page.wait_for_selector("#results .card.removed")
    assert client.delete_item("notes", other) == 0  # already removed

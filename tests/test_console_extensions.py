"""The console's extensions in a real headless Chromium against the real daemon: a box dragged on
the query picture searches that part only; the duplicates view shows groups and removes extras."""

from __future__ import annotations

from pathlib import Path

import pytest
from browser import ARGS, CHROMIUM, needs_chromium
from conftest import b64, brief
from daemon import Daemon
from images import encode, jpeg, picture
from PIL import Image

pytestmark = needs_chromium
PICTURES = {
    "p1": jpeg(1),
    "p2": jpeg(2),
    "p3": jpeg(3),
    "p1 copy": encode(picture(1), quality=50),
    "p2 smaller": encode(picture(2).resize((240, 180))),
    "p4": jpeg(4),
}


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    d = Daemon(tmp_path_factory.mktemp("console-ext"))
    d.start()
    d.rts("signup", appid="shop")
    for name, image in PICTURES.items():
        assert d.rts("add", appid="shop", image=b64(image), features=[brief(name)])["err_no"] == 0
    yield d
    d.stop()


@pytest.fixture(scope="module")
def page():
    playwright = pytest.importorskip("playwright.sync_api")
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        page = browser.new_page()
        page.on("dialog", lambda dialog: dialog.accept())
        yield page
        browser.close()


def two_panels() -> bytes:
    canvas = Image.new("RGB", (640, 240))
    canvas.paste(picture(1), (0, 0))
    canvas.paste(picture(2), (320, 0))
    return encode(canvas)


def drag(page, selector: str, start: tuple[float, float], end: tuple[float, float]) -> None:
    """Drag from ``start`` to ``end``, given as fractions of the element's box."""
    page.locator(selector).scroll_into_view_if_needed()
    rect = page.locator(selector).bounding_box()
    assert rect is not None and rect["width"] > 0
    page.mouse.move(rect["x"] + start[0] * rect["width"], rect["y"] + start[1] * rect["height"])
    page.mouse.down()
    page.mouse.move(rect["x"] + end[0] * rect["width"], rect["y"] + end[1] * rect["height"], steps=5)
    page.mouse.up()


def test_drag_a_box_on_the_query_picture(daemon, page, tmp_path: Path):
    query = tmp_path / "panels.jpg"
    query.write_bytes(two_panels())
    page.goto(daemon.url("admin", "/libraries/shop"))
    page.set_input_files("#file", str(query))
    page.wait_for_selector("#results .card")  # the whole-picture search first, so it cannot land late
    page.wait_for_selector("#region-panel:not([hidden])")
    page.wait_for_function("document.getElementById('region-image').naturalWidth > 0")
    drag(page, "#region-image", (0.55, 0.05), (0.97, 0.95))
    page.wait_for_selector("#region-status:has-text('Results for the box')", timeout=30_000)
    first = page.locator("#results .card").first
    assert first.locator(".brief").inner_text() in ("p2", "p2 smaller")
    assert float(first.locator(".score").inner_text()) > 0.9
    assert page.locator("#region-box").is_visible()
    drag(page, "#region-image", (0.03, 0.05), (0.45, 0.95))
    page.wait_for_function(
        "document.querySelector('#results .card .brief') && "
        "document.querySelector('#results .card .brief').textContent.startsWith('p1')",
        timeout=30_000,
    )
    box = page.locator("#region-box").bounding_box()
    image = page.locator("#region-image").bounding_box()
    assert box is not None and image is not None and box["width"] > 0.35 * image["width"]
    page.screenshot(path=str(tmp_path / "console-region.png"))


def test_a_confirmed_copy_is_boxed_on_both_pictures_side_by_side(daemon, page, tmp_path: Path):
    """ "Only the same picture": the crop's hit shows the stored thumbnail with the crop's box on
    it, and the query with the box of what it shares (all of it)."""
    query = tmp_path / "crop.jpg"
    query.write_bytes(encode(picture(3).crop((80, 60, 300, 220))))
    page.goto(daemon.url("admin", "/libraries/shop"))
    page.check("#same-picture")
    page.set_input_files("#file", str(query))
    page.wait_for_selector("#results .card .match", timeout=30_000)
    card = page.locator("#results .card").first
    assert card.locator(".brief").inner_text() == "p3"
    sides = card.locator(".match-side")
    assert sides.count() == 2
    page.wait_for_function("[...document.querySelectorAll('.match img')].every((i) => i.naturalWidth > 0)")
    share = []
    for i in range(2):
        box, image = (
            sides.nth(i).locator(".match-box").bounding_box(),
            sides.nth(i).locator("img").bounding_box(),
        )
        assert box is not None and image is not None
        share.append((box["width"] / image["width"], box["height"] / image["height"]))
    (stored_w, stored_h), (query_w, query_h) = share
    assert 0.6 < stored_w < 0.78 and 0.55 < stored_h < 0.8  # 220 x 160 of 320 x 240
    assert query_w > 0.9 and query_h > 0.9
    page.screenshot(path=str(tmp_path / "console-same-picture.png"))


def test_duplicates_view_shows_groups_and_removes_extras(daemon, page, tmp_path: Path):
    page.goto(daemon.url("admin", "/libraries/shop"))
    page.click("#duplicates-link")
    page.wait_for_selector("#dup-scan")
    page.click("#dup-scan button")
    page.wait_for_selector(".dup-group", timeout=30_000)
    groups = page.locator(".dup-group")
    assert groups.count() == 2
    kept = sorted(groups.nth(i).locator(".card.kept .brief").inner_text() for i in range(2))
    assert kept == ["p1", "p2"]
    for i in range(2):
        score = groups.nth(i).locator(".card:not(.kept) .score").first.inner_text()
        assert float(score) >= 0.95
    page.wait_for_function("document.querySelector('.dup-group img')?.naturalWidth > 0")
    assert page.locator(".dup-group .card:not(.kept) .match .match-box").count() >= 1  # boxed copies
    page.screenshot(path=str(tmp_path / "console-duplicates.png"))
    page.click("#dup-remove")
    page.wait_for_selector("#dup-message:has-text('Removed 2 extras')", timeout=30_000)
    assert page.locator(".dup-group").count() == 0
    assert daemon.rts("snapshot", appid="shop")["snapshot"]["index_size"] == len(PICTURES) - 2


def test_duplicates_review_keeps_what_the_operator_picks_per_item(daemon, page):
    """Each group side by side; untick the extra and tick the kept copy: only the ticked goes."""
    assert daemon.rts("signup", appid="review")["err_no"] == 0
    for name in ("p1", "p1 copy", "p3"):
        assert (
            daemon.rts("add", appid="review", image=b64(PICTURES[name]), features=[brief(name)])["err_no"]
            == 0
        )
    page.goto(daemon.url("admin", "/libraries/review/duplicates"))
    page.click("#dup-scan button")
    page.wait_for_selector(".dup-group", timeout=30_000)
    group = page.locator(".dup-group")
    assert group.count() == 1
    kept, extra = group.locator(".member").nth(0), group.locator(".member").nth(1)
    assert kept.locator(".brief").inner_text() == "p1" and extra.locator(".brief").inner_text() == "p1 copy"
    boxes = kept.bounding_box(), extra.bounding_box()
    assert boxes[0] and boxes[1] and abs(boxes[0]["y"] - boxes[1]["y"]) < 5  # side by side
    assert not kept.locator(".remove-tick").is_checked() and extra.locator(".remove-tick").is_checked()
    kept.locator(".remove-tick").check()  # keep the copy, remove the original
    extra.locator(".remove-tick").uncheck()
    group.locator(".remove-ticked").click()
    page.wait_for_selector(".dup-group .message:has-text('Removed 1; 1 kept.')", timeout=30_000)
    assert [m.inner_text() for m in group.locator(".member .brief").all()] == ["p1 copy"]
    stored = {item.brief_text for item in daemon.client().iter_items("review")}
    assert stored == {"p1 copy", "p3"}

"""The console's model views in a real headless Chromium against the real daemon: the
overview lists each model profile with its libraries; the library page re-embeds with a button
and shows the progress until the switch."""

from __future__ import annotations

from pathlib import Path

import pytest
from browser import ARGS, CHROMIUM, needs_chromium
from conftest import b64, brief
from daemon import Daemon
from images import jpeg
from test_models_daemon import MODEL_B_KEEPING_A

pytestmark = needs_chromium


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    d = Daemon(tmp_path_factory.mktemp("console-models"), MODEL_B_KEEPING_A)
    d.start()
    d.rts("signup", appid="shop", model="a")
    for seed in range(12):
        assert d.rts("add", appid="shop", image=b64(jpeg(seed)), features=[brief(f"p{seed}")])["err_no"] == 0
    yield d
    d.stop()


@pytest.fixture(scope="module")
def page():
    playwright = pytest.importorskip("playwright.sync_api")
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        yield browser.new_page()
        browser.close()


def models_rows(page) -> dict[str, str]:
    rows = page.locator("table.models tbody tr")
    return {
        rows.nth(i).locator("td").first.inner_text(): rows.nth(i).locator("td").last.inner_text()
        for i in range(rows.count())
    }


def test_models_table_and_reembed_button(daemon, page, tmp_path: Path):
    page.goto(daemon.url("admin", "/"))
    assert models_rows(page) == {"default": "none", "a": "shop"}
    page.goto(daemon.url("admin", "/libraries/shop"))
    assert "profile a" in page.locator("body").inner_text()
    page.select_option("#reembed-form select", "default")
    page.click("#reembed-form button")
    page.wait_for_selector(
        "#reembed-progress:has-text('Done: the library now serves model default')", timeout=60_000
    )
    page.screenshot(path=str(tmp_path / "console-reembed.png"))
    assert daemon.get("admin", "/api/libraries/shop")["library"]["model_name"] == "default"
    # Reloaded (as the page does itself to show the new model), the outcome stays on it.
    page.reload()
    page.wait_for_selector("#reembed-progress:has-text('Done: the library now serves model default')")
    page.goto(daemon.url("admin", "/"))
    assert models_rows(page) == {"default": "shop", "a": "none"}

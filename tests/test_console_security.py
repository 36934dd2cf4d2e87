"""A hostile page in a real Chromium cannot drive the daemon; the console sits behind the operator login.

The hostile page is served from a second local origin (127.0.0.1 on another port, a tiny HTTP
server in a thread) and fires the requests a CSRF attack would: ``fetch(..., {mode: "no-cors"})``
with ``Content-Type: text/plain``, a ``text/plain`` form whose fields spell out JSON, a DELETE, an
``<img>`` of a thumbnail. DNS rebinding is played with Chromium's host resolver rules: the name
``attacker.example`` resolves to 127.0.0.1. Afterwards the API must show that nothing changed.
Skipped like tests/test_console.py when no Chromium is installed.
"""

from __future__ import annotations

import json
import threading
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from browser import ARGS, CHROMIUM, needs_chromium
from conftest import b64, brief
from daemon import Daemon
from images import jpeg

from same_search.contsign import ContSign

pytestmark = needs_chromium
OPERATOR = "t-ops"
TOKENS = f'[auth]\ntokens = {{ shop = "t-shop", "*" = "{OPERATOR}" }}\n'
ITEMS = 6


def key(seed: int) -> str:
    c = ContSign.of_image(jpeg(seed))
    return f"{c.sign1},{c.sign2}"


def fill(daemon: Daemon, token: str | None = None) -> None:
    extra = {"token": token} if token else {}
    assert daemon.rts("signup", appid="shop", **extra)["err_no"] == 0
    for seed in range(ITEMS):
        features = [brief(f"product {seed}")]
        added = daemon.rts("add", appid="shop", image=b64(jpeg(seed)), features=features, **extra)
        assert added["err_no"] == 0


def admin_get(daemon: Daemon, path: str, token: str | None = None) -> dict[str, Any]:
    headers = {"X-Same-Token": token} if token else {}
    request = urllib.request.Request(daemon.url("admin", path), headers=headers)
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def assert_untouched(daemon: Daemon, token: str | None = None) -> None:
    """Only the library the fixture made, all its items, no job: the attack changed nothing."""
    listed = admin_get(daemon, "/api/libraries", token)["libraries"]
    assert [lib["appid"] for lib in listed] == ["shop"]
    assert listed[0]["items"] == ITEMS
    assert admin_get(daemon, "/api/jobs", token)["jobs"] == []
    assert admin_get(daemon, f"/api/libraries/shop/items/{key(0)}", token)["err_no"] == 0


ATTACK = """<!doctype html><html><body><h1>Cute cats</h1>
<iframe name="sink" style="display:none"></iframe>
<form id="form" target="sink" method="post" enctype="text/plain" action="__ADMIN__/api/libraries">
<input name='{"appid":"pwned_form","x":"' value='"}'></form>
<script>
const cfg = __CONFIG__;
async function shoot(url, body) {
  try {
    await fetch(url, {mode: "no-cors", method: "POST", headers: {"Content-Type": "text/plain"}, body});
    return "sent";
  } catch (e) { return "error " + e; }
}
window.attack = (async () => {
  const out = {};
  const a = cfg.admin, s = cfg.search;
  out.create = await shoot(a + "/api/libraries", JSON.stringify({appid: "pwned"}));
  out.job = await shoot(a + "/api/jobs", JSON.stringify({appid: "shop", source: {dir: cfg.folder}}));
  out.rebuild = await shoot(a + "/api/libraries/shop/rebuild", "");
  out.signup = await shoot(s + "/RTSAsService/signup", JSON.stringify({from: "cat", appid: "pwned2"}));
  out.add = await shoot(s + "/RTSAsService/add", JSON.stringify(
    {from: "cat", appid: "shop", image: cfg.image, features: [{fea_id: 1000, fea_data: btoa("cat")}]}));
  out.remove = await shoot(s + "/RTSAsService/remove",
    JSON.stringify({from: "cat", appid: "shop", contsign: cfg.contsign}));
  try {
    await fetch(a + "/api/libraries/shop/items/" + cfg.key, {method: "DELETE"});
    out.delete = "answered";
  } catch (e) { out.delete = "blocked"; }
  const img = new Image();
  await new Promise((done) => { img.onload = done; img.onerror = done; img.src = a + cfg.thumbnail; });
  out.thumbnail_width = img.naturalWidth;
  await new Promise((done) => {
    document.querySelector("iframe").addEventListener("load", done);
    document.getElementById("form").submit();
  });
  return out;
})();
</script></body></html>"""


class HostilePage:
    """One HTML page served from http://127.0.0.1:<another port>/, a different origin from the daemon's."""

    def __init__(self, html: str) -> None:
        body = html.encode()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/cats.html"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> HostilePage:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def attack_page(daemon: Daemon, folder: Path) -> str:
    sign1, sign2 = (int(part) for part in key(0).split(","))
    config = {
        "admin": f"http://127.0.0.1:{daemon.ports['admin']}",
        "search": f"http://127.0.0.1:{daemon.ports['search']}",
        "folder": str(folder),
        "image": b64(jpeg(50)),
        "contsign": {"sign1": sign1, "sign2": sign2},
        "key": key(0),
        "thumbnail": f"/api/libraries/shop/items/{key(0)}/thumbnail",
    }
    return ATTACK.replace("__CONFIG__", json.dumps(config)).replace("__ADMIN__", config["admin"])


def run_attack(page, daemon: Daemon, tmp_path: Path) -> dict[str, Any]:
    folder = tmp_path / "loot"
    folder.mkdir(exist_ok=True)
    for seed in (60, 61):
        (folder / f"{seed}.jpg").write_bytes(jpeg(seed))
    with HostilePage(attack_page(daemon, folder)) as hostile:
        page.goto(hostile.url)
        return page.evaluate("window.attack")


def assert_refused_in_log(daemon: Daemon) -> None:
    """The attack's requests reached the daemon (the test is not vacuous) and were refused there."""
    log = daemon.log.read_text()
    for route in ("/api/libraries", "/api/jobs", "/RTSAsService/signup", "/RTSAsService/remove"):
        assert f"route={route} " in log and "err_no=12" in log


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    playwright = pytest.importorskip("playwright.sync_api")
    with playwright.sync_playwright() as p:
        rules = "--host-resolver-rules=MAP attacker.example 127.0.0.1"
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[*ARGS, rules], headless=True)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def open_daemon(tmp_path_factory) -> Iterator[Daemon]:
    """No tokens configured: the case where nothing but the browser rules protects the daemon."""
    d = Daemon(tmp_path_factory.mktemp("open"))
    d.start()
    fill(d)
    yield d
    d.stop()


@pytest.fixture(scope="module")
def token_daemon(tmp_path_factory) -> Iterator[Daemon]:
    d = Daemon(tmp_path_factory.mktemp("tokens"), TOKENS)
    d.start()
    fill(d, OPERATOR)
    yield d
    d.stop()


def test_a_page_on_another_origin_cannot_drive_an_open_daemon(browser, open_daemon, tmp_path):
    context = browser.new_context()
    try:
        outcome = run_attack(context.new_page(), open_daemon, tmp_path)
    finally:
        context.close()
    assert outcome["thumbnail_width"] == 0  # not even a thumbnail can be probed
    assert outcome["delete"] == "blocked"
    assert_untouched(open_daemon)
    assert_refused_in_log(open_daemon)


def test_the_login_cookie_does_not_let_a_page_on_another_origin_in(browser, token_daemon, tmp_path):
    """The operator is logged in (the cookie is same-site to 127.0.0.1:other port, so it travels)."""
    context = browser.new_context()
    try:
        page = context.new_page()
        log_in(page, token_daemon, "/")
        assert any(c["name"] == "same_search_session" for c in context.cookies())
        outcome = run_attack(page, token_daemon, tmp_path)
    finally:
        context.close()
    assert outcome["thumbnail_width"] == 0 and outcome["delete"] == "blocked"
    assert_untouched(token_daemon, OPERATOR)
    assert_refused_in_log(token_daemon)


def test_dns_rebinding_reads_and_changes_nothing(browser, open_daemon):
    """A name the attacker re-points at 127.0.0.1: the console and the APIs refuse it."""
    context = browser.new_context()
    try:
        page = context.new_page()
        page.goto(f"http://attacker.example:{open_daemon.ports['admin']}/libraries/shop")
        text = page.locator("body").inner_text()
        assert '"err_no": 12' in text and "product" not in text
        page.goto(f"http://attacker.example:{open_daemon.ports['admin']}/api/libraries")
        assert "shop" not in page.locator("body").inner_text()
        page.goto(f"http://attacker.example:{open_daemon.ports['search']}/")
        answer = page.evaluate(
            """async () => (await fetch("/RTSAsService/signup", {method: "POST",
                 headers: {"Content-Type": "application/json"},
                 body: JSON.stringify({from: "cat", appid: "pwned"})})).json()"""
        )
        assert answer["err_no"] == 12
    finally:
        context.close()
    assert_untouched(open_daemon)


# ---- the console behind the operator login -------------------------------------------------------------


def log_in(page, daemon: Daemon, path: str, token: str = OPERATOR) -> None:
    page.goto(daemon.url("admin", path))
    page.wait_for_selector("#login")
    page.fill("#login input[name=token]", token)
    page.click("#login button")
    page.wait_for_selector("#status")


def test_with_tokens_the_console_needs_the_operator_login(browser, token_daemon, tmp_path):
    context = browser.new_context()
    try:
        page = context.new_page()
        for path in ("/", "/libraries/shop", f"/libraries/shop/items/{key(3)}"):
            page.goto(token_daemon.url("admin", path))
            page.wait_for_selector("#login")
            assert "/login?next=" in page.url
            shown = page.content()
            assert "shop" not in shown and "product" not in shown and "libraries ·" not in shown
        page.fill("#login input[name=token]", "t-shop")  # an appid's token does not open the console
        page.click("#login button")
        page.wait_for_selector("#login .message:has-text('token')")
        assert "/login" in page.url
        page.fill("#login input[name=token]", OPERATOR)
        page.click("#login button")
        page.wait_for_selector(".detail")  # back where the login started
        assert page.url == token_daemon.url("admin", f"/libraries/shop/items/{key(3)}")
        cookie = next(c for c in context.cookies() if c["name"] == "same_search_session")
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["expires"] == -1
        assert OPERATOR not in cookie["value"] and OPERATOR not in page.url

        page.goto(token_daemon.url("admin", "/libraries/shop"))
        page.wait_for_function(
            "[...document.querySelectorAll('.grid img')].some((i) => i.complete && i.naturalWidth > 0)"
        )
        query = tmp_path / "query.jpg"
        query.write_bytes(jpeg(3))
        page.set_input_files("#file", str(query))
        page.wait_for_selector("#results .card")
        first = page.locator("#results .card").first
        assert first.locator(".brief").inner_text() == "product 3"
        page.wait_for_function("document.querySelector('#results .card img')?.naturalWidth > 0")

        page.goto(token_daemon.url("admin", "/"))
        page.wait_for_selector("table.libraries")
        assert page.locator("table.libraries td a", has_text="shop").count() == 1
        page.click("#logout")
        page.wait_for_selector("#login")
        page.goto(token_daemon.url("admin", "/libraries/shop"))
        page.wait_for_selector("#login")
        assert "product" not in page.content()
    finally:
        context.close()

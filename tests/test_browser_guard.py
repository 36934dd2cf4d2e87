"""What a browser may send (Origin, Sec-Fetch-Site, Host, Content-Type, CORS), on the real app over HTTP.

Browser-driven attacks from a real second origin are in tests/test_console_security.py; these
tests pin each header rule, and that clients which are not browsers (no Origin) are unaffected.
"""

from __future__ import annotations

import dataclasses
import io
import json
import urllib.request
import zipfile

import pytest
from conftest import b64, brief
from daemon import Daemon
from images import jpeg

from same_search.app import create_app
from same_search.config import AuthConfig, ConfigError, SecurityConfig, from_mapping
from same_search.routes.browser_guard import BODY_TYPES

R = "/RTSAsService"
EVIL = "http://attacker.example"


async def envelope(response) -> dict:
    assert response.status == 200, await response.text()
    return await response.json()


async def libraries(client) -> list[str]:
    body = await envelope(await client.get("/api/libraries"))
    return sorted(lib["appid"] for lib in body["libraries"])


async def guarded_client(aiohttp_client, config, embedder, **security):
    config = dataclasses.replace(config, security=SecurityConfig(**security))
    return await aiohttp_client(create_app(config, embedder))


def own_origin(client) -> str:
    return f"http://127.0.0.1:{client.port}"


# ---- Host on the management port (DNS rebinding) -----------------------------------------------------


@pytest.mark.parametrize("host", ["attacker.example", "attacker.example:8103", "127.0.0.1.nip.io", "[::2]"])
async def test_a_foreign_host_is_refused_on_the_management_port(client, api, host):
    await api(f"{R}/signup", appid="shop")
    for path in ("/api/libraries", "/", "/libraries/shop", "/static/console.js"):
        body = await envelope(await client.get(path, headers={"Host": host}))
        assert body["err_no"] == 12 and "allowed_hosts" in body["err_msg"] and "shop" not in json.dumps(body)
    refused = await envelope(await client.post("/api/libraries", json={"appid": "x"}, headers={"Host": host}))
    assert refused["err_no"] == 12
    for probe in ("/healthz", "/readyz", "/metrics"):  # a monitor must not read a refusal as healthy
        response = await client.get(probe, headers={"Host": host})
        assert response.status == 403 and (await response.json())["err_no"] == 12
    assert await libraries(client) == ["shop"]


@pytest.mark.parametrize(
    "host", ["localhost", "LOCALHOST:8103", "localhost.", "127.0.0.1", "127.0.0.1:1", "[::1]", "[::1]:8103"]
)
async def test_loopback_names_are_accepted_with_or_without_a_port(client, host):
    assert (await envelope(await client.get("/api/libraries", headers={"Host": host})))["err_no"] == 0


async def test_allowed_hosts_extend_the_accepted_names(aiohttp_client, config, embedder):
    client = await guarded_client(
        aiohttp_client, config, embedder, allowed_hosts=["Search-Box.lan", "box.lan:8103", "10.0.0.5"]
    )
    for host in ("search-box.lan", "search-box.lan:9000", "box.lan:8103", "10.0.0.5:8103"):
        assert (await envelope(await client.get("/api/libraries", headers={"Host": host})))["err_no"] == 0
    for host in ("box.lan", "box.lan:8104", "other.lan"):
        assert (await envelope(await client.get("/api/libraries", headers={"Host": host})))["err_no"] == 12


async def test_the_configured_admin_address_is_accepted(aiohttp_client, config, embedder):
    server = dataclasses.replace(config.server, admin_host="search-box.internal")
    client = await aiohttp_client(create_app(dataclasses.replace(config, server=server), embedder))
    headers = {"Host": "search-box.internal:8103"}
    assert (await envelope(await client.get("/api/libraries", headers=headers)))["err_no"] == 0


async def test_the_retrieval_port_keeps_serving_any_host_for_clients_without_origin(client, api):
    """Scripts reach 8025 under whatever name they were given; only browsers are checked there."""
    body = {"from": "pytest", "appid": "shop"}
    answer = await envelope(await client.post(f"{R}/signup", json=body, headers={"Host": "search.corp:8025"}))
    assert answer["err_no"] == 0


def test_the_real_daemon_checks_host_by_the_port_a_request_arrived_on(tmp_path):
    """8103 refuses a foreign Host (even for a path of another port); 8025 serves it to scripts."""
    daemon = Daemon(tmp_path)
    daemon.start()
    try:

        def call(service: str, path: str, body: dict | None = None) -> dict:
            data = json.dumps(body).encode() if body is not None else None
            headers = {"Host": "search.corp", "Content-Type": "application/json"}
            request = urllib.request.Request(daemon.url(service, path), data=data, headers=headers)
            with urllib.request.urlopen(request, timeout=30) as response:
                return json.loads(response.read())

        assert call("search", f"{R}/signup", {"from": "script", "appid": "shop"})["err_no"] == 0
        assert call("admin", "/api/libraries")["err_no"] == 12
        assert call("admin", f"{R}/signup", {"from": "script", "appid": "x"})["err_no"] == 12
        assert call("search", "/api/libraries")["err_no"] == 1  # wrong port, as before
        assert [lib["appid"] for lib in daemon.get("admin", "/api/libraries")["libraries"]] == ["shop"]
    finally:
        daemon.stop()


# ---- Origin and Sec-Fetch-Site, every port -------------------------------------------------------------


async def test_clients_without_origin_are_unaffected(client, api):
    """The spec's sample clients post JSON with urllib's default form content type: still fine on 8025."""
    raw = json.dumps({"from": "sample", "appid": "shop"})
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    assert (await envelope(await client.post(f"{R}/signup", data=raw, headers=form)))["err_no"] == 0
    add = {"from": "sample", "appid": "shop", "image": b64(jpeg(1)), "features": [brief("one")]}
    assert (await envelope(await client.post(f"{R}/add", data=json.dumps(add), headers=form)))["err_no"] == 0
    assert (await envelope(await client.post("/api/libraries", json={"appid": "two"})))["err_no"] == 0
    assert await libraries(client) == ["shop", "two"]


@pytest.mark.parametrize("origin", [EVIL, "null", "http://127.0.0.1:1", "https://127.0.0.1", "garbage"])
async def test_cross_origin_requests_are_refused_without_side_effects(client, api, origin):
    await api(f"{R}/signup", appid="shop")
    await api(f"{R}/add", appid="shop", image=b64(jpeg(1)), features=[brief("one")])
    headers = {"Origin": origin}
    created = await client.post("/api/libraries", json={"appid": "pwned"}, headers=headers)
    signup = await client.post(f"{R}/signup", json={"from": "x", "appid": "pwned2"}, headers=headers)
    remove = {"from": "x", "appid": "shop", "image": b64(jpeg(1))}
    removed = await client.post(f"{R}/remove", json=remove, headers=headers)
    deleted = await client.delete("/api/libraries/shop?confirm=shop", headers=headers)
    for response in (created, signup, removed, deleted):
        body = await envelope(response)
        assert body["err_no"] == 12 and "Origin" in body["err_msg"]
        assert "Access-Control-Allow-Origin" not in response.headers
    assert await libraries(client) == ["shop"]
    assert (await envelope(await client.get("/api/libraries/shop")))["library"]["items"] == 1


@pytest.mark.parametrize("site", ["cross-site", "same-site"])
async def test_foreign_sec_fetch_site_without_origin_is_refused(client, api, site):
    await api(f"{R}/signup", appid="shop")
    headers = {"Sec-Fetch-Site": site, "Sec-Fetch-Mode": "no-cors", "Sec-Fetch-Dest": "image"}
    assert (await envelope(await client.get("/api/libraries", headers=headers)))["err_no"] == 12
    assert (await envelope(await client.post("/api/libraries/shop/rebuild", headers=headers)))["err_no"] == 12
    framed = {"Sec-Fetch-Site": site, "Sec-Fetch-Mode": "navigate", "Sec-Fetch-Dest": "iframe"}
    assert (await envelope(await client.get("/", headers=framed)))["err_no"] == 12
    # A link followed from another site opens the page: a navigation changes nothing.
    followed = {"Sec-Fetch-Site": site, "Sec-Fetch-Mode": "navigate", "Sec-Fetch-Dest": "document"}
    page = await client.get("/", headers=followed)
    assert page.status == 200 and page.content_type == "text/html"
    assert (
        page.headers["X-Frame-Options"] == "DENY"
        and "frame-ancestors 'none'" in page.headers["Content-Security-Policy"]
    )


async def test_the_consoles_own_origin_is_accepted(client):
    headers = {"Origin": own_origin(client), "Sec-Fetch-Site": "same-origin"}
    assert (await envelope(await client.post("/api/libraries", json={"appid": "a"}, headers=headers)))[
        "err_no"
    ] == 0
    proxied = {"Origin": "https://console.example", "Host": "console.example"}  # a TLS proxy passing Host
    client2_refused = await envelope(
        await client.post("/api/libraries", json={"appid": "b"}, headers=proxied)
    )
    assert client2_refused["err_no"] == 12  # console.example is not an accepted host name
    assert await libraries(client) == ["a"]


async def test_a_rebound_name_is_not_its_own_origin_on_the_retrieval_port(client):
    """DNS rebinding against 8025: the page's Origin equals its Host, but the name is not ours."""
    headers = {"Origin": "http://attacker.example:8025", "Host": "attacker.example:8025"}
    body = await envelope(await client.post(f"{R}/signup", json={"from": "x", "appid": "p"}, headers=headers))
    assert body["err_no"] == 12
    assert await libraries(client) == []


# ---- content types on the management port -------------------------------------------------------------


async def test_the_management_port_requires_its_content_types(client, api):
    await api(f"{R}/signup", appid="shop")
    await api(f"{R}/add", appid="shop", image=b64(jpeg(1)), features=[brief("one")])
    text = json.dumps({"appid": "pwned"})
    for ctype in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"):
        body = await envelope(await client.post("/api/libraries", data=text, headers={"Content-Type": ctype}))
        assert body["err_no"] == 1 and "application/json" in body["err_msg"]
    missing = await envelope(
        await client.post("/api/libraries", data=text, skip_auto_headers=["Content-Type"])
    )
    assert missing["err_no"] == 1 and "none was sent" in missing["err_msg"]
    job = json.dumps({"appid": "shop", "source": {"dir": "/tmp"}})
    plain = {"Content-Type": "text/plain"}
    assert (await envelope(await client.post("/api/jobs", data=job, headers=plain)))["err_no"] == 1
    for path in ("/api/libraries/shop/search", "/api/jobs/upload?appid=shop", "/api/libraries/copy/import"):
        assert (await envelope(await client.post(path, data=b"PK\x03\x04", headers=plain)))["err_no"] == 1
    for path in ("/api/libraries/shop/rebuild", "/api/libraries/shop/save", "/logout"):
        assert (await envelope(await client.post(path, data=b"x", headers=plain)))["err_no"] == 1
    # remove-extras takes an optional body; one sent without a JSON type is refused (no scan needed)
    remove_extras = "/api/libraries/shop/duplicates/1/remove"
    no_type = await client.post(remove_extras, data=b'{"contsigns": []}', skip_auto_headers=["Content-Type"])
    assert (await envelope(no_type))["err_no"] == 1
    assert (await envelope(await client.get("/api/jobs")))["jobs"] == []
    assert await libraries(client) == ["shop"]


async def test_the_right_content_types_work(client, api, tmp_path):
    await api(f"{R}/signup", appid="shop")
    await api(f"{R}/add", appid="shop", image=b64(jpeg(1)), features=[brief("one")])
    for ctype in ("image/jpeg", "image/png", "application/octet-stream"):
        hits = await envelope(
            await client.post("/api/libraries/shop/search", data=jpeg(1), headers={"Content-Type": ctype})
        )
        assert hits["err_no"] == 0 and hits["results"][0]["brief_text"] == "one"
    similar = await envelope(
        await client.post(f"/api/libraries/shop/search?contsign={hits['results'][0]['key']}")
    )
    assert similar["err_no"] == 0  # no body, no content type: fine
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("a.jpg", jpeg(2))
    zipped = {"Content-Type": "application/zip"}
    upload = await client.post("/api/jobs/upload?appid=shop", data=archive.getvalue(), headers=zipped)
    assert (await envelope(upload))["err_no"] == 0
    charset = {"Content-Type": "application/json; charset=utf-8"}
    created = await client.post("/api/libraries", data=json.dumps({"appid": "b"}), headers=charset)
    assert (await envelope(created))["err_no"] == 0


def test_every_body_rule_names_a_real_route(config, embedder):
    """A renamed route must not silently lose its content-type rule."""
    app = create_app(config, embedder)
    routes = {(r.method, r.resource.canonical) for r in app.router.routes() if r.resource is not None}
    assert set(BODY_TYPES) <= routes


# ---- CORS for allowed origins on 8025/8120 -------------------------------------------------------------

ALLOWED = "http://shop.example:3000"


async def test_an_allowed_origin_gets_proper_cors_answers(aiohttp_client, config, embedder):
    client = await guarded_client(aiohttp_client, config, embedder, allowed_origins=[ALLOWED])
    preflight = await client.options(
        f"{R}/signup",
        headers={
            "Origin": ALLOWED,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type,x-same-token",
        },
    )
    assert preflight.status == 204
    assert preflight.headers["Access-Control-Allow-Origin"] == ALLOWED
    assert "Origin" in preflight.headers["Vary"]
    assert "POST" in preflight.headers["Access-Control-Allow-Methods"]
    allowed_headers = preflight.headers["Access-Control-Allow-Headers"].lower()
    assert all(h in allowed_headers for h in ("content-type", "x-same-token", "authorization"))
    assert int(preflight.headers["Access-Control-Max-Age"]) > 0
    signup = await client.post(
        f"{R}/signup", json={"from": "web", "appid": "shop"}, headers={"Origin": ALLOWED}
    )
    assert (await envelope(signup))["err_no"] == 0 and signup.headers[
        "Access-Control-Allow-Origin"
    ] == ALLOWED
    again = await client.post(
        f"{R}/signup", json={"from": "web", "appid": "shop"}, headers={"Origin": ALLOWED}
    )
    assert (await envelope(again))["err_no"] == 104  # errors reach the page too
    assert again.headers["Access-Control-Allow-Origin"] == ALLOWED and "Origin" in again.headers["Vary"]
    classify = await client.options(
        "/GeneralClassifyService/classify",
        headers={"Origin": ALLOWED, "Access-Control-Request-Method": "POST"},
    )
    assert classify.status == 204 and classify.headers["Access-Control-Allow-Origin"] == ALLOWED


async def test_other_origins_and_the_management_port_get_no_cors(aiohttp_client, config, embedder):
    client = await guarded_client(aiohttp_client, config, embedder, allowed_origins=[ALLOWED])
    ask = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type"}
    for origin, path in (
        (EVIL, f"{R}/signup"),
        ("http://shop.example:3001", f"{R}/add"),
        (ALLOWED, "/api/jobs"),
    ):
        response = await client.options(path, headers={"Origin": origin, **ask})
        assert (await envelope(response))["err_no"] == 12
        assert "Access-Control-Allow-Origin" not in response.headers
    refused = await client.post("/api/libraries", json={"appid": "x"}, headers={"Origin": ALLOWED})
    assert (await envelope(refused))["err_no"] == 12 and "Access-Control-Allow-Origin" not in refused.headers
    plain = await client.post(f"{R}/signup", json={"from": "x", "appid": "y"})
    assert "Access-Control-Allow-Origin" not in plain.headers


@pytest.mark.parametrize(
    "security",
    [
        {"allowed_origins": ["*"]},
        {"allowed_origins": ["null"]},
        {"allowed_origins": ["https://shop.example/app"]},
        {"allowed_origins": ["ftp://shop.example"]},
        {"allowed_origins": ["shop.example"]},
        {"allowed_hosts": ["a/b"]},
        {"allowed_hosts": ["http://box.lan"]},
        {"allowed_hosts": [""]},
        {"allowed_hosts": [3]},
        {"allowed_hosts": "box.lan"},
    ],
)
def test_security_config_refuses_entries_that_cannot_mean_what_they_say(security):
    with pytest.raises(ConfigError, match=r"\[security\]"):
        from_mapping({"security": security})


# ---- the console session cookie -------------------------------------------------------------------------

TOKENS = {"shop": "t-shop", "*": "t-ops"}


async def login(client, token: str) -> tuple[dict, str | None]:
    response = await client.post("/login", json={"token": token})
    cookie = response.headers.get("Set-Cookie")
    return await envelope(response), cookie


async def test_console_pages_need_the_operator_login(aiohttp_client, config, embedder):
    config = dataclasses.replace(config, auth=AuthConfig(tokens=TOKENS))
    client = await aiohttp_client(create_app(config, embedder))
    signup = {"from": "x", "appid": "secret-shop", "token": "t-ops"}
    assert (await envelope(await client.post(f"{R}/signup", json=signup)))["err_no"] == 0
    shop = "/libraries/secret-shop"
    pages = ("/", shop, f"{shop}/items/1,2", f"{shop}/duplicates")
    for path in pages:
        response = await client.get(path, allow_redirects=False)
        assert response.status == 303 and response.headers["Location"].startswith("/login?next=")
        assert "secret-shop" not in await response.text()
    form = await client.get("/login?next=%2F")
    assert (
        form.status == 200
        and "secret-shop" not in await form.text()
        and 'type="password"' in await form.text()
    )
    assert (await login(client, "wrong"))[0]["err_no"] == 12
    assert (await login(client, "t-shop"))[0]["err_no"] == 12  # an appid's token is not the operator's
    body, cookie = await login(client, "t-ops")
    assert body["err_no"] == 0 and cookie is not None
    attributes = [part.strip().lower() for part in cookie.split(";")]
    assert "httponly" in attributes and "samesite=strict" in attributes and "path=/" in attributes
    assert not any(a.startswith(("max-age", "expires")) for a in attributes)  # dies with the browser
    assert "t-ops" not in cookie
    session = {"Cookie": cookie.split(";")[0]}
    page = await client.get("/libraries/secret-shop", headers=session, allow_redirects=False)
    assert page.status == 200 and "secret-shop" in await page.text() and 'id="logout"' in await page.text()
    assert (await envelope(await client.get("/api/libraries", headers=session)))["err_no"] == 0
    # The cookie opens the management port only, and never together with a foreign Origin.
    search = {"from": "x", "appid": "secret-shop", "image": b64(jpeg(1))}
    assert (await envelope(await client.post(f"{R}/search", json=search, headers=session)))["err_no"] == 12
    foreign = {**session, "Origin": EVIL}
    assert (await envelope(await client.post("/api/libraries", json={"appid": "p"}, headers=foreign)))[
        "err_no"
    ] == 12
    out = await client.post("/logout", headers=session)
    assert (await envelope(out))["err_no"] == 0 and "same_search_session=" in out.headers["Set-Cookie"]
    assert (await envelope(await client.get("/api/libraries", headers=session)))["err_no"] == 12
    after = await client.get("/", headers=session, allow_redirects=False)
    assert after.status == 303  # the old cookie value is dead on the daemon, not only in the browser


async def test_without_tokens_the_console_needs_no_login(client, api):
    await api(f"{R}/signup", appid="shop")
    page = await client.get("/", allow_redirects=False)
    assert page.status == 200 and "shop" in await page.text() and 'id="logout"' not in await page.text()
    form = await client.get("/login", allow_redirects=False)
    assert form.status == 303 and form.headers["Location"] == "/"
    assert (await login(client, "anything"))[0]["err_no"] == 1

"""Search and add by URL (extension) and its guards against server-side request forgery.

Every connection stays on loopback: a picture server on 127.0.0.2 (allowed for the test) and a
"forbidden" one on 127.0.0.1 (not allowed; it counts the requests it gets, which must stay 0).
Names are resolved by an injected resolver, never by DNS. Private and metadata ranges are checked
through the address check alone, without connecting anywhere.
"""

from __future__ import annotations

import asyncio
import ipaddress
from pathlib import Path

import pytest
from aiohttp import web
from conftest import b64, brief
from images import jpeg

from same_search.config import Config, ConfigError, FetchConfig, ModelConfig, StorageConfig
from same_search.contsign import ContSign
from same_search.fetch import AllowList, Fetcher, address_refusal
from same_search.services import SERVICES

R = "/RTSAsService"
ALLOWED, FORBIDDEN = "127.0.0.2", "127.0.0.1"
MAX_BYTES = 200_000
NAMES = {
    "good.test": [ALLOWED],  # allowed through its network
    "evil.test": [FORBIDDEN],  # a name that resolves to a refused address
    "listed.test": [FORBIDDEN],  # a listed name does not unlock loopback
    "public.test": ["93.184.216.34"],  # public but not listed: refused before connecting
    "mixed.test": [FORBIDDEN, ALLOWED],  # the refused address is skipped, the allowed one used
}


# ---- the address check alone (no connection) ----------------------------------------------------


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("10.1.2.3", "private"),
        ("172.16.5.4", "private"),
        ("192.168.0.10", "private"),
        ("169.254.169.254", "metadata"),
        ("169.254.1.1", "link-local"),
        ("fd00::1", "private"),
        ("fd00:ec2::254", "metadata"),
        ("fe80::1", "link-local"),
        ("127.0.0.1", "loopback"),
        ("127.0.0.2", "loopback"),
        ("::1", "loopback"),
        ("::ffff:127.0.0.1", "loopback"),
        ("::ffff:10.0.0.1", "private"),
        ("100.100.100.200", "metadata"),
        ("168.63.129.16", "metadata"),
        ("100.64.0.1", "not a public address"),
        ("0.0.0.0", "unspecified"),
        ("224.0.0.1", "multicast"),
    ],
)
def test_special_addresses_are_refused(address, reason):
    assert reason in address_refusal(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", ["93.184.216.34", "8.8.8.8", "2606:4700::1111"])
def test_public_addresses_pass_the_address_check(address):
    assert address_refusal(ipaddress.ip_address(address)) is None


def test_allow_list_rules():
    allow = AllowList.parse(["images.example.com", "*.cdn.example.com", "10.20.0.0/16", "fd00:1::/64"])
    public = ipaddress.ip_address("93.184.216.34")
    assert allow.refusal("images.example.com", public) is None
    assert allow.refusal("a.b.cdn.example.com", public) is None
    assert "not in [fetch] allow" in allow.refusal("cdn.example.com.evil.net", public)
    assert "not in [fetch] allow" in allow.refusal("other.example.com", public)
    assert allow.refusal("anything", ipaddress.ip_address("10.20.3.4")) is None  # listed network
    assert "private" in allow.refusal("images.example.com", ipaddress.ip_address("10.21.0.1"))
    assert "metadata" in allow.refusal("images.example.com", ipaddress.ip_address("169.254.169.254"))
    assert allow.refusal("x", ipaddress.ip_address("fd00:1::5")) is None
    assert "private" in allow.refusal("x", ipaddress.ip_address("fd00:2::5"))


@pytest.mark.parametrize("entry", ["http://x.com", "10.0.0.0/33", "bad host", "", "*."])
def test_malformed_allow_entries_are_config_errors(entry):
    with pytest.raises(ConfigError, match=r"\[fetch\] allow"):
        Fetcher(FetchConfig(enabled=True, allow=[entry]))


# ---- the daemon, with loopback servers -----------------------------------------------------------


class PictureServer:
    """A small HTTP server on one loopback address that records what it was asked."""

    def __init__(self, host: str) -> None:
        self.host, self.port, self.requests = host, 0, []
        self.runner: web.AppRunner | None = None

    async def start(self, routes: dict) -> None:
        app = web.Application()

        async def record(request: web.Request) -> web.StreamResponse:
            self.requests.append((request.path, request.headers.get("Host")))
            return await routes[request.path](request)

        for path in routes:
            app.router.add_get(path, record)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, self.host, 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    def url(self, path: str, host: str | None = None) -> str:
        return f"http://{host or self.host}:{self.port}{path}"

    async def stop(self) -> None:
        assert self.runner is not None
        await self.runner.cleanup()


def routes_for(forbidden: PictureServer) -> tuple[dict, dict]:
    """The plain routes, and the redirects (path -> where to)."""

    async def picture(_):
        return web.Response(body=jpeg(1), content_type="image/jpeg")

    async def big(_):
        return web.Response(body=b"\xff" * (MAX_BYTES + 1), content_type="image/jpeg")

    async def big_streamed(request):
        response = web.StreamResponse()
        await response.prepare(request)
        for _ in range(MAX_BYTES // 10_000 + 2):
            await response.write(b"\xff" * 10_000)
        return response

    async def slow(_):
        await asyncio.sleep(3)  # past the 2 s fetch timeout; the server's teardown waits for it
        return web.Response(body=jpeg(1))

    async def text(_):
        return web.Response(text="not a picture")

    async def missing(_):
        raise web.HTTPNotFound()

    return {
        "/picture.jpg": picture,
        "/big": big,
        "/big-streamed": big_streamed,
        "/slow": slow,
        "/text": text,
        "/missing": missing,
    }, {
        "/to-picture": lambda: "/picture.jpg",
        "/to-forbidden": lambda: forbidden.url("/picture.jpg"),
        "/to-evil-name": lambda: f"http://evil.test:{forbidden.port}/picture.jpg",
        "/to-ftp": lambda: "ftp://127.0.0.2/picture.jpg",
        "/to-file": lambda: "file:///etc/passwd",
        "/loop": lambda: "/loop",
    }


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return Config(
        storage=StorageConfig(data_dir=str(tmp_path / "data")),
        model=ModelConfig(name="efficientnet_lite0"),
        fetch=FetchConfig(
            enabled=True, allow=[f"{ALLOWED}/32", "listed.test"], max_bytes=MAX_BYTES, timeout_s=2.0
        ),
    )


@pytest.fixture
async def servers(client):
    forbidden, allowed = PictureServer(FORBIDDEN), PictureServer(ALLOWED)
    plain, redirects = routes_for(forbidden)

    def redirect(target):
        async def handler(_):
            raise web.HTTPFound(target())

        return handler

    for server in (forbidden, allowed):
        await server.start({**plain, **{path: redirect(t) for path, t in redirects.items()}})

    async def resolve(host: str, port: int) -> list[str]:
        if host not in NAMES:
            raise OSError(f"no such name {host}")
        return NAMES[host]

    client.app[SERVICES].fetcher.resolver = resolve
    yield allowed, forbidden
    await allowed.stop()
    await forbidden.stop()
    assert forbidden.requests == [], "a refused address was connected to"


async def library(api) -> None:
    assert (await api(f"{R}/signup", appid="lib"))["err_no"] == 0
    for seed in (1, 2, 3):
        answer = await api(f"{R}/add", appid="lib", image=b64(jpeg(seed)), features=[brief(f"p{seed}")])
        assert answer["err_no"] == 0


async def test_search_and_add_by_url(api, servers):
    allowed, _ = servers
    await library(api)
    found = await api(f"{R}/search", appid="lib", url=allowed.url("/picture.jpg"), rn=1)
    assert found["err_no"] == 0 and found["data_items"][0]["score"] > 0.999
    answer = await api(f"{R}/add", appid="lib", url=allowed.url("/to-picture"), features=[brief("x")])
    assert answer["err_no"] == 101  # the same bytes as p1, fetched through a redirect
    await api(f"{R}/remove", appid="lib", image=b64(jpeg(1)))
    answer = await api(f"{R}/add", appid="lib", url=allowed.url("/picture.jpg"), features=[brief("by url")])
    assert answer["err_no"] == 0 and answer["contsign"] == ContSign.of_image(jpeg(1)).to_json()


async def test_a_name_is_resolved_once_and_the_checked_address_is_used(api, servers):
    allowed, _ = servers
    await library(api)
    for name in ("good.test", "mixed.test"):
        found = await api(f"{R}/search", appid="lib", url=allowed.url("/picture.jpg", host=name), rn=1)
        assert found["err_no"] == 0, found
        assert allowed.requests[-1] == ("/picture.jpg", f"{name}:{allowed.port}")  # Host header kept


@pytest.mark.parametrize(
    ("target", "reason"),
    [
        (lambda a, f: f.url("/picture.jpg"), "loopback address"),
        (lambda a, f: f"http://evil.test:{f.port}/picture.jpg", "evil.test is 127.0.0.1, a loopback address"),
        (lambda a, f: f"http://listed.test:{f.port}/picture.jpg", "loopback address"),
        (lambda a, f: "http://public.test/picture.jpg", "not in [fetch] allow"),
        (lambda a, f: "http://unknown.test/picture.jpg", "cannot resolve"),
        (lambda a, f: a.url("/to-forbidden"), "loopback address"),
        (lambda a, f: a.url("/to-evil-name"), "evil.test is 127.0.0.1"),
        (lambda a, f: a.url("/to-ftp"), "only http and https"),
        (lambda a, f: a.url("/to-file"), "only http and https"),
        (lambda a, f: a.url("/loop"), "more than 3 redirects"),
        (lambda a, f: a.url("/big"), f"more than {MAX_BYTES}"),
        (lambda a, f: a.url("/big-streamed"), f"larger than {MAX_BYTES}"),
        (lambda a, f: a.url("/slow"), "within 2s"),
        (lambda a, f: a.url("/missing"), "HTTP 404"),
        (lambda a, f: "ftp://127.0.0.2/picture.jpg", "only http and https"),
        (lambda a, f: "file:///etc/passwd", "only http and https"),
        (lambda a, f: "gopher://127.0.0.2:70/", "only http and https"),
        (lambda a, f: "http://[::1]/picture.jpg", "loopback address"),
        (lambda a, f: "http://169.254.169.254/latest/meta-data/", "metadata"),
        (lambda a, f: "http://10.0.0.1/picture.jpg", "private address"),
        (lambda a, f: "not a url", "only http and https"),
        (lambda a, f: 5, "url must be a non-empty string"),
    ],
)
async def test_every_refusal_is_1_with_the_reason_and_stores_nothing(api, servers, target, reason):
    allowed, forbidden = servers
    await library(api)
    url = target(allowed, forbidden)
    for route, extra in (("search", {}), ("add", {"features": [brief("x")]})):
        answer = await api(f"{R}/{route}", appid="lib", url=url, **extra)
        assert answer["err_no"] == 1 and reason in answer["err_msg"], (route, answer)
        assert "url" in answer["err_msg"]
    assert (await api(f"{R}/snapshot", appid="lib"))["snapshot"]["index_size"] == 3


async def test_a_fetched_non_picture_is_100(api, servers):
    allowed, _ = servers
    await library(api)
    answer = await api(f"{R}/search", appid="lib", url=allowed.url("/text"))
    assert answer["err_no"] == 100 and answer["err_msg"].startswith("216201")


async def test_url_and_image_together_is_1(api, servers):
    allowed, _ = servers
    await library(api)
    answer = await api(f"{R}/search", appid="lib", url=allowed.url("/picture.jpg"), image=b64(jpeg(1)))
    assert answer["err_no"] == 1 and "not both" in answer["err_msg"]


async def test_url_is_off_by_default(aiohttp_client, embedder, tmp_path):
    from same_search.app import create_app

    cfg = Config(
        storage=StorageConfig(data_dir=str(tmp_path / "d")), model=ModelConfig(name="efficientnet_lite0")
    )
    client = await aiohttp_client(create_app(cfg, embedder))
    await client.post(f"{R}/signup", json={"from": "t", "appid": "lib"})
    answer = await (
        await client.post(f"{R}/search", json={"from": "t", "appid": "lib", "url": "http://127.0.0.2/x.jpg"})
    ).json()
    assert answer["err_no"] == 1 and "not enabled" in answer["err_msg"]


async def test_other_field_errors_are_found_before_anything_is_fetched(api, servers):
    allowed, _ = servers
    await library(api)
    answer = await api(f"{R}/add", appid="lib", url=allowed.url("/picture.jpg"), features=[])
    assert answer["err_no"] == 1 and "brief" in answer["err_msg"]
    answer = await api(f"{R}/search", appid="lib", url=allowed.url("/picture.jpg"), region={"x": 0})
    assert answer["err_no"] == 1 and "region" in answer["err_msg"]
    assert allowed.requests == []

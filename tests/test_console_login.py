"""The console login under attack, and what a logged-in browser keeps.

Failed logins are slowed down and then refused per client address (another address, and the
event loop, are not held up), logged without the token; short tokens are warned about at start.
Thumbnails seen in a session are private to that browser and dropped at logout.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time

import aiohttp
from conftest import b64, brief
from images import jpeg

from same_search.app import create_app
from same_search.config import AuthConfig
from same_search.contsign import ContSign

R = "/RTSAsService"
OPERATOR = "operator-token-of-some-length-0123456789"
TOKENS = {"shop": "shop-token-of-some-length-0123456789", "*": OPERATOR}


async def token_client(aiohttp_client, config, embedder, tokens=TOKENS):
    return await aiohttp_client(
        create_app(dataclasses.replace(config, auth=AuthConfig(tokens=tokens)), embedder)
    )


async def login(client, token: str) -> dict:
    response = await client.post("/login", json={"token": token})
    assert response.status == 200
    return await response.json()


async def test_failed_logins_slow_down_then_lock_out_that_client_only(
    aiohttp_client, config, embedder, caplog
):
    caplog.set_level(logging.INFO)
    client = await token_client(aiohttp_client, config, embedder)
    started = time.monotonic()
    for attempt in range(3):
        answer = await login(client, f"guess-{attempt}")
        assert answer["err_no"] == 12
    assert time.monotonic() - started >= 3 * 0.25  # each failure waits before it is answered
    locked = await login(client, OPERATOR)  # even the right token: a lock that a right guess
    assert locked["err_no"] == 12  # could pass would tell the guesser when it guessed right
    assert "too many failed logins" in locked["err_msg"] and "try again in" in locked["err_msg"]
    # Another address is not locked out.
    url = str(client.make_url("/login"))
    elsewhere = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))
    async with (
        aiohttp.ClientSession(connector=elsewhere) as other,
        other.post(url, json={"token": OPERATOR}) as response,
    ):
        assert (await response.json())["err_no"] == 0
    # The lock ends; a right token then opens a session and forgets the failures.
    await asyncio.sleep(1.1)
    assert (await login(client, OPERATOR))["err_no"] == 0
    assert (await login(client, "guess-again"))["err_no"] == 12  # counted from zero again
    assert (await login(client, OPERATOR))["err_no"] == 0
    failed = [r.getMessage() for r in caplog.records if "console login failed" in r.getMessage()]
    assert len(failed) >= 4 and all("127.0.0.1" in line for line in failed)
    assert any("locked" in r.getMessage() for r in caplog.records)
    assert OPERATOR not in caplog.text and "guess-0" not in caplog.text


async def test_a_slowed_failure_does_not_hold_up_other_requests(aiohttp_client, config, embedder):
    client = await token_client(aiohttp_client, config, embedder)

    async def health() -> float:
        started = time.monotonic()
        assert (await client.get("/healthz")).status == 200
        return time.monotonic() - started

    failing = asyncio.ensure_future(login(client, "wrong"))
    await asyncio.sleep(0.05)
    assert await health() < 0.2 and not failing.done()
    assert (await failing)["err_no"] == 12


async def test_short_tokens_are_warned_about_at_start(config, embedder, caplog):
    caplog.set_level(logging.WARNING)
    create_app(dataclasses.replace(config, auth=AuthConfig(tokens={"shop": "abc", "*": OPERATOR})), embedder)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("shop" in w and "3 characters" in w for w in warnings), warnings
    assert not any("'*'" in w for w in warnings) and "abc" not in " ".join(warnings).replace("shop", "")


async def thumbnail_of(client, headers: dict) -> aiohttp.ClientResponse:
    signup = {"from": "t", "appid": "shop", "token": OPERATOR}
    assert (await (await client.post(f"{R}/signup", json=signup)).json())["err_no"] == 0
    add = {**signup, "image": b64(jpeg(1)), "features": [brief("one")]}
    assert (await (await client.post(f"{R}/add", json=add)).json())["err_no"] == 0
    key = ContSign.of_image(jpeg(1))
    response = await client.get(
        f"/api/libraries/shop/items/{key.sign1},{key.sign2}/thumbnail", headers=headers
    )
    assert response.status == 200 and response.content_type == "image/jpeg"
    return response


async def test_thumbnails_seen_in_a_session_are_private_and_dropped_at_logout(
    aiohttp_client, config, embedder
):
    client = await token_client(aiohttp_client, config, embedder)
    response = await client.post("/login", json={"token": OPERATOR})
    session = {"Cookie": response.headers["Set-Cookie"].split(";")[0]}
    thumbnail = await thumbnail_of(client, session)
    cache = [part.strip() for part in thumbnail.headers["Cache-Control"].split(",")]
    assert "private" in cache and "no-store" in cache and not any(p.startswith("max-age") for p in cache)
    out = await client.post("/logout", headers=session)
    assert (await out.json())["err_no"] == 0
    assert '"cache"' in out.headers["Clear-Site-Data"]


async def test_without_tokens_thumbnails_are_still_private(client):
    response = await thumbnail_of(client, {})
    cache = [part.strip() for part in response.headers["Cache-Control"].split(",")]
    assert "private" in cache

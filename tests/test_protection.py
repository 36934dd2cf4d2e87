"""Protection on the real app: tokens, backpressure, timeouts, a full disk."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading

import pytest
from conftest import b64, brief
from images import jpeg

from same_search.app import create_app
from same_search.config import AuthConfig, Config
from same_search.contsign import ContSign
from same_search.services import SERVICES

R = "/RTSAsService"


def with_section(config: Config, name: str, **values) -> Config:
    return dataclasses.replace(config, **{name: dataclasses.replace(getattr(config, name), **values)})


@pytest.fixture
async def make_client(aiohttp_client, embedder):
    async def make(config: Config):
        return await aiohttp_client(create_app(config, embedder))

    return make


async def post(client, route: str, headers=None, **body) -> dict:
    response = await client.post(route, json={"from": "t", **body}, headers=headers or {})
    assert response.status == 200
    return await response.json()


async def test_tokens(make_client, config, caplog):
    caplog.set_level(logging.DEBUG)
    config = dataclasses.replace(config, auth=AuthConfig(tokens={"shop": "s3cret-shop", "*": "ops-token"}))
    client = await make_client(config)
    assert (await post(client, f"{R}/signup", appid="shop"))["err_no"] == 12
    assert (await post(client, f"{R}/signup", appid="shop", token="wrong"))["err_no"] == 12
    assert (await post(client, f"{R}/signup", appid="shop", headers={"X-Same-Token": "s3cret-shop"}))[
        "err_no"
    ] == 0
    ok = await post(client, f"{R}/snapshot", appid="shop", headers={"Authorization": "Bearer s3cret-shop"})
    assert ok["err_no"] == 0
    assert (await post(client, f"{R}/snapshot", appid="shop", token="s3cret-shop"))["err_no"] == 0
    assert (await post(client, f"{R}/snapshot", appid="shop", sub_lib="x", token="s3cret-shop"))[
        "err_no"
    ] == 103
    assert (await post(client, f"{R}/signup", appid="other", token="s3cret-shop"))["err_no"] == 12
    assert (await post(client, f"{R}/signup", appid="other", token="ops-token"))["err_no"] == 0
    feature = await post(client, "/GeneralClassifyService/classify", appid="shop", data="")
    assert feature["err_no"] == 12
    assert "s3cret-shop" not in caplog.text and "ops-token" not in caplog.text


async def test_sub_lib_never_reaches_another_tenants_library(make_client, config):
    """``shop`` + sub_lib ``2`` names the library ``shop_2``; when ``shop_2`` is a tenant of its
    own, shop's token must not reach it (it used to: the token was checked against ``shop``)."""
    tokens = {"shop": "t-shop", "shop_2": "t-shop2", "*": "ops"}
    client = await make_client(dataclasses.replace(config, auth=AuthConfig(tokens=tokens)))
    assert (await post(client, f"{R}/signup", appid="shop_2", token="t-shop2"))["err_no"] == 0
    added = await post(
        client, f"{R}/add", appid="shop_2", token="t-shop2", image=b64(jpeg(1)), features=[brief("theirs")]
    )
    assert added["err_no"] == 0
    as_shop = {"appid": "shop", "sub_lib": "2", "token": "t-shop"}
    search = await post(client, f"{R}/search", image=b64(jpeg(1)), **as_shop)
    assert search["err_no"] == 12 and "shop_2" in search["err_msg"]
    remove = await post(client, f"{R}/remove", contsigns=[added["contsign"]], **as_shop)
    assert remove["err_no"] == 12
    for route in ("snapshot", "signup"):
        assert (await post(client, f"{R}/{route}", **as_shop))["err_no"] == 12
    # shop_2's item is still there, for its owner and for the operator.
    for token in ("t-shop2", "ops"):
        found = await post(client, f"{R}/search", appid="shop_2", token=token, image=b64(jpeg(1)))
        assert found["err_no"] == 0 and len(found["data_items"]) == 1
    # shop's own sub-libraries stay shop's; shop_2's token does not reach them or shop itself.
    assert (await post(client, f"{R}/signup", appid="shop", sub_lib="3", token="t-shop"))["err_no"] == 0
    assert (await post(client, f"{R}/snapshot", appid="shop_3", token="t-shop"))["err_no"] == 0
    assert (await post(client, f"{R}/snapshot", appid="shop", sub_lib="3", token="t-shop2"))["err_no"] == 12
    assert (await post(client, f"{R}/signup", appid="shop", token="t-shop2"))["err_no"] == 12


async def test_full_queue_answers_99_at_once(make_client, config):
    client = await make_client(with_section(config, "model", queue_max=1))
    await post(client, f"{R}/signup", appid="lib")
    image = b64(jpeg(1))
    answers = await asyncio.gather(*(post(client, f"{R}/search", appid="lib", image=image) for _ in range(6)))
    codes = sorted(a["err_no"] for a in answers)
    assert codes[0] == 0 and 99 in codes and set(codes) <= {0, 99}
    busy = next(a for a in answers if a["err_no"] == 99)
    assert "queue is full" in busy["err_msg"]
    assert (await post(client, f"{R}/snapshot", appid="lib"))["snapshot"]["queue_size"] == 0


async def test_embedder_timeout_answers_2_and_stores_nothing(make_client, config):
    client = await make_client(with_section(config, "model", timeout_s=0.0001))
    await post(client, f"{R}/signup", appid="lib")
    body = await post(client, f"{R}/add", appid="lib", image=b64(jpeg(1)), features=[brief("x")])
    assert body["err_no"] == 2
    # Whatever the abandoned add left running (its decode, its local features) must store
    # nothing. Wait for that work itself: every thread of the embedder's and the verifier's pools
    # has finished what it was given before (a barrier only all of them at once can pass).
    services = client.app[SERVICES]
    embed = services.models.default
    for pool in (embed._decode_pool, embed._infer_pool, services.libraries.verifier._pool):
        await drained(pool)
    assert embed.queue_size == 0
    # And the pipeline has since carried a later add all the way into the library: with a
    # timeout it can meet, the same route stores the next picture, and only that one.
    embed.cfg = dataclasses.replace(embed.cfg, timeout_s=60.0)
    later = await post(client, f"{R}/add", appid="lib", image=b64(jpeg(2)), features=[brief("y")])
    assert later["err_no"] == 0
    assert (await post(client, f"{R}/snapshot", appid="lib"))["snapshot"]["index_size"] == 1
    refused = await post(client, f"{R}/search", appid="lib", contsign=ContSign.of_image(jpeg(1)).to_json())
    assert refused["err_no"] == 1 and "not in library" in refused["err_msg"]


async def drained(pool, timeout: float = 30.0) -> None:
    """Until every thread of ``pool`` has finished the work submitted to it before this call:
    one task per thread, all meeting at a barrier, can only all run once no thread is busy."""
    threads = pool._max_workers
    barrier = threading.Barrier(threads)
    loop = asyncio.get_running_loop()
    await asyncio.gather(*(loop.run_in_executor(pool, barrier.wait, timeout) for _ in range(threads)))


async def test_full_database_refuses_writes_and_keeps_serving_reads(make_client, config):
    # Room for a few items beside the empty schema (which grows with each migration's tables).
    client = await make_client(with_section(config, "storage", max_db_bytes=256 * 1024))
    await post(client, f"{R}/signup", appid="lib")
    stored = []
    for seed in range(60):
        body = await post(client, f"{R}/add", appid="lib", image=b64(jpeg(seed)), features=[brief(str(seed))])
        if body["err_no"] != 0:
            break
        stored.append(seed)
    assert body["err_no"] == 11 and "storage write failed" in body["err_msg"], body
    assert len(stored) >= 3
    snapshot = (await post(client, f"{R}/snapshot", appid="lib"))["snapshot"]
    assert snapshot["index_size"] == len(stored)
    found = await post(client, f"{R}/search", appid="lib", image=b64(jpeg(stored[0])), rn=100)
    assert found["err_no"] == 0 and len(found["data_items"]) == len(stored)
    assert found["data_items"][0]["score"] > 0.999
    # The refused image left nothing behind: not in the index, not a duplicate on retry.
    retry = await post(client, f"{R}/add", appid="lib", image=b64(jpeg(seed)), features=[brief("again")])
    assert retry["err_no"] == 11


async def test_vectors_take_little_more_disk_than_their_bytes(tmp_path):
    """At a million items the database is mostly vectors; its file must stay close to their size."""
    import sqlite3

    import numpy as np

    from same_search.records import NewLibrary
    from same_search.store.db import Store

    store = Store(tmp_path / "db.sqlite3")
    await store.open()
    try:
        library = await store.create_library(
            NewLibrary("lib", "efficientnet_lite0", 1280, "0123456789abcdef")
        )
        vector = np.ones(1280, dtype=np.float32)
        for key in range(300):
            await store.add_item(library.id, key - 150, f"item {key}".encode(), None, vector)
        assert await store.count(library.id) == 300
    finally:
        await store.close()
    with sqlite3.connect(tmp_path / "db.sqlite3") as db:
        size = db.execute("PRAGMA page_count").fetchone()[0] * db.execute("PRAGMA page_size").fetchone()[0]
    raw = 300 * 1280 * 4
    assert size < 1.2 * raw, (size, raw)


async def test_a_database_with_the_first_items_layout_still_works(tmp_path):
    """Databases created before the rowid layout keep their clustered items table."""
    import sqlite3

    import numpy as np

    from same_search.records import AlreadyExists, NewLibrary
    from same_search.store.db import Store

    with sqlite3.connect(tmp_path / "db.sqlite3") as db:
        db.execute(
            "CREATE TABLE items (lib_id INTEGER NOT NULL, key INTEGER NOT NULL, brief BLOB NOT NULL, "
            "tag1 INTEGER, tag2 INTEGER, vector BLOB NOT NULL, seq INTEGER NOT NULL, "
            "created_at REAL NOT NULL, updated_at REAL NOT NULL, PRIMARY KEY (lib_id, key)) WITHOUT ROWID"
        )
    store = Store(tmp_path / "db.sqlite3")
    await store.open()
    try:
        library = await store.create_library(NewLibrary("lib", "efficientnet_lite0", 4, "0123456789abcdef"))
        vector = np.ones(4, dtype=np.float32)
        await store.add_item(library.id, 7, b"seven", (1, 2), vector)
        with pytest.raises(AlreadyExists):
            await store.add_item(library.id, 7, b"again", None, vector)
        assert (await store.get_items(library.id, [7]))[7].brief == b"seven"
        assert await store.update_item(library.id, 7, b"changed", None)
        assert (await store.get_items(library.id, [7]))[7].brief == b"changed"
        assert (await store.remove_items(library.id, [7]))[0] == [7]
        assert await store.count(library.id) == 0
    finally:
        await store.close()

"""The management API (port 8103) on the real app: libraries, items, thumbnails, maintenance, metrics."""

from __future__ import annotations

import asyncio
import dataclasses
import io

import pytest
from conftest import b64, brief
from images import jpeg
from PIL import Image

from same_search.app import create_app
from same_search.config import AuthConfig
from same_search.contsign import ContSign
from same_search.services import SERVICES

R = "/RTSAsService"
#: The management API holds on every backend (see conftest.pytest_generate_tests).
BACKENDS = ("local", "milvus")


def key(seed: int) -> str:
    c = ContSign.of_image(jpeg(seed))
    return f"{c.sign1},{c.sign2}"


async def fill(api, appid: str = "lib", seeds=range(3)) -> None:
    await api(f"{R}/signup", appid=appid)
    for seed in seeds:
        body = await api(f"{R}/add", appid=appid, image=b64(jpeg(seed)), features=[brief(f"item {seed}")])
        assert body["err_no"] == 0


async def get(client, path: str) -> dict:
    response = await client.get(path)
    assert response.status == 200
    return await response.json()


async def test_health_ready_and_metrics(client, api):
    await fill(api)
    await api(f"{R}/search", appid="lib", image=b64(jpeg(0)))
    await api(f"{R}/snapshot", appid="nobody")
    assert (await get(client, "/healthz"))["libraries"] == 1
    assert (await get(client, "/readyz"))["ready"] is True
    response = await client.get("/metrics")
    text = await response.text()
    assert response.status == 200 and response.content_type == "text/plain"
    assert 'same_search_requests_total{err_no="0",route="/RTSAsService/add",service="search"} 3.0' in text
    assert (
        'same_search_requests_total{err_no="103",route="/RTSAsService/snapshot",service="search"} 1.0' in text
    )
    assert 'same_search_library_items{appid="lib"} 3.0' in text
    assert "same_search_embed_queue_depth 0.0" in text
    assert "same_search_embed_batch_size_count" in text and "same_search_request_seconds_bucket" in text


async def test_libraries_create_list_stats_delete(client, api, backend):
    await fill(api)
    created = await (await client.post("/api/libraries", json={"appid": "second"})).json()
    assert created["err_no"] == 0 and created["library"]["items"] == 0
    again = await (await client.post("/api/libraries", json={"appid": "second"})).json()
    assert again["err_no"] == 104
    listed = (await get(client, "/api/libraries"))["libraries"]
    assert [(lib["appid"], lib["items"]) for lib in listed] == [("lib", 3), ("second", 0)]
    stats = (await get(client, "/api/libraries/lib"))["library"]
    assert stats["model"] == "efficientnet_lite0" and stats["dim"] == 1280 and stats["backend"] == backend
    assert stats["search"] == {"local": "exact", "milvus": "milvus-hnsw"}[backend]
    refused = await (await client.delete("/api/libraries/lib")).json()
    assert refused["err_no"] == 1 and "confirm=lib" in refused["err_msg"]
    assert (await get(client, "/api/libraries/lib"))["library"]["items"] == 3
    deleted = await (await client.delete("/api/libraries/lib?confirm=lib")).json()
    assert deleted == {"err_no": 0, "err_msg": "OK", "deleted": "lib", "items": 3}
    assert (await api(f"{R}/snapshot", appid="lib"))["err_no"] == 103
    assert (await api(f"{R}/signup", appid="lib"))["err_no"] == 0  # the name is free again
    assert (await api(f"{R}/snapshot", appid="lib"))["snapshot"]["index_size"] == 0


async def test_an_add_racing_the_deletion_of_its_library_is_103(client, api, monkeypatch):
    """An add whose library is deleted while its image is embedded finds the library gone when it
    stores: err_no 103 (not signed up), never 101 (duplicated add) for an image stored nowhere."""
    await api(f"{R}/signup", appid="lib")
    embed = client.app[SERVICES].libraries.embed  # the default model's queue: the library's
    embedded, resume = asyncio.Event(), asyncio.Event()
    real = embed.embed_with_thumbnail

    async def held(*args, **kwargs):
        try:
            return await real(*args, **kwargs)
        finally:
            embedded.set()
            await resume.wait()

    monkeypatch.setattr(embed, "embed_with_thumbnail", held)
    add = asyncio.ensure_future(api(f"{R}/add", appid="lib", image=b64(jpeg(1)), features=[brief("x")]))
    await embedded.wait()
    deleted = await (await client.delete("/api/libraries/lib?confirm=lib")).json()
    assert deleted["err_no"] == 0
    resume.set()
    answer = await add
    assert answer["err_no"] == 103, answer
    assert (await api(f"{R}/snapshot", appid="lib"))["err_no"] == 103


async def test_items_paging_fetch_thumbnail_delete(client, api):
    await fill(api, seeds=range(5))
    page = await get(client, "/api/libraries/lib/items?offset=1&limit=2")
    assert page["total"] == 5 and page["has_more"] == 1
    assert [item["brief_text"] for item in page["items"]] == ["item 1", "item 2"]
    one = (await get(client, f"/api/libraries/lib/items/{key(3)}"))["item"]
    assert one["brief"] == b64(b"item 3") and one["tags"] is None and one["created"] > 0
    response = await client.get(one["thumbnail"])
    assert response.status == 200 and response.content_type == "image/jpeg"
    thumb = Image.open(io.BytesIO(await response.read()))
    assert max(thumb.size) == 128 and len(await response.read()) < 10_000
    removed = await (await client.delete(f"/api/libraries/lib/items/{key(3)}")).json()
    assert removed["removed"] == 1
    missing = await get(client, f"/api/libraries/lib/items/{key(3)}")
    assert missing["err_no"] == 102
    gone = await client.get(one["thumbnail"])  # a JSON error naming the item, not "no such route"
    assert gone.status == 200
    body = await gone.json()
    assert body["err_no"] == 102 and key(3) in body["err_msg"] and "'lib'" in body["err_msg"]
    assert (await get(client, "/api/libraries/lib/items/1,x"))["err_no"] == 1
    assert (await get(client, "/api/libraries/lib/items?limit=5000"))["err_no"] == 1
    assert (await get(client, "/api/libraries/none/items"))["err_no"] == 103


async def test_save_and_rebuild(client, api):
    await fill(api, seeds=range(4))
    await api(f"{R}/remove", appid="lib", image=b64(jpeg(0)))
    saved = await (await client.post("/api/libraries/lib/save")).json()
    assert saved["err_no"] == 0 and saved["library"]["last_index_save"] is not None
    rebuilt = await (await client.post("/api/libraries/lib/compact")).json()
    assert rebuilt["err_no"] == 0 and rebuilt["library"]["items"] == 3
    hits = (await api(f"{R}/search", appid="lib", image=b64(jpeg(1))))["data_items"]
    assert len(hits) == 3 and hits[0]["score"] > 0.999


async def test_management_needs_the_operator_token_when_auth_is_on(aiohttp_client, config, embedder):
    config = dataclasses.replace(config, auth=AuthConfig(tokens={"shop": "t-shop", "*": "t-ops"}))
    client = await aiohttp_client(create_app(config, embedder))
    assert (await get(client, "/api/libraries"))["err_no"] == 12
    assert (await (await client.get("/api/libraries", headers={"X-Same-Token": "t-shop"})).json())[
        "err_no"
    ] == 12
    assert (await (await client.get("/api/libraries", headers={"X-Same-Token": "t-ops"})).json())[
        "err_no"
    ] == 0
    assert (await get(client, "/healthz"))["err_no"] == 0


@pytest.mark.local_only  # the local backend's graph rebuild from SQLite
async def test_a_rebuild_logs_its_progress(
    aiohttp_client, client, api, config, embedder, caplog, monkeypatch
):
    """Rebuilding a large library takes minutes; the log must show it is alive and how far it got."""
    import logging
    import shutil

    from same_search.backends.local import feed as local

    await fill(api)
    await client.close()
    shutil.rmtree(config.data_path / "indexes")
    monkeypatch.setattr(local, "REPLAY_LOG_S", 0.0)
    with caplog.at_level(logging.INFO, logger="same_search.backends.local"):
        reopened = await aiohttp_client(create_app(config, embedder))
    assert "rebuilding from the database" in caplog.text
    assert "library lib: indexed 3 of 3 items" in caplog.text
    assert (await get(reopened, "/api/libraries/lib"))["library"]["items"] == 3

"""Concurrent writers and readers on one library, on both index paths (exact and graph)."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest
from aiohttp.test_utils import TestClient, TestServer
from conftest import b64, brief
from images import jpeg

from same_search.app import create_app
from same_search.contsign import ContSign
from same_search.services import SERVICES

R = "/RTSAsService"


@pytest.mark.parametrize("exact_threshold", [5000, 0])
async def test_concurrent_add_search_remove_stay_consistent(config, embedder, exact_threshold):
    config = dataclasses.replace(
        config, index=dataclasses.replace(config.index, exact_threshold=exact_threshold)
    )
    client = TestClient(TestServer(create_app(config, embedder)))
    await client.start_server()
    try:

        async def call(route, **body):
            response = await client.post(f"{R}/{route}", json={"from": "t", "appid": "lib", **body})
            return await response.json()

        await call("signup")
        seeds = list(range(24))
        images = {seed: jpeg(seed) for seed in seeds}
        results = await asyncio.gather(
            *(call("add", image=b64(images[s]), features=[brief(str(s))]) for s in seeds),
            *(call("add", image=b64(images[s]), features=[brief("dup")]) for s in seeds[:6]),
        )
        assert sorted(r["err_no"] for r in results) == [0] * 24 + [101] * 6
        removed = seeds[::3]
        searches = [call("search", image=b64(images[s]), rn=50) for s in seeds[:4]]
        outcome = await asyncio.gather(
            *(call("remove", contsign=ContSign.of_image(images[s]).to_json()) for s in removed), *searches
        )
        assert all(r["err_no"] == 0 for r in outcome)
        live = {ContSign.of_image(images[s]) for s in seeds if s not in removed}
        snapshot = (await call("snapshot"))["snapshot"]
        assert (
            snapshot["index_size"]
            == len(live)
            == await client.server.app[SERVICES].libraries.backend.store.count(1)
        )
        body = await call("search", image=b64(images[1]), rn=100)
        assert {ContSign(**i["contsign"]) for i in body["data_items"]} == live
        assert body["data_items"][0]["contsign"] == ContSign.of_image(images[1]).to_json()
        page = await call("search", image=b64(images[1]), rn=5, pn=5)
        assert [i["contsign"] for i in page["data_items"]] == [
            i["contsign"] for i in body["data_items"][5:10]
        ]
    finally:
        await client.close()


async def test_restart_in_process_reloads_without_reembedding(config, embedder):
    client = TestClient(TestServer(create_app(config, embedder)))
    await client.start_server()
    await client.post(f"{R}/signup", json={"from": "t", "appid": "lib"})
    for seed in range(3):
        await client.post(
            f"{R}/add", json={"from": "t", "appid": "lib", "image": b64(jpeg(seed)), "features": [brief("x")]}
        )
    await client.close()

    client = TestClient(TestServer(create_app(config, embedder)))
    await client.start_server()
    try:
        services = client.server.app[SERVICES]
        lib = await services.libraries.get("lib")
        index = lib.handle  # the local backend's LibraryIndex
        assert index.count() == 3 and index.saved_at is not None and not index.dirty
        response = await client.post(
            f"{R}/search",
            json={"from": "t", "appid": "lib", "contsign": ContSign.of_image(jpeg(2)).to_json()},
        )
        body = await response.json()
        assert body["data_items"][0]["score"] == pytest.approx(1.0, abs=1e-4)
        assert services.embed.images == 0  # nothing was embedded again
    finally:
        await client.close()


async def test_body_over_the_limit_is_an_envelope(aiohttp_client, config, embedder):
    config = dataclasses.replace(config, server=dataclasses.replace(config.server, max_body_bytes=50_000))
    client = await aiohttp_client(create_app(config, embedder))
    response = await client.post(f"{R}/search", data=b"{" + b" " * 60_000 + b"}")
    assert response.status == 200
    body = await response.json()
    assert body["err_no"] == 1 and "50000" in body["err_msg"]

    async def chunked():  # no Content-Length: the limit must hold while streaming
        for _ in range(20):
            yield b" " * 5_000

    response = await client.post(f"{R}/search", data=chunked())
    assert response.status == 200
    body = await response.json()
    assert body["err_no"] == 1 and "50000" in body["err_msg"]

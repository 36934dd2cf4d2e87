"""The same same-picture decision on every backend: local features live wherever the library
lives (SQLite beside the local index, a field of the Milvus collection), travel with an export,
and a library's stats say how many of its items lack them."""

from __future__ import annotations

import dataclasses
import sqlite3
from unittest import mock

import pytest
from conftest import b64, brief
from exports import export_zip, unit_vectors
from images import encode, picture
from test_same_picture import EDITS, add, scene, search

from same_search.app import create_app
from same_search.verify import decision

R = "/RTSAsService"
BACKENDS = ("local", "milvus")
SIZE = (480, 360)


@pytest.fixture
async def library(api) -> dict[int, str]:
    assert (await api(f"{R}/signup", appid="lib"))["err_no"] == 0
    return {seed: await add(api, picture(seed, SIZE), f"item-{seed}") for seed in range(1, 4)}


async def stats(client, appid: str) -> dict:
    body = await (await client.get(f"/api/libraries/{appid}")).json()
    assert body["err_no"] == 0, body
    return body["library"]


@pytest.mark.parametrize("edit", ["crop", "overlay", "rotation"])
async def test_an_edited_copy_is_confirmed_by_its_geometry_on_every_backend(api, library, edit):
    """Not by the score fallback: the copy scores below it, and the answer says where it is."""
    query = EDITS[edit](picture(2, SIZE))
    plain = await search(api, query)
    assert plain[0]["contsign"] == library[2] and plain[0]["score"] < decision.FALLBACK_SCORE
    [hit] = await search(api, query, same_picture=1)
    assert hit["contsign"] == library[2] and "region" in hit


async def test_a_look_alike_is_not_the_same_picture_on_every_backend(api, library):
    stored = await add(api, scene(50, 1), "scene")
    query = scene(50, 2)
    assert (await search(api, query))[0]["contsign"] == stored
    assert await search(api, query, same_picture=1) == []


async def test_stats_count_the_items_without_local_features(client, api, library):
    assert (await stats(client, "lib"))["items_without_local_features"] == 0
    healthz = await (await client.get("/healthz")).json()
    bare = export_zip(range(1, 6), unit_vectors(5, healthz["model"]["dim"], 3), healthz["model"])
    answer = await (await client.post("/api/libraries/lib/import", data=bare)).json()
    assert answer["err_no"] == 0 and answer["imported"] == 5, answer
    lib = await stats(client, "lib")
    assert (lib["items"], lib["items_without_local_features"]) == (8, 5)


async def test_an_export_carries_local_features_and_the_import_answers_alike(client, api, library):
    export = await (await client.get("/api/libraries/lib/export?vectors=1")).read()
    answer = await (await client.post("/api/libraries/copy/import", data=export)).json()
    assert answer["err_no"] == 0 and answer["imported"] == 3, answer
    assert (await stats(client, "copy"))["items_without_local_features"] == 0
    for query in [
        EDITS[edit](picture(seed, SIZE)) for edit in ("crop", "jpeg30", "mirror") for seed in (1, 3)
    ]:
        data = b64(encode(query))
        first = await api(f"{R}/search", appid="lib", image=data, same_picture=1)
        second = await api(f"{R}/search", appid="copy", image=data, same_picture=1)
        assert first["data_items"], first
        assert second["data_items"] == first["data_items"]


async def test_an_export_can_leave_local_features_out_for_an_older_daemon(client, api, library):
    export = await (await client.get("/api/libraries/lib/export?vectors=1&local_features=0")).read()
    answer = await (await client.post("/api/libraries/copy/import", data=export)).json()
    assert answer["err_no"] == 0 and answer["imported"] == 3, answer
    assert (await stats(client, "copy"))["items_without_local_features"] == 3


async def test_a_milvus_collection_made_before_the_field_keeps_working_without_it(
    aiohttp_client, config, embedder, backend
):
    """milvus-lite cannot add a field to a collection: one created with the old layout serves as
    before, its items judged by the score fallback and counted in the stats."""
    if backend != "milvus":
        pytest.skip("a Milvus collection's layout")
    from pymilvus import MilvusClient
    from pymilvus.orm.schema import CollectionSchema

    from same_search.backends.milvus.schema import FEATURES, collection_name, create_items

    first = await aiohttp_client(create_app(config, embedder))
    body = await (await first.post(f"{R}/signup", json={"appid": "lib", "from": "pytest"})).json()
    assert body["err_no"] == 0, body
    dim = (await (await first.get("/api/libraries/lib")).json())["library"]["dim"]
    await first.close()
    milvus = MilvusClient(uri=config.storage.uri)
    milvus.use_database(config.storage.db_name)
    milvus.drop_collection(collection_name("lib"))
    add_field = CollectionSchema.add_field

    def without_features(schema, name, *args, **kwargs):
        return schema if name == FEATURES else add_field(schema, name, *args, **kwargs)

    with mock.patch.object(CollectionSchema, "add_field", without_features):
        create_items(milvus, config, collection_name("lib"), dim)
    milvus.close()

    client = await aiohttp_client(create_app(config, embedder))

    async def call(route: str, **fields) -> dict:
        return await (await client.post(route, json={"from": "pytest", **fields})).json()

    for seed in (1, 2):
        added = await call(
            f"{R}/add", appid="lib", image=b64(encode(picture(seed, SIZE))), features=[brief("x")]
        )
        assert added["err_no"] == 0, added
    crop = b64(encode(EDITS["crop"](picture(2, SIZE))))
    plain = (await call(f"{R}/search", appid="lib", image=crop))["data_items"]
    assert plain[0]["score"] < decision.FALLBACK_SCORE
    assert (await call(f"{R}/search", appid="lib", image=crop, same_picture=1))["data_items"] == []
    exact = await call(f"{R}/search", appid="lib", image=b64(encode(picture(2, SIZE))), same_picture=1)
    assert len(exact["data_items"]) == 1 and "region" not in exact["data_items"][0]
    assert (await stats(client, "lib"))["items_without_local_features"] == 2
    refused = await (await client.post("/api/libraries/lib/local_features")).json()
    assert refused["err_no"] == 1 and "originals" in refused["err_msg"]


@pytest.mark.local_only
async def test_a_refill_gives_items_their_local_features_back_from_kept_originals(
    aiohttp_client, config, embedder
):
    """Items that lost their features (stored before they existed) get them back from their kept
    originals; items with no original (imported as bare vectors) stay without, and are counted."""
    keeping = dataclasses.replace(config, storage=dataclasses.replace(config.storage, keep_originals=True))
    client = await aiohttp_client(create_app(keeping, embedder))

    async def call(route: str, **fields) -> dict:
        return await (await client.post(route, json={"from": "pytest", **fields})).json()

    assert (await call(f"{R}/signup", appid="lib"))["err_no"] == 0
    for seed in (1, 2, 3):
        added = await call(
            f"{R}/add", appid="lib", image=b64(encode(picture(seed, SIZE))), features=[brief("x")]
        )
        assert added["err_no"] == 0, added
    model = (await (await client.get("/healthz")).json())["model"]
    bare = export_zip(range(1, 3), unit_vectors(2, model["dim"], 4), model)
    assert (await (await client.post("/api/libraries/lib/import", data=bare)).json())["err_no"] == 0
    with sqlite3.connect(config.data_path / "same_search.sqlite3") as db:
        db.execute("DELETE FROM local_features")
    crop = b64(encode(EDITS["crop"](picture(2, SIZE))))
    assert (await call(f"{R}/search", appid="lib", image=crop, same_picture=1))["data_items"] == []
    status = await (await client.get("/api/libraries/lib/local_features")).json()
    assert (status["refill"], status["items_without_local_features"]) == (None, 5)

    answer = await (await client.post("/api/libraries/lib/local_features?wait=1")).json()
    assert answer["err_no"] == 0, answer
    assert (answer["refill"]["status"], answer["refill"]["done"], answer["refill"]["failed"]) == (
        "done",
        3,
        0,
    )
    assert answer["library"]["items_without_local_features"] == 2
    [hit] = (await call(f"{R}/search", appid="lib", image=crop, same_picture=1))["data_items"]
    assert "region" in hit
    status = await (await client.get("/api/libraries/lib/local_features")).json()
    assert status["refill"]["status"] == "done" and status["items_without_local_features"] == 2

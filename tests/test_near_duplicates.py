"""The near-duplicate policy on add (extension): off, warn, reject; per request, per library, per job.

A re-encoded copy of a stored picture scores above the strict floor (0.95); a different picture,
even a look-alike, scores well below it, and so does an edited copy (crop, shrink, JPEG 40). Under
the built-in floors the same-picture check tells those two apart from 0.6 up; a floor set by the
library or the request applies to every candidate; without local features the score alone needs 0.95.
"""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
from importlib import resources

from conftest import b64, brief
from images import encode, jpeg, near_duplicate, picture
from test_import_export import wait_job

from same_search.app import create_app
from same_search.contsign import ContSign
from same_search.store.database import SCHEMA_VERSION
from same_search.store.db import Store

R = "/RTSAsService"


def copy_of(seed: int) -> bytes:
    """The same picture re-encoded at another JPEG quality: other bytes, same picture."""
    return encode(picture(seed), quality=50)


async def add(api, image: bytes, text: str = "x", **extra) -> dict:
    return await api(f"{R}/add", appid="lib", image=b64(image), features=[brief(text)], **extra)


async def size(api) -> int:
    return (await api(f"{R}/snapshot", appid="lib"))["snapshot"]["index_size"]


async def library_with_original(api) -> None:
    assert (await api(f"{R}/signup", appid="lib"))["err_no"] == 0
    assert (await add(api, jpeg(1), "original"))["err_no"] == 0


async def test_off_is_the_default_and_the_spec_reply(api):
    await library_with_original(api)
    answer = await add(api, copy_of(1))
    assert answer == {"err_no": 0, "err_msg": "OK", "contsign": ContSign.of_image(copy_of(1)).to_json()}
    assert await size(api) == 2


async def test_warn_stores_and_reports_the_close_items(api):
    await library_with_original(api)
    answer = await add(api, copy_of(1), dup_policy="warn")
    assert answer["err_no"] == 0 and answer["contsign"] == ContSign.of_image(copy_of(1)).to_json()
    [close] = answer["data_items"]
    assert close["contsign"] == ContSign.of_image(jpeg(1)).to_json()
    assert close["score"] >= 0.95
    assert close["features"] == [{"fea_id": 1000, "fea_data": b64(b"original")}]
    assert await size(api) == 2
    unrelated = await add(api, jpeg(6), dup_policy="warn")
    assert unrelated["err_no"] == 0 and unrelated["data_items"] == []
    assert await size(api) == 3


async def test_reject_is_101_with_the_close_items_and_stores_nothing(api):
    await library_with_original(api)
    answer = await add(api, copy_of(1), dup_policy="reject")
    assert answer["err_no"] == 101 and answer["err_msg"] == "duplicated add"
    assert set(answer) == {"err_no", "err_msg", "data_items"}
    [close] = answer["data_items"]
    assert close["contsign"] == ContSign.of_image(jpeg(1)).to_json() and close["score"] >= 0.95
    assert await size(api) == 1
    gone = await api(f"{R}/search", appid="lib", contsign=ContSign.of_image(copy_of(1)).to_json())
    assert gone["err_no"] == 1  # not stored


async def test_the_default_floors_catch_an_edited_copy_and_keep_look_alikes_out(api):
    await library_with_original(api)
    original = ContSign.of_image(jpeg(1)).to_json()
    # A different picture that the descriptor finds alike (score about 0.83) is not a duplicate...
    assert (await add(api, jpeg(6), "look-alike", dup_policy="reject"))["err_no"] == 0
    # ...while a cropped, shrunk, JPEG-40 copy (about 0.83 too) is: under the built-in floors a
    # candidate the same-picture check confirms needs only 0.6.
    edited = near_duplicate(jpeg(1))
    answer = await add(api, edited, dup_policy="reject")
    assert answer["err_no"] == 101
    assert [item["contsign"] for item in answer["data_items"]] == [original]
    assert 0.6 <= answer["data_items"][0]["score"] < 0.95
    # A floor the request (or the library) sets applies to every candidate, confirmed or not.
    assert (await add(api, edited, dup_policy="warn", dup_min_score=0.95))["data_items"] == []
    await api(f"{R}/remove", appid="lib", image=b64(edited))
    lower = await add(api, edited, dup_policy="reject", dup_min_score=0.8)
    assert lower["err_no"] == 101 and [item["contsign"] for item in lower["data_items"]] == [original]


async def test_without_local_features_the_score_alone_needs_the_strict_floor(
    aiohttp_client, config, embedder
):
    config = dataclasses.replace(config, storage=dataclasses.replace(config.storage, local_features=False))
    client = await aiohttp_client(create_app(config, embedder))

    async def api(route: str, **body):
        body.setdefault("from", "pytest")
        return await (await client.post(route, json=body)).json()

    await library_with_original(api)
    edited = near_duplicate(jpeg(1))  # about 0.83: under 0.95, and nothing can confirm it
    assert (await add(api, edited, dup_policy="warn"))["data_items"] == []
    assert (await add(api, copy_of(1), dup_policy="reject"))["err_no"] == 101  # above 0.95


async def test_a_byte_duplicate_is_still_the_spec_101(api):
    await library_with_original(api)
    answer = await add(api, jpeg(1), "again", dup_policy="reject")
    assert answer["err_no"] == 101
    assert answer["data_items"] == [
        {
            "contsign": ContSign.of_image(jpeg(1)).to_json(),
            "features": [{"fea_id": 1000, "fea_data": b64(b"original")}],
        }
    ]


async def test_bad_policy_fields_are_1_naming_them(api):
    await library_with_original(api)
    for extra, field in (
        ({"dup_policy": "maybe"}, "dup_policy"),
        ({"dup_policy": 1}, "dup_policy"),
        ({"dup_min_score": 1.5}, "dup_min_score"),
        ({"dup_min_score": "high"}, "dup_min_score"),
        ({"dup_min_score": True}, "dup_min_score"),
    ):
        answer = await add(api, copy_of(1), **extra)
        assert answer["err_no"] == 1 and field in answer["err_msg"], answer
    assert await size(api) == 1


async def test_two_close_images_added_at_once_under_reject_store_one(api):
    assert (await api(f"{R}/signup", appid="lib"))["err_no"] == 0
    first, second = encode(picture(1), quality=60), encode(picture(1), quality=45)
    answers = await asyncio.gather(
        add(api, first, dup_policy="reject"), add(api, second, dup_policy="reject")
    )
    assert sorted(a["err_no"] for a in answers) == [0, 101]
    assert await size(api) == 1


async def test_library_default_set_on_8103_survives_a_restart(aiohttp_client, config, embedder):
    client = await aiohttp_client(create_app(config, embedder))

    async def call(route, **body):
        return await (await client.post(route, json={"from": "pytest", **body})).json()

    assert (await call(f"{R}/signup", appid="lib"))["err_no"] == 0
    stats = (await (await client.get("/api/libraries/lib")).json())["library"]
    assert stats["dup_policy"] == "off" and stats["dup_min_score"] == 0.95
    answer = await (await client.put("/api/libraries/lib/dup_policy", json={"dup_policy": "reject"})).json()
    assert answer["err_no"] == 0 and answer["library"]["dup_policy"] == "reject"
    for body, field in (
        ({"dup_policy": "no"}, "dup_policy"),
        ({"dup_min_score": -1}, "dup_min_score"),
        ({}, "give"),
    ):
        bad = await (await client.put("/api/libraries/lib/dup_policy", json=body)).json()
        assert bad["err_no"] == 1 and field in bad["err_msg"], bad
    await client.close()

    client = await aiohttp_client(create_app(config, embedder))
    stats = (await (await client.get("/api/libraries/lib")).json())["library"]
    assert stats["dup_policy"] == "reject"
    assert (await call(f"{R}/add", appid="lib", image=b64(jpeg(1)), features=[brief("o")]))["err_no"] == 0
    answer = await call(f"{R}/add", appid="lib", image=b64(copy_of(1)), features=[brief("c")])
    assert answer["err_no"] == 101  # the library's default applies to a spec client
    # a request may still switch it off, and a floor set on 8103 applies
    off = await call(f"{R}/add", appid="lib", image=b64(copy_of(1)), features=[brief("c")], dup_policy="off")
    assert off["err_no"] == 0
    answer = await (await client.post("/api/libraries/lib/dup_policy", json={"dup_min_score": 0.5})).json()
    assert answer["library"]["dup_policy"] == "reject" and answer["library"]["dup_min_score"] == 0.5
    # jpeg(2) scores above 0.5 but is another picture: the same-picture check (local features)
    # keeps it from being called a near-duplicate, whatever the floor
    assert (await call(f"{R}/add", appid="lib", image=b64(jpeg(2)), features=[brief("t")]))["err_no"] == 0
    reset = await (await client.put("/api/libraries/lib/dup_policy", json={"dup_min_score": None})).json()
    assert reset["library"]["dup_min_score"] == 0.95


async def test_a_version_1_database_is_migrated(tmp_path):
    path = tmp_path / "old.sqlite3"
    schema = resources.files("same_search.store").joinpath("schema.sql").read_text()
    with sqlite3.connect(path) as conn:
        conn.executescript(schema)
        conn.execute("INSERT INTO meta(key, value) VALUES('schema_version', '1')")
        conn.execute(
            "INSERT INTO libraries(appid, model_id, dim, fingerprint, created_at) VALUES('old','m',4,'f',0)"
        )
        conn.execute(
            "INSERT INTO jobs(appid, kind, source, status, created_at, updated_at) "
            "VALUES('old','dir','/x','done',0,0)"
        )
    store = Store(path)
    await store.open()
    try:
        [lib] = await store.libraries()
        assert lib.appid == "old" and lib.dup_policy == "off" and lib.dup_min_score is None
        [job] = await store.jobs()
        assert job.near_duplicates == 0 and job.dup_policy is None
        async with store.reader.execute("SELECT value FROM meta WHERE key='schema_version'") as cur:
            assert int((await cur.fetchone())[0]) == SCHEMA_VERSION  # every migration applied
    finally:
        await store.close()
    again = Store(path)  # opening again applies nothing twice
    await again.open()
    await again.close()


async def test_import_jobs_honour_the_policy_and_count_near_duplicates(client, api, tmp_path):
    await library_with_original(api)
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "a_copy.jpg").write_bytes(copy_of(1))
    (folder / "b_other.jpg").write_bytes(jpeg(2))
    (folder / "c_same.jpg").write_bytes(jpeg(1))

    async def job(**policy) -> dict:
        source = {"appid": "lib", "source": {"dir": str(folder)}, **policy}
        created = await (await client.post("/api/jobs", json=source)).json()
        assert created["err_no"] == 0, created
        return await wait_job(client, created["job"]["id"])

    rejected = await job(dup_policy="reject")
    assert (rejected["done"], rejected["duplicates"], rejected["near_duplicates"], rejected["failed"]) == (
        1,
        1,
        1,
        0,
    )
    assert await size(api) == 2
    await api(f"{R}/remove", appid="lib", image=b64(jpeg(2)))
    warned = await job(dup_policy="warn")
    assert (warned["done"], warned["duplicates"], warned["near_duplicates"]) == (2, 1, 1)
    assert await size(api) == 3
    bad = await (
        await client.post(
            "/api/jobs", json={"appid": "lib", "source": {"dir": str(folder)}, "dup_policy": "x"}
        )
    ).json()
    assert bad["err_no"] == 1 and "dup_policy" in bad["err_msg"]


async def test_a_job_without_its_own_policy_follows_the_library(client, api, tmp_path):
    await library_with_original(api)
    await client.put("/api/libraries/lib/dup_policy", json={"dup_policy": "reject"})
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "copy.jpg").write_bytes(copy_of(1))
    created = await (
        await client.post("/api/jobs", json={"appid": "lib", "source": {"dir": str(folder)}})
    ).json()
    finished = await wait_job(client, created["job"]["id"])
    assert (finished["done"], finished["near_duplicates"]) == (0, 1)

"""A model per library: model profiles, kept originals, re-embedding in place.

Two real models: the session's Lite0 with average pooling (the default here) and Lite0 with GeM
pooling (profile ``gem``), which makes other vectors and so has another fingerprint.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import io
import sqlite3
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import b64, brief
from images import jpeg

from same_search.config import Config, ConfigError, ModelConfig, StorageConfig, from_mapping
from same_search.contsign import ContSign
from same_search.embed.embedder import model_fingerprint
from same_search.records import NewLibrary, StorageError
from same_search.services import SERVICES
from same_search.store.db import Store

R = "/RTSAsService"
GEM = ModelConfig(name="efficientnet_lite0", pooling="gem", precision="fp32")


@pytest.fixture
def config(tmp_path: Path) -> Config:
    """Originals kept; the default model is the session's Lite0, ``gem`` another profile."""
    return Config(
        storage=StorageConfig(data_dir=str(tmp_path / "data"), keep_originals=True),
        model=ModelConfig(name="efficientnet_lite0"),
        models={"gem": GEM},
    )


def originals(data_dir: Path) -> list[Path]:
    return sorted(p for p in (data_dir / "originals").rglob("*") if p.is_file())


async def add(api, appid: str, seed: int) -> dict:
    answer = await api(f"{R}/add", appid=appid, image=b64(jpeg(seed)), features=[brief(f"img {seed}")])
    assert answer["err_no"] == 0, answer
    return answer


async def wait_reembed(client, appid: str, job_id: int, timeout: float = 120) -> dict:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        job = (await (await client.get(f"/api/libraries/{appid}/reembed/{job_id}")).json())["job"]
        if job["status"] != "running":
            return job
        await asyncio.sleep(0.05)
    raise TimeoutError(job)


def test_fingerprint_covers_pooling_and_resolution(embedder):
    """Descriptor settings that change vectors (pooling, GeM exponent, resolution) are another model;
    device, precision and batching are not."""
    base = ModelConfig(name="efficientnet_lite0")
    same = model_fingerprint(base, embedder.model)
    assert same == embedder.info.fingerprint
    others = [
        dataclasses.replace(base, pooling="gem"),
        dataclasses.replace(base, pooling="gem", gem_p=4.0),
        dataclasses.replace(base, image_size=288),
    ]
    prints = {model_fingerprint(cfg, embedder.model) for cfg in others}
    assert len(prints) == 3 and same not in prints
    for cfg in (
        dataclasses.replace(base, precision="bf16"),
        dataclasses.replace(base, max_batch=8, workers=1),
    ):
        assert model_fingerprint(cfg, embedder.model) == same


async def test_signup_names_a_model_and_each_library_embeds_with_its_own(client, api, embedder):
    services = client.app[SERVICES]
    assert (await api(f"{R}/signup", appid="plain"))["err_no"] == 0
    assert (await api(f"{R}/signup", appid="g", model="gem"))["err_no"] == 0
    unknown = await api(f"{R}/signup", appid="x", model="resnet9000")
    assert unknown["err_no"] == 1 and "resnet9000" in unknown["err_msg"] and "gem" in unknown["err_msg"]
    wrong_type = await api(f"{R}/signup", appid="x", model=3)
    assert wrong_type["err_no"] == 1 and "model" in wrong_type["err_msg"]
    created = await (await client.post("/api/libraries", json={"appid": "m", "model": "gem"})).json()
    assert created["err_no"] == 0 and created["library"]["model_name"] == "gem"

    gem = services.models.by_name("gem")
    assert gem is not None and gem.info.fingerprint != embedder.info.fingerprint
    for appid in ("plain", "g"):
        await add(api, appid, 7)
    key = ContSign.of_image(jpeg(7))
    libs = services.libraries
    stored_g = await libs.reads.vector_of(await libs.get("g"), key)
    stored_plain = await libs.reads.vector_of(await libs.get("plain"), key)
    assert np.allclose(stored_g, await gem.embed_image(jpeg(7)), atol=1e-4)
    assert np.allclose(stored_plain, await services.embed.embed_image(jpeg(7)), atol=1e-4)
    assert not np.allclose(stored_g, stored_plain, atol=1e-2)
    found = await api(f"{R}/search", appid="g", image=b64(jpeg(7)))
    assert found["err_no"] == 0 and found["data_items"][0]["score"] > 0.999

    health = await (await client.get("/healthz")).json()
    by_name = {name: model for model in health["models"] for name in model["names"]}
    assert by_name["default"]["libraries"] == ["plain"]
    assert by_name["gem"]["libraries"] == ["g", "m"]
    assert health["model"]["fingerprint"] == embedder.info.fingerprint  # the default, as before
    stats = (await (await client.get("/api/libraries/g")).json())["library"]
    assert stats["model_name"] == "gem" and stats["fingerprint"] == gem.info.fingerprint


async def test_kept_originals_follow_their_items(client, api, config):
    data_dir = config.data_path
    for appid in ("a", "b"):
        await api(f"{R}/signup", appid=appid)
    await add(api, "a", 1)
    await add(api, "a", 2)
    await add(api, "b", 1)  # the same picture in a second library shares the file
    files = originals(data_dir)
    assert len(files) == 2
    kept = [p for p in files if p.read_bytes() == jpeg(1)]
    assert len(kept) == 1 and kept[0].parent.name + kept[0].name == hashlib.sha256(jpeg(1)).hexdigest()
    assert not list((data_dir / "originals").rglob("*.tmp"))

    await api(f"{R}/remove", appid="a", image=b64(jpeg(1)))
    assert kept[0].exists()  # still referenced by library b
    await api(f"{R}/remove", appid="b", image=b64(jpeg(1)))
    assert not kept[0].exists()
    assert len(originals(data_dir)) == 1
    assert (await (await client.delete("/api/libraries/a?confirm=a")).json())["err_no"] == 0
    assert originals(data_dir) == []
    with sqlite3.connect(data_dir / "same_search.sqlite3") as db:
        assert db.execute("SELECT count(*) FROM originals").fetchone()[0] == 0


async def test_originals_survive_export_and_import_and_are_checked(client, api, config):
    await api(f"{R}/signup", appid="src")
    for seed in (1, 2, 3):
        await add(api, "src", seed)
    export = await (await client.get("/api/libraries/src/export?vectors=1")).read()
    names = zipfile.ZipFile(io.BytesIO(export)).namelist()
    assert sum(name.startswith("originals/") for name in names) == 3
    assert (await (await client.delete("/api/libraries/src?confirm=src")).json())["err_no"] == 0
    assert originals(config.data_path) == []

    answer = await (await client.post("/api/libraries/copy/import", data=export)).json()
    assert answer["err_no"] == 0 and answer["imported"] == 3
    assert sorted(p.read_bytes() for p in originals(config.data_path)) == sorted(jpeg(s) for s in (1, 2, 3))
    lib = await client.app[SERVICES].libraries.get("copy")
    assert await client.app[SERVICES].libraries.backend.items_without_original(lib) == 0

    # A damaged original (content does not match its name) refuses the whole import.
    source = zipfile.ZipFile(io.BytesIO(export))
    tampered = io.BytesIO()
    with zipfile.ZipFile(tampered, "w") as out:
        for info in source.infolist():
            data = source.read(info)
            out.writestr(info, data[:-10] + b"x" * 10 if info.filename.startswith("originals/") else data)
    refused = await (await client.post("/api/libraries/other/import", data=tampered.getvalue())).json()
    assert refused["err_no"] == 1 and "sha256" in refused["err_msg"]
    assert (await api(f"{R}/search", appid="other", image=b64(jpeg(1))))["err_no"] == 103

    # Without originals: the import works, but such a library cannot be re-embedded.
    bare = await (await client.get("/api/libraries/copy/export?vectors=1&originals=0")).read()
    assert not any(n.startswith("originals/") for n in zipfile.ZipFile(io.BytesIO(bare)).namelist())
    assert (await (await client.post("/api/libraries/bare/import", data=bare)).json())["err_no"] == 0
    refused = await (await client.post("/api/libraries/bare/reembed", json={"model": "gem"})).json()
    assert refused["err_no"] == 1 and "3 of 3 items without a kept original" in refused["err_msg"]


async def test_reembed_refusals(client, api):
    await api(f"{R}/signup", appid="lib")
    await add(api, "lib", 1)
    for body, text in (
        ({}, "model is required"),
        ({"model": "nope"}, "'nope' is not configured"),
        ({"model": "default"}, "already on model 'default'"),
    ):
        answer = await (await client.post("/api/libraries/lib/reembed", json=body)).json()
        assert answer["err_no"] == 1 and text in answer["err_msg"], answer
    missing = await (await client.post("/api/libraries/none/reembed", json={"model": "gem"})).json()
    assert missing["err_no"] == 103


async def test_reembed_carries_writes_made_during_the_job_then_switches(client, api, embedder):
    services = client.app[SERVICES]
    gem = services.models.by_name("gem")
    await api(f"{R}/signup", appid="lib")
    for seed in range(60):
        await add(api, "lib", seed)
    started = await (await client.post("/api/libraries/lib/reembed", json={"model": "gem"})).json()
    assert started["err_no"] == 0 and started["job"]["status"] == "running"
    job_id = started["job"]["id"]
    again = await (await client.post("/api/libraries/lib/reembed", json={"model": "gem"})).json()
    assert again["err_no"] == 1 and "already" in again["err_msg"]

    # While the job runs the library serves with its old model and takes writes.
    await add(api, "lib", 100)
    removed = await api(f"{R}/remove", appid="lib", image=b64(jpeg(3)))
    assert removed["err_no"] == 0
    await api(f"{R}/remove", appid="lib", image=b64(jpeg(59)))
    found = await api(f"{R}/search", appid="lib", image=b64(jpeg(5)))
    assert found["err_no"] == 0 and found["data_items"][0]["score"] > 0.999
    during = (await (await client.get(f"/api/libraries/lib/reembed/{job_id}")).json())["job"]
    assert during["status"] == "running" and during["done"] < during["total"]  # the writes raced the job

    job = await wait_reembed(client, "lib", job_id)
    assert job["status"] == "done", job
    assert job["done"] == job["total"] == 59
    lib = await services.libraries.get("lib")
    assert lib.row.fingerprint == gem.info.fingerprint
    assert await services.libraries.count(lib) == 59
    for seed in (0, 100):  # one from before the job, one added during it: both made by the new model
        stored = await services.libraries.reads.vector_of(lib, ContSign.of_image(jpeg(seed)))
        assert np.allclose(stored, await gem.embed_image(jpeg(seed)), atol=1e-4)
    for seed in (3, 59):  # removed during the job: they do not come back
        gone = await api(f"{R}/search", appid="lib", image=b64(jpeg(seed)), rn=50)
        assert all(item["contsign"] != ContSign.of_image(jpeg(seed)).to_json() for item in gone["data_items"])
    found = await api(f"{R}/search", appid="lib", image=b64(jpeg(100)))
    assert found["data_items"][0]["contsign"] == ContSign.of_image(jpeg(100)).to_json()
    assert found["data_items"][0]["score"] > 0.999  # the query was embedded by the new model too
    health = await (await client.get("/healthz")).json()
    by_name = {name: model for model in health["models"] for name in model["names"]}
    assert by_name["gem"]["libraries"] == ["lib"] and by_name["default"]["libraries"] == []
    listed = await (await client.get("/api/libraries/lib/reembed")).json()
    assert [j["id"] for j in listed["jobs"]] == [job_id]
    with sqlite3.connect(Path(services.cfg.storage.data_dir) / "same_search.sqlite3") as db:
        assert db.execute("SELECT count(*) FROM reembed_vectors").fetchone()[0] == 0


async def test_cancel_leaves_the_library_untouched(client, api, embedder):
    services = client.app[SERVICES]
    await api(f"{R}/signup", appid="lib")
    for seed in range(40):
        await add(api, "lib", seed)
    before = await services.libraries.reads.vector_of(
        await services.libraries.get("lib"), ContSign.of_image(jpeg(0))
    )
    job = (await (await client.post("/api/libraries/lib/reembed", json={"model": "gem"})).json())["job"]
    cancelled = await (await client.post(f"/api/libraries/lib/reembed/{job['id']}/cancel")).json()
    assert cancelled["err_no"] == 0 and cancelled["job"]["status"] == "cancelled"
    assert cancelled["job"]["done"] < 40
    lib = await services.libraries.get("lib")
    assert lib.row.fingerprint == embedder.info.fingerprint
    after = await services.libraries.reads.vector_of(lib, ContSign.of_image(jpeg(0)))
    assert np.array_equal(before, after)
    with sqlite3.connect(Path(services.cfg.storage.data_dir) / "same_search.sqlite3") as db:
        assert db.execute("SELECT count(*) FROM reembed_vectors").fetchone()[0] == 0
    again = await (await client.post(f"/api/libraries/lib/reembed/{job['id']}/cancel")).json()
    assert again["err_no"] == 1 and "cancelled, not running" in again["err_msg"]
    found = await api(f"{R}/search", appid="lib", image=b64(jpeg(0)))
    assert found["data_items"][0]["score"] > 0.999


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"models": {"default": {"name": "efficientnet_lite0"}}}, "not 'default'"),
        ({"models": {"bad name": {}}}, "profile name"),
        ({"models": {"x": {"pooling": "max"}}}, "pooling must be one of"),
        ({"models": {"x": {"nmae": "resnet50"}}}, r"\[models.x\] unknown key 'nmae'"),
        ({"models": {"x": 3}}, "must be a table"),
        (
            {"storage": {"backend": "milvus", "uri": "http://m:19530", "keep_originals": True}},
            "keep_originals",
        ),
    ],
)
def test_model_profile_and_originals_config_errors(data, message):
    with pytest.raises(ConfigError, match=message):
        from_mapping(data)


def test_model_profiles_from_toml():
    cfg = from_mapping({"models": {"old": {"name": "efficientnet_lite0", "image_size": 288}}})
    assert list(cfg.model_profiles()) == ["default", "old"]
    assert cfg.models["old"].image_size == 288 and cfg.models["old"].pooling == "avg"


async def test_kept_originals_count_against_max_db_bytes(tmp_path: Path):
    """An original that would take database + originals past max_db_bytes is refused (err_no 11
    through the API) and leaves no file and no row behind."""
    store = Store(tmp_path / "db.sqlite3")
    await store.open()
    try:
        row = await store.create_library(NewLibrary("lib", "m", 4, "f"))
        vector = np.array([1, 0, 0, 0], dtype=np.float32)
        await store.add_item(row.id, 1, b"", None, vector, original=b"a" * 10_000)
        assert len(originals(tmp_path)) == 1
        store.max_bytes = store._database_bytes() + 10_000 + 5_000  # room for 5 KB more
        with pytest.raises(StorageError, match="max_db_bytes"):
            await store.add_item(row.id, 2, b"", None, vector, original=b"b" * 10_000)
        assert len(originals(tmp_path)) == 1 and await store.count(row.id) == 1
        await store.add_item(row.id, 3, b"", None, vector, original=b"a" * 10_000)  # shared: no new bytes
        assert len(originals(tmp_path)) == 1 and await store.count(row.id) == 2
    finally:
        await store.close()

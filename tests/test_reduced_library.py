"""A library big enough to be reduced, through the real app: a tiny ``reduce_min_items`` (300)
and ``reduce_dim`` (32) so the reduced path runs in the normal suite.

The library arrives as an export ZIP with vectors (descriptor-like synthetic 1280-d vectors), is
indexed as a reduced index when its snapshot is missing, then searched by contsign, with and
without tag filters, after removals, tag updates and restarts: every score is the native cosine.
"""

from __future__ import annotations

import dataclasses
import io
import json
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
from aiohttp.test_utils import TestClient, TestServer
from conftest import b64, brief
from images import jpeg
from numpy.lib import format as npy_format

from same_search.app import create_app
from same_search.contsign import ContSign
from same_search.index import graph_files, native_file
from same_search.services import SERVICES

R = "/RTSAsService"
N = 400
#: Scores are float32 inner products of the same vectors, computed another way.
TOL = 1e-5


def descriptors(n: int, dim: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    scale = 1.0 / np.arange(1, dim + 1) ** 0.6
    centres = np.abs(rng.standard_normal((25, dim))) * scale
    v = centres[rng.integers(0, 25, n)] + 0.4 * np.abs(rng.standard_normal((n, dim))) * scale
    v = v.astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


@pytest.fixture
def config(config):
    # 25 re-ranked candidates: the recall tuning only deepens from here (index/recall.py), and
    # a page of 50 then reads a deeper tier (index/paging.py) than it would from 60, which at a
    # 32-d projection keeps a 50% tag filter's page of 50 within the 0.9 overlap checked below.
    index = dataclasses.replace(
        config.index, reduce_min_items=300, reduce_dim=32, rerank_candidates=25, exact_threshold=50
    )
    return dataclasses.replace(config, index=index)


async def start(config, embedder) -> TestClient:
    client = TestClient(TestServer(create_app(config, embedder)))
    await client.start_server()
    return client


async def call(client: TestClient, route: str, **body) -> dict:
    response = await client.post(route, json={"from": "pytest", **body})
    assert response.status == 200
    return await response.json()


def export_zip(meta: dict, keys: np.ndarray, vectors: np.ndarray, tags: np.ndarray) -> bytes:
    meta = {**meta, "appid": "big", "count": len(keys), "vectors": True}
    lines = "".join(
        json.dumps(
            {"contsign": ContSign.from_key(int(k)).to_json(), "brief": b64(b"x"), "tags": [int(a), int(b)]}
        )
        + "\n"
        for k, (a, b) in zip(keys, tags, strict=True)
    )
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("meta.json", json.dumps(meta))
        archive.writestr("items.jsonl", lines)
        npy = io.BytesIO()
        npy_format.write_array(npy, vectors.astype("<f4"))
        archive.writestr("vectors.npy", npy.getvalue())
    return buffer.getvalue()


def tag_feature(a: int, b: int) -> dict:
    return {"fea_id": 999, "fea_data": b64(struct.pack("<II", a, b))}


async def search(client, key: int, rn: int = 20, pn: int = 0, **extra) -> list[tuple[int, float]]:
    body = await call(
        client, f"{R}/search", appid="big", contsign=ContSign.from_key(key).to_json(), rn=rn, pn=pn, **extra
    )
    assert body["err_no"] == 0, body
    return [(ContSign(**item["contsign"]).key, item["score"]) for item in body["data_items"]]


def truth(vectors, keys, live, query_row, k, allowed=None):
    scores = vectors @ vectors[query_row]
    ok = live if allowed is None else live & allowed
    scores = np.where(ok, scores, -np.inf)
    order = np.argsort(-scores, kind="stable")[:k]
    order = order[np.isfinite(scores[order])]
    return [(int(keys[i]), float(scores[i])) for i in order]


def check(found, expected, exact: bool) -> None:
    assert len(found) == len(expected)  # never a short page
    got = np.array([s for _, s in found])
    assert (np.diff(got) <= 1e-6).all()  # best first
    if exact:  # the re-ranked set held every match: the page is the exact one
        assert np.allclose(got, [s for _, s in expected], atol=TOL)
    overlap = len({k for k, _ in found} & {k for k, _ in expected}) / max(len(expected), 1)
    assert overlap >= 0.9


async def test_reduced_library_search_filters_removals_and_restarts(config, embedder, tmp_path: Path):
    client = await start(config, embedder)
    try:
        assert (await call(client, f"{R}/signup", appid="seed"))["err_no"] == 0
        await call(client, f"{R}/add", appid="seed", image=b64(jpeg(1)), features=[brief("s")])
        seed = await (await client.get("/api/libraries/seed/export?vectors=1")).read()
        meta = json.loads(zipfile.ZipFile(io.BytesIO(seed)).read("meta.json"))
        rng = np.random.default_rng(7)
        keys = rng.integers(1, 1 << 62, N, dtype=np.int64)
        vectors = descriptors(N, meta["dim"])
        tags = np.stack([1 + np.arange(N) % 2, np.where(np.arange(N) % 25 == 0, 9, 0)], axis=1)
        answer = await (
            await client.post("/api/libraries/big/import", data=export_zip(meta, keys, vectors, tags))
        ).json()
        assert answer["err_no"] == 0 and answer["imported"] == N, answer
    finally:
        await client.close()
    index_dir = Path(config.storage.data_dir) / "indexes"
    big = next(p for p in index_dir.glob("*.meta.json") if json.loads(p.read_text())["count"] == N)
    lib_id = int(big.name.split(".")[0])
    for path in graph_files.paths(index_dir, lib_id):  # no snapshot: the start rebuilds, reduced
        path.unlink()

    live = np.ones(N, bool)
    client = await start(config, embedder)
    try:
        services = client.server.app[SERVICES]
        index = (await services.libraries.get("big")).handle
        assert index.strategy == "reduced" and index.projection.dim == 32 and index.count() == N
        # The rebuilt index measures its recall and tunes its depth (index/recall.py): settle it.
        assert (await (await client.post("/api/libraries/big/recall")).json())["err_no"] == 0
        check(await search(client, int(keys[3])), truth(vectors, keys, live, 3, 20), exact=False)
        assert (await search(client, int(keys[3]), rn=1))[0] == (int(keys[3]), pytest.approx(1.0, abs=1e-5))
        # deep page: positions 300..399 of the one ranking every page is cut from (index/paging.py:
        # an item the first walks missed near the top is left out rather than listed out of order)
        deep = await search(client, int(keys[3]), rn=100, pn=300)
        whole = await search(client, int(keys[3]), rn=400)
        assert deep == whole[300:] and len(whole) >= 0.98 * N
        check(deep, truth(vectors, keys, live, 3, 400)[300 : 300 + len(deep)], exact=False)
        # tag filters: broad (half), narrow (16 items, re-ranked in full: exact)
        half = tags[:, 0] == 2
        narrow = tags[:, 1] == 9
        found = await search(client, int(keys[3]), rn=50, features=[tag_feature(2, 0)])
        check(found, truth(vectors, keys, live, 3, 50, half), exact=False)
        found = await search(client, int(keys[3]), rn=50, features=[tag_feature(9, 0)])
        check(found, truth(vectors, keys, live, 3, 50, narrow), exact=True)
        # removals and a tag update are seen at once
        gone = [int(k) for k in keys[:100:25]]  # four of the narrow ones
        assert (
            await call(
                client, f"{R}/remove", appid="big", contsigns=[ContSign.from_key(k).to_json() for k in gone]
            )
        )["err_no"] == 0
        live[:100:25] = False
        updated = await call(
            client,
            f"{R}/update",
            appid="big",
            contsign=ContSign.from_key(int(keys[7])).to_json(),
            features=[tag_feature(9, 0)],
        )
        assert updated["err_no"] == 0, updated
        tags[7] = (9, 0)
        narrow = (tags[:, 0] == 9) | (tags[:, 1] == 9)
        found = await search(client, int(keys[3]), rn=50, features=[tag_feature(9, 0)])
        check(found, truth(vectors, keys, live, 3, 50, narrow), exact=True)
        assert not set(gone) & {k for k, _ in found}
        before = await search(client, int(keys[5]), rn=30)
    finally:
        await client.close()

    # restart: the reduced snapshot loads (no rebuild), same answers, tag update kept
    client = await start(config, embedder)
    try:
        index = (await (client.server.app[SERVICES]).libraries.get("big")).handle
        assert index.strategy == "reduced" and index.count() == N - 4
        assert await search(client, int(keys[5]), rn=30) == before
        found = await search(client, int(keys[3]), rn=50, features=[tag_feature(9, 0)])
        check(found, truth(vectors, keys, live, 3, 50, narrow), exact=True)
        native_path = index.native.path
        projection = index.projection.fingerprint
    finally:
        await client.close()

    # a torn native file (kill -9 mid-write, a disk fault): the start notices and rebuilds
    with native_path.open("r+b") as fh:
        fh.seek(0)
        fh.write(b"\xff" * native_path.stat().st_size)
    client = await start(config, embedder)
    try:
        index = (await (client.server.app[SERVICES]).libraries.get("big")).handle
        assert index.strategy == "reduced" and index.native.path != native_path
        assert index.projection.fingerprint == projection  # the stored projection, not a new one
        assert await search(client, int(keys[5]), rn=30) == before
        assert native_file.files_of(index_dir, lib_id) == [index.native.path]
        described = await (await client.get("/api/libraries/big")).json()
        assert "reduced" in json.dumps(described)
    finally:
        await client.close()

"""Background rebuilds of reduced libraries: writes racing a rebuild of a
library that is already reduced (or becomes reduced), the files a rebuild leaves, and what a
save of the serving index meanwhile does to the snapshot. Small ``reduce_min_items`` and
``reduce_dim`` keep them fast (as tests/test_reduced_library.py)."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import signal
import time

import numpy as np
import pytest
from conftest import b64, brief
from daemon import Daemon
from exports import export_zip
from images import jpeg
from test_rebuild import (
    R,
    _post_zip,
    contsign_json,
    get,
    import_vectors,
    model_of,
    nearest,
    slow_rebuilds,
    tagged,
    wait_rebuild,
)
from test_reduced_library import descriptors

from same_search.app import create_app
from same_search.backends.local import rebuilds as local
from same_search.contsign import ContSign
from same_search.index import graph_files, native_file
from same_search.services import SERVICES

N = 1000


@pytest.fixture
def config(config):
    index = dataclasses.replace(
        config.index, reduce_min_items=300, reduce_dim=32, rerank_candidates=60, exact_threshold=50
    )
    return dataclasses.replace(config, index=index)


async def wait_running(client, appid: str) -> None:
    for _ in range(200):
        state = (await get(client, f"/api/libraries/{appid}/rebuild"))["rebuild"]
        if state and state["state"] == "running" and state["done"] > 0:
            return
        await asyncio.sleep(0.02)
    raise TimeoutError("rebuild did not start building")


@pytest.mark.local_only
async def test_writes_racing_a_rebuild_of_a_reduced_library_are_kept(client, api, monkeypatch):
    dim = (await model_of(client))["dim"]
    keys = np.arange(1, N + 1, dtype=np.int64)
    vectors = descriptors(N, dim, seed=1)
    await import_vectors(client, "red", keys, vectors, [(1, 0)] * N)
    assert (await get(client, "/api/libraries/red"))["library"]["search"] == "reduced"
    slow_rebuilds(monkeypatch)
    assert (await (await client.post("/api/libraries/red/rebuild")).json())["err_no"] == 0
    await wait_running(client, "red")

    added_keys = np.arange(5001, 5021, dtype=np.int64)
    added = descriptors(20, dim, seed=2)
    await import_vectors(client, "red", added_keys, added, [(3, 0)] * 20)
    removed = await api(f"{R}/remove", appid="red", contsigns=[contsign_json(k) for k in keys[5:7]])
    assert removed["err_no"] == 0
    readded = descriptors(1, dim, seed=3)  # keys[5] removed, then added again with a new vector
    await import_vectors(client, "red", [int(keys[5])], readded, [(4, 0)])
    update = await api(f"{R}/update", appid="red", contsign=contsign_json(keys[7]), features=tagged(9))
    assert update["err_no"] == 0
    assert (await get(client, "/api/libraries/red/rebuild"))["rebuild"]["state"] == "running"

    state = await wait_rebuild(client, "red")
    assert state["state"] == "done", state
    assert (await get(client, "/api/libraries/red"))["library"]["items"] == N + 20 - 1
    assert all(k != keys[6] for k, _ in await nearest(client, "red", vectors[6], 10))
    for key, vector in zip(added_keys[::5], added[::5], strict=True):
        assert (await nearest(client, "red", vector, 1))[0][0] == key
    best = await nearest(client, "red", readded[0], 1)
    assert best[0][0] == keys[5] and best[0][1] > 0.999
    assert [k for k, _ in await nearest(client, "red", vectors[7], 5, tags=(9,))] == [keys[7]]
    assert [k for k, _ in await nearest(client, "red", readded[0], 5, tags=(4,))] == [keys[5]]


def backend_of(client):
    return client.server.app[SERVICES].libraries.backend


@pytest.mark.local_only
async def test_a_rebuild_that_saved_but_never_swapped_leaves_the_serving_snapshot_loadable(
    aiohttp_client, client, api, config, embedder, caplog
):
    """A rebuild saves its fresh index before the swap; if it then ends without swapping (a
    shutdown in its last catch-up, a re-embed switch, a count mismatch), the serving reduced
    index is saved again over it and must still load at the next start: the fresh index's save
    deleted the serving index's native file (an "older generation"), so that save named a file
    that was gone and the next start rebuilt the whole library from SQLite."""
    dim = (await model_of(client))["dim"]
    keys = np.arange(1, 501, dtype=np.int64)
    vectors = descriptors(500, dim, seed=4)
    await import_vectors(client, "gen", keys, vectors)
    backend = backend_of(client)
    lib = await client.server.app[SERVICES].libraries.get("gen")
    fresh = await backend.new_index(lib.row, 500)
    await backend._replay(fresh, lib.row, 500)
    await backend._save_fresh(fresh, lib.row)  # what rebuild() does before its swap
    fresh.native.close()  # the rebuild ended without swapping it in

    extra = descriptors(1, dim, seed=5)
    await import_vectors(client, "gen", [9001], extra)  # the serving index is dirty again
    assert (await (await client.post("/api/libraries/gen/save")).json())["err_no"] == 0
    files = native_file.files_of(backend.index_dir, lib.row.id)
    assert files == [_index_of(lib).native.path]  # the unused fresh file is not leaked either
    await client.close()
    caplog.clear()
    with caplog.at_level(logging.INFO):
        reopened = await aiohttp_client(create_app(config, embedder))
    assert "rebuilding from the database" not in caplog.text
    stats = (await get(reopened, "/api/libraries/gen"))["library"]
    assert stats["items"] == 501 and stats["search"] == "reduced"
    assert (await nearest(reopened, "gen", extra[0], 1))[0][0] == 9001


def _index_of(lib):
    return lib.handle


@pytest.mark.local_only
async def test_a_rebuild_overtaken_by_a_re_embed_switch_leaves_the_new_models_snapshot(
    aiohttp_client, config, embedder, monkeypatch, caplog
):
    """A re-embed switched the library (and saved its new index) while a rebuild of the old
    vectors ran: the guard refused the swap, but the rebuild had saved its old-model index over
    the new snapshot first, so the next start found a snapshot of the wrong model and rebuilt
    the whole library from SQLite. The rebuild stops before saving, and says why."""
    from same_search.config import ModelConfig

    gem = ModelConfig(name="efficientnet_lite0", pooling="gem", precision="fp32")
    config = dataclasses.replace(
        config,
        storage=dataclasses.replace(config.storage, keep_originals=True),
        models={"gem": gem},
    )
    client = await aiohttp_client(create_app(config, embedder))

    async def rts(route: str, **body) -> dict:
        return await (await client.post(f"{R}/{route}", json={"from": "pytest", **body})).json()

    assert (await rts("signup", appid="mod"))["err_no"] == 0
    for seed in range(8):
        added = await rts("add", appid="mod", image=b64(jpeg(seed)), features=[brief(f"img {seed}")])
        assert added["err_no"] == 0, added
    monkeypatch.setattr(local, "REBUILD_BATCH", 1)
    monkeypatch.setenv(local.REBUILD_PAUSE_ENV, "3")  # 24 s: longer than any re-embed of 8 here
    assert (await (await client.post("/api/libraries/mod/rebuild")).json())["err_no"] == 0
    await wait_running(client, "mod")
    job = await (await client.post("/api/libraries/mod/reembed", json={"model": "gem"})).json()
    assert job["err_no"] == 0, job
    for _ in range(600):
        shown = await get(client, f"/api/libraries/mod/reembed/{job['job']['id']}")
        if shown["job"]["status"] != "running":
            break
        await asyncio.sleep(0.05)
    assert shown["job"]["status"] == "done", shown
    assert (await get(client, "/api/libraries/mod/rebuild"))["rebuild"]["state"] == "running"
    monkeypatch.setenv(local.REBUILD_PAUSE_ENV, "0")  # the overtaken rebuild may now run out

    state = await wait_rebuild(client, "mod")
    assert state["state"] == "failed" and "model" in state["error"], state
    lib = await client.server.app[SERVICES].libraries.get("mod")
    backend = backend_of(client)
    header = graph_files.read_header(backend.index_dir, lib.row.id, lib.row.fingerprint, lib.row.dim)
    assert header.count == 8
    await client.close()
    monkeypatch.delenv(local.REBUILD_PAUSE_ENV)
    caplog.clear()
    with caplog.at_level(logging.INFO):
        reopened = await aiohttp_client(create_app(config, embedder))
    assert "rebuilding from the database" not in caplog.text
    assert (await get(reopened, "/api/libraries/mod"))["library"]["items"] == 8


@pytest.mark.local_only
async def test_a_library_shrunk_below_reduce_min_items_answers_right_and_its_rebuild_drops_the_files(
    client, api
):
    """Removals take a reduced library below ``reduce_min_items``: it keeps answering exactly
    (tag filters, pages, has_more); a rebuild then makes it a full-dimension index, and the
    reduced index's native vectors and row map (with sketches: ~76 B per item) leave the disk
    at the swap, not at some later save or start."""
    dim = (await model_of(client))["dim"]
    keys = np.arange(1, 401, dtype=np.int64)
    vectors = descriptors(400, dim, seed=12)
    await import_vectors(client, "shrink", keys, vectors, [(1 + i % 2, 0) for i in range(400)])
    assert (await get(client, "/api/libraries/shrink"))["library"]["search"] == "reduced"
    gone = keys[:250]
    for start in range(0, 250, 50):
        chunk = [contsign_json(k) for k in gone[start : start + 50]]
        assert (await api(f"{R}/remove", appid="shrink", contsigns=chunk))["err_no"] == 0
    live = np.ones(400, bool)
    live[:250] = False
    tag2 = np.array([i % 2 == 1 for i in range(400)])
    for query_row in (260, 399):
        scores = np.where(live & tag2, vectors @ vectors[query_row], -np.inf)
        expected = [int(keys[i]) for i in np.argsort(-scores, kind="stable")[:75]]
        body = await api(
            f"{R}/search",
            appid="shrink",
            contsign=contsign_json(keys[query_row]),
            features=tagged(2),
            rn=100,
        )
        found = [ContSign(**item["contsign"]).key for item in body["data_items"]]
        assert found == expected and body["has_more"] in (0, False), body.get("has_more")

    assert (await (await client.post("/api/libraries/shrink/rebuild")).json())["err_no"] == 0
    assert (await wait_rebuild(client, "shrink"))["state"] == "done"
    assert (await get(client, "/api/libraries/shrink"))["library"]["search"] != "reduced"
    lib = await client.server.app[SERVICES].libraries.get("shrink")
    backend = backend_of(client)
    assert native_file.files_of(backend.index_dir, lib.row.id) == []
    assert not graph_files.rows_path(backend.index_dir, lib.row.id).exists()
    best = await nearest(client, "shrink", vectors[300], 1)
    assert best[0][0] == keys[300] and best[0][1] > 0.999


REDUCED_TOML = (
    "[index]\nreduce_min_items = 300\nreduce_dim = 32\nrerank_candidates = 60\nrecall_sample = 40\n"
)


def _self_hit(daemon, appid: str, key: int) -> tuple[int, float]:
    hits = daemon.rts("search", appid=appid, contsign=contsign_json(key), rn=1)["data_items"]
    return ContSign(**hits[0]["contsign"]).key, hits[0]["score"]


@pytest.mark.heavy
def test_kill_9_in_an_adoption_and_after_unsaved_writes_to_a_reduced_index(tmp_path):
    """kill -9 while an adoption builds (its projection stored, its native file half written,
    no snapshot of it yet), then again after writes the reduced snapshot does not hold (native
    rows past the header, a removal, a re-add of a key with a new vector): every start serves
    each acknowledged item with its native score, and leaves one native file."""
    import os

    daemon = Daemon(tmp_path, REDUCED_TOML)
    daemon.start()
    try:
        model = daemon.get("admin", "/healthz")["model"]
        vectors = descriptors(600, model["dim"], seed=20)
        keys = np.arange(1, 601, dtype=np.int64) * 13
        _post_zip(daemon, "adopt", export_zip(keys[:290], vectors[:290], model))
        assert daemon.post("admin", "/api/libraries/adopt/save", {})["err_no"] == 0
        daemon.terminate()
        os.environ[local.REBUILD_PAUSE_ENV] = "30"  # the adoption stays in its first batch
        try:
            daemon.start()
        finally:
            del os.environ[local.REBUILD_PAUSE_ENV]
        # A small import crosses reduce_min_items: the library adopts the reduction in the
        # background (a large one would build the reduced index itself, under the write lock).
        _post_zip(daemon, "adopt", export_zip(keys[290:320], vectors[290:320], model))
        state = daemon.get("admin", "/api/libraries/adopt/rebuild")["rebuild"]
        assert state["reason"] == "adoption" and state["state"] == "running", state
        # A large one during the adoption takes the live path: the adoption catches up with it.
        _post_zip(daemon, "adopt", export_zip(keys[320:450], vectors[320:450], model))
        assert (
            daemon.rts("remove", appid="adopt", contsigns=[contsign_json(k) for k in keys[:5]])["err_no"] == 0
        )
        daemon.kill()

        daemon.start()
        library = lambda: daemon.get("admin", "/api/libraries/adopt")["library"]  # noqa: E731
        assert library()["items"] == 445
        for key in (keys[5], keys[300], keys[449]):
            found, score = _self_hit(daemon, "adopt", int(key))
            assert found == key and score > 0.9999
        for _ in range(600):  # the adoption is asked for again at start, and finishes
            if (
                library()["search"] == "reduced"
                and daemon.get("admin", "/api/libraries/adopt/rebuild")["rebuild"]["state"] != "running"
            ):
                break
            time.sleep(0.05)
        assert library()["search"] == "reduced"
        assert daemon.post("admin", "/api/libraries/adopt/save", {})["err_no"] == 0
        indexes = daemon.data_dir / "indexes"
        assert len(list(indexes.glob("*.native.f32"))) == 1

        # Writes after the reduced snapshot, then kill -9.
        _post_zip(daemon, "adopt", export_zip(keys[450:600], vectors[450:600], model))
        assert daemon.rts("remove", appid="adopt", contsigns=[contsign_json(keys[6])])["err_no"] == 0
        fresh = descriptors(1, model["dim"], seed=21)
        _post_zip(daemon, "adopt", export_zip(keys[6:7], fresh, model))  # same key, new vector
        daemon.kill()

        daemon.start()
        assert library()["items"] == 595 and library()["search"] == "reduced"
        for key in (keys[7], keys[420], keys[599], keys[6]):
            found, score = _self_hit(daemon, "adopt", int(key))
            assert found == key and score > 0.9999
        stored = {int(k): v for k, v in zip(keys[5:], vectors[5:], strict=True)}
        stored[int(keys[6])] = fresh[0]
        hits = daemon.rts("search", appid="adopt", contsign=contsign_json(keys[6]), rn=20)["data_items"]
        assert len(hits) == 20
        for hit in hits:  # every score is the native cosine of the stored (new) vectors
            key = ContSign(**hit["contsign"]).key
            assert abs(hit["score"] - float(stored[key] @ fresh[0])) < 1e-5, key
        assert len(list(indexes.glob("*.native.f32"))) == 1
        assert daemon.terminate(signal.SIGTERM) == 0
    finally:
        daemon.stop()


def test_successive_deep_pages_of_a_reduced_index_neither_repeat_nor_skip(tmp_path):
    """Each page used to re-rank candidates sized by its own depth, so pages met badly; every
    depth now reads a prefix of one ranking (index/paging.py)."""
    import itertools
    from concurrent.futures import ThreadPoolExecutor

    from test_reduced_index import build
    from test_reduced_index import descriptors as small_descriptors

    with ThreadPoolExecutor(1) as pool:
        index, _, _, _ = build(tmp_path, pool, n=6000, rerank_candidates=200)
    for query in small_descriptors(5, seed=31):
        seen: list[tuple[int, float]] = []
        for pn in range(0, 1000, 50):  # what a client paging with rn=50 sees
            seen += index._search(query, pn + 51, None)[pn : pn + 50]
        assert seen == index._search(query, 1000, None)  # one long page: nothing repeats or skips
        assert len({key for key, _ in seen}) == 1000
        assert all(a[1] >= b[1] for a, b in itertools.pairwise(seen))  # scores never rise


@pytest.mark.local_only
async def test_deleting_a_reduced_library_removes_every_file_of_it(
    aiohttp_client, client, api, config, embedder
):
    """Its snapshot, row map and native files, and the temporary files a kill -9 in the middle
    of a save leaves (a 1M-item graph's is hundreds of MB): nothing else ever removes those of
    a deleted library, and SQLite hands its id to the next library created. A library that
    stays has its leftovers swept when it loads."""
    dim = (await model_of(client))["dim"]
    await import_vectors(client, "doomed", np.arange(1, 401), descriptors(400, dim, seed=30))
    await import_vectors(client, "kept", np.arange(1, 401), descriptors(400, dim, seed=31))
    assert (await (await client.post("/api/libraries/doomed/save")).json())["err_no"] == 0
    assert (await (await client.post("/api/libraries/kept/save")).json())["err_no"] == 0
    libraries = client.server.app[SERVICES].libraries
    doomed, kept = await libraries.get("doomed"), await libraries.get("kept")
    indexes = backend_of(client).index_dir
    for name in ("hnsw.tmp", "rows.tmp.npz", "meta.json.tmp"):  # what a kill -9 mid-save leaves
        (indexes / f"{doomed.row.id}.{name}").write_bytes(b"partial")
    theirs = sorted(p.name for p in indexes.iterdir() if p.name.startswith(f"{kept.row.id}."))
    answer = await (await client.delete("/api/libraries/doomed?confirm=doomed")).json()
    assert answer["err_no"] == 0, answer
    assert [p.name for p in indexes.iterdir() if p.name.startswith(f"{doomed.row.id}.")] == []
    assert sorted(p.name for p in indexes.iterdir() if p.name.startswith(f"{kept.row.id}.")) == theirs
    for name in ("hnsw.tmp", "rows.tmp.npz", "meta.json.tmp"):
        (indexes / f"{kept.row.id}.{name}").write_bytes(b"partial")
    await client.close()
    reopened = await aiohttp_client(create_app(config, embedder))
    assert sorted(p.name for p in indexes.iterdir() if p.name.startswith(f"{kept.row.id}.")) == theirs
    assert (await get(reopened, "/api/libraries/kept"))["library"]["items"] == 400


@pytest.mark.local_only
async def test_a_library_that_shrank_back_to_full_size_is_reduced_again_when_it_grows(client, api):
    """Adoption was once per library and process: a library reduced by an adoption, shrunk by
    removals and compacted back to a full-dimension index, stayed unreduced however large it
    grew again, until a restart."""
    dim = (await model_of(client))["dim"]
    vectors = descriptors(700, dim, seed=40)
    keys = np.arange(1, 701, dtype=np.int64)
    await import_vectors(client, "yoyo", keys[:280], vectors[:280])
    await import_vectors(client, "yoyo", keys[280:310], vectors[280:310])  # crosses 300, small
    assert (await wait_rebuild(client, "yoyo"))["reason"] == "adoption"
    assert (await get(client, "/api/libraries/yoyo"))["library"]["search"] == "reduced"
    gone = [contsign_json(k) for k in keys[:150]]
    assert (await api(f"{R}/remove", appid="yoyo", contsigns=gone))["err_no"] == 0
    assert (await (await client.post("/api/libraries/yoyo/rebuild")).json())["err_no"] == 0
    assert (await wait_rebuild(client, "yoyo"))["state"] == "done"
    assert (await get(client, "/api/libraries/yoyo"))["library"]["search"] != "reduced"

    await import_vectors(client, "yoyo", keys[310:440], vectors[310:440])  # 290 items
    await import_vectors(client, "yoyo", keys[440:470], vectors[440:470])  # 320: crosses again, small
    state = await wait_rebuild(client, "yoyo")
    assert state["reason"] == "adoption" and state["state"] == "done", state
    assert (await get(client, "/api/libraries/yoyo"))["library"]["search"] == "reduced"

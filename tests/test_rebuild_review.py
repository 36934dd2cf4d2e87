"""Review of the background rebuilds of reduced libraries (issue 10): writes racing a rebuild of a
library that is already reduced (or becomes reduced), the files a rebuild leaves, and what a
save of the serving index meanwhile does to the snapshot. Small ``reduce_min_items`` and
``reduce_dim`` keep them fast (as tests/test_reduced_library.py)."""

from __future__ import annotations

import asyncio
import dataclasses
import logging

import numpy as np
import pytest
from test_rebuild import (
    R,
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
from same_search.index import native_file
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

"""Background rebuilds: the library answers and takes writes while its index is rebuilt, and every
write acknowledged meanwhile is in the index afterwards (also across a kill -9 of the daemon).

The rebuild is slowed down with its test hook (``SAME_SEARCH_REBUILD_PAUSE_S``: a sleep after
every build batch) over a few thousand small random vectors imported through the export path,
so the writes race it reliably. Nothing of the storage or the index is mocked.
"""

from __future__ import annotations

import asyncio
import signal
import time

import numpy as np
import pytest
from conftest import b64, brief
from daemon import Daemon
from exports import export_zip, unit_vectors
from images import jpeg

from same_search.app import create_app
from same_search.backends.base import TagFilter
from same_search.backends.local import rebuilds as local
from same_search.contsign import ContSign
from same_search.index import graph_files
from same_search.services import SERVICES

R = "/RTSAsService"
ITEMS = 3000
BATCH = 100  # rows per build batch in these tests: 30 batches
PAUSE_S = "0.1"


def tags_bytes(tag1: int, tag2: int = 0) -> str:
    return b64(tag1.to_bytes(4, "little") + tag2.to_bytes(4, "little"))


def tagged(tag1: int) -> list[dict]:
    """A features list holding only tags (``tag1``, 0)."""
    return [{"fea_id": 999, "fea_data": tags_bytes(tag1)}]


def contsign_json(key: int) -> dict:
    return ContSign.from_key(int(key)).to_json()


async def get(client, path: str) -> dict:
    return await (await client.get(path)).json()


async def model_of(client) -> dict:
    return (await get(client, "/healthz"))["model"]


async def import_vectors(client, appid: str, keys, vectors, tags=None) -> dict:
    body = export_zip(keys, vectors, await model_of(client), tags)
    answer = await (await client.post(f"/api/libraries/{appid}/import", data=body)).json()
    assert answer["err_no"] == 0, answer
    return answer


async def wait_rebuild(client, appid: str, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = (await get(client, f"/api/libraries/{appid}/rebuild"))["rebuild"]
        if state is not None and state["state"] != "running":
            return state
        await asyncio.sleep(0.05)
    raise TimeoutError("rebuild did not end")


def slow_rebuilds(monkeypatch) -> None:
    monkeypatch.setattr(local, "REBUILD_BATCH", BATCH)
    monkeypatch.setenv(local.REBUILD_PAUSE_ENV, PAUSE_S)


async def nearest(client, appid: str, vector: np.ndarray, k: int = 10, tags=None) -> list[tuple[int, float]]:
    """The library's ``k`` best (key, score) for ``vector``, through the library service."""
    libraries = client.server.app[SERVICES].libraries
    lib = await libraries.get(appid)
    tag_filter = TagFilter(tags, match_all=False) if tags is not None else None
    return (await libraries.reads.nearest(lib, vector, k, tag_filter)).found


@pytest.mark.local_only
async def test_writes_racing_a_background_rebuild_are_all_in_the_index(
    aiohttp_client, client, api, config, embedder, monkeypatch, caplog
):
    dim = (await model_of(client))["dim"]
    keys = np.arange(1, ITEMS + 1, dtype=np.int64) * 7919
    vectors = unit_vectors(ITEMS, dim, seed=1)
    await import_vectors(client, "race", keys, vectors, [(1 + i % 3, 0) for i in range(ITEMS)])
    slow_rebuilds(monkeypatch)

    started = time.monotonic()
    answer = await (await client.post("/api/libraries/race/rebuild")).json()
    assert time.monotonic() - started < 2.0, "the rebuild must answer at once"
    assert answer["err_no"] == 0 and answer["rebuild"]["state"] == "running"
    assert answer["rebuild"]["reason"] == "manual"

    # Writes of every kind while it builds: adds (import and picture), removals, a re-add with a
    # new vector, tag updates.
    added_keys = np.arange(1, 201, dtype=np.int64) * -104729
    added = unit_vectors(200, dim, seed=2)
    await import_vectors(client, "race", added_keys, added, [(7, 0)] * 200)
    picture = await api(f"{R}/add", appid="race", image=b64(jpeg(5)), features=[brief("picture")])
    assert picture["err_no"] == 0
    removed_keys = keys[::10]  # 300 of the original items
    for start in range(0, len(removed_keys), 100):
        chunk = [contsign_json(k) for k in removed_keys[start : start + 100]]
        assert (await api(f"{R}/remove", appid="race", contsigns=chunk))["err_no"] == 0
    readded_key, readded = int(keys[10]), unit_vectors(1, dim, seed=3)
    await import_vectors(client, "race", [readded_key], readded)
    retagged = keys[1:400:10]
    for key in retagged:
        update = await api(f"{R}/update", appid="race", contsign=contsign_json(key), features=tagged(9))
        assert update["err_no"] == 0
    # The library answered searches meanwhile, and the rebuild was still running: a real race.
    during = await api(f"{R}/search", appid="race", contsign=contsign_json(keys[1]))
    assert during["err_no"] == 0 and during["data_items"]
    state = (await get(client, "/api/libraries/race/rebuild"))["rebuild"]
    assert state["state"] == "running", "the writes must race the build, make it slower"
    assert state["phase"] == "building" and 0 < state["done"] < ITEMS and state["eta_s"] is not None
    assert state["total"] == ITEMS

    done = await wait_rebuild(client, "race")
    assert done["state"] == "done" and done["error"] is None and done["phase"] is None

    stats = (await get(client, "/api/libraries/race"))["library"]
    expected = ITEMS + 200 + 1 - len(removed_keys) + 1  # the re-added key counts again
    assert stats["items"] == expected and stats["rebuild"]["state"] == "done"
    assert stats["last_index_save"] is not None
    for key, vector in zip(added_keys, added, strict=True):
        best = await nearest(client, "race", vector, 1)
        assert best[0][0] == key and best[0][1] > 0.999
    best = await nearest(client, "race", readded[0], 1)
    assert best[0][0] == readded_key and best[0][1] > 0.999
    gone = {int(k) for k in removed_keys} - {readded_key}
    for key in removed_keys[:60]:
        found = {k for k, _ in await nearest(client, "race", vectors[np.searchsorted(keys, key)], 10)}
        assert not found & gone
    for key in retagged:
        found = await nearest(client, "race", vectors[np.searchsorted(keys, key)], 1, tags=(9, 0))
        assert found and found[0][0] == key and found[0][1] > 0.999
    only_nine = await nearest(client, "race", vectors[0], 100, tags=(9, 0))
    assert {k for k, _ in only_nine} == {int(k) for k in retagged} - gone
    picture_hits = await api(f"{R}/search", appid="race", image=b64(jpeg(5)))
    assert picture_hits["data_items"][0]["score"] > 0.999

    # The snapshot the rebuild saved is a good one: the next start takes it (plus replay).
    import logging

    await client.close()
    with caplog.at_level(logging.INFO):
        reopened = await aiohttp_client(create_app(config, embedder))
    assert "rebuilding from the database" not in caplog.text
    assert (await get(reopened, "/api/libraries/race"))["library"]["items"] == expected
    best = await nearest(reopened, "race", readded[0], 1)
    assert best[0][0] == readded_key and best[0][1] > 0.999


@pytest.mark.local_only
@pytest.mark.local_only
async def test_the_periodic_save_leaves_a_library_being_rebuilt_to_its_rebuild(client, config, monkeypatch):
    """A snapshot's capture holds the GIL (a second per million items); the rebuild saves its
    own index before its swap, so the periodic save does not pause the daemon for the old one."""
    dim = (await model_of(client))["dim"]
    await import_vectors(client, "busy", np.arange(1, 1001), unit_vectors(1000, dim, seed=5))
    await import_vectors(client, "calm", np.arange(1, 201), unit_vectors(200, dim, seed=6))
    libraries = client.server.app[SERVICES].libraries
    busy, calm = await libraries.get("busy"), await libraries.get("calm")
    busy.handle.saved_seq = calm.handle.saved_seq = -1  # both changed since their last save
    slow_rebuilds(monkeypatch)
    assert (await (await client.post("/api/libraries/busy/rebuild")).json())["rebuild"]["state"] == "running"
    assert await libraries.maintenance.save_periodically() == 1  # calm only
    assert not calm.handle.dirty and busy.handle.dirty
    assert (await wait_rebuild(client, "busy"))["state"] == "done"
    row = (await libraries.get("busy")).row  # the rebuild saved its own index
    assert graph_files.read_header(config.data_path / "indexes", row.id, row.fingerprint, dim).count == 1000


async def test_a_second_request_answers_the_running_rebuild(client, api, monkeypatch):
    dim = (await model_of(client))["dim"]
    await import_vectors(client, "twice", np.arange(1, 1001), unit_vectors(1000, dim, seed=4))
    slow_rebuilds(monkeypatch)
    first = await (await client.post("/api/libraries/twice/rebuild")).json()
    second = await (await client.post("/api/libraries/twice/compact")).json()
    assert second["rebuild"]["started_at"] == first["rebuild"]["started_at"]
    assert second["rebuild"]["reason"] == "manual" and second["rebuild"]["state"] == "running"
    listed = (await get(client, "/api/libraries"))["libraries"][0]
    assert listed["rebuild"]["state"] == "running"
    assert (await wait_rebuild(client, "twice"))["state"] == "done"
    waited = await (await client.post("/api/libraries/twice/compact?wait=1")).json()
    assert waited["rebuild"]["state"] == "done" and waited["rebuild"]["reason"] == "compact"
    assert waited["library"]["items"] == 1000
    bad = await (await client.post("/api/libraries/twice/rebuild?wait=yes")).json()
    assert bad["err_no"] == 1 and "wait" in bad["err_msg"]
    assert (await get(client, "/api/libraries/none/rebuild"))["err_no"] == 103


@pytest.mark.local_only
async def test_rebuild_progress_shows_in_metrics_and_on_the_console_page(client, api, monkeypatch):
    dim = (await model_of(client))["dim"]
    await import_vectors(client, "shown", np.arange(1, 1001), unit_vectors(1000, dim, seed=5))
    assert (await get(client, "/api/libraries/shown/rebuild"))["rebuild"] is None
    slow_rebuilds(monkeypatch)
    await client.post("/api/libraries/shown/rebuild")
    page = await (await client.get("/libraries/shown")).text()
    assert 'id="rebuild"' in page and "building" in page
    overview = await (await client.get("/")).text()
    assert "· rebuilding (building)" in overview
    metrics = await (await client.get("/metrics")).text()
    assert 'same_search_rebuild_running{appid="shown"} 1.0' in metrics
    await wait_rebuild(client, "shown")
    metrics = await (await client.get("/metrics")).text()
    assert 'same_search_rebuild_running{appid="shown"} 0.0' in metrics
    assert 'same_search_rebuilds_finished_total{state="done"} 1.0' in metrics


def _reduce_from(config, items: int) -> None:
    """``[index] reduce_min_items`` for this test (a small ``reduce_dim`` keeps it fast)."""
    object.__setattr__(config.index, "reduce_min_items", items)


@pytest.mark.local_only
async def test_a_library_crossing_reduce_min_items_switches_once_in_the_background(
    aiohttp_client, client, api, config, embedder
):
    _reduce_from(config, 500)
    dim = (await model_of(client))["dim"]
    assert (await api(f"{R}/signup", appid="grows"))["err_no"] == 0
    await import_vectors(client, "grows", np.arange(1, 481), unit_vectors(480, dim, seed=6))
    assert (await get(client, "/api/libraries/grows/rebuild"))["rebuild"] is None  # 480 < 500
    # 40 more: past 500, but too few to rebuild all 520 under the write lock at once.
    await import_vectors(client, "grows", np.arange(481, 521), unit_vectors(40, dim, seed=7))
    state = await wait_rebuild(client, "grows")
    assert state["reason"] == "adoption" and state["state"] == "done"
    await import_vectors(client, "grows", np.arange(521, 621), unit_vectors(100, dim, seed=8))
    # Not on every add: a rebuild starts (or not) within the write that makes it due, before the
    # write is answered, so the library's latest rebuild right after the import says it all.
    assert (await get(client, "/api/libraries/grows/rebuild"))["rebuild"] == state
    metrics = await (await client.get("/metrics")).text()
    assert 'same_search_rebuilds_finished_total{state="done"} 1.0' in metrics
    assert 'same_search_rebuild_running{appid="grows"} 0.0' in metrics

    stats = (await get(client, "/api/libraries/grows"))["library"]
    assert stats["search"] == "reduced"

    # The reduced index is what the next start loads (its snapshot): no second adoption.
    await client.close()
    reopened = await aiohttp_client(create_app(config, embedder))
    stats = (await get(reopened, "/api/libraries/grows"))["library"]
    assert stats["items"] == 620 and stats["search"] == "reduced"
    assert stats["rebuild"] is None


@pytest.mark.local_only
async def test_an_import_taking_a_library_past_reduce_min_items_builds_the_reduced_index_itself(
    aiohttp_client, client, api, config, embedder
):
    """A large enough import into a small serving library answers with the reduced index built:
    no full-dimension graph of the import first, no background adoption after it."""
    _reduce_from(config, 500)
    dim = (await model_of(client))["dim"]
    vectors = unit_vectors(600, dim, seed=9)
    await import_vectors(client, "jumps", np.arange(1, 401), vectors[:400])
    assert (await get(client, "/api/libraries/jumps"))["library"]["search"] != "reduced"
    await import_vectors(client, "jumps", np.arange(401, 601), vectors[400:])  # 200 x 5 >= 600
    stats = (await get(client, "/api/libraries/jumps"))["library"]
    assert stats["items"] == 600 and stats["search"] == "reduced"
    assert stats["rebuild"] is None  # built by the import itself, nothing left to adopt
    # (an adoption would have started within the import, before its answer: none did)
    for row in (3, 450):  # an item of each import finds itself first, with its native score
        hits = await nearest(client, "jumps", vectors[row], k=5)
        assert hits[0][0] == row + 1 and hits[0][1] == pytest.approx(1.0, abs=1e-5)
        scores = vectors @ vectors[row]
        assert [s for _, s in hits] == pytest.approx([scores[key - 1] for key, _ in hits], abs=1e-5)

    await client.close()
    reopened = await aiohttp_client(create_app(config, embedder))
    stats = (await get(reopened, "/api/libraries/jumps"))["library"]
    assert stats["items"] == 600 and stats["search"] == "reduced" and stats["rebuild"] is None


@pytest.mark.local_only
async def test_shutdown_cancels_a_running_rebuild_and_the_old_index_stays_valid(
    aiohttp_client, client, api, config, embedder, monkeypatch, caplog
):
    import logging

    dim = (await model_of(client))["dim"]
    keys = np.arange(1, 1001)
    vectors = unit_vectors(1000, dim, seed=9)
    await import_vectors(client, "stop", keys, vectors)
    slow_rebuilds(monkeypatch)
    await client.post("/api/libraries/stop/rebuild")
    await api(f"{R}/remove", appid="stop", contsigns=[contsign_json(1)])
    with caplog.at_level(logging.INFO):
        await client.close()
    assert "rebuild cancelled" in caplog.text
    monkeypatch.delenv(local.REBUILD_PAUSE_ENV)
    caplog.clear()
    with caplog.at_level(logging.INFO):
        reopened = await aiohttp_client(create_app(config, embedder))
    assert "rebuilding from the database" not in caplog.text  # the snapshot was good
    assert (await get(reopened, "/api/libraries/stop"))["library"]["items"] == 999
    assert (await get(reopened, "/api/libraries/stop/rebuild"))["rebuild"] is None


@pytest.mark.heavy
def test_kill_9_during_a_rebuild_loses_no_acknowledged_write(tmp_path):
    """A rebuild writes nothing before its swap: after a kill -9 in the middle of one the next
    start serves the old snapshot plus the replay of every acknowledged write."""
    daemon = Daemon(tmp_path)
    daemon.start()
    try:
        model = daemon.get("admin", "/healthz")["model"]
        keys = np.arange(1, 3001, dtype=np.int64) * 31
        vectors = unit_vectors(3000, model["dim"], seed=10)
        _post_zip(daemon, "crash", export_zip(keys, vectors, model))
        assert daemon.post("admin", "/api/libraries/crash/save", {})["err_no"] == 0
        daemon.terminate()
        daemon.proc = None
        # One build batch of 1024 rows, then 3 s of sleep: the kill lands in the build.
        import os

        os.environ[local.REBUILD_PAUSE_ENV] = "3"
        try:
            daemon.start()
        finally:
            del os.environ[local.REBUILD_PAUSE_ENV]
        state = daemon.post("admin", "/api/libraries/crash/rebuild", {})["rebuild"]
        assert state["state"] == "running"
        added_keys = np.arange(1, 51, dtype=np.int64) * -17
        added = unit_vectors(50, model["dim"], seed=11)
        _post_zip(daemon, "crash", export_zip(added_keys, added, model))
        removed = [contsign_json(k) for k in keys[:40]]
        assert daemon.rts("remove", appid="crash", contsigns=removed)["removed"] == 40
        retag = daemon.rts("update", appid="crash", contsign=contsign_json(keys[100]), features=tagged(5))
        assert retag["err_no"] == 0
        assert daemon.get("admin", "/api/libraries/crash/rebuild")["rebuild"]["state"] == "running"
        daemon.kill()

        daemon.start()
        stats = daemon.get("admin", "/api/libraries/crash")["library"]
        assert stats["items"] == 3000 + 50 - 40
        assert stats["rebuild"] is None  # a manual rebuild interrupted by a crash is simply gone
        for key in added_keys[::5]:
            hits = daemon.rts("search", appid="crash", contsign=contsign_json(key), rn=1)["data_items"]
            assert ContSign.from_json(hits[0]["contsign"]).key == key and hits[0]["score"] > 0.999
        for key in keys[:40:8]:
            refused = daemon.rts("search", appid="crash", contsign=contsign_json(key))
            assert refused["err_no"] == 1  # not stored any more
        filtered = daemon.rts(
            "search",
            appid="crash",
            contsign=contsign_json(keys[100]),
            features=tagged(5),
            tag_logic=1,
        )["data_items"]
        assert [ContSign.from_json(h["contsign"]).key for h in filtered] == [keys[100]]
        assert not list((daemon.data_dir / "indexes").glob("*.tmp"))
        assert daemon.terminate(signal.SIGTERM) == 0
    finally:
        daemon.stop()


def _post_zip(daemon: Daemon, appid: str, body: bytes) -> dict:
    import json
    import urllib.request

    url = daemon.url("admin", f"/api/libraries/{appid}/import")
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/zip"})
    with urllib.request.urlopen(request, timeout=120) as response:
        answer = json.loads(response.read())
    assert answer["err_no"] == 0, answer
    return answer

"""The int8 screen of a reduced index's native vectors (index/screen.py): deep searches score
thousands of graph candidates in RAM and re-rank only the best natively, with exact scores.

Small (64-d native, 16-d reduced, 3,000 items) with the screen's thresholds lowered, so that
"deep" is a few hundred candidates and each test runs in well under a second.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from test_rebuild import get, import_vectors, model_of
from test_recall_tuning import catalogue, here, recall_at, reduced_index, tight_clusters
from test_recall_tuning import config as config  # a fixture: [index] lowered for small libraries
from test_reduced_index import pool as pool  # a fixture

from same_search.app import create_app
from same_search.console.pages import recall_block
from same_search.contsign import ContSign
from same_search.index import recall, screen
from same_search.index.paging import SearchDepth
from same_search.index.screen import Screen
from same_search.services import SERVICES

N = 3000


def search_body(appid: str, key: int) -> dict:
    return {"from": "pytest", "appid": appid, "contsign": ContSign.from_key(key).to_json(), "rn": 10}


@pytest.fixture
def shallow_screen(monkeypatch):
    """Depths above 100 candidates screen; at least 40 are re-ranked natively."""
    monkeypatch.setattr(screen, "SCREEN_FROM", 100)
    monkeypatch.setattr(screen, "KEEP_MIN", 40)


def test_int8_scores_rank_as_the_float32_ones_do():
    rng = np.random.default_rng(1)
    vectors = np.abs(rng.standard_normal((500, 64))).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    codes = Screen(16, 64)  # grows as rows arrive
    codes.set(np.arange(500), vectors)
    query = vectors[7]
    exact = vectors @ query
    assert np.abs(codes.scores(np.arange(500), query) - exact).max() < 1e-2
    best = set(codes.best(np.arange(500), query, 50).tolist())
    assert set(np.argsort(-exact)[:10].tolist()) <= best
    assert codes.nbytes == len(codes.scales) * (64 + 4)


def test_a_screened_search_returns_exact_native_scores_and_keeps_recall(tmp_path, pool, shallow_screen):
    vectors = tight_clusters(N, seed=2)
    index = reduced_index(tmp_path, pool, vectors)
    deep = SearchDepth(400, 400)
    assert recall.screens(deep)
    unscreened = [index._search(vectors[i], 10, None, depth=deep) for i in range(0, N, 100)]
    index.fill_screen_now(index.begin_screen_now())
    index.screen_filled_now()
    keys = index.rows.keys[: index.rows.used]
    for i, before in zip(range(0, N, 100), unscreened, strict=True):
        after = index._search(vectors[i], 10, None, depth=deep)
        for key, score in after:  # the native float32 cosine, not the int8 estimate
            native = vectors[np.flatnonzero(keys == key)[0]]
            assert score == pytest.approx(float(native @ vectors[i]), abs=1e-6)
        assert len({k for k, _ in after} & {k for k, _ in before}) >= 9


async def test_a_library_that_needs_more_candidates_tunes_to_a_screened_depth(
    tmp_path, pool, shallow_screen, monkeypatch
):
    """Native rungs stop short of the target; the screened rungs past them reach it, and the
    index holds a filled screen once a screened rung was tried."""
    monkeypatch.setattr(recall, "EF_STEPS", (16, 24))
    monkeypatch.setattr(recall, "CANDIDATE_STEPS", (10, 20))
    monkeypatch.setattr(recall, "SCREENED_STEPS", (200, 400, 800))
    monkeypatch.setattr(recall, "FLAT_STEPS", ())  # the graph's screened rungs, not the flat scan
    index = reduced_index(tmp_path, pool, tight_clusters(N, seed=4))
    tuning = await recall.measure(index, "model-fp", 0.98, here, here)
    assert tuning.met and tuning.screened and tuning.candidates in (200, 400, 800), tuning
    assert tuning.to_json()["screened"] is True
    assert index.screen is not None and index.screen_ready
    assert (await recall_at(index, tuning.depth, seed=99)).worst() >= 0.96


def test_rows_added_after_the_screen_began_are_screened_too(tmp_path, pool, shallow_screen):
    vectors = tight_clusters(N, seed=5)
    index = reduced_index(tmp_path, pool, vectors[:2000])
    todo = index.begin_screen_now()
    index.add_now(np.arange(5000, 6000, dtype=np.int64), vectors[2000:], seq=2)  # meanwhile
    index.fill_screen_now(todo)
    index.screen_filled_now()
    assert index.begin_screen_now().size == 0  # filled: nothing left to code
    rows = index.rows.live_rows()
    np.testing.assert_allclose(
        index.screen.scores(rows, vectors[2500]), index.row_vectors(rows) @ vectors[2500], atol=1e-2
    )
    index.drop_screen_now()
    assert index.screen is None and not index.screen_ready


# ---- the daemon: the screen kept across a restart, dropped when a shallower depth holds -------


async def measured(client, appid: str) -> dict:
    """The library's recall once its background measurement has ended."""
    for _ in range(600):
        shown = (await get(client, f"/api/libraries/{appid}"))["library"]["recall"]
        if shown["state"] == "measured":
            return shown
        await asyncio.sleep(0.05)
    raise AssertionError("the library never measured its recall")


@pytest.mark.local_only
async def test_a_screened_depth_is_served_again_after_a_restart_and_its_screen_dropped_when_not_needed(
    aiohttp_client, client, config, embedder, shallow_screen, monkeypatch
):
    monkeypatch.setattr(screen, "SCREEN_FROM", 40)  # the configured floor (60 candidates) screens
    dim = (await model_of(client))["dim"]
    await import_vectors(
        client,
        "sc",
        np.arange(1, 601),
        catalogue(600, dim, seed=8),
        [(3 if i % 2 else 0, 0) for i in range(600)],
    )
    shown = await measured(client, "sc")
    assert shown["screened"] is True and shown["candidates"] >= 60, shown
    assert "screened in RAM" in recall_block(shown)
    assert (await (await client.post("/api/libraries/sc/save")).json())["err_no"] == 0
    await client.close()

    reopened = await aiohttp_client(create_app(config, embedder))
    again = (await get(reopened, "/api/libraries/sc"))["library"]["recall"]
    assert again == shown
    index = reopened.server.app[SERVICES].libraries.libraries["sc"].handle
    assert index.screen_ready and index.depth.candidates == shown["candidates"]  # filled at load
    answer = await (await reopened.post("/RTSAsService/search", json=search_body("sc", 1))).json()
    assert answer["err_no"] == 0 and len(answer["data_items"]) == 10, answer

    # Depths up to 100 candidates re-ranked natively again: the screen is not needed any more.
    monkeypatch.setattr(screen, "SCREEN_FROM", 100)
    answer = await (await reopened.post("/api/libraries/sc/recall")).json()
    shown = answer["library"]["recall"]
    assert answer["err_no"] == 0 and shown["screened"] is False and shown["candidates"] <= 100, shown
    assert index.screen is None

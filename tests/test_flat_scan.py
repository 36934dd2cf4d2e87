"""The flat scan tier (index/flat.py): a reduced index's candidates from a scan of every row's
int8 reduced vector instead of the graph, the filter a mask of the same pass.

Small (64-d native, 16-d reduced, 3,000 items; a 600-item daemon library) with the screen's
thresholds lowered, as in tests/test_screen.py.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from test_rebuild import get, import_vectors, model_of, wait_rebuild
from test_recall_tuning import catalogue, here, reduced_index, tight_clusters
from test_recall_tuning import config as config  # a fixture: [index] lowered for small libraries
from test_reduced_index import pool as pool  # a fixture
from test_screen import measured, search_body

from same_search.app import create_app
from same_search.console.pages import recall_block
from same_search.index import flat, int8_rows, recall, screen
from same_search.index.flat import FlatScan, quantise
from same_search.index.paging import SearchDepth
from same_search.services import SERVICES

N = 3000
DEEP_FLAT = SearchDepth(400, 400, flat=True)


@pytest.fixture
def shallow_screen(monkeypatch):
    """Depths above 100 candidates screen; at least 40 are re-ranked natively."""
    monkeypatch.setattr(screen, "SCREEN_FROM", 100)
    monkeypatch.setattr(screen, "KEEP_MIN", 40)


def kernels() -> list[str]:
    return ["torch", "numpy", *(["faiss"] if int8_rows.faiss is not None else [])]


@pytest.mark.parametrize("kernel", kernels())
def test_every_kernel_keeps_the_best_allowed_rows_of_an_exact_int8_ranking(kernel):
    rng = np.random.default_rng(3)
    vectors = rng.standard_normal((2000, 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    scan = FlatScan(16, 16, kernel)  # grows as rows arrive
    scan.set(np.arange(1000), quantise(vectors[:1000]))
    scan.set(np.arange(1000, 2000), quantise(vectors[1000:]))
    np.testing.assert_array_equal(scan.codes(np.arange(2000)), quantise(vectors))
    allowed = rng.random(2000) < 0.5
    exact = quantise(vectors).astype(np.int32) @ flat.query_codes(vectors[9]).astype(np.int32)
    exact[~allowed] = np.iinfo(np.int32).min
    found = scan.best(vectors[9], allowed, 100)
    assert len(found) == 100 and allowed[found].all()
    assert np.sort(exact[found]).tolist() == np.sort(exact)[-100:].tolist()  # ties may swap rows
    some = rng.choice(2000, 300, replace=False)  # the screen's read: given rows, in their order
    coded = flat.query_codes(vectors[9])
    exact_some = quantise(vectors)[some].astype(np.int32) @ coded
    np.testing.assert_array_equal(scan.products(coded, some), exact_some)
    few = np.zeros(2000, bool)
    few[[3, 5]] = True
    assert sorted(scan.best(vectors[9], few, 100).tolist()) == [3, 5]


def flat_index(tmp_path, pool, vectors):
    index = reduced_index(tmp_path, pool, vectors)
    index.fill_screen_now(index.begin_screen_now())
    index.screen_filled_now()
    return index


def test_a_flat_search_answers_with_exact_scores_filters_removals_and_writes_at_once(
    tmp_path, pool, shallow_screen
):
    vectors = tight_clusters(N, seed=6)
    index = flat_index(tmp_path, pool, vectors)
    keys = index.rows.keys[: index.rows.used].copy()
    hits = 0
    for i in range(0, N, 150):
        found = index._search(vectors[i], 11, None, depth=DEEP_FLAT)
        for key, score in found:  # the native float32 cosine
            native = vectors[np.flatnonzero(keys == key)[0]]
            assert score == pytest.approx(float(native @ vectors[i]), abs=1e-6)
        truth = set(keys[np.argsort(-(vectors @ vectors[i]))[:11]].tolist())
        hits += len(truth & {k for k, _ in found})
    assert hits >= 0.95 * 11 * len(range(0, N, 150))

    tagged = index.tags.mask((3, 0), False)  # about half the library
    for i in range(0, N, 300):
        found = index._search(vectors[i], 10, None, (3, 0), False, DEEP_FLAT)
        assert len(found) == 10 and all(tagged[np.flatnonzero(keys == k)[0]] for k, _ in found)

    gone = [k for k, _ in index._search(vectors[0], 5, None, depth=DEEP_FLAT)]
    index.delete_now(gone, seq=2)
    assert not set(gone) & {k for k, _ in index._search(vectors[0], 50, None, depth=DEEP_FLAT)}
    index.add_now(np.array([7]), vectors[:1], seq=3, tags=np.array([[3, 0]], np.uint32))  # back, new key
    assert index._search(vectors[0], 1, None, (3, 0), False, DEEP_FLAT)[0][0] == 7


def test_flat_pages_concatenate_into_one_ranking(tmp_path, pool, shallow_screen):
    """Deep pages walk deeper flat tiers: each page continues the one before, scores never rise."""
    vectors = tight_clusters(N, seed=7)
    index = flat_index(tmp_path, pool, vectors)
    one = index._search(vectors[3], 600, None, depth=DEEP_FLAT)
    for page in (50, 200, 350):
        assert index._search(vectors[3], page, None, depth=DEEP_FLAT) == one[:page]
    scores = [s for _, s in one]
    assert scores == sorted(scores, reverse=True) and len({k for k, _ in one}) == 600


async def test_a_library_the_graph_cannot_serve_tunes_to_a_flat_depth(
    tmp_path, pool, shallow_screen, monkeypatch
):
    """The graph's rungs stop short of the target; a flat rung reaches it and is chosen."""
    monkeypatch.setattr(recall, "EF_STEPS", (16, 24))
    monkeypatch.setattr(recall, "CANDIDATE_STEPS", (10, 20))
    monkeypatch.setattr(recall, "SCREENED_STEPS", ())
    monkeypatch.setattr(recall, "FLAT_STEPS", (200, 400, 800))
    index = reduced_index(tmp_path, pool, tight_clusters(N, seed=4))
    tuning = await recall.measure(index, "model-fp", 0.98, here, here)
    assert tuning.met and tuning.flat and tuning.candidates in (200, 400, 800), tuning
    assert tuning.depth.flat and tuning.to_json()["flat"] is True and tuning.search_ms > 0
    assert index.screen is not None and index.screen_ready


@pytest.fixture
def exacting(config):
    """Recall 1.0 asked of a library that starts at 10 candidates: a shallow graph misses it."""
    index = dataclasses.replace(config.index, rerank_candidates=10, reduced_ef_search=10, target_recall=1.0)
    return dataclasses.replace(config, index=index)


@pytest.mark.local_only
async def test_a_flat_depth_is_served_again_after_a_restart(
    aiohttp_client, exacting, embedder, shallow_screen, monkeypatch
):
    monkeypatch.setattr(recall, "EF_STEPS", (16, 24))
    monkeypatch.setattr(recall, "CANDIDATE_STEPS", (10, 20))
    monkeypatch.setattr(recall, "SCREENED_STEPS", ())
    monkeypatch.setattr(recall, "FLAT_STEPS", (1000,))  # more than the library: exact
    client = await aiohttp_client(create_app(exacting, embedder))
    dim = (await model_of(client))["dim"]
    tags = [(3 if i % 2 else 0, 0) for i in range(600)]
    await import_vectors(client, "fl", np.arange(1, 601), catalogue(600, dim, seed=9), tags)
    shown = await measured(client, "fl")
    assert shown["flat"] is True and not shown["below_target"], shown
    assert "a flat scan of every item" in recall_block(shown)
    assert (await (await client.post("/api/libraries/fl/save")).json())["err_no"] == 0
    await client.close()

    reopened = await aiohttp_client(create_app(exacting, embedder))
    assert (await get(reopened, "/api/libraries/fl"))["library"]["recall"] == shown
    index = reopened.server.app[SERVICES].libraries.libraries["fl"].handle
    assert index.depth.flat and index.screen is not None and index.screen_ready  # filled at load
    answer = await (await reopened.post("/RTSAsService/search", json=search_body("fl", 2))).json()
    assert answer["err_no"] == 0 and len(answer["data_items"]) == 10, answer

    # A rebuild's fresh index keeps the depth and codes its rows as it builds: flat at once.
    assert (await (await reopened.post("/api/libraries/fl/rebuild")).json())["err_no"] == 0
    assert (await wait_rebuild(reopened, "fl"))["state"] == "done"
    fresh = reopened.server.app[SERVICES].libraries.libraries["fl"].handle
    assert fresh is not index and fresh.depth.flat and fresh.screen is not None and fresh.screen_ready
    again = await (await reopened.post("/RTSAsService/search", json=search_body("fl", 2))).json()
    assert again["err_no"] == 0 and again["data_items"] == answer["data_items"], again


@pytest.mark.parametrize("flat_ms, chosen", [(2.0, SearchDepth(2400, 2400, flat=True)), (5.0, None)])
async def test_the_flat_depth_is_kept_only_where_it_measured_cheaper(flat_ms, chosen):
    """tune() itself: a deep graph depth (3,200 candidates, 3.2 ms) against flat rungs that all
    reach the target: the cheapest flat rung wins when it is faster, else the graph stays."""

    async def fake(depth: SearchDepth) -> recall.Measured:
        if depth.flat:
            return recall.Measured(0.99, 0.99, flat_ms / 1000)
        value = min(1.0, 0.9 + depth.candidates / 40_000)  # 0.98 from 3,200 candidates
        return recall.Measured(value, value, depth.candidates / 1e6)

    depth, _ = await recall.tune("reduced", fake, 0.98, SearchDepth(768, 300))
    assert depth == (chosen or SearchDepth(3200, 3200)), depth

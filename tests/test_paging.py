"""Deep pages concatenate on every index kind: successive pages equal one long page.

An approximate index's candidates depend on how deep it walks, so pages that each walked their
own depth repeated or skipped items where they met. These read a library page by page (rn 50,
a thousand hits deep) from a full-dimension graph and a reduced one, unfiltered and with tag
filters of each strategy, and compare with one long page.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from test_reduced_index import build, descriptors
from test_reduced_index import pool as pool  # a fixture

from same_search.config import IndexConfig
from same_search.index.library_index import LibraryIndex
from same_search.index.paging import SearchDepth, stable_top

DEEP = 1000
RN = 50


def paged(index, query, tags=None, deep=DEEP, rn=RN):
    """What a client paging with ``rn`` reads, ``deep`` hits deep."""
    seen = []
    for pn in range(0, deep, rn):
        seen += index._search(query, pn + rn + 1, None, tags)[pn : pn + rn]
    return seen


def assert_one_ranking(index, query, tags=None):
    seen = paged(index, query, tags)
    whole = index._search(query, DEEP, None, tags)
    assert seen == whole
    assert len({key for key, _ in seen}) == len(seen)
    scores = np.array([score for _, score in seen])
    assert (np.diff(scores) <= 0).all(), "a score rises"
    return seen


@pytest.fixture
def graph(pool):
    """A full-dimension HNSW graph (no exact matrix: the library is above exact_threshold)."""
    cfg = IndexConfig(exact_threshold=100, ef_search=32, m=8, ef_construction=64)
    index = LibraryIndex.empty(64, cfg, pool, capacity=4000)
    vectors = descriptors(4000, seed=5)
    keys = np.arange(1, 4001, dtype=np.int64) * 7919
    tags = np.stack([keys % 2 + 1, np.where(keys % 13 == 0, 5, 0)], axis=1).astype(np.uint32)
    index.add_now(keys, vectors, seq=1, tags=tags)
    assert index.strategy == "hnsw"
    return index


@pytest.mark.parametrize("tags", [None, (1, 0), (5, 0)], ids=["unfiltered", "half", "a thirteenth"])
def test_deep_pages_of_a_full_dimension_graph_are_one_ranking(graph, tags):
    for query in descriptors(3, seed=41):
        seen = assert_one_ranking(graph, query, tags)
        assert len(seen) == min(DEEP, 4000 if tags is None else len(graph.tags.select(tags, False)))


@pytest.mark.parametrize(
    "tags", [(1, 0), (5, 0), (7, 0)], ids=["broad (half)", "sketch scan (an eleventh)", "few (1/97)"]
)
def test_deep_filtered_pages_of_a_reduced_index_are_one_ranking(tmp_path, pool, tags):
    index, _, _, _ = build(tmp_path, pool, n=6000, rerank_candidates=100)
    for query in descriptors(3, seed=43):
        assert_one_ranking(index, query, tags)


def test_any_candidates_give_one_ranking_that_never_rises():
    """The tiers' rule alone, against walks whose candidates differ wholly from one depth to the
    next: every depth reads a prefix of the deepest read and scores never rise."""
    total = 500
    scores = np.random.default_rng(3).random(total).astype(np.float32)

    def tier(depth):
        if depth >= total:
            return np.arange(total, dtype=np.uint64), scores, True
        picked = np.random.default_rng(depth).choice(total, depth, replace=False)
        return picked.astype(np.uint64), scores[picked], False

    deepest, deepest_scores = stable_top(total, 16, total, tier)
    assert (np.diff(deepest_scores) <= 0).all() and len(set(deepest.tolist())) == len(deepest)
    assert np.array_equal(scores[deepest.astype(np.int64)], deepest_scores)
    for k in (1, 7, 8, 9, 31, 64, 200, 499):
        labels, _ = stable_top(k, 16, total, tier)
        assert np.array_equal(labels, deepest[:k]), k


def test_a_new_vector_walks_deeper_within_bounds_and_a_flat_scan_does_not():
    """The tuned depth is measured on stored items; any other vector walks ``factor`` deeper,
    capped (never below the tuned depth), and a flat scan's candidates come from every row."""
    assert SearchDepth(768, 400).for_new_vectors(4) == SearchDepth(3072, 1600)
    assert SearchDepth(2048, 1600).for_new_vectors(4) == SearchDepth(4096, 1600)
    assert SearchDepth(6400, 6400).for_new_vectors(4) == SearchDepth(6400, 6400)
    assert SearchDepth(64, 64).for_new_vectors(1) == SearchDepth(64, 64)
    assert SearchDepth(0, 3200, flat=True).for_new_vectors(4) == SearchDepth(0, 3200, flat=True)


def test_a_reduced_index_walks_deeper_for_a_new_vector_and_a_full_graph_does_not(tmp_path, pool, graph):
    reduced, _, _, _ = build(tmp_path, pool, n=6000, rerank_candidates=100)
    assert reduced.cfg.new_vector_depth == 4 and reduced.cfg.new_vector_scan == 200
    assert reduced.depth_for(stored=True) == reduced.depth
    # With the sign scan (index/signs.py), half as deep and joined by its candidates.
    assert reduced.depth_for(stored=False) == reduced.depth.for_new_vectors(2, 200) != reduced.depth
    reduced.cfg = dataclasses.replace(reduced.cfg, new_vector_scan=0)  # no scan: the whole factor deeper
    assert reduced.depth_for(stored=False) == reduced.depth.for_new_vectors(4)
    assert reduced.depth_for(stored=False).scan == 0
    assert graph.depth_for(stored=True) == graph.depth_for(stored=False) == graph.depth

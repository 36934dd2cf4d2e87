"""The sign-bit scan (index/signs.py): a second source of candidates for searches of new vectors
in a reduced index, which finds what a walk that ends among near-ties misses."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import numpy as np
import pytest

from same_search.index import signs
from same_search.index.flat import quantise
from same_search.index.signs import SignCodes, sign_bits
from tests.test_reduced_index import build, descriptors, exact_page


@pytest.fixture
def pool():
    with ThreadPoolExecutor(1) as executor:
        yield executor


def hamming(codes: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Hamming distances of each row's sign bits to the query's, the slow way."""
    return ((np.asarray(codes) > 0) != (np.asarray(query) > 0)).sum(axis=1)


@pytest.mark.parametrize("kernel", sorted({signs.KERNEL, "numpy"}))
@pytest.mark.parametrize("dim", [256, 20])  # 20: the last byte half used
def test_the_nearest_allowed_rows_by_hamming_distance(kernel: str, dim: int):
    rng = np.random.default_rng(dim)
    codes = quantise(rng.uniform(-1, 1, (3000, dim)))
    table = SignCodes(16, dim, kernel=kernel)
    table.set(np.arange(1000), codes[:1000])
    table.set(np.arange(1000, 3000), codes[1000:])  # grown past its first capacity
    table.set(np.array([5]), codes[7:8])  # a row rewritten (an update)
    codes[5] = codes[7]
    # Grown by an eighth (at least 1,024 rows), not doubled: every slot's page is resident.
    assert 3000 <= len(table) <= 3000 + 1024 and table.nbytes == len(table) * table.width
    allowed = rng.random(2900) < 0.5  # rows past the mask, and half of those under it, excluded
    query = rng.uniform(-1, 1, dim)
    found = table.nearest(query, allowed, 40)
    assert len(found) == 40 and len(set(found.tolist())) == 40 and allowed[found].all()
    distances = np.where(allowed, hamming(codes[:2900], query), 10**6)
    assert np.sort(distances[found]).tolist() == np.sort(distances)[:40].tolist()  # ties may swap rows
    few = np.zeros(2900, bool)
    few[[3, 9]] = True
    assert sorted(table.nearest(query, few, 40).tolist()) == [3, 9]
    assert np.array_equal(sign_bits(codes[:2]), np.packbits(codes[:2] > 0, axis=1))


def edited_copies(vectors: np.ndarray, count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows, queries): stored vectors moved by noise, as an edit moves a photo's descriptor."""
    rng = np.random.default_rng(seed)
    rows = rng.choice(len(vectors), count, replace=False)
    queries = vectors[rows] + 0.35 * rng.standard_normal((count, vectors.shape[1])).astype(np.float32) / 8
    return rows, (queries / np.linalg.norm(queries, axis=1, keepdims=True)).astype(np.float32)


def test_a_new_vector_finds_what_a_weak_walk_misses(tmp_path, pool):
    """On a graph too shallow for its library (M 4, ef 8, 8 candidates), edited copies of stored
    items find their original first as often as exact search does only with the sign scan; a
    stored item's search (the tuned depth) does not scan."""
    weak = {"m": 4, "ef_construction": 8, "reduced_ef_search": 8, "rerank_candidates": 8}
    index, vectors, keys, _ = build(tmp_path, pool, n=6000, **weak)
    rows, queries = edited_copies(vectors, 60, seed=11)
    assert index.depth_for(stored=True).scan == 0
    with_scan = index.depth_for(stored=False)
    without = replace(index.depth.for_new_vectors(index.cfg.new_vector_depth), scan=0)
    assert with_scan.scan == index.cfg.new_vector_scan == 200

    wanted = keys[rows]

    pairs = list(zip(queries, wanted, strict=True))

    def first_hits(depth) -> int:
        return sum(index._search(q, 1, None, depth=depth)[0][0] == want for q, want in pairs)

    exact = sum(exact_page(vectors, keys, q, 1)[0][0] == want for q, want in pairs)
    assert exact >= 55  # the edits keep the original first for exact search
    assert first_hits(with_scan) == exact > first_hits(without)


def test_the_scan_keeps_filters_and_removals(tmp_path, pool):
    """The scan's candidates are only rows the search may return: a broad and a middling tag
    filter, and removed items, are honoured; scores stay the native cosines."""
    index, vectors, keys, tags = build(tmp_path, pool, n=6000, m=4, ef_construction=8, reduced_ef_search=8)
    gone = keys[:300]
    index.delete_now(gone.tolist(), seq=10_000)
    live = ~np.isin(keys, gone)
    by_key = dict(zip(keys.tolist(), vectors, strict=True))
    depth = index.depth_for(stored=False)
    for query in descriptors(8, seed=21):
        for filter_tags, allowed in (((1, 0), tags[:, 0] == 1), ((0, 5), tags[:, 1] == 5), (None, None)):
            allowed = live if allowed is None else allowed & live
            found = index._search(query, 30, None, filter_tags, depth=depth)
            got = np.array([k for k, _ in found])
            assert len(got) == 30 and set(got.tolist()) <= set(keys[allowed].tolist())
            assert np.allclose([s for _, s in found], [by_key[k] @ query for k in got.tolist()], atol=1e-5)
            truth, _ = exact_page(vectors, keys, query, 30, allowed)
            assert len(set(truth.tolist()) & set(got.tolist())) >= 27

"""Index backends and the per-library index, on synthetic unit vectors."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from same_search.config import IndexConfig
from same_search.index import graph_files
from same_search.index.exact import ExactIndex, top_k
from same_search.index.hnsw import HnswIndex
from same_search.index.library_index import LibraryIndex, key_to_label, label_to_key

DIM = 32


def unit_vectors(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    v = rng.standard_normal((n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def exact_top(vectors: np.ndarray, keys: np.ndarray, query: np.ndarray, k: int) -> list[int]:
    order = np.argsort(-(vectors @ query), kind="stable")[:k]
    return [int(keys[i]) for i in order]


@pytest.fixture
def pool():
    with ThreadPoolExecutor(1) as executor:
        yield executor


def test_label_key_round_trip():
    for key in (0, 1, -1, 2**63 - 1, -(2**63)):
        assert label_to_key(key_to_label(key)) == key
        assert 0 <= key_to_label(key) < 2**64


def test_top_k_orders_by_score_then_label():
    labels = np.array([5, 3, 9, 1], dtype=np.uint64)
    scores = np.array([0.5, 0.9, 0.5, 0.1], dtype=np.float32)
    got_labels, got_scores = top_k(labels, scores, 3)
    assert got_labels.tolist() == [3, 5, 9]
    assert got_scores.tolist() == pytest.approx([0.9, 0.5, 0.5])


def test_exact_add_delete_search():
    index = ExactIndex(DIM, capacity=2)
    vectors = unit_vectors(50)
    labels = np.arange(50, dtype=np.uint64)
    index.add(labels, vectors)
    index.delete(np.array([0, 10, 49, 1000], dtype=np.uint64))
    assert index.count() == 47 and not index.contains(10)
    found, _ = index.search(vectors[10], 47)
    assert 10 not in found.tolist() and len(found) == 47
    found, _ = index.search(vectors[5], 1)
    assert found.tolist() == [5]
    assert np.allclose(index.vectors(np.array([7], dtype=np.uint64)), vectors[7:8])


def test_hnsw_grows_deletes_and_finds():
    index = HnswIndex(DIM, m=16, ef_construction=100, ef_search=64, capacity=16)
    vectors = unit_vectors(500)
    index.add(np.arange(500, dtype=np.uint64), vectors)
    assert index.count() == 500 and index.capacity() >= 500
    found, scores = index.search(vectors[42], 5)
    assert found[0] == 42 and scores[0] == pytest.approx(1.0, abs=1e-5)
    index.delete(np.array([42], dtype=np.uint64))
    assert 42 not in index.search(vectors[42], 50)[0].tolist()
    index.add(np.array([42], dtype=np.uint64), vectors[42:43])  # re-add undeletes
    assert index.search(vectors[42], 1)[0].tolist() == [42]


async def test_library_index_graph_path_pages_match_exact(pool):
    cfg = IndexConfig(exact_threshold=0, ef_search=16)
    index = LibraryIndex.empty(DIM, cfg, pool)
    vectors = unit_vectors(2000, seed=1)
    keys = np.arange(-1000, 1000, dtype=np.int64)
    index.add_now(keys, vectors, seq=1)
    assert index.exact is None
    query = unit_vectors(1, seed=9)[0]
    found = [k for k, _ in await index.search(query, 300)]
    truth = exact_top(vectors, keys, query, 300)
    recall = len(set(found) & set(truth)) / 300
    assert recall >= 0.95 and len(found) == 300


async def test_library_index_filtered_search_is_complete(pool):
    cfg = IndexConfig(exact_threshold=0)
    index = LibraryIndex.empty(DIM, cfg, pool)
    vectors = unit_vectors(3000, seed=2)
    keys = np.arange(3000, dtype=np.int64)
    index.add_now(keys, vectors, seq=1)
    candidates = [int(k) for k in keys if k % 97 == 0]  # a heavy filter: 31 of 3000
    query = unit_vectors(1, seed=3)[0]
    found = [k for k, _ in await index.search(query, 50, candidates)]
    assert found == exact_top(vectors[candidates], np.array(candidates), query, 50)
    assert len(found) == len(candidates)


async def test_small_library_uses_exact_matrix_and_switches(pool):
    cfg = IndexConfig(exact_threshold=100)
    index = LibraryIndex.empty(DIM, cfg, pool)
    vectors = unit_vectors(150, seed=4)
    index.add_now(np.arange(40), vectors[:40], seq=1)
    assert index.exact is not None
    index.add_now(np.arange(40, 150), vectors[40:], seq=2)
    assert index.exact is None  # grew past the threshold
    index.delete_now(list(range(110)), seq=3)
    assert index.exact is not None and index.exact.count() == 40  # shrank well below it
    found = [k for k, _ in await index.search(vectors[120], 40)]
    assert sorted(found) == list(range(110, 150))


def test_snapshot_round_trip_and_corruption(tmp_path: Path, pool):
    cfg = IndexConfig()
    index = LibraryIndex.empty(DIM, cfg, pool)
    index.add_now(np.arange(10), unit_vectors(10), seq=7)
    index.save_now(tmp_path, 1, "fp")
    header = graph_files.read_header(tmp_path, 1, "fp", DIM)
    assert (header.seq, header.count, header.dim) == (7, 10, DIM)
    assert not index.dirty
    with pytest.raises(graph_files.SnapshotInvalid, match="model"):
        graph_files.read_header(tmp_path, 1, "other", DIM)
    graph, meta = graph_files.paths(tmp_path, 1)
    graph.write_bytes(graph.read_bytes()[:-10])
    with pytest.raises(graph_files.SnapshotInvalid, match="checksum"):
        graph_files.read_header(tmp_path, 1, "fp", DIM)
    meta.write_text("{not json")
    with pytest.raises(graph_files.SnapshotInvalid, match="unreadable"):
        graph_files.read_header(tmp_path, 1, "fp", DIM)
    with pytest.raises(graph_files.SnapshotInvalid, match="no snapshot"):
        graph_files.read_header(tmp_path, 2, "fp", DIM)

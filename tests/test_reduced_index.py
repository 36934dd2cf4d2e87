"""The reduced index: projection, native vector file, re-ranked search, in-memory tag filters."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from same_search.config import IndexConfig
from same_search.files import sha256_file
from same_search.index import graph_files, native_file, reduced
from same_search.index.native_file import NativeFile
from same_search.index.projection import Projection
from same_search.index.reduced import ReducedIndex

NATIVE = 64
REDUCED = 16
#: Scores are float32 inner products of the same vectors, computed another way.
TOL = 1e-5


def descriptors(n: int, seed: int = 0, clusters: int = 40) -> np.ndarray:
    """Clustered unit vectors with a decaying spectrum: PCA has something to keep."""
    rng = np.random.default_rng(seed)
    scale = 1.0 / np.arange(1, NATIVE + 1) ** 0.7
    centres = rng.standard_normal((clusters, NATIVE)) * scale
    v = centres[rng.integers(0, clusters, n)] + 0.5 * rng.standard_normal((n, NATIVE)) * scale
    v = v.astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def exact_page(vectors, keys, query, k, allowed=None):
    scores = vectors @ query
    if allowed is not None:
        scores = np.where(allowed, scores, -np.inf)
    order = np.argsort(-scores, kind="stable")[:k]
    order = order[np.isfinite(scores[order])]
    return keys[order], scores[order]


@pytest.fixture
def pool():
    with ThreadPoolExecutor(1) as executor:
        yield executor


def build(tmp_path: Path, pool, n: int = 3000, seed: int = 0, **cfg):
    vectors = descriptors(n, seed)
    keys = np.random.default_rng(seed).permutation(np.arange(-n, n))[:n].astype(np.int64) * 1_000_003
    tags = np.stack(
        [keys % 2 + 1, np.where(keys % 97 == 0, 7, np.where(keys % 11 == 0, 5, 0))], axis=1
    ).astype(np.uint32)
    projection = Projection.learn(vectors[:2000], REDUCED, "model-fp")
    config = IndexConfig(**{"ef_search": 32, "rerank_candidates": 60, **cfg})
    index = ReducedIndex.create(projection, native_file.new_path(tmp_path, 1), config, pool, 64)
    for start in range(0, n, 700):  # several batches, and graph growth
        index.add_now(
            keys[start : start + 700],
            vectors[start : start + 700],
            seq=start + 1,
            tags=tags[start : start + 700],
        )
    return index, vectors, keys, tags


def test_projection_is_deterministic_normalised_and_round_trips():
    sample = descriptors(2000, seed=1)
    a = Projection.learn(sample, REDUCED, "fp")
    b = Projection.learn(sample, REDUCED, "fp")
    assert a.fingerprint == b.fingerprint and a.dim == REDUCED and a.native_dim == NATIVE
    out = a.apply(sample[:10])
    assert out.shape == (10, REDUCED) and np.allclose(np.linalg.norm(out, axis=1), 1, atol=1e-5)
    assert Projection.learn(sample, REDUCED, "other model").fingerprint != a.fingerprint
    restored = Projection.from_blobs(*a.to_blobs(), NATIVE, REDUCED, "fp", a.fingerprint)
    # The same rows in the same batch: BLAS may round a 5-row product unlike a 10-row one (AVX2).
    assert np.array_equal(restored.apply(sample[:5]), a.apply(sample[:5]))
    mean, components = a.to_blobs()
    damaged = components[:-4] + b"\0\0\0\1"
    with pytest.raises(ValueError, match="reads back"):
        Projection.from_blobs(mean, damaged, NATIVE, REDUCED, "fp", a.fingerprint)
    # most of the variance of clustered data survives 16 of 64 dimensions
    centred = sample - a.mean
    kept = np.linalg.norm(centred @ a.components) ** 2 / np.linalg.norm(centred) ** 2
    assert kept > 0.6


def test_native_file_round_trip_truncation_and_torn_tail(tmp_path: Path):
    vectors = descriptors(100)
    path = tmp_path / "1.5.native.f32"
    native = NativeFile(path, NATIVE)
    native.write(np.arange(100), vectors)
    native.write(np.array([3, 7]), vectors[[50, 51]])  # overwrite, non-consecutive
    got = native.read(np.array([99, 3, 0, 7]))
    assert np.allclose(got, vectors[[99, 50, 0, 51]], atol=0)
    native.sync()
    native.close()
    with path.open("ab") as fh:  # a torn row after the snapshot's 100 (kill -9 mid-write)
        fh.write(b"\1" * 37)
    reopened = NativeFile(path, NATIVE, rows=100)
    assert path.stat().st_size == 100 * NATIVE * 4
    assert np.allclose(reopened.read(np.array([99])), vectors[99], atol=0)
    reopened.close()
    with path.open("r+b") as fh:  # truncated below what the snapshot vouches for
        fh.truncate(50 * NATIVE * 4)
    with pytest.raises(ValueError, match="50 rows"):
        NativeFile(path, NATIVE, rows=100)


@pytest.mark.skipif(not hasattr(native_file.os, "posix_fadvise"), reason="no posix_fadvise here")
def test_native_read_asks_for_uncached_rows_at_once_and_returns_them_in_order(tmp_path: Path, monkeypatch):
    """A re-rank's rows are requested from the disk together (one advice per run of consecutive
    rows, before the first read), then read back in the order asked, repeats included."""
    vectors = descriptors(64)
    native = NativeFile(tmp_path / "1.5.native.f32", NATIVE)
    native.write(np.arange(64), vectors)
    native.sync()
    os_module = native_file.os
    os_module.posix_fadvise(native._fd, 0, 0, os_module.POSIX_FADV_DONTNEED)  # out of the page cache
    advised: list[tuple[int, int]] = []
    real_advise = os_module.posix_fadvise

    def recording(fd: int, offset: int, length: int, advice: int) -> None:
        advised.append((offset // native.row_bytes, length // native.row_bytes))
        real_advise(fd, offset, length, advice)

    monkeypatch.setattr(os_module, "posix_fadvise", recording)
    rows = np.array([40, 11, 3, 10, 40, 12, 63])
    assert np.array_equal(native.read(rows), vectors[rows])
    assert advised == [(3, 1), (10, 3), (40, 1), (63, 1)]  # (first row, rows) per run
    native.close()


def test_reduced_search_scores_are_native_and_order_exact(tmp_path: Path, pool):
    index, vectors, keys, _ = build(tmp_path, pool)
    queries = descriptors(20, seed=9)
    hits = 0
    for query in queries:
        found = index._search(query, 10, None)
        got_keys = np.array([k for k, _ in found])
        got_scores = np.array([s for _, s in found])
        assert len(found) == 10
        by_key = dict(zip(keys.tolist(), vectors, strict=True))
        native = np.array([by_key[k] @ query for k in got_keys.tolist()])
        assert np.allclose(got_scores, native, atol=TOL)  # every score is the native cosine
        assert (np.diff(got_scores) <= 1e-7).all()  # best first
        truth, _ = exact_page(vectors, keys, query, 10)
        hits += len(set(truth.tolist()) & set(got_keys.tolist()))
    assert hits / (10 * len(queries)) >= 0.95


def test_deep_pages_are_full_and_consistent(tmp_path: Path, pool):
    index, vectors, keys, _ = build(tmp_path, pool)
    query = descriptors(1, seed=11)[0]
    page = index._search(query, 1200, None)
    assert len(page) == 1200 and len({k for k, _ in page}) == 1200
    truth, scores = exact_page(vectors, keys, query, 1200)
    got = np.array([s for _, s in page])
    assert len(set(truth.tolist()) & {k for k, _ in page}) / 1200 >= 0.95
    assert np.abs(got[:10] - scores[:10]).max() < 5e-3


@pytest.mark.parametrize(
    ("tags", "match_all", "share"),
    [
        ((1, 0), False, 0.5),  # broad: widened unfiltered search, then the filter
        ((5, 0), False, 0.09),  # medium: hnswlib's filtered search (exact for the deep page)
        ((2, 7), True, 0.005),  # narrow: every match re-ranked
        ((7, 0), False, 0.01),
        ((1, 2), False, 1.0),  # everything
    ],
)
@pytest.mark.parametrize("scan_min", [reduced.SCAN_MIN, 0])
def test_tag_filters_match_the_exact_filtered_search(
    tmp_path: Path, pool, monkeypatch, tags, match_all, share, scan_min
):
    """Broad, medium and narrow filters: every result matches, pages are never short, and the
    page is the exact filtered one (narrow filters are re-ranked in full: exact). With the default
    SCAN_MIN every filter of this small library but the broad ones scans sketches; with 0, the
    share decides, so the filtered graph search runs too."""
    monkeypatch.setattr(reduced, "SCAN_MIN", scan_min)
    index, vectors, keys, table = build(tmp_path, pool, n=4000)
    wanted = [t for t in tags if t]
    hit = [(table[:, 0] == t) | (table[:, 1] == t) for t in wanted]
    allowed = np.logical_and.reduce(hit) if match_all else np.logical_or.reduce(hit)
    assert abs(allowed.mean() - share) < max(0.5 * share, 0.01)
    recalls = []
    for query in descriptors(8, seed=21):
        for k in (10, 300):
            found = index._search(query, k, None, tags, match_all)
            truth, truth_scores = exact_page(vectors, keys, query, k, allowed)
            assert len(found) == min(k, int(allowed.sum()))  # never short
            assert set(k_ for k_, _ in found) <= set(keys[allowed].tolist())
            if allowed.sum() <= index.cfg.rerank_candidates:  # re-ranked in full: exact
                assert np.allclose([s for _, s in found], truth_scores, atol=TOL)
            recalls.append(len(set(truth.tolist()) & {k_ for k_, _ in found}) / len(truth))
    assert np.mean(recalls) >= 0.95


def test_broad_filters_search_the_graph_widened_even_in_a_library_small_enough_to_scan():
    """Half of a 100k library (50,000 matches, within SCAN_MIN) is searched by the widened graph
    search, not by scanning 50,000 sketches; narrow and middling filters keep their strategies."""
    assert reduced.filter_strategy(50_000, 100_000) == "broad"
    assert reduced.filter_strategy(500_000, 1_000_000) == "broad"
    assert reduced.filter_strategy(1_000, 100_000) == "scan"  # 1%
    assert reduced.filter_strategy(10_000, 1_000_000) == "scan"  # 1% of a million
    assert reduced.filter_strategy(40_000, 400_000) == "scan"  # 10%, within SCAN_MIN
    assert reduced.filter_strategy(100_000, 1_000_000) == "filtered"  # 10% of a million


def test_the_reduced_graph_is_walked_at_its_own_ef_widened_to_the_candidates(tmp_path: Path, pool):
    """reduced_ef_search, not ef_search (the full-dimension graphs'), raised to the candidates."""
    index, vectors, _, _ = build(tmp_path, pool, ef_search=16, reduced_ef_search=100, rerank_candidates=60)
    index._search(vectors[0], 10, None)
    assert index.graph.ef == 100
    index._search(vectors[0], 31, None)  # past the first tier (30 hits): 4 x 60 candidates
    assert index.graph.ef == 240


def test_removals_and_tag_updates_are_searched_right(tmp_path: Path, pool):
    index, vectors, keys, _ = build(tmp_path, pool)
    query = vectors[5]
    assert index._search(query, 1, None)[0][0] == keys[5]
    index.delete_now([int(keys[5])], seq=10_000)
    assert int(keys[5]) not in {k for k, _ in index._search(query, 50, None)}
    assert index.count() == len(keys) - 1 and not index.contains(int(keys[5]))
    index.set_tags([int(keys[6])], np.array([[4242, 0]], np.uint32))
    assert [k for k, _ in index._search(query, 10, None, (4242, 0), False)] == [int(keys[6])]
    index.add_now(keys[5:6], vectors[5:6], seq=10_001, tags=np.array([[4242, 0]], np.uint32))  # re-add
    assert {k for k, _ in index._search(query, 10, None, (4242, 0), False)} == {int(keys[5]), int(keys[6])}


def test_snapshot_round_trip_and_mismatches(tmp_path: Path, pool):
    index, vectors, keys, _ = build(tmp_path, pool)
    index.delete_now([int(keys[0])], seq=9_999)
    index.save_now(tmp_path, 1, "model-fp")
    header = graph_files.read_header(tmp_path, 1, "model-fp", NATIVE)
    assert header.projection == index.projection.fingerprint and header.count == len(keys) - 1
    loaded = ReducedIndex.load(tmp_path, 1, header, index.projection, index.cfg, pool)
    query = descriptors(1, seed=5)[0]
    assert loaded._search(query, 20, None) == index._search(query, 20, None)
    assert loaded.count() == index.count() and not loaded.dirty
    other = Projection.learn(vectors[2000:], REDUCED, "model-fp")
    with pytest.raises(graph_files.SnapshotInvalid, match="projection"):
        ReducedIndex.load(tmp_path, 1, header, other, index.cfg, pool)
    (tmp_path / header.native_file).write_bytes(b"")  # native vectors lost
    with pytest.raises(graph_files.SnapshotInvalid, match="native"):
        ReducedIndex.load(tmp_path, 1, header, index.projection, index.cfg, pool)


def test_an_older_snapshot_without_int8_codes_is_coded_from_the_native_file(tmp_path: Path, pool):
    """A row map written before it kept the int8 reduced codes (it kept 64-d sketches) still
    loads: the codes and sign bits come from the native file, as the saving index had them."""
    index, _, _, _ = build(tmp_path, pool)
    index.save_now(tmp_path, 1, "model-fp")
    rows_file = graph_files.rows_path(tmp_path, 1)
    with np.load(rows_file) as saved:
        keys, live, codes = saved["keys"], saved["live"], saved["codes"]
    with rows_file.open("wb") as out:
        np.savez(out, keys=keys, live=live, sketch=codes[:, :8])
    header = graph_files.read_header(tmp_path, 1, "model-fp", NATIVE)
    graph_files.commit_graph(
        graph_files.paths(tmp_path, 1)[0], tmp_path, 1, replace(header, rows_sha256=sha256_file(rows_file))
    )
    header = graph_files.read_header(tmp_path, 1, "model-fp", NATIVE)
    loaded = ReducedIndex.load(tmp_path, 1, header, index.projection, index.cfg, pool)
    used = index.rows.used
    assert np.array_equal(loaded.codes.first_codes(used), codes)
    query = descriptors(1, seed=5)[0]
    for stored in (True, False):
        depth = index.depth_for(stored)
        assert loaded._search(query, 20, None, depth=depth) == index._search(query, 20, None, depth=depth)


def test_the_int8_scan_keeps_the_reduced_neighbours(tmp_path: Path, pool):
    """The int8 scan of the reduced vectors (narrow filters, a short walk) keeps the true reduced
    top 10 among its best 150, whether it gathers the rows or lets faiss scan them all."""
    index, vectors, _, _ = build(tmp_path, pool)
    found = []
    for number, query in enumerate(index.projection.apply(descriptors(10, seed=3))):
        allowed = index.rows.live[: index.rows.used]
        got = index._scan_rows(query, allowed, 150) if number % 2 else index.codes.best(query, allowed, 150)
        truth = np.argsort(-(index.projection.apply(vectors) @ query))[:10]
        found.append(len(set(got.tolist()) & set(truth.tolist())) / 10)
    assert np.mean(found) >= 0.95

"""A snapshot is captured with writers kept out and written after they are let back in.

The capture copies the graph into memory (index/memory_image.py): what is written is the index
as it was at the capture, whatever the writers did while it went to disk; where no memory file
can be made, the graph goes straight to disk, as it did before.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from test_reduced_index import NATIVE, build, descriptors

from same_search.config import IndexConfig
from same_search.index import graph_files
from same_search.index.hnsw import HnswIndex
from same_search.index.library_index import FullIndex, LibraryIndex
from same_search.index.memory_image import GraphImage
from same_search.index.reduced import ReducedIndex

DIM = 32


def unit_vectors(n: int, seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


@pytest.fixture
def pool():
    with ThreadPoolExecutor(1) as executor:
        yield executor


def full_index(pool, n: int) -> tuple[LibraryIndex, np.ndarray]:
    index = LibraryIndex.empty(DIM, IndexConfig(exact_threshold=10), pool)
    vectors = unit_vectors(n, seed=1)
    index.add_now(np.arange(n), vectors, seq=1)
    return index, vectors


def load_full(directory: Path, keys: set[int]) -> FullIndex:
    header = graph_files.read_header(directory, 1, "fp", DIM)
    graph = HnswIndex.load(graph_files.paths(directory, 1)[0], DIM, 64, keys)
    return FullIndex(graph, IndexConfig(exact_threshold=10), header.seq, None)


def test_a_full_index_snapshot_holds_what_was_captured_not_what_came_after(tmp_path: Path, pool):
    index, vectors = full_index(pool, 300)
    pending = index.capture(tmp_path, 1, "fp")
    index.add_now(np.arange(300, 400), unit_vectors(100, seed=2), seq=2)  # while it is written
    index.delete_now([0, 1], seq=3)
    assert not graph_files.paths(tmp_path, 1)[1].exists()  # nothing on disk before the write
    pending.write()
    index.mark_saved(pending)
    header = graph_files.read_header(tmp_path, 1, "fp", DIM)
    assert (header.seq, header.count) == (1, 300)
    assert index.dirty and index.saved_seq == 1  # the later writes are not in this snapshot
    loaded = load_full(tmp_path, set(range(300)))
    assert loaded.count() == 300 and loaded.contains(0) and not loaded.contains(300)
    assert loaded._search(vectors[7], 1, None)[0][0] == 7
    assert not list(tmp_path.glob("*.tmp*"))


def test_a_reduced_index_snapshot_holds_what_was_captured(tmp_path: Path, pool):
    index, vectors, keys, _ = build(tmp_path, pool, n=2100)
    before = index._search(vectors[5], 20, None)
    pending = index.capture(tmp_path, 1, "model-fp")
    more = descriptors(50, seed=9)
    index.add_now(np.arange(10**9, 10**9 + 50), more, seq=50_000)  # while it is written
    index.delete_now([int(keys[5])], seq=50_001)
    pending.write()
    index.mark_saved(pending)
    header = graph_files.read_header(tmp_path, 1, "model-fp", NATIVE)
    assert header.count == 2100 and header.native_rows == 2100
    loaded = ReducedIndex.load(tmp_path, 1, header, index.projection, index.cfg, pool)
    assert loaded.count() == 2100 and loaded.contains(int(keys[5])) and not loaded.contains(10**9)
    assert loaded._search(vectors[5], 20, None) == before
    assert index.dirty


def test_without_a_memory_file_the_graph_goes_straight_to_disk(tmp_path: Path, pool, monkeypatch):
    """No ``memfd_create`` (or no memory for it): the capture writes the graph file itself and
    the snapshot is the same."""

    def refused(*_args: object) -> int:
        raise OSError(12, "Cannot allocate memory")

    monkeypatch.setattr(os, "memfd_create", refused)
    assert GraphImage.of(lambda path: None) is None
    index, vectors = full_index(pool, 200)
    pending = index.capture(tmp_path, 1, "fp")
    assert (tmp_path / "1.hnsw.tmp").exists()  # written during the capture
    index.add_now(np.arange(200, 220), unit_vectors(20, seed=3), seq=2)
    pending.write()
    assert graph_files.read_header(tmp_path, 1, "fp", DIM).count == 200
    assert load_full(tmp_path, set(range(200)))._search(vectors[3], 1, None)[0][0] == 3


def test_a_failed_write_leaves_the_previous_snapshot_and_no_temporary_files(tmp_path: Path, pool):
    index, _ = full_index(pool, 100)
    index.save_now(tmp_path, 1, "fp")
    index.add_now(np.arange(100, 150), unit_vectors(50, seed=4), seq=2)
    pending = index.capture(tmp_path, 1, "fp")
    (tmp_path / "1.hnsw").unlink()
    (tmp_path / "1.hnsw").mkdir()  # the rename over it fails
    with pytest.raises(OSError):
        pending.write()
    assert not list(tmp_path.glob("*.tmp*"))
    assert index.saved_seq == 1  # not marked saved

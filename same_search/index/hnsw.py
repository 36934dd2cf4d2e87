"""HNSW backend on hnswlib: inner-product space over normalised vectors.

Grows by doubling with ``resize_index``; deletions are ``mark_deleted`` (slots are reused only
after a rebuild). hnswlib does not track which labels are live in a way Python can ask cheaply,
so we keep the live label set ourselves: it also answers ``contains`` and ``count`` exactly.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import hnswlib
import numpy as np

from same_search.index.base import LabelFilter, VectorIndex


class HnswIndex(VectorIndex):
    """One hnswlib graph."""

    def __init__(self, dim: int, m: int, ef_construction: int, ef_search: int, capacity: int) -> None:
        self.dim = dim
        self.ef_search = ef_search
        self._graph = hnswlib.Index(space="ip", dim=dim)
        self._graph.init_index(max_elements=max(capacity, 16), M=m, ef_construction=ef_construction)
        self._graph.set_ef(ef_search)
        self._live: set[int] = set()

    @classmethod
    def load(cls, path: Path, dim: int, ef_search: int, live: set[int]) -> HnswIndex:
        """Load a saved graph; ``live`` is the label set recorded with it."""
        self = cls.__new__(cls)
        self.dim = dim
        self.ef_search = ef_search
        self._graph = hnswlib.Index(space="ip", dim=dim)
        self._graph.load_index(str(path))
        self._graph.set_ef(ef_search)
        self._live = set(live)
        return self

    def add(self, labels: np.ndarray, vectors: np.ndarray) -> None:
        needed = self._graph.get_current_count() + len(labels)
        if needed > self._graph.get_max_elements():
            self._graph.resize_index(max(needed, 2 * self._graph.get_max_elements()))
        self._graph.add_items(vectors, labels, num_threads=1 if len(labels) < 64 else -1)
        self._live.update(int(x) for x in labels)

    def delete(self, labels: np.ndarray) -> None:
        for label in (int(x) for x in labels):
            if label in self._live:
                self._graph.mark_deleted(label)
                self._live.discard(label)

    def search(
        self, vector: np.ndarray, k: int, label_filter: LabelFilter | None = None, ef: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """As :meth:`VectorIndex.search`, walking with ``ef`` (the index's own when None)."""
        k = min(k, len(self._live))
        if k <= 0:
            return np.empty(0, np.uint64), np.empty(0, np.float32)
        # ef must be at least k for hnswlib to return k results; widen it for deep pages.
        self._graph.set_ef(max(self.ef_search if ef is None else ef, k))
        try:
            labels, distances = self._graph.knn_query(vector.reshape(1, -1), k=k, filter=label_filter)
        except RuntimeError:
            # hnswlib raises when fewer than k elements pass the filter; the caller falls back
            # to exact search, which is what it wants in that case anyway.
            return np.empty(0, np.uint64), np.empty(0, np.float32)
        return labels[0].astype(np.uint64), (1.0 - distances[0]).astype(np.float32)

    def forget(self, labels: np.ndarray) -> None:
        """Mark labels deleted in the graph whether or not we track them (snapshot replay)."""
        for label in (int(x) for x in labels):
            # Not in the graph, or already marked: both mean "gone", which is the goal.
            with contextlib.suppress(RuntimeError):
                self._graph.mark_deleted(label)
            self._live.discard(label)

    def count(self) -> int:
        return len(self._live)

    def contains(self, label: int) -> bool:
        return int(label) in self._live

    def live_labels(self) -> set[int]:
        """The live label set (for saving beside the graph)."""
        return self._live

    def vectors(self, labels: np.ndarray) -> np.ndarray:
        if len(labels) == 0:
            return np.empty((0, self.dim), np.float32)
        return np.asarray(self._graph.get_items(labels.tolist()), dtype=np.float32)

    def capacity(self) -> int:
        """Allocated slots (deleted ones included)."""
        return self._graph.get_max_elements()

    def save(self, path: Path) -> None:
        self._graph.save_index(str(path))

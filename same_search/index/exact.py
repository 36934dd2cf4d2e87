"""Exact (brute-force) backend: one dense matrix and a matrix-vector product.

For small libraries this is both faster than a graph walk and exactly right, so paging and
tag filters never miss an item. Rows are kept dense: a delete moves the last row into the hole.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from same_search.index.base import LabelFilter, VectorIndex


class ExactIndex(VectorIndex):
    """A growable (n x dim) matrix with a label -> row map."""

    def __init__(self, dim: int, capacity: int = 64) -> None:
        self.dim = dim
        self._matrix = np.empty((max(capacity, 1), dim), np.float32)
        self._labels = np.empty(max(capacity, 1), np.uint64)
        self._row: dict[int, int] = {}

    def add(self, labels: np.ndarray, vectors: np.ndarray) -> None:
        for label, vector in zip(labels.tolist(), vectors, strict=True):
            row = self._row.get(label)
            if row is None:
                row = len(self._row)
                self._grow(row + 1)
                self._row[label] = row
                self._labels[row] = label
            self._matrix[row] = vector

    def _grow(self, needed: int) -> None:
        if needed <= len(self._labels):
            return
        size = max(needed, 2 * len(self._labels))
        matrix = np.empty((size, self.dim), np.float32)
        matrix[: len(self._row)] = self._matrix[: len(self._row)]
        labels = np.empty(size, np.uint64)
        labels[: len(self._row)] = self._labels[: len(self._row)]
        self._matrix, self._labels = matrix, labels

    def delete(self, labels: np.ndarray) -> None:
        for label in labels.tolist():
            row = self._row.pop(label, None)
            if row is None:
                continue
            last = len(self._row)
            if row != last:
                moved = int(self._labels[last])
                self._matrix[row] = self._matrix[last]
                self._labels[row] = moved
                self._row[moved] = row

    def search(
        self, vector: np.ndarray, k: int, label_filter: LabelFilter | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        n = len(self._row)
        scores = self._matrix[:n] @ vector.astype(np.float32).ravel()
        labels = self._labels[:n]
        if label_filter is not None:
            keep = np.fromiter((label_filter(int(x)) for x in labels), bool, count=n)
            scores, labels = scores[keep], labels[keep]
        return top_k(labels, scores, k)

    def count(self) -> int:
        return len(self._row)

    def contains(self, label: int) -> bool:
        return int(label) in self._row

    def vectors(self, labels: np.ndarray) -> np.ndarray:
        rows = [self._row[int(x)] for x in labels]
        return self._matrix[rows]

    def save(self, path: Path) -> None:
        n = len(self._row)
        np.savez(path, labels=self._labels[:n], vectors=self._matrix[:n])


def top_k(labels: np.ndarray, scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` best (labels, scores), best first; ties broken by label for stable paging."""
    k = min(k, len(scores))
    if k <= 0:
        return np.empty(0, np.uint64), np.empty(0, np.float32)
    if k < len(scores):
        part = np.argpartition(-scores, k - 1)[:k]
        labels, scores = labels[part], scores[part]
    order = np.lexsort((labels, -scores))
    return labels[order], scores[order].astype(np.float32)

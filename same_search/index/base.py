"""The contract every vector index backend keeps.

Vectors are L2-normalised float32 rows; scores are inner products (= cosine similarity).
Labels are unsigned 64-bit integers (a ContSign's ``label``). Backends are not thread-safe by
themselves: :class:`same_search.index.library_index.LibraryIndex` serialises structural changes.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path

import numpy as np

#: A predicate on labels, used for tag filters.
LabelFilter = Callable[[int], bool]


class VectorIndex(ABC):
    """Add, delete and search labelled vectors; save and load to one file."""

    dim: int

    @abstractmethod
    def add(self, labels: np.ndarray, vectors: np.ndarray) -> None:
        """Insert (or replace) ``vectors`` (n x dim) under ``labels`` (n,)."""

    @abstractmethod
    def delete(self, labels: np.ndarray) -> None:
        """Remove ``labels``; labels not present are ignored."""

    @abstractmethod
    def search(
        self, vector: np.ndarray, k: int, label_filter: LabelFilter | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Up to ``k`` (labels, scores) best first, only labels accepted by ``label_filter``."""

    @abstractmethod
    def count(self) -> int:
        """Live (not deleted) vectors."""

    @abstractmethod
    def contains(self, label: int) -> bool:
        """Whether ``label`` is live."""

    @abstractmethod
    def vectors(self, labels: np.ndarray) -> np.ndarray:
        """The stored vectors of live ``labels`` (n x dim)."""

    @abstractmethod
    def save(self, path: Path) -> None:
        """Write the whole index to ``path`` (the caller makes it atomic)."""

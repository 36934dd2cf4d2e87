"""The index of a library that ranks in its learned space: a full index of the joined vectors.

Callers go on handing it native vectors (adds, replays, rebuilds, queries, an expanded query);
it maps them into the library's space (:mod:`same_search.index.space`) on the way in, so every
score it returns is the space's and every page is a prefix of one ranking in that space. A
vector that already has the space's dimension (the recall measurement's queries, read back from
this index) is taken as it is.

No snapshot is written: a restart builds it again from the database, mapping the stored native
vectors (the stored projection is the same, so the ranking is too). Native vectors are read from
SQLite where they are needed (a search by contsign), as for a reduced index.
"""

from __future__ import annotations

from concurrent.futures import Executor
from pathlib import Path

import numpy as np

from same_search.config import IndexConfig
from same_search.index.library_index import FullIndex, LibraryIndex, PendingSnapshot
from same_search.index.paging import SearchDepth
from same_search.index.space import LearnedSpace


class SpaceIndex(LibraryIndex):
    """A :class:`FullIndex` of a learned space's vectors, fed native ones."""

    kind = "learned"

    def __init__(self, space: LearnedSpace, inner: FullIndex, cfg: IndexConfig, executor: Executor) -> None:
        super().__init__(cfg, inner.seq, executor)
        self.space = space
        self.inner = inner
        self.rows = inner.rows
        self.tags = inner.tags

    @classmethod
    def create(cls, space: LearnedSpace, cfg: IndexConfig, executor: Executor, capacity: int) -> SpaceIndex:
        """An empty index of ``space``."""
        inner = LibraryIndex.empty(space.dim, cfg, executor, capacity=capacity)
        return cls(space, inner, cfg, executor)

    @property
    def projection(self) -> LearnedSpace:
        """What a recall measurement records it was measured on (its ``fingerprint``): a refit
        is another space, measured again."""
        return self.space

    def _mapped(self, vectors: np.ndarray) -> np.ndarray:
        x = np.asarray(vectors, np.float32)
        if x.shape[-1] == self.space.native_dim:
            return self.space.apply(x)
        return x.reshape(-1, self.space.dim)

    # The inner index keeps the depth and the tuning state: a recall measurement tunes it.
    @property  # type: ignore[override]
    def depth(self) -> SearchDepth:
        return self.inner.depth

    @depth.setter
    def depth(self, value: SearchDepth) -> None:
        if hasattr(self, "inner"):
            self.inner.depth = value

    @property
    def seq(self) -> int:  # type: ignore[override]
        return self.inner.seq if hasattr(self, "inner") else self._seq

    @seq.setter
    def seq(self, value: int) -> None:
        self._seq = value
        if hasattr(self, "inner"):
            self.inner.seq = value

    @property
    def exact(self):
        return self.inner.exact

    def capacity(self) -> int:
        return self.inner.capacity()

    @property
    def strategy(self) -> str:
        """The inner index's (exact or hnsw): the space changes what is compared, not how."""
        return self.inner.strategy

    def add_now(
        self, keys: np.ndarray, vectors: np.ndarray, seq: int, tags: np.ndarray | None = None
    ) -> None:
        self.inner.add_now(keys, self._mapped(vectors), seq, tags)

    def delete_now(self, keys: list[int], seq: int) -> None:
        self.inner.delete_now(keys, seq)

    def capture(self, directory: Path, lib_id: int, fingerprint: str) -> PendingSnapshot:
        """Nothing to write (rebuilt from the database at start); counts as saved."""
        return PendingSnapshot(self.seq, self.saved_at, lambda: None)

    def vectors_now(self, keys: list[int]) -> np.ndarray:
        """The space's vectors of live keys (native ones are in SQLite)."""
        return self.inner.vectors_now(keys)

    def _search(
        self,
        vector: np.ndarray,
        k: int,
        candidates: list[int] | None,
        tags: tuple[int, int] | None = None,
        match_all: bool = False,
        depth: SearchDepth | None = None,
    ) -> list[tuple[int, float]]:
        return self.inner._search(self._mapped(vector)[0], k, candidates, tags, match_all, depth)

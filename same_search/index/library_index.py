"""One library's index: what both kinds share, and the full-dimension kind for small libraries.

Two kinds keep one contract (:class:`LibraryIndex`): :class:`FullIndex` here (an HNSW graph of
the native vectors, plus an exact matrix while the library is small) and
:class:`~same_search.index.reduced.ReducedIndex` for large libraries (a graph of PCA-reduced
vectors re-ranked with the native ones from disk). Callers pass native vectors, storage keys and
tags; each kind keeps what it needs. Both keep every item's tags in a :class:`TagTable` over a
compact :class:`RowMap`, so a tag filter never reads the database.

Searches of the full kind pick the strategy that cannot silently miss a match: the exact matrix for small
libraries and for tag filters that leave few candidates, the graph otherwise (walked in the
fixed depth tiers of index/paging.py, ``ef_search`` first, so every page is a prefix of one
ranking), and an exact scan of the candidates when the graph comes back short.

Per-vector work runs in one shared index thread, so hnswlib never sees concurrent writers and
the event loop never computes distances. Whole-graph work (save) runs elsewhere under the
library's write lock, which keeps writers out while readers go on.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from same_search.config import IndexConfig
from same_search.index import graph_files
from same_search.index.exact import ExactIndex
from same_search.index.hnsw import HnswIndex
from same_search.index.memory_image import GraphImage
from same_search.index.paging import SearchDepth, stable_top
from same_search.index.rows import RowMap
from same_search.index.tags import TagTable

_U64 = 1 << 64


def key_to_label(key: int) -> int:
    """Storage key (signed int64) -> hnswlib label (uint64)."""
    return key % _U64


def label_to_key(label: int) -> int:
    """hnswlib label (uint64) -> storage key (signed int64)."""
    return label - _U64 if label >= 1 << 63 else label


@dataclass(frozen=True)
class PendingSnapshot:
    """A snapshot captured with the library's writers kept out, written after they are let in:
    ``write`` puts it on disk (atomically; a failure leaves the previous snapshot), after which
    the index counts as saved up to ``seq``."""

    seq: int
    saved_at: float | None
    write: Callable[[], None]


def capture_graph(save: Callable[[str], None], tmp: Path) -> Callable[[], None]:
    """Capture a graph now through its ``save(path)``: into memory (index/memory_image.py), or
    where that fails straight to ``tmp``. The returned callable puts it at ``tmp``."""
    image = GraphImage.of(save)
    if image is not None:
        return partial(image.write_to, tmp)
    try:
        save(str(tmp))
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return lambda: None


class LibraryIndex:
    """The searchable vectors of one library: what both kinds (full, reduced) share.

    Callers hand it native vectors and storage keys; each kind keeps what it needs. The
    synchronous methods (``add_now``, ``delete_now``, ``save_now``) run with the library's write
    lock held; the async ones run them in the shared index thread.
    """

    kind = "full"

    def __init__(self, cfg: IndexConfig, seq: int, executor: Executor) -> None:
        self.cfg = cfg
        self.seq = seq
        self.saved_seq = -1
        self.saved_at: float | None = None
        self._executor = executor
        self.rows = RowMap()
        self.tags = TagTable(self.rows)
        #: How deep searches walk: ``[index]``'s settings until a recall measurement tunes them.
        self.depth = SearchDepth(cfg.ef_search, cfg.ef_search)
        #: Live items when :attr:`depth` was measured (None: not measured on this index yet).
        self.measured_items: int | None = None

    @classmethod
    def empty(cls, dim: int, cfg: IndexConfig, executor: Executor, capacity: int | None = None) -> FullIndex:
        """A new, empty full-dimension index (small libraries)."""
        graph = HnswIndex(dim, cfg.m, cfg.ef_construction, cfg.ef_search, capacity or cfg.initial_capacity)
        return FullIndex(graph, cfg, 0, executor)

    def count(self) -> int:
        """Live vectors."""
        return len(self.rows)

    def capacity(self) -> int:
        """Allocated graph slots."""
        raise NotImplementedError

    def contains(self, key: int) -> bool:
        """Whether ``key`` is live."""
        return bool(self.rows.rows_of([key])[0] >= 0)

    @property
    def dirty(self) -> bool:
        """Whether writes happened since the last save."""
        return self.seq != self.saved_seq

    @property
    def strategy(self) -> str:
        """How searches run now (shown on 8103): exact, hnsw or reduced."""
        raise NotImplementedError

    def _header(self, fingerprint: str, dim: int, **parts: object) -> graph_files.SnapshotHeader:
        """The snapshot header of this index as it is now (both kinds; ``parts`` are a reduced
        index's extra fields). The graph's sha256 is filled in when the file is committed."""
        return graph_files.SnapshotHeader(
            format_version=graph_files.FORMAT_VERSION,
            fingerprint=fingerprint,
            dim=dim,
            count=self.count(),
            seq=self.seq,
            sha256="",
            saved_at=time.time(),
            **parts,
        )

    def set_tags(self, keys: np.ndarray | list[int], tags: np.ndarray) -> None:
        """Replace the tags of live ``keys`` (an update); absent keys are ignored."""
        rows = self.rows.rows_of(keys)
        present = rows >= 0
        self.tags.set(rows[present], np.asarray(tags, np.uint32).reshape(-1, 2)[present])

    def add_now(
        self, keys: np.ndarray, vectors: np.ndarray, seq: int, tags: np.ndarray | None = None
    ) -> None:
        """Insert native vectors synchronously (start-up replay, rebuilds); ``tags`` is (n, 2) uint32."""
        raise NotImplementedError

    def delete_now(self, keys: list[int], seq: int) -> None:
        """Remove keys synchronously."""
        raise NotImplementedError

    def capture(self, directory: Path, lib_id: int, fingerprint: str) -> PendingSnapshot:
        """Everything a snapshot holds, copied as it is now (the caller keeps writers out until
        this returns: the backend's write lock, or an index nobody else holds yet); writing it
        to disk is the pending snapshot's part, with writers back at work."""
        raise NotImplementedError

    def save_now(self, directory: Path, lib_id: int, fingerprint: str) -> None:
        """Capture and write a snapshot at once (writers kept out for the whole save)."""
        pending = self.capture(directory, lib_id, fingerprint)
        pending.write()
        self.mark_saved(pending)

    def mark_saved(self, pending: PendingSnapshot) -> None:
        """Record a written snapshot: writes after the one it captured keep the index dirty."""
        self.saved_seq, self.saved_at = pending.seq, pending.saved_at

    def vectors_now(self, keys: list[int]) -> np.ndarray:
        """Stored vectors of live keys."""
        raise NotImplementedError

    def row_vectors(self, rows: np.ndarray) -> np.ndarray:
        """Native vectors of live rows of :attr:`rows` (a recall measurement's exact scan)."""
        return self.vectors_now(self.rows.keys[np.asarray(rows, np.int64)].tolist())

    def _search(
        self,
        vector: np.ndarray,
        k: int,
        candidates: list[int] | None,
        tags: tuple[int, int] | None = None,
        match_all: bool = False,
        depth: SearchDepth | None = None,
    ) -> list[tuple[int, float]]:
        """The search itself, in the calling thread; ``depth`` overrides :attr:`depth` (a recall
        measurement tries settings without serving them)."""
        raise NotImplementedError

    def _filter_keys(
        self, candidates: list[int] | None, tags: tuple[int, int] | None, match_all: bool
    ) -> np.ndarray | None:
        """Row mask of the items a search may return (None: all), from keys or a tag filter."""
        if tags is not None and any(tags):
            return self.tags.mask(tags, match_all)
        if candidates is None:
            return None
        mask = np.zeros(self.rows.used, bool)
        rows = self.rows.rows_of(candidates)
        mask[rows[rows >= 0]] = True
        return mask

    # ---- the index thread ------------------------------------------------------------------------

    async def add(self, key: int, vector: np.ndarray, seq: int, tags: np.ndarray | None = None) -> None:
        """Insert one vector in the index thread."""
        await self.add_batch(
            np.array([key]), vector.reshape(1, -1), seq, None if tags is None else np.reshape(tags, (1, 2))
        )

    async def add_batch(
        self, keys: np.ndarray, vectors: np.ndarray, seq: int, tags: np.ndarray | None = None
    ) -> None:
        """Insert many vectors in the index thread, as one graph insert (bulk imports)."""
        await asyncio.get_running_loop().run_in_executor(
            self._executor, self.add_now, keys, vectors, seq, tags
        )

    async def delete(self, keys: list[int], seq: int) -> None:
        """Remove keys in the index thread."""
        await asyncio.get_running_loop().run_in_executor(self._executor, self.delete_now, keys, seq)

    async def search(
        self,
        vector: np.ndarray,
        k: int,
        candidates: list[int] | None = None,
        tags: tuple[int, int] | None = None,
        match_all: bool = False,
        stored: bool = False,
    ) -> list[tuple[int, float]]:
        """The ``k`` best (key, score), restricted to ``candidates`` keys or to the items whose
        tags match (all of, or any of, the non-zero ``tags``) when given. ``stored``: the vector
        is a stored item's (a search by contsign), searched at the tuned depth; any other walks
        :meth:`depth_for` deeper."""
        depth = self.depth_for(stored)
        return await asyncio.get_running_loop().run_in_executor(
            self._executor, self._search, vector, k, candidates, tags, match_all, depth
        )

    def depth_for(self, stored: bool) -> SearchDepth:
        """The depth a search of a stored item's vector (``stored``) or of any other walks.

        Here the tuned depth for both: a full-dimension graph serves the libraries below ``[index]
        reduce_min_items``, where its walk is near-exhaustive for new photos too (19,000
        descriptor-like items at ef 512: recall@10 1.000 for held-out queries, and four times
        deeper cost 3.4 ms more for nothing). A reduced index walks deeper for new vectors."""
        return self.depth

    async def vectors_of(self, keys: list[int]) -> np.ndarray:
        """Stored vectors of live keys."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, self.vectors_now, keys)


class FullIndex(LibraryIndex):
    """A full-dimension HNSW graph, plus an exact matrix while the library is small."""

    def __init__(self, graph: HnswIndex, cfg: IndexConfig, seq: int, executor: Executor) -> None:
        super().__init__(cfg, seq, executor)
        self.graph = graph
        live = np.fromiter(graph.live_labels(), np.uint64, count=graph.count())
        self.rows.add(live.astype(np.int64))  # uint64 label -> int64 key: same bits
        self.exact: ExactIndex | None = None
        self._sync_exact()

    def capacity(self) -> int:
        """Allocated graph slots."""
        return self.graph.capacity()

    @property
    def strategy(self) -> str:
        """exact (a matrix scan) or hnsw (the full-dimension graph)."""
        return "exact" if self.exact is not None else "hnsw"

    def _sync_exact(self) -> None:
        """Keep the exact matrix while small; drop it above the threshold, rebuild well below it."""
        n = self.graph.count()
        if self.exact is not None and n > self.cfg.exact_threshold:
            self.exact = None
        elif self.exact is None and n <= self.cfg.exact_threshold // 2:
            labels = np.fromiter(self.graph.live_labels(), np.uint64, count=n)
            self.exact = ExactIndex(self.graph.dim, max(n, 64))
            self.exact.add(labels, self.graph.vectors(labels))

    # ---- writes (caller holds the library's write lock) --------------------------------------

    def add_now(
        self, keys: np.ndarray, vectors: np.ndarray, seq: int, tags: np.ndarray | None = None
    ) -> None:
        labels = np.array([key_to_label(int(k)) for k in keys], dtype=np.uint64)
        self.graph.add(labels, vectors)
        rows, _ = self.rows.add(np.asarray(keys, np.int64))
        self.tags.set(rows, tags)
        if self.exact is not None:
            self.exact.add(labels, vectors)
        self.seq = max(self.seq, seq)
        self._sync_exact()

    def delete_now(self, keys: list[int], seq: int) -> None:
        labels = np.array([key_to_label(k) for k in keys], dtype=np.uint64)
        self.graph.delete(labels)
        self.rows.remove(np.asarray(keys, np.int64))
        if self.exact is not None:
            self.exact.delete(labels)
        self.seq = max(self.seq, seq)
        self._sync_exact()

    def _search(
        self,
        vector: np.ndarray,
        k: int,
        candidates: list[int] | None,
        tags: tuple[int, int] | None = None,
        match_all: bool = False,
        depth: SearchDepth | None = None,
    ) -> list[tuple[int, float]]:
        vector = vector.astype(np.float32).ravel()
        depth = self.depth if depth is None else depth
        if tags is not None and any(tags):
            candidates = self.tags.select(tags, match_all).tolist()
        if candidates is None:
            labels, scores = self._search_all(vector, k, depth)
        else:
            labels, scores = self._search_among(vector, k, candidates, depth)
        return [(label_to_key(int(label)), float(score)) for label, score in zip(labels, scores, strict=True)]

    def _search_all(self, vector: np.ndarray, k: int, depth: SearchDepth) -> tuple[np.ndarray, np.ndarray]:
        if self.exact is not None:
            return self.exact.search(vector, k)

        def tier(walk: int) -> tuple[np.ndarray, np.ndarray, bool]:
            labels, scores = (
                self.graph.search(vector, walk, None, depth.ef) if walk < self.graph.count() else ((), ())
            )
            if len(labels) < walk // 2 or walk >= self.graph.count():  # short, or all: exact
                every = np.fromiter(self.graph.live_labels(), np.uint64)
                return every, self.graph.vectors(every) @ vector, True
            return labels, scores, False

        return stable_top(k, depth.candidates, self.graph.count(), tier)

    def _search_among(
        self, vector: np.ndarray, k: int, candidates: list[int], depth: SearchDepth
    ) -> tuple[np.ndarray, np.ndarray]:
        labels = np.array([key_to_label(c) for c in candidates], dtype=np.uint64)
        labels = labels[[self.graph.contains(int(x)) for x in labels]] if len(labels) else labels
        source = self.exact if self.exact is not None else self.graph
        allowed = set(labels.tolist())

        def tier(walk: int) -> tuple[np.ndarray, np.ndarray, bool]:
            if len(labels) <= max(self.cfg.exact_threshold, 10 * walk) or self.exact is not None:
                return labels, source.vectors(labels) @ vector, True
            found, scores = self.graph.search(vector, walk, allowed.__contains__, depth.ef)
            if len(found) < walk // 2:
                return labels, self.graph.vectors(labels) @ vector, True
            return found, scores, False

        return stable_top(min(k, len(labels)), depth.candidates, len(labels), tier)

    def vectors_now(self, keys: list[int]) -> np.ndarray:
        return self.graph.vectors(np.array([key_to_label(k) for k in keys], dtype=np.uint64))

    # ---- persistence ---------------------------------------------------------------------------

    def capture(self, directory: Path, lib_id: int, fingerprint: str) -> PendingSnapshot:
        directory.mkdir(parents=True, exist_ok=True)
        tmp = directory / f"{lib_id}.hnsw.tmp"
        header = self._header(fingerprint, self.graph.dim)
        place_graph = capture_graph(self.graph.save, tmp)

        def write() -> None:
            try:
                place_graph()
                graph_files.commit_graph(tmp, directory, lib_id, header)
            except BaseException:
                tmp.unlink(missing_ok=True)  # a half-written file must not fill the disk further
                raise

        return PendingSnapshot(self.seq, header.saved_at, write)

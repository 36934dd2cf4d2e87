"""A large library's index: a graph of reduced vectors, re-ranked with the native ones from disk.

The graph (hnswlib) holds each item's PCA-reduced vector under its *row* (rows.py), not its
key: rows are dense, so "is this row allowed" is one byte of a mask and row -> key is one array
read. A search takes ``C`` candidates from the graph (``C`` = rerank_candidates, doubled in
tiers for deeper pages: index/paging.py keeps every page a prefix of one ranking), ef
``reduced_ef_search`` widened to at least ``C``, reads their native vectors from the float32
file and returns the best half by native cosine: every score is the native one and the order
within a page is exact. The reduction only has to keep the true neighbours among the candidates.

Tag filters pick a strategy by how many items match (``m`` of ``n``):
- few (``m`` <= ``C``): every match is re-ranked natively, which is exact;
- very broad (``m / n`` >= BROAD): an unfiltered search widened by ``n / m``, then the filter;
- up to SCAN_SHARE of the library (or SCAN_MIN items): a scan of the matches' *sketches* (the
  first SKETCH_DIM reduced coordinates as int8, kept in RAM: 64 bytes per item), whose best
  ``SCAN_WIDEN x C`` are re-ranked natively. hnswlib's filtered search calls a Python predicate
  per visited node and, with 1% of the nodes passing, visits most of the graph to fill ef (0.16 s
  median at 200k); a sketch scan of those matches takes about a millisecond;
- in between, or when the wide search comes back short: hnswlib's filtered search;
- whatever comes back short falls back to the sketch scan of every match.
A page is never short while more matches exist.

A library whose tuned depth walks more than ``screen.SCREEN_FROM`` candidates (catalogues of
tight clusters) keeps an int8 copy of its native vectors in RAM (index/screen.py): a walk's
candidates are screened with it and only the best of them read from disk and re-ranked. With
the screen it keeps every row's reduced vector as int8 (index/flat.py), so that a depth marked
``flat`` takes its candidates from a scan of them all, the filter a mask of the same pass, instead
of walking the graph: where the tuned depth is a large share of the library, that is cheaper.
"""

from __future__ import annotations

import math
from concurrent.futures import Executor
from dataclasses import replace
from pathlib import Path

import hnswlib
import numpy as np

from same_search.config import IndexConfig
from same_search.files import replace_durably, sha256_file
from same_search.index import graph_files
from same_search.index import screen as screening
from same_search.index.flat import FlatScan, quantise
from same_search.index.library_index import LibraryIndex, PendingSnapshot, capture_graph, label_to_key
from same_search.index.native_file import NativeFile
from same_search.index.paging import SearchDepth, stable_top
from same_search.index.projection import Projection
from same_search.index.rows import RowMap
from same_search.index.screen import Screen
from same_search.index.tags import TagTable

#: A filter matching at least this share of the library searches unfiltered, widened, then filters.
BROAD = 0.2
#: Filters matching at most this share of the library (or SCAN_MIN items) scan sketches.
SCAN_SHARE = 0.05
SCAN_MIN = 50_000
#: Leading reduced coordinates kept per item as int8 for scans (PCA orders them by variance).
SKETCH_DIM = 64
#: A sketch scan re-ranks this many times C candidates natively (the sketch is coarse). With C
#: 300, 600 rows: at 1M the 1% filter kept recall@10 0.998 with 600 and reached 1.000 with 900,
#: whose reads (rows no unfiltered search had brought into the page cache) put p99 past 20 ms.
SCAN_WIDEN = 2


class ReducedIndex(LibraryIndex):
    """Reduced graph + native re-ranking."""

    kind = "reduced"

    def __init__(
        self,
        projection: Projection,
        native: NativeFile,
        rows: RowMap,
        graph: hnswlib.Index,
        cfg: IndexConfig,
        seq: int,
        executor: Executor,
    ) -> None:
        super().__init__(cfg, seq, executor)
        self.projection = projection
        self.native = native
        self.rows = rows
        self.tags = TagTable(rows)
        self.graph = graph
        self.exact = None  # describe() and older callers: no exact matrix in a reduced index
        self.sketch = np.zeros((rows.capacity, min(SKETCH_DIM, projection.dim)), np.int8)
        self.depth = SearchDepth(cfg.reduced_ef_search, cfg.rerank_candidates)
        #: The int8 copy of the native vectors deep searches screen with (None: not kept), and
        #: whether it holds every live row yet (rows added meanwhile are coded as they come).
        self.screen: Screen | None = None
        self.screen_ready = False
        #: Every row's reduced vector as int8, kept (and filled) with the screen: flat depths scan it.
        self.flat: FlatScan | None = None

    @classmethod
    def create(
        cls,
        projection: Projection,
        native_path: Path,
        cfg: IndexConfig,
        executor: Executor,
        capacity: int,
    ) -> ReducedIndex:
        """A new, empty reduced index writing its native vectors to ``native_path``."""
        graph = hnswlib.Index(space="ip", dim=projection.dim)
        graph.init_index(max_elements=max(capacity, 16), M=cfg.m, ef_construction=cfg.ef_construction)
        graph.set_ef(cfg.reduced_ef_search)
        native = NativeFile(native_path, projection.native_dim)
        return cls(projection, native, RowMap(max(capacity, 16)), graph, cfg, 0, executor)

    @classmethod
    def load(
        cls,
        directory: Path,
        lib_id: int,
        header: graph_files.SnapshotHeader,
        projection: Projection,
        cfg: IndexConfig,
        executor: Executor,
    ) -> ReducedIndex:
        """The reduced index a verified header describes; :class:`SnapshotInvalid` if its parts
        (row map, native file, projection) do not match it."""
        if header.projection != projection.fingerprint:
            raise graph_files.SnapshotInvalid(
                f"snapshot built with projection {header.projection}, "
                f"the library's is {projection.fingerprint}"
            )
        rows_file = graph_files.rows_path(directory, lib_id)
        if not rows_file.exists() or sha256_file(rows_file) != header.rows_sha256:
            raise graph_files.SnapshotInvalid("row map missing or not the snapshot's")
        with np.load(rows_file) as saved:
            rows = RowMap.restore(saved["keys"], saved["live"])
            sketch = saved["sketch"]
        if rows.used != header.native_rows or len(rows) != header.count:
            raise graph_files.SnapshotInvalid("row map does not match the header")
        try:
            native = NativeFile(directory / header.native_file, projection.native_dim, header.native_rows)
        except (ValueError, OSError) as exc:
            raise graph_files.SnapshotInvalid(f"native vectors: {exc}") from exc
        graph = hnswlib.Index(space="ip", dim=projection.dim)
        graph_path, _ = graph_files.paths(directory, lib_id)
        graph.load_index(str(graph_path), max_elements=max(rows.capacity, 16))
        graph.set_ef(cfg.reduced_ef_search)
        index = cls(projection, native, rows, graph, cfg, header.seq, executor)
        if sketch.shape != (rows.used, index.sketch.shape[1]):
            raise graph_files.SnapshotInvalid(f"sketches of shape {sketch.shape}, expected {rows.used} rows")
        index.sketch[: rows.used] = sketch
        index.saved_seq, index.saved_at = header.seq, header.saved_at
        return index

    # ---- state -------------------------------------------------------------------------------------

    def capacity(self) -> int:
        """Allocated graph slots."""
        return int(self.graph.get_max_elements())

    @property
    def strategy(self) -> str:
        """Always ``reduced``."""
        return "reduced"

    # ---- writes (caller holds the write lock) --------------------------------------------------

    def add_now(
        self, keys: np.ndarray, vectors: np.ndarray, seq: int, tags: np.ndarray | None = None
    ) -> None:
        keys = np.asarray(keys, np.int64)
        vectors = np.asarray(vectors, np.float32).reshape(len(keys), -1)
        rows, _ = self.rows.add(keys)
        needed = self.rows.used
        if needed > self.graph.get_max_elements():
            self.graph.resize_index(max(needed, 2 * self.graph.get_max_elements()))
        self.native.write(rows, vectors)
        reduced = self.projection.apply(vectors)
        self.graph.add_items(reduced, rows.astype(np.uint64), num_threads=1 if len(rows) < 64 else -1)
        if len(self.sketch) < self.rows.capacity:
            grown = np.zeros((self.rows.capacity, self.sketch.shape[1]), np.int8)
            grown[: len(self.sketch)] = self.sketch
            self.sketch = grown
        self.sketch[rows] = quantise(reduced[:, : self.sketch.shape[1]])
        if self.screen is not None:
            self.screen.set(rows, vectors)
        if self.flat is not None:
            self.flat.set(rows, quantise(reduced))
        self.tags.set(rows, tags)
        self.seq = max(self.seq, seq)

    def delete_now(self, keys: list[int], seq: int) -> None:
        for row in self.rows.remove(np.asarray(keys, np.int64)).tolist():
            self.graph.mark_deleted(row)
        self.seq = max(self.seq, seq)

    # ---- the screen (index/screen.py) ---------------------------------------------------------------

    def begin_screen_now(self) -> np.ndarray:
        """Keep an int8 screen (and the flat scan's codes) from now on (rows added are coded as
        they come); returns the live rows still to code with :meth:`fill_screen_now`, then
        :meth:`screen_filled_now`."""
        if self.screen is None:
            self.screen = Screen(self.rows.capacity, self.projection.native_dim)
            self.flat = FlatScan(self.rows.capacity, self.projection.dim)
            self.screen_ready = False
        return np.empty(0, np.int64) if self.screen_ready else self.rows.live_rows()

    def fill_screen_now(self, rows: np.ndarray) -> None:
        """Code ``rows`` (those still live) from the native file."""
        if self.screen is None:
            return
        rows = np.asarray(rows, np.int64)
        rows = rows[self.rows.live[rows]]
        vectors = self.native.read(rows)
        self.screen.set(rows, vectors)
        if self.flat is not None:
            self.flat.set(rows, quantise(self.projection.apply(vectors)))

    def screen_filled_now(self) -> None:
        """Every live row is coded: deep searches screen from now on."""
        self.screen_ready = self.screen is not None

    def drop_screen_now(self) -> None:
        """Stop keeping the screen (a depth that does not screen was chosen)."""
        self.screen, self.flat, self.screen_ready = None, None, False

    def _screened(self, rows: np.ndarray, query: np.ndarray) -> np.ndarray:
        """The candidates worth a native re-rank: all of them up to ``SCREEN_FROM``, else (with a
        filled screen) the best :func:`kept` by int8 score."""
        if len(rows) <= screening.SCREEN_FROM or self.screen is None or not self.screen_ready:
            return rows
        return self.screen.best(rows, query, screening.kept(len(rows)))

    # ---- reads -------------------------------------------------------------------------------------

    def vectors_now(self, keys: list[int]) -> np.ndarray:
        """Native vectors of live keys; KeyError for one that is not live."""
        rows = self.rows.rows_of(keys)
        if (rows < 0).any():
            raise KeyError(int(np.asarray(keys)[rows < 0][0]))
        return self.native.read(rows)

    def row_vectors(self, rows: np.ndarray) -> np.ndarray:
        """Native vectors of live rows, from the native file."""
        return self.native.read(np.asarray(rows, np.int64))

    def depth_for(self, stored: bool) -> SearchDepth:
        """The tuned depth for a stored item's vector; ``[index] new_vector_depth`` times deeper
        for any other (:meth:`SearchDepth.for_new_vectors`: at 1M the tuned depth found 0.950 of
        held-out photos' true ten, four times deeper 0.985)."""
        return self.depth if stored else self.depth.for_new_vectors(self.cfg.new_vector_depth)

    def _search(
        self,
        vector: np.ndarray,
        k: int,
        candidates: list[int] | None,
        tags: tuple[int, int] | None = None,
        match_all: bool = False,
        depth: SearchDepth | None = None,
    ) -> list[tuple[int, float]]:
        query = np.asarray(vector, np.float32).ravel()
        depth = self.depth if depth is None else depth
        reduced = self.projection.apply(query)[0]
        mask = self._filter_keys(candidates, tags, match_all)
        matching = len(self.rows) if mask is None else int(mask.sum())
        k = min(k, matching)
        if k <= 0:
            return []

        flat = depth.flat and self.flat is not None and self.screen_ready

        def tier(walk: int) -> tuple[np.ndarray, np.ndarray, bool]:
            complete = walk >= matching
            if flat and not complete:
                allowed = self.rows.live[: self.rows.used] if mask is None else mask
                rows = self.flat.best(reduced, allowed, walk)
            elif mask is None:
                rows = self.rows.live_rows() if complete else self._graph_rows(reduced, walk, None, depth.ef)
                if len(rows) < walk // 2:  # the graph came back short
                    rows = self._scan_rows(reduced, self.rows.live_rows(), walk * SCAN_WIDEN)
            elif complete:
                rows = np.flatnonzero(mask)  # few: re-rank them all, exactly
            else:
                rows = self._filtered_rows(reduced, walk, mask, matching, depth.ef)
            rows = np.asarray(rows, np.int64)
            if not complete:  # a complete tier must return every match: never screened
                rows = self._screened(rows, query)
            return self.rows.keys[rows].astype(np.uint64), self.native.read(rows) @ query, complete

        labels, scores = stable_top(k, depth.candidates, matching, tier)
        return [(label_to_key(int(label)), float(score)) for label, score in zip(labels, scores, strict=True)]

    def _filtered_rows(
        self, reduced: np.ndarray, depth: int, mask: np.ndarray, matching: int, ef: int
    ) -> np.ndarray:
        share = matching / max(len(self.rows), 1)
        strategy = filter_strategy(matching, len(self.rows))
        if strategy == "scan":
            return self._scan_rows(reduced, np.flatnonzero(mask), depth * SCAN_WIDEN)
        if strategy == "broad":
            wide = min(len(self.rows), math.ceil(depth / share * 1.5))
            found = self._graph_rows(reduced, wide, None, ef)
            found = found[mask[found]][:depth]
            if len(found) >= depth:
                return found
        allowed = mask.tobytes()
        found = self._graph_rows(reduced, depth, lambda row: allowed[row] == 1, ef)
        if len(found) >= depth:
            return found
        return self._scan_rows(reduced, np.flatnonzero(mask), depth * SCAN_WIDEN)

    def _graph_rows(self, reduced: np.ndarray, depth: int, allowed: object, ef: int) -> np.ndarray:
        """Up to ``depth`` rows from the graph, best first (fewer if the graph has fewer), walked
        with ``ef`` widened to ``depth``."""
        depth = min(depth, len(self.rows))
        if depth <= 0:
            return np.empty(0, np.int64)
        self.graph.set_ef(max(ef, depth))
        try:
            labels, _ = self.graph.knn_query(reduced.reshape(1, -1), k=depth, filter=allowed, num_threads=1)
        except RuntimeError:  # fewer than depth reachable: the caller widens or scans
            return np.empty(0, np.int64)
        return labels[0].astype(np.int64)

    def _scan_rows(self, reduced: np.ndarray, rows: np.ndarray, depth: int) -> np.ndarray:
        """The best ``depth`` of ``rows`` by sketch score (the re-rank then orders them exactly)."""
        if len(rows) <= depth:
            return rows
        scores = self.sketch[rows].astype(np.float32) @ reduced[: self.sketch.shape[1]]
        return rows[np.argpartition(-scores, depth - 1)[:depth]]

    # ---- persistence -------------------------------------------------------------------------------

    def capture(self, directory: Path, lib_id: int, fingerprint: str) -> PendingSnapshot:
        """Row map, sketches and graph copied now; written later as native file fsynced, then row
        map, graph and header, each atomically (header last)."""
        directory.mkdir(parents=True, exist_ok=True)
        keys, live = self.rows.state()
        sketch = self.sketch[: self.rows.used].copy()
        rows_tmp = directory / f"{lib_id}.rows.tmp.npz"
        graph_tmp = directory / f"{lib_id}.hnsw.tmp"
        place_graph = capture_graph(self.graph.save_index, graph_tmp)
        header = self._header(
            fingerprint,
            self.projection.native_dim,
            projection=self.projection.fingerprint,
            native_file=self.native.path.name,
            native_rows=self.rows.used,
            rows_sha256="",
        )
        native = self.native

        def write() -> None:
            try:
                native.sync()
                np.savez(rows_tmp, keys=keys, live=live, sketch=sketch)
                rows_sha = sha256_file(rows_tmp)
                replace_durably(rows_tmp, graph_files.rows_path(directory, lib_id))
                place_graph()
                graph_files.commit_graph(graph_tmp, directory, lib_id, replace(header, rows_sha256=rows_sha))
            except BaseException:
                rows_tmp.unlink(missing_ok=True)
                graph_tmp.unlink(missing_ok=True)
                raise
            # Other native files are the backend's to remove: one may still serve (a rebuild
            # saves its fresh index before the swap, and the serving index may be saved over it).

        return PendingSnapshot(self.seq, header.saved_at, write)


def filter_strategy(matching: int, items: int) -> str:
    """How a filter matching ``matching`` of ``items`` live items is searched (module docstring).

    ``broad`` is decided first: a widened graph search costs about one ef-``3 x C`` walk and C
    native reads whatever the library's size, while a scan of half of a 100k library's sketches
    (50,000 rows) and its ``SCAN_WIDEN x C`` native reads cost several times that and find fewer
    of the true neighbours (the sketch is coarser than the graph's reduced vectors).
    """
    share = matching / max(items, 1)
    if share >= BROAD:
        return "broad"
    if share <= SCAN_SHARE or matching <= SCAN_MIN:
        return "scan"
    return "filtered"

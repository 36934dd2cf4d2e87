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
- up to SCAN_SHARE of the library (or SCAN_MIN items): a scan of the matches' int8 reduced
  vectors (index/flat.py, kept in RAM for every row: ``reduce_dim`` bytes an item), whose best
  ``SCAN_WIDEN x C`` are re-ranked natively. hnswlib's filtered search calls a Python predicate
  per visited node and, with 1% of the nodes passing, visits most of the graph to fill ef (0.16 s
  median at 200k); a scan of those matches takes about a millisecond;
- in between, or when the wide search comes back short: hnswlib's filtered search;
- whatever comes back short falls back to the scan of every match.
A page is never short while more matches exist.

A search of a new vector (by image) whose depth has ``scan`` also joins to the walk's candidates
the best ``scan`` of a scan of every allowed row's sign bits (index/signs.py, 32 bytes an item),
ranked by their int8 reduced vectors: a walk toward a point that is no node of the graph ends
among near-ties and can miss an edited photo's original, which the scan does not.

A library whose tuned depth walks more than ``screen.SCREEN_FROM`` candidates (catalogues of
tight clusters) keeps an int8 copy of its native vectors in RAM (index/screen.py): a walk's
candidates are screened with it and only the best of them read from disk and re-ranked. With
the screen a depth marked ``flat`` takes its candidates from a scan of every row's int8 reduced
vector, the filter a mask of the same pass, instead of walking the graph: where the tuned depth
is a large share of the library, that is cheaper.
"""

from __future__ import annotations

import logging
import math
import time
from concurrent.futures import Executor
from dataclasses import replace
from pathlib import Path

import hnswlib
import numpy as np

from same_search.config import IndexConfig
from same_search.files import replace_durably, sha256_file
from same_search.index import graph_files
from same_search.index import screen as screening
from same_search.index.flat import FlatScan, quantise, query_codes
from same_search.index.library_index import LibraryIndex, PendingSnapshot, capture_graph, label_to_key
from same_search.index.native_file import NativeFile
from same_search.index.paging import SearchDepth, stable_top
from same_search.index.projection import Projection
from same_search.index.rows import RowMap
from same_search.index.screen import Screen
from same_search.index.signs import SignCodes
from same_search.index.tags import TagTable

log = logging.getLogger(__name__)

#: A filter matching at least this share of the library searches unfiltered, widened, then filters.
BROAD = 0.2
#: Filters matching at most this share of the library (or SCAN_MIN items) scan their int8 codes.
SCAN_SHARE = 0.05
SCAN_MIN = 50_000
#: A scan of the matches re-ranks this many times C candidates natively. With C 300, 600 rows: at
#: 1M the 1% filter kept recall@10 0.998 with 600 (scanning 64-d sketches) and reached 1.000 with
#: 900, whose reads (rows no unfiltered search had brought into the page cache) put p99 past 20 ms.
SCAN_WIDEN = 2
#: A scan of more matching rows than this lets faiss scan the whole code table with the matches as
#: a bitmap (index/int8_rows.py) instead of gathering their codes first.
GATHER_MAX = 100_000
#: A sign-bit scan keeps this many times ``scan`` rows by Hamming distance, then the best ``scan``
#: by int8 reduced score: at 1M, 3,200 kept for 200 found every needle exact search finds first
#: (1,600: one in 300 fewer).
SIGNS_WIDEN = 16
#: Rows coded at a time from the native file (a snapshot without int8 codes): 100 MB of 1280-d.
CODE_CHUNK = 20_000


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
        #: Every row's reduced vector as int8 (scans of filters, flat depths, ranking sign-scan
        #: candidates), and its sign bits (index/signs.py).
        self.codes = FlatScan(rows.used, projection.dim)  # grown as rows are written
        self.signs = SignCodes(rows.used, projection.dim)
        self.depth = SearchDepth(cfg.reduced_ef_search, cfg.rerank_candidates)
        #: The int8 copy of the native vectors deep searches screen with (None: not kept), and
        #: whether it holds every live row yet (rows added meanwhile are coded as they come).
        self.screen: Screen | None = None
        self.screen_ready = False

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
            codes = saved["codes"] if "codes" in saved.files else None  # older snapshots: sketches
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
        if codes is None:
            index._code_from_native()
        elif codes.shape != (rows.used, projection.dim):
            raise graph_files.SnapshotInvalid(f"int8 codes of shape {codes.shape}, expected {rows.used} rows")
        else:
            index._set_codes(np.arange(rows.used), codes)
        index.saved_seq, index.saved_at = header.seq, header.saved_at
        return index

    def _code_from_native(self) -> None:
        """Code every used row from the native file (a snapshot written before the row map kept
        the int8 codes): one pass over the file, a chunk at a time."""
        began = time.perf_counter()
        for start in range(0, self.rows.used, CODE_CHUNK):
            rows = np.arange(start, min(start + CODE_CHUNK, self.rows.used))
            self._set_codes(rows, quantise(self.projection.apply(self.native.read(rows))))
        log.info(
            "coded %d rows from %s in %.1f s (a snapshot from before the row map kept int8 codes)",
            self.rows.used,
            self.native.path.name,
            time.perf_counter() - began,
        )

    def _set_codes(self, rows: np.ndarray, codes: np.ndarray) -> None:
        """Keep ``codes`` (int8 reduced vectors) and their sign bits at ``rows``."""
        self.codes.set(rows, codes)
        self.signs.set(rows, codes)

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
        self._set_codes(rows, quantise(reduced))
        if self.screen is not None:
            self.screen.set(rows, vectors)
        self.tags.set(rows, tags)
        self.seq = max(self.seq, seq)

    def delete_now(self, keys: list[int], seq: int) -> None:
        for row in self.rows.remove(np.asarray(keys, np.int64)).tolist():
            self.graph.mark_deleted(row)
        self.seq = max(self.seq, seq)

    # ---- the screen (index/screen.py) ---------------------------------------------------------------

    def begin_screen_now(self) -> np.ndarray:
        """Keep an int8 screen from now on (rows added are coded as they come); returns the live
        rows still to code with :meth:`fill_screen_now`, then :meth:`screen_filled_now`."""
        if self.screen is None:
            self.screen = Screen(self.rows.capacity, self.projection.native_dim)
            self.screen_ready = False
        return np.empty(0, np.int64) if self.screen_ready else self.rows.live_rows()

    def fill_screen_now(self, rows: np.ndarray) -> None:
        """Code ``rows`` (those still live) from the native file."""
        if self.screen is None:
            return
        rows = np.asarray(rows, np.int64)
        rows = rows[self.rows.live[rows]]
        self.screen.set(rows, self.native.read(rows))

    def screen_filled_now(self) -> None:
        """Every live row is coded: deep searches screen from now on."""
        self.screen_ready = self.screen is not None

    def drop_screen_now(self) -> None:
        """Stop keeping the screen (a depth that does not screen was chosen)."""
        self.screen, self.screen_ready = None, False

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
        """The tuned depth for a stored item's vector; for any other ``[index] new_vector_depth``
        times deeper (:meth:`SearchDepth.for_new_vectors`: at 1M the tuned depth found 0.950 of
        held-out photos' true ten, four times deeper 0.985), or, with ``[index] new_vector_scan``,
        half as deep again joined by that many sign-scan candidates (index/signs.py)."""
        if stored:
            return self.depth
        scan = self.cfg.new_vector_scan
        factor = max(1, self.cfg.new_vector_depth // 2) if scan else self.cfg.new_vector_depth
        return self.depth.for_new_vectors(factor, scan)

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

        flat = depth.flat and self.screen_ready
        allowed = self.rows.live[: self.rows.used] if mask is None else mask
        # Scanned once per search: every tier that walks joins the same sign-scan candidates (a
        # narrow filter scans its matches' codes already).
        walks = not flat and (mask is None or filter_strategy(matching, len(self.rows)) != "scan")
        scanned = self._sign_scan(reduced, allowed, depth.scan, matching) if depth.scan and walks else None

        def tier(walk: int) -> tuple[np.ndarray, np.ndarray, bool]:
            complete = walk >= matching
            if flat and not complete:
                rows = self.codes.best(reduced, allowed, walk)
            elif mask is None:
                rows = self.rows.live_rows() if complete else self._graph_rows(reduced, walk, None, depth.ef)
                if len(rows) < walk // 2:  # the graph came back short
                    rows = self._scan_rows(reduced, allowed, walk * SCAN_WIDEN)
            elif complete:
                rows = np.flatnonzero(mask)  # few: re-rank them all, exactly
            else:
                rows = self._filtered_rows(reduced, walk, mask, matching, depth.ef)
            rows = np.asarray(rows, np.int64)
            if not complete:  # a complete tier must return every match: never screened
                rows = self._screened(rows, query)
                if scanned is not None:
                    rows = np.union1d(rows, scanned)
            return self.rows.keys[rows].astype(np.uint64), self.native.read(rows) @ query, complete

        labels, scores = stable_top(k, depth.candidates, matching, tier)
        return [(label_to_key(int(label)), float(score)) for label, score in zip(labels, scores, strict=True)]

    def _filtered_rows(
        self, reduced: np.ndarray, depth: int, mask: np.ndarray, matching: int, ef: int
    ) -> np.ndarray:
        share = matching / max(len(self.rows), 1)
        strategy = filter_strategy(matching, len(self.rows))
        if strategy == "scan":
            return self._scan_rows(reduced, mask, depth * SCAN_WIDEN)
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
        return self._scan_rows(reduced, mask, depth * SCAN_WIDEN)

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

    def _scan_rows(self, reduced: np.ndarray, allowed: np.ndarray, depth: int) -> np.ndarray:
        """The best ``depth`` of the ``allowed`` rows (a mask over the used rows) by int8 reduced
        score (the re-rank then orders them exactly): their codes gathered and scored when they
        are few, else faiss's scan of every code with the mask as a bitmap."""
        matching = int(allowed.sum())
        if matching > GATHER_MAX:
            return self.codes.best(reduced, allowed, depth)
        return self._best_of(reduced, np.flatnonzero(allowed), depth)

    def _best_of(self, reduced: np.ndarray, rows: np.ndarray, depth: int) -> np.ndarray:
        """The best ``depth`` of ``rows`` by int8 reduced score, in any order."""
        if len(rows) <= depth:
            return rows
        scores = self.codes.products(query_codes(reduced), rows)
        return rows[np.argpartition(-scores, depth - 1)[:depth]]

    def _sign_scan(self, reduced: np.ndarray, allowed: np.ndarray, count: int, matching: int) -> np.ndarray:
        """The best ``count`` allowed rows of a scan of every row's sign bits: the nearest
        ``SIGNS_WIDEN x count`` by Hamming distance, then the best by int8 reduced score (the
        module docstring; index/signs.py)."""
        if matching <= SIGNS_WIDEN * count:  # few enough to score them all
            return self._scan_rows(reduced, allowed, count)
        return self._best_of(reduced, self.signs.nearest(reduced, allowed, SIGNS_WIDEN * count), count)

    # ---- persistence -------------------------------------------------------------------------------

    def capture(self, directory: Path, lib_id: int, fingerprint: str) -> PendingSnapshot:
        """Row map, int8 codes and graph copied now; written later as native file fsynced, then row
        map, graph and header, each atomically (header last)."""
        directory.mkdir(parents=True, exist_ok=True)
        keys, live = self.rows.state()
        codes = self.codes.first_codes(self.rows.used)
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
                np.savez(rows_tmp, keys=keys, live=live, codes=codes)
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
    native reads whatever the library's size, while a scan of half of a 100k library's codes
    (50,000 rows) and its ``SCAN_WIDEN x C`` native reads cost several times that and find fewer
    of the true neighbours (measured with 64-d sketches, coarser than the graph's reduced vectors).
    """
    share = matching / max(items, 1)
    if share >= BROAD:
        return "broad"
    if share <= SCAN_SHARE or matching <= SCAN_MIN:
        return "scan"
    return "filtered"

"""The local backend: SQLite as the source of truth, an hnswlib graph per library in memory.

Built from two parts that keep their own folders: ``same_search.store`` (the single-writer
SQLite store) and ``same_search.index`` (graph, exact matrix, snapshot files). This module is
what joins them: writes go to SQLite first and to the index only after the commit, under the
library's write lock, so the index never holds something the database does not; a crash
between the two is repaired at start-up by replaying rows newer than the index snapshot.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor

import numpy as np

from same_search.backends.base import (
    AlreadyExists,
    Backend,
    BadRows,
    Figures,
    IndexingFailed,
    ItemRow,
    JobLedger,
    Library,
    LibraryFull,
    LibraryRow,
    LibrarySettings,
    LocalFeatures,
    ModelChanged,
    NewItem,
    NewLibrary,
    RebuildProgress,
    ReducedIndexes,
    Reembedding,
    ReembedIncomplete,
    ReembedJobRow,
    ReembedLedger,
    SearchResult,
    TagFilter,
    Tags,
    Unavailable,
)
from same_search.config import Config
from same_search.index import graph_files, native_file
from same_search.index.heap import release_free_heap
from same_search.index.hnsw import HnswIndex
from same_search.index.library_index import FullIndex, LibraryIndex, key_to_label
from same_search.index.projection import SAMPLE_MAX, Projection
from same_search.index.reduced import ReducedIndex
from same_search.index.vectors import row_problems
from same_search.rows import load_failure_reason, raw_item_problems
from same_search.store.db import Store

log = logging.getLogger(__name__)

#: Seconds between progress lines of a long index rebuild or replay.
REPLAY_LOG_S = 15.0
#: Rows per graph insert when a library that serves takes a bulk import. Each insert holds the
#: index thread, which every library's searches share, so it is kept small: a search waits for
#: at most one such batch (HNSW inserts at 1280-d cost milliseconds each).
LIVE_BATCH = 128
#: Rows per graph insert while a rebuild builds its fresh index in its own thread. hnswlib adds a
#: batch on every core; a cancelled rebuild (shutdown) waits for at most one such batch.
REBUILD_BATCH = 1024
#: How many reduced (256-d) graph inserts cost as much as one full-dimension (1280-d) insert:
#: docs/benchmarks.md measures 2,548/s against 477/s at 100k (5.3x); 5 errs towards the live path.
FULL_DIM_COST = 5
#: Test hook: seconds a rebuild sleeps after each build batch, so tests can race writes against
#: it (and kill the daemon in the middle of one). Unset or 0 in production.
REBUILD_PAUSE_ENV = "SAME_SEARCH_REBUILD_PAUSE_S"


def _rebuild_pause_s() -> float:
    try:
        return max(0.0, float(os.environ.get(REBUILD_PAUSE_ENV, "0") or 0))
    except ValueError:
        return 0.0


def _index(lib: Library) -> LibraryIndex:
    index = lib.handle
    assert isinstance(index, LibraryIndex), f"library {lib.row.appid!r} is not the local backend's"
    return index


def _live_keys(index: LibraryIndex, keys: Sequence[int] | np.ndarray) -> list[int]:
    """The ``keys`` live in ``index``, from its row map (both kinds keep one: a reduced index's
    graph is labelled by row, not key, so asking the graph would be wrong for it)."""
    keys = np.asarray(keys, np.int64).reshape(-1)
    return keys[index.rows.rows_of(keys) >= 0].tolist()


class ModelSwitched(RuntimeError):
    """A re-embed switched the library to another model while its rebuild ran."""


def _switched_message(lib: Library, row: LibraryRow) -> str:
    return (
        f"library {row.appid!r} moved to model {lib.row.model_id} (fingerprint {lib.row.fingerprint}) "
        "during the rebuild, which read the old model's vectors; the re-embed already built and "
        "saved the new model's index, so this rebuild was dropped unsaved (start another to compact)"
    )


def _refuse_if_switched(lib: Library, row: LibraryRow) -> None:
    """Raise :class:`ModelSwitched` when ``lib`` no longer serves the model of ``row``."""
    if lib.row.fingerprint != row.fingerprint:
        raise ModelSwitched(_switched_message(lib, row))


def _tag_pair(tags: Sequence[int | None] | None) -> np.ndarray:
    """(1, 2) uint32 tags for the index (None, a missing tag, reads as 0: no tag)."""
    pair = [int(t or 0) for t in (tags or (0, 0))][:2]
    return np.array([pair + [0] * (2 - len(pair))], np.uint32)


def _log_import(row: LibraryRow, index: LibraryIndex, imported: int, stored_s: float, total_s: float) -> None:
    """Where an import's time went: storing (upload parsed, rows checked, one transaction) and
    indexing (a projection learned if needed, the graph built or grown)."""
    log.info(
        "library %s: import of %d items stored in %.1fs, indexed in %.1fs (%s index of %d items)",
        row.appid,
        imported,
        stored_s,
        total_s - stored_s,
        index.kind,
        index.count(),
    )


class LocalBackend(Backend, LocalFeatures, Reembedding, ReducedIndexes):
    """Libraries in ``<data_dir>/same_search.sqlite3``, graphs snapshotted to ``<data_dir>/indexes``."""

    name = "local"

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.store = Store(cfg.data_path / "same_search.sqlite3", cfg.storage.max_db_bytes)
        self.index_dir = cfg.data_path / "indexes"
        self._index_pool = ThreadPoolExecutor(1, thread_name_prefix="index")
        self._save_pool = ThreadPoolExecutor(1, thread_name_prefix="index-save")
        #: One write lock per library (by row id), kept across rebuilds that swap its index.
        self._locks: dict[int, asyncio.Lock] = {}
        #: Snapshots written per library (by row id): a rebuild saves its index before the swap
        #: and must know whether the serving one was saved over it meanwhile.
        self._saves: dict[int, int] = {}
        #: Per library being rebuilt (by row id): keys whose tags changed while it ran. Tag
        #: updates carry no seq; the rebuild re-reads these rows before its swap.
        self._retagged: dict[int, set[int]] = {}

    # ---- lifecycle -------------------------------------------------------------------------------

    async def open(self) -> None:
        await self.store.open()

    async def close(self) -> None:
        """Stop the index threads and close the database (the service saves indexes first)."""
        self._index_pool.shutdown(wait=True)
        self._save_pool.shutdown(wait=True)
        await self.store.close()

    @property
    def jobs(self) -> JobLedger:
        return self.store

    def write_lock(self, lib: Library) -> asyncio.Lock:
        """The library's write lock: held by every write, a save and a rebuild."""
        return self._locks.setdefault(lib.row.id, asyncio.Lock())

    # ---- libraries -------------------------------------------------------------------------------

    async def load_libraries(self) -> list[Library | Unavailable]:
        libs: list[Library | Unavailable] = []
        for row in await self.store.libraries():
            try:
                libs.append(await self.load_library(row))
            except Exception as exc:  # one library's rows must never stop the others from serving
                libs.append(Unavailable(row, load_failure_reason(exc)))
        await asyncio.to_thread(release_free_heap)  # the replays' temporaries
        return libs

    async def load_library(self, row: LibraryRow) -> Library:
        started = time.monotonic()
        index = await self._load_index(row)
        log.info("library %s ready: %d items in %.2fs", row.appid, index.count(), time.monotonic() - started)
        return Library(row, index)

    async def create_library(self, new: NewLibrary) -> Library:
        row = await self.store.create_library(new)
        return Library(row, LibraryIndex.empty(new.dim, self.cfg.index, self._index_pool))

    async def delete_library(self, lib: Library | Unavailable) -> None:
        async with self._locks.setdefault(lib.row.id, asyncio.Lock()):
            await self.store.delete_library(lib.row.id)
            for path in graph_files.all_files(self.index_dir, lib.row.id):
                path.unlink(missing_ok=True)
        self._locks.pop(lib.row.id, None)

    async def stored_count(self, row: LibraryRow) -> int:
        return await self.store.count(row.id)

    async def bad_rows(self, row: LibraryRow) -> list[tuple[int, str]]:
        bad: list[tuple[int, str]] = []
        async for chunk in self.store.raw_items(row.id):
            bad += raw_item_problems(chunk, row.dim)
        return bad

    async def drop_rows(self, row: LibraryRow, keys: Sequence[int]) -> None:
        await self.store.remove_items(row.id, keys)

    async def import_items(
        self, target: Library | NewLibrary, batches: AsyncIterator[Sequence[NewItem]], capacity: int = 0
    ) -> tuple[Library, int, int]:
        """One database transaction holds every row (and the library itself when the import
        creates it), so a failure or a crash leaves nothing behind; once committed, the rows
        enter the index in batches of ``LIVE_BATCH``, one graph insert each.

        An import that creates a library, or takes a serving one past ``reduce_min_items`` with
        a large enough share of its rows (:meth:`_reduces_on_import`), builds the reduced index
        directly from the stored rows: no full-dimension graph first, no background adoption
        after. The serving index answers searches until the new one is swapped in."""
        started = time.monotonic()
        if isinstance(target, NewLibrary):
            created = await self.store.insert_items(target, batches, capacity)
            stored_s = time.monotonic() - started
            # The final count is known: a large import builds the reduced kind at once.
            index = await self.new_index(created.library, created.inserted)
            await self._index_committed(index, created.library, live=False)
            _log_import(created.library, index, created.inserted, stored_s, time.monotonic() - started)
            await asyncio.to_thread(release_free_heap)
            return Library(created.library, index), created.inserted, created.duplicates
        async with self.write_lock(target):
            result = await self.store.insert_items(target.row, batches, capacity)
            stored_s = time.monotonic() - started
            total = await self.store.count(target.row.id)
            if self._reduces_on_import(target, result.inserted, total):
                fresh = await self.new_index(target.row, total)
                await self._index_committed(fresh, target.row, live=False)  # every stored row
                target.handle = fresh
            else:
                await self._index_committed(_index(target), target.row, live=True)
            _log_import(target.row, _index(target), result.inserted, stored_s, time.monotonic() - started)
        await asyncio.to_thread(release_free_heap)
        return target, result.inserted, result.duplicates

    def _reduces_on_import(self, lib: Library, imported: int, total: int) -> bool:
        """Whether an import of ``imported`` rows, leaving ``total``, should build the reduced
        index from every stored row rather than add the rows to the full-dimension one.

        Only when that is no more work under the write lock: a reduced insert costs about a
        ``FULL_DIM_COST``-th of a full-dimension one, so rebuilding ``total`` rows reduced beats
        adding ``imported`` at full dimension once ``imported * FULL_DIM_COST >= total``. A
        smaller import takes the live path and the library adopts the reduction in the
        background, as it would after adds, as it does while a rebuild of it runs (that rebuild
        catches up with the import and swaps in the right kind itself)."""
        cfg = self.cfg.index
        return (
            lib.row.id not in self._retagged  # no rebuild of this library running
            and _index(lib).kind != "reduced"
            and cfg.reduce_dim < lib.row.dim
            and total >= cfg.reduce_min_items
            and imported * FULL_DIM_COST >= total
        )

    async def _index_committed(self, index: LibraryIndex, row: LibraryRow, live: bool) -> None:
        try:
            await self._replay(index, row, live=live)
        except Exception as exc:
            log.exception("library %s: indexing the imported rows failed", row.appid)
            raise IndexingFailed(row, exc) from exc

    async def new_index(self, row: LibraryRow, count: int) -> LibraryIndex:
        """An empty index of the right kind for ``row`` about to hold ``count`` items.

        Below ``[index] reduce_min_items``: the full-dimension index (exact while small). From
        there on: a reduced index, with the library's stored projection when it still fits (same
        model, same dimension), else one learned now from a sample of the stored vectors and
        committed to SQLite before the index exists, so a snapshot never names a projection that
        is not stored.
        """
        cfg = self.cfg.index
        if count < cfg.reduce_min_items or min(cfg.reduce_dim, row.dim) >= row.dim:
            return LibraryIndex.empty(row.dim, cfg, self._index_pool, capacity=max(count, 16))
        projection = await self._projection(row)
        path = native_file.new_path(self.index_dir, row.id)
        return ReducedIndex.create(projection, path, cfg, self._index_pool, max(count, 16))

    async def _projection(self, row: LibraryRow) -> Projection:
        """The library's projection: the stored one if it fits the model and config, else a new one."""
        dim = min(self.cfg.index.reduce_dim, row.dim)
        try:
            stored = await self.store.projection(row.id)
        except ValueError as exc:
            log.warning("library %s: stored projection unusable (%s); learning it again", row.appid, exc)
            stored = None
        if stored is not None and stored.model_fingerprint == row.fingerprint and stored.dim == dim:
            return stored
        started = time.monotonic()
        sample = await self.store.sample_vectors(row.id, row.dim, SAMPLE_MAX)
        projection = await asyncio.to_thread(Projection.learn, sample, dim, row.fingerprint)
        await self.store.save_projection(row.id, projection, len(sample))
        log.info(
            "library %s: learned a %d-d projection from %d vectors in %.1fs",
            row.appid,
            dim,
            len(sample),
            time.monotonic() - started,
        )
        return projection

    async def save_settings(self, lib: Library, settings: LibrarySettings) -> None:
        await self.store.save_settings(lib.row.id, settings)

    async def _load_index(self, row: LibraryRow) -> LibraryIndex:
        """The saved graph brought up to date with the database, or else a rebuild from it.

        A snapshot's graph holds exactly the items stored up to its seq: removals after that seq
        are marked deleted in it, then the rows inserted after it are added. Anything wrong with
        the snapshot (missing, corrupt, inconsistent) costs a rebuild, never a failed start.
        Rows that cannot be loaded or served raise :class:`BadRows` (the service sets the library
        aside): tags are checked first, vectors as they are replayed.
        """
        bad_tags = await self.store.rows_with_bad_tags(row.id)
        if bad_tags:
            raise BadRows(bad_tags)
        count = await self.store.count(row.id)
        try:
            index, removed = await self._open_snapshot(row)
            replayed = await self._replay(index, row)
            if index.count() != count:
                raise graph_files.SnapshotInvalid(f"{index.count()} items after replay, database has {count}")
            if isinstance(index, ReducedIndex):
                await self._check_native(index, row)
            async for keys, tags in self.store.item_tags(row.id):
                index.set_tags(keys, tags)
        except BadRows:
            raise
        except Exception as exc:
            log.warning(
                "library %s: index snapshot not usable (%s); rebuilding from the database", row.appid, exc
            )
            index = await self.new_index(row, count)
            await self._replay(index, row, count)
            self._drop_stale_files(row, index)
            return index
        self._drop_stale_files(row, index)
        if replayed or removed:
            log.info(
                "library %s: replayed %d adds, %d removals after the snapshot",
                row.appid,
                replayed,
                len(removed),
            )
        return index

    async def _replay(
        self, index: LibraryIndex, row: LibraryRow, total: int | None = None, live: bool = False
    ) -> int:
        """Add the rows inserted after the index's seq; returns how many.

        Every chunk is checked first: a row that is not a finite unit vector of the library's
        dimension raises :class:`BadRows` naming it, before anything of that chunk is indexed.
        ``live``: the index is already serving, so inserts go through its own thread in batches
        of ``LIVE_BATCH``. A long replay (a rebuild of a large library takes minutes) logs its
        progress every ``REPLAY_LOG_S`` seconds, so an operator watching the log knows it is alive.
        """
        replayed = 0
        started = last_log = time.monotonic()
        chunk = LIVE_BATCH if live else 4096
        since = self.store.tagged_vectors_since(row.id, index.seq, row.dim, chunk)
        async for chunk_keys, vectors, tags, seq in since:
            bad = row_problems(vectors, row.dim)
            if bad:
                raise BadRows([(int(chunk_keys[i]), problem) for i, problem in bad])
            if live:
                await index.add_batch(chunk_keys, vectors, seq, tags)
            else:
                await asyncio.to_thread(index.add_now, chunk_keys, vectors, seq, tags)
            replayed += len(chunk_keys)
            now = time.monotonic()
            if now - last_log >= REPLAY_LOG_S:
                last_log = now
                rate = replayed / (now - started)
                left = f", about {(total - replayed) / rate:.0f}s left" if total and rate > 0 else ""
                of = f" of {total:,}" if total else ""
                log.info(
                    "library %s: indexed %s%s items (%.0f/s%s)", row.appid, f"{replayed:,}", of, rate, left
                )
        index.seq = max(index.seq, self.store.seq)
        return replayed

    async def _open_snapshot(self, row: LibraryRow) -> tuple[LibraryIndex, list[int]]:
        """The verified snapshot graph with later removals applied; (index, removed keys).

        A reduced snapshot must name the library's stored projection (same model); otherwise,
        as for any other mismatch, :class:`SnapshotInvalid` sends the caller to a rebuild.
        """
        header = graph_files.read_header(self.index_dir, row.id, row.fingerprint, row.dim)
        if header.projection:
            projection = await self.store.projection(row.id)
            if projection is None or projection.model_fingerprint != row.fingerprint:
                raise graph_files.SnapshotInvalid("the snapshot's projection is not stored for this model")
            reduced = await asyncio.to_thread(
                ReducedIndex.load,
                self.index_dir,
                row.id,
                header,
                projection,
                self.cfg.index,
                self._index_pool,
            )
            removed = await self.store.removals_since(row.id, header.seq)
            reduced.delete_now(removed, header.seq)
            return reduced, removed
        in_graph = {key_to_label(k) for k in await self.store.keys(row.id, max_seq=header.seq)}
        graph_path, _ = graph_files.paths(self.index_dir, row.id)
        graph = await asyncio.to_thread(
            HnswIndex.load, graph_path, row.dim, self.cfg.index.ef_search, in_graph
        )
        removed = await self.store.removals_since(row.id, header.seq)
        graph.forget(np.array([key_to_label(k) for k in removed], dtype=np.uint64))
        index = FullIndex(graph, self.cfg.index, header.seq, self._index_pool)
        index.saved_seq, index.saved_at = header.seq, header.saved_at
        return index, removed

    async def _check_native(self, index: ReducedIndex, row: LibraryRow, samples: int = 32) -> None:
        """Spot-check the native file against SQLite (random live rows and the last ones): a file
        that is not the snapshot's would give wrong scores, so it raises SnapshotInvalid."""
        live = index.rows.live_rows()
        if not len(live):
            return
        rng = np.random.default_rng()
        picked = np.unique(
            np.concatenate([rng.choice(live, min(samples, len(live)), replace=False), live[-8:]])
        )
        keys = index.rows.keys[picked].tolist()
        stored = await self.store.vectors_of(row.id, keys, row.dim)
        on_disk = await asyncio.to_thread(index.native.read, picked)
        for i, key in enumerate(keys):
            expected = stored.get(key)
            if expected is None or not np.array_equal(on_disk[i], expected):
                raise graph_files.SnapshotInvalid(
                    f"native vector file disagrees with the database at key {key}"
                )

    def _drop_unused_natives(self, lib_id: int, saved: LibraryIndex, swapped: bool = False) -> None:
        """After ``saved`` (the serving index) was snapshotted: remove the reduced-index files
        that its snapshot does not name: other native files, except a newer one that a running
        rebuild of the library writes (``swapped``: that rebuild is the one just swapped in), and
        the row map when ``saved`` is a full-dimension index and no rebuild may be saving one.

        An old index still answering a search in flight keeps reading its file through its open
        descriptor, so an unlinked file is only gone for good once that index is dropped."""
        mine = saved.native.path if isinstance(saved, ReducedIndex) else None
        newest = native_file.generation(mine) if mine is not None else 0
        rebuilding = lib_id in self._retagged and not swapped
        for path in native_file.files_of(self.index_dir, lib_id):
            if path == mine or (rebuilding and native_file.generation(path) > newest):
                continue
            path.unlink(missing_ok=True)
        if mine is None and not rebuilding:  # a running rebuild may be saving its own row map
            graph_files.rows_path(self.index_dir, lib_id).unlink(missing_ok=True)

    def _drop_stale_files(self, row: LibraryRow, index: LibraryIndex) -> None:
        """Native files (and a row map) that the loaded index does not use: left by a crash or by
        a library that went back from reduced to full; and the temporary files of a save that a
        crash interrupted (no save runs while a library loads)."""
        mine = index.native.path if isinstance(index, ReducedIndex) else None
        for path in native_file.files_of(self.index_dir, row.id):
            if path != mine:
                path.unlink(missing_ok=True)
        for path in graph_files.all_files(self.index_dir, row.id):
            if ".tmp" in path.suffixes:
                path.unlink(missing_ok=True)
        if mine is None:
            graph_files.rows_path(self.index_dir, row.id).unlink(missing_ok=True)

    # ---- items -----------------------------------------------------------------------------------

    async def count(self, lib: Library) -> int:
        return _index(lib).count()

    async def add_items(self, lib: Library, items: Sequence[NewItem], capacity: int = 0) -> list[bool]:
        stored = []
        async with self.write_lock(lib):
            index = _index(lib)
            for item in items:
                if item.fingerprint is not None and item.fingerprint != lib.row.fingerprint:
                    raise ModelChanged(f"library {lib.row.appid!r} moved to model {lib.row.model_id}")
                if capacity and index.count() >= capacity:
                    raise LibraryFull(f"library {lib.row.appid!r} is full ({capacity} items)")
                try:
                    seq = await self.store.add_item(
                        lib.row.id,
                        item.key,
                        item.brief,
                        item.tags,
                        item.vector,
                        item.thumbnail,
                        item.local_features,
                        item.original,
                    )
                except AlreadyExists:
                    stored.append(False)
                    continue
                await index.add(item.key, item.vector, seq, _tag_pair(item.tags))
                stored.append(True)
        return stored

    async def update_item(self, lib: Library, key: int, brief: bytes | None, tags: Tags | None) -> bool:
        """The row first, then the index's tag table (under the write lock, so a concurrent add
        or removal of the same key cannot interleave)."""
        async with self.write_lock(lib):
            if tags is not None:
                self._note_retagged(lib, key)  # before the commit: a running rebuild re-reads it
            updated = await self.store.update_item(lib.row.id, key, brief, tags)
            if updated and tags is not None:
                _index(lib).set_tags([key], _tag_pair(tags))
        return updated

    async def remove_items(self, lib: Library, keys: Sequence[int]) -> list[int]:
        async with self.write_lock(lib):
            removed, seq = await self.store.remove_items(lib.row.id, keys)
            if removed:
                await _index(lib).delete(removed, seq)
        return removed

    async def get_items(self, lib: Library, keys: Sequence[int]) -> dict[int, ItemRow]:
        return await self.store.get_items(lib.row.id, keys)

    async def vector(self, lib: Library, key: int) -> np.ndarray | None:
        """The stored vector of a live item (a reduced index reads it from SQLite: its graph
        holds reduced vectors, and one row is as cheap to read there as from the native file)."""
        index = _index(lib)
        if not index.contains(key):
            return None
        if isinstance(index, ReducedIndex):
            return (await self.store.vectors_of(lib.row.id, [key], lib.row.dim)).get(key)
        try:
            return (await index.vectors_of([key]))[0]
        except (KeyError, RuntimeError):  # removed between the check and the read: not stored
            return None

    async def search(
        self, lib: Library, vector: np.ndarray, k: int, tag_filter: TagFilter | None
    ) -> SearchResult:
        """The index answers tag filters from its own tag table (no database read per search)."""
        index = _index(lib)
        k = min(k, index.count())
        if k <= 0:
            return SearchResult([])
        if tag_filter is not None and tag_filter.active:
            return SearchResult(
                await index.search(vector, k, None, tuple(tag_filter.tags), tag_filter.match_all)
            )
        return SearchResult(await index.search(vector, k))

    async def page_items(self, lib: Library, offset: int, limit: int) -> list[ItemRow]:
        return await self.store.page_items(lib.row.id, offset, limit)

    async def thumbnail(self, lib: Library, key: int) -> bytes | None:
        return await self.store.thumbnail(lib.row.id, key)

    async def local_features(self, lib: Library, keys: Sequence[int]) -> dict[int, bytes]:
        return await self.store.local_features(lib.row.id, keys)

    def export_items(self, lib: Library) -> AsyncIterator[list[tuple[ItemRow, np.ndarray]]]:
        return self.store.items_with_vectors(lib.row.id)

    # ---- maintenance -----------------------------------------------------------------------------

    async def save(self, libs: Sequence[Library], only_dirty: bool = True) -> int:
        """Snapshot every (changed) library's graph; returns how many were written."""
        saved = 0
        for lib in libs:
            if only_dirty and not _index(lib).dirty:
                continue
            async with self.write_lock(lib):
                index = _index(lib)
                started = time.monotonic()
                saving = asyncio.get_running_loop().run_in_executor(
                    self._save_pool, index.save_now, self.index_dir, lib.row.id, lib.row.fingerprint
                )
                try:
                    await asyncio.shield(saving)
                except asyncio.CancelledError:
                    await saving  # keep writers out until the file is complete, then stop
                    raise
                finally:
                    if saving.done() and not saving.cancelled() and saving.exception() is None:
                        self._saves[lib.row.id] = self._saves.get(lib.row.id, 0) + 1
                        self._drop_unused_natives(lib.row.id, index)
                        log.info(
                            "library %s: index saved (%d items, %.2fs)",
                            lib.row.appid,
                            index.count(),
                            time.monotonic() - started,
                        )
            saved += 1
        return saved

    async def rebuild(self, lib: Library, progress: RebuildProgress | None = None) -> None:
        """A fresh index built beside the serving one, caught up, saved, then swapped in.

        The library keeps serving searches and writes throughout, and writers never wait for
        more than the last few writes to be applied. The fresh index is built from the rows
        stored up to seq S (noted under the write lock, so no write of this library is between
        taking its seq and committing) in a thread of its own, off the write lock and off the
        shared index thread. The writes after S (rows and removals carry seqs in SQLite) are
        applied off the lock, the fresh index is saved (nobody else touches it yet), the writes
        made meanwhile are applied, and only the last few are applied under the lock, where the
        swap happens: every write acknowledged before the swap is in the new index, every later
        one goes to it. Until the save nothing touches the disk; the save is a complete snapshot
        (atomically renamed), so a crash or a cancel (shutdown) at any point leaves a valid
        snapshot that the next start brings up to date from the database.
        """
        progress = progress if progress is not None else RebuildProgress()
        row = lib.row
        async with self.write_lock(lib):
            upto = self.store.seq
            progress.total = await self.store.count(row.id)
            self._retagged[row.id] = set()
        fresh = await self.new_index(row, progress.total)
        builder = ThreadPoolExecutor(1, thread_name_prefix=f"rebuild-{row.id}")
        try:
            await self._build(fresh, row, upto, progress, builder)
            progress.phase = "catching up"
            since = await self._catch_up(fresh, row, upto, upto, builder)
            _refuse_if_switched(lib, row)  # never save old-model vectors over the new snapshot
            progress.phase = "saving"
            saves_before = self._saves.get(row.id, 0)
            await self._save_fresh(fresh, row)
            progress.phase = "catching up"
            since = await self._catch_up(fresh, row, upto, since, builder)
            await self._retag(fresh, row, builder)
            async with self.write_lock(lib):
                _refuse_if_switched(lib, row)
                await self._catch_up(fresh, row, upto, since, builder)
                await self._retag(fresh, row, builder)
                stored = await self.store.count(row.id)
                if fresh.count() != stored:
                    raise RuntimeError(f"rebuilt index holds {fresh.count()} items, the database {stored}")
                fresh.seq = max(fresh.seq, self.store.seq)
                if self._saves.get(row.id, 0) != saves_before:
                    fresh.saved_seq = -1  # the old index was saved meanwhile, maybe over this one
                lib.handle = fresh
                if fresh.saved_seq != -1:  # the snapshot on disk is the fresh one's
                    self._drop_unused_natives(row.id, fresh, swapped=True)
        except Exception as exc:
            # Rows of the new model read with the old one's dimension fail in odd ways (bad
            # rows, shapes): the cause to report is the switch, not the rows.
            if lib.row.fingerprint != row.fingerprint and not isinstance(exc, ModelSwitched):
                raise ModelSwitched(_switched_message(lib, row)) from exc
            raise
        finally:
            builder.shutdown(wait=False, cancel_futures=True)
            self._retagged.pop(row.id, None)
        log.info("library %s: rebuilt index swapped in (%d items)", row.appid, fresh.count())
        await asyncio.to_thread(release_free_heap)  # the build's temporaries and the old index

    def _note_retagged(self, lib: Library, key: int) -> None:
        """Remember a tag update for the library's running rebuild, if any."""
        retagged = self._retagged.get(lib.row.id)
        if retagged is not None:
            retagged.add(key)

    async def _retag(self, fresh: LibraryIndex, row: LibraryRow, builder: Executor) -> None:
        """Give ``fresh`` the current tags of the rows retagged while it was built (an index that
        keeps tags only; the rows are read again and re-added with them)."""
        keys = sorted(self._retagged.get(row.id, ()))
        self._retagged[row.id] = set()
        if not keys:
            return
        loop = asyncio.get_running_loop()
        for start in range(0, len(keys), 500):
            chunk = keys[start : start + 500]
            found, vectors, tags = await self.store.tagged_vectors_of(row.id, chunk, row.dim)
            present = _live_keys(fresh, found)
            if present:
                await loop.run_in_executor(builder, fresh.delete_now, present, fresh.seq)
            await loop.run_in_executor(builder, fresh.add_now, found, vectors, fresh.seq, tags)

    async def _save_fresh(self, fresh: LibraryIndex, row: LibraryRow) -> None:
        """Snapshot an index not serving yet: no lock needed, but the save thread, so it never
        writes the library's files at the same time as a save of the serving index."""
        started = time.monotonic()
        saving = asyncio.get_running_loop().run_in_executor(
            self._save_pool, fresh.save_now, self.index_dir, row.id, row.fingerprint
        )
        try:
            await asyncio.shield(saving)
        except asyncio.CancelledError:
            await saving  # the file is complete (or removed) before this stops
            raise
        log.info(
            "library %s: rebuilt index saved (%d items, %.2fs)",
            row.appid,
            fresh.count(),
            time.monotonic() - started,
        )

    async def _build(
        self, fresh: LibraryIndex, row: LibraryRow, upto: int, progress: RebuildProgress, builder: Executor
    ) -> None:
        """Insert the rows stored up to seq ``upto`` into ``fresh``, a batch per graph insert."""
        loop = asyncio.get_running_loop()
        pause = _rebuild_pause_s()
        started = last_log = time.monotonic()
        rows = self.store.tagged_vectors_since(row.id, 0, row.dim, REBUILD_BATCH, upto)
        async for keys, vectors, tags, seq in rows:
            bad = row_problems(vectors, row.dim)
            if bad:
                raise BadRows([(int(keys[i]), problem) for i, problem in bad])
            await loop.run_in_executor(builder, fresh.add_now, keys, vectors, seq, tags)
            progress.done += len(keys)
            now = time.monotonic()
            if now - last_log >= REPLAY_LOG_S:
                last_log = now
                rate = progress.done / (now - started)
                log.info(
                    "library %s: rebuild indexed %s of %s items (%.0f/s, about %.0fs left)",
                    row.appid,
                    f"{progress.done:,}",
                    f"{progress.total:,}",
                    rate,
                    max(0, progress.total - progress.done) / rate if rate > 0 else 0,
                )
            if pause:
                await asyncio.sleep(pause)

    async def _catch_up(
        self, fresh: LibraryIndex, row: LibraryRow, upto: int, since: int, builder: Executor
    ) -> int:
        """Apply to ``fresh`` the rows inserted after ``since`` and the removals after ``upto``;
        returns the seq of the last row applied.

        Seqs are handed out and committed in order under the store's write lock, so every row
        of seq at most the last one read here was visible to this read. Removals are applied
        from ``upto`` on every pass: ``removals`` only lists keys not stored now (a re-add
        deletes its row), so deleting them again is always right. A key removed and added again
        is deleted first, then added with its new vector, as the live path does.
        """
        loop = asyncio.get_running_loop()
        last = since
        rows = self.store.tagged_vectors_since(row.id, since, row.dim, REBUILD_BATCH)
        async for keys, vectors, tags, seq in rows:
            bad = row_problems(vectors, row.dim)
            if bad:
                raise BadRows([(int(keys[i]), problem) for i, problem in bad])
            present = _live_keys(fresh, keys)
            if present:
                await loop.run_in_executor(builder, fresh.delete_now, present, seq)
            await loop.run_in_executor(builder, fresh.add_now, keys, vectors, seq, tags)
            last = seq
        # Read after the rows: every removal of seq up to ``last`` committed before the row of
        # seq ``last`` did, so the index then holds exactly the writes up to ``last`` (a saved
        # snapshot's promise); a later removal applied early is applied again at replay.
        removed = await self.store.removals_since(row.id, upto)
        if removed:
            await loop.run_in_executor(builder, fresh.delete_now, removed, upto)
        return last

    def wants_reduction(self, lib: Library) -> bool:
        """Whether the library is large enough for a reduced index and does not hold one (a
        library whose vectors are no wider than ``reduce_dim`` never does)."""
        index, cfg = _index(lib), self.cfg.index
        return (
            index.kind != "reduced" and cfg.reduce_dim < lib.row.dim and index.count() >= cfg.reduce_min_items
        )

    def describe(self, lib: Library) -> Figures:
        index = _index(lib)
        return {
            "last_index_save": index.saved_at,
            "index_slots": index.capacity(),
            "search": index.strategy,
            **(
                {"reduced_dim": index.projection.dim, "projection": index.projection.fingerprint}
                if isinstance(index, ReducedIndex)
                else {}
            ),
        }

    def dirty(self, lib: Library) -> bool:
        """Whether the library changed since its last snapshot (tests and the shutdown save)."""
        return _index(lib).dirty

    # ---- kept originals and re-embedding ----------------------------------------------------------

    async def items_without_original(self, lib: Library) -> int:
        return await self.store.items_without_original(lib.row.id)

    async def read_original(self, sha256: str) -> bytes:
        return await self.store.read_original(sha256)

    @property
    def reembed_ledger(self) -> ReembedLedger:
        return self.store

    async def reembed_pending(
        self, lib: Library, limit: int, after_seq: int = 0
    ) -> list[tuple[int, str | None, int]]:
        return await self.store.reembed_pending(lib.row.id, limit, after_seq)

    async def save_reembedded(self, lib: Library, vectors: Sequence[tuple[int, np.ndarray]]) -> None:
        await self.store.save_reembedded(lib.row.id, vectors)

    async def switch_model(
        self, lib: Library, job: ReembedJobRow, catch_up: Callable[[Library], Awaitable[None]]
    ) -> None:
        """Under the write lock: last items embedded, one transaction, then a fresh index.

        Searches go on meanwhile with the old row and index (consistent with each other); the
        row and the index are swapped together, with no await between, so no search ever sees
        one model's query against the other's vectors. The graph is saved last: a crash before
        that rebuilds it from the database at start (the old snapshot's fingerprint is refused).
        """
        async with self.write_lock(lib):
            while True:
                await catch_up(lib)
                try:
                    row = await self.store.switch_model(lib.row, job)
                    break
                except ReembedIncomplete:
                    continue
            count = await self.store.count(row.id)
            fresh = await self.new_index(row, count)
            await self._replay(fresh, row, count)
            lib.row, lib.handle = row, fresh
        await self.save([lib])

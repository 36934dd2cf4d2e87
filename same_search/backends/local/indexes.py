"""Each library's index: made of the right kind, loaded from its snapshot, saved.

A snapshot's graph holds exactly the items stored up to its seq; loading it applies the removals
after that seq and replays the rows inserted after it. Anything wrong with a snapshot (missing,
corrupt, made by another model) costs a rebuild from SQLite, never a failed start.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine, Sequence
from functools import partial
from typing import TypeVar

import numpy as np

from same_search.backends.base import BadRows, Library, LibraryRow
from same_search.backends.local.feed import ProgressLog, feed_rows
from same_search.backends.local.state import index_of
from same_search.backends.local.tuning import RecallTuning
from same_search.index import graph_files, native_file
from same_search.index.hnsw import HnswIndex
from same_search.index.library_index import FullIndex, LibraryIndex, key_to_label
from same_search.index.projection import SAMPLE_MAX, Projection
from same_search.index.reduced import ReducedIndex
from same_search.index.space import WEIGHT, LearnedSpace
from same_search.index.space_index import SpaceIndex

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Rows per graph insert when a library that serves takes a bulk import. Each insert holds the
#: index thread, which every library's searches share, so it is kept small: a search waits for
#: at most one such batch (a full-dimension HNSW insert costs about a millisecond).
LIVE_BATCH = 128
#: Rows per chunk when an index that does not serve yet is filled (at start, after an import that
#: created the library).
LOAD_BATCH = 4096


class LocalIndexes(RecallTuning):
    """Making, loading and saving the libraries' indexes."""

    async def new_index(self, row: LibraryRow, count: int) -> LibraryIndex:
        """An empty index of the right kind for ``row`` about to hold ``count`` items.

        Below ``[index] reduce_min_items``: the full-dimension index (exact while small). From
        there on: a reduced index, with the library's stored projection when it still fits (same
        model, same dimension), else one learned now from a sample of the stored vectors and
        committed to SQLite before the index exists, so a snapshot never names a projection that
        is not stored.
        """
        cfg = self.cfg.index
        space = await self._learned_space(row, count)
        if space is not None:
            return SpaceIndex.create(space, cfg, self._index_pool, max(count, 16))
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

    async def _chose_learned(self, row: LibraryRow) -> bool:
        """Whether the library chose its learned space (a damaged stored fit still says so)."""
        try:
            chosen = (await self.store.learned_space(row.id))[0]
        except ValueError:
            chosen = True
        self.spaces_chosen[row.id] = chosen
        return chosen

    async def _learned_space(self, row: LibraryRow, count: int) -> LearnedSpace | None:
        """The space a library that chose its learned space ranks in at ``count`` items: None
        while it is smaller than ``[index] space_min_items`` (native cosine) or did not choose
        it; the stored fit while it suits the model and the library has not outgrown it, else a
        new fit, stored first."""
        try:
            chosen, stored = await self.store.learned_space(row.id)
        except ValueError as exc:
            log.warning("library %s: stored learned space unusable (%s); fitting it again", row.appid, exc)
            chosen, stored = True, None
        self.spaces_chosen[row.id] = chosen
        if not chosen or count < self.cfg.index.space_min_items:
            return None
        if (
            stored is not None
            and stored.projection.model_fingerprint == row.fingerprint
            and stored.native_dim == row.dim
            and not stored.due(count)
        ):
            return stored
        started = time.monotonic()
        sample = await self.store.sample_vectors(row.id, row.dim, SAMPLE_MAX)
        space = await asyncio.to_thread(
            LearnedSpace.fit, sample, count, row.fingerprint, weight=stored.weight if stored else WEIGHT
        )
        await self.store.save_space(row.id, space)
        log.info(
            "library %s: fitted its learned space (%d-d, weight %g) on %d vectors in %.1fs",
            row.appid,
            space.projection.dim,
            space.weight,
            len(sample),
            time.monotonic() - started,
        )
        return space

    # ---- loading ---------------------------------------------------------------------------------

    async def _load_index(self, row: LibraryRow) -> LibraryIndex:
        """The saved graph brought up to date with the database, or else a rebuild from it.

        Rows that cannot be loaded or served raise :class:`BadRows` (the service sets the library
        aside): tags are checked first, vectors as they are replayed.
        """
        bad_tags = await self.store.rows_with_bad_tags(row.id)
        if bad_tags:
            raise BadRows(bad_tags)
        count = await self.store.count(row.id)
        if await self._chose_learned(row):
            # A library in its learned space keeps no snapshot: built from the database.
            index = await self.new_index(row, count)
            await self._replay(index, row, count)
            return index
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
        """Add the rows inserted after the index's seq (see :func:`feed_rows`); returns how many.

        ``live``: the index is already serving, so inserts go through its own thread in batches
        of ``LIVE_BATCH``. A long replay logs its progress (``total``: the rows it will add).
        """

        async def add(keys: np.ndarray, vectors: np.ndarray, tags: np.ndarray, seq: int) -> None:
            if live:
                await index.add_batch(keys, vectors, seq, tags)
            else:
                await asyncio.to_thread(index.add_now, keys, vectors, seq, tags)

        rows = self.store.tagged_vectors_since(row.id, index.seq, row.dim, LIVE_BATCH if live else LOAD_BATCH)
        replayed, _ = await feed_rows(rows, row.dim, add, ProgressLog(row.appid, "indexed", total))
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

    # ---- saving ----------------------------------------------------------------------------------

    async def save(self, libs: Sequence[Library], only_dirty: bool = True) -> int:
        """Snapshot every (changed) library's index; returns how many were written.

        Writers are kept out only while the snapshot is captured in memory (index/memory_image.py),
        not while it is written to disk."""
        saved = 0
        for lib in libs:
            if only_dirty and not index_of(lib).dirty:
                continue
            await _uncancelled(self._save_serving(lib))
            saved += 1
        return saved

    async def _save_serving(self, lib: Library) -> None:
        """One snapshot of the library's serving index, recorded once it is on disk."""
        async with self._saving:
            async with self.write_lock(lib):
                held = time.monotonic()
                index, row = index_of(lib), lib.row
                # Counted from the capture on: a rebuild that swaps in before this save ends must
                # save its own index again, since this one may still be written over its snapshot.
                self._saves[row.id] = self._saves.get(row.id, 0) + 1
                capture = partial(index.capture, self.index_dir, row.id, row.fingerprint)
                pending = await self._in_save_thread(capture)
                captured = time.monotonic()
            await self._in_save_thread(pending.write)
            index.mark_saved(pending)
            if index_of(lib) is index:  # not swapped out by a rebuild meanwhile
                self._drop_unused_natives(row.id, index)
        log.info(
            "library %s: index saved (%d items at seq %d; captured in %.2fs, writers held back that "
            "long; written in %.2fs)",
            row.appid,
            index.count(),
            pending.seq,
            captured - held,
            time.monotonic() - captured,
        )

    async def _save_fresh(self, fresh: LibraryIndex, row: LibraryRow) -> None:
        """Snapshot an index not serving yet: no write lock needed (only the rebuild touches it),
        but one snapshot at a time, so it never writes the library's files together with a save
        of the serving index."""
        started = time.monotonic()

        async def save() -> None:
            async with self._saving:
                await self._in_save_thread(partial(fresh.save_now, self.index_dir, row.id, row.fingerprint))

        await _uncancelled(save())
        log.info(
            "library %s: rebuilt index saved (%d items, %.2fs)",
            row.appid,
            fresh.count(),
            time.monotonic() - started,
        )

    async def _in_save_thread(self, work: Callable[[], T]) -> T:
        """Run ``work`` (a capture, a write) in the save thread."""
        return await asyncio.get_running_loop().run_in_executor(self._save_pool, work)

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


async def _uncancelled(save: Coroutine[object, object, None]) -> None:
    """Run a save to its end even when the caller is cancelled (shutdown): the cancel waits for
    it, so the next start finds a complete snapshot (or the previous one), never a half file,
    and a finished save is always recorded."""
    task = asyncio.ensure_future(save)
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        await task
        raise

"""Online rebuilds: a fresh index built beside the serving one, caught up, saved, swapped in;
and the switch of a library to another model (a re-embed's last step).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor, ThreadPoolExecutor

import numpy as np

from same_search.backends.base import Library, LibraryRow, RebuildProgress, ReembedIncomplete, ReembedJobRow
from same_search.backends.local.feed import ProgressLog, feed_rows
from same_search.backends.local.indexes import LocalIndexes
from same_search.backends.local.state import index_of, live_keys
from same_search.index.heap import release_free_heap
from same_search.index.library_index import LibraryIndex
from same_search.index.space_index import SpaceIndex
from same_search.priority import BACKGROUND_NICENESS, nicer_by

log = logging.getLogger(__name__)

#: Rows per graph insert while a rebuild builds its fresh index in its own thread. hnswlib adds a
#: batch on every core; a cancelled rebuild (shutdown) waits for at most one such batch.
REBUILD_BATCH = 1024
#: Test hook: seconds a rebuild sleeps after each build batch, so tests can race writes against
#: it (and kill the daemon in the middle of one). Unset or 0 in production.
REBUILD_PAUSE_ENV = "SAME_SEARCH_REBUILD_PAUSE_S"


def _rebuild_pause_s() -> float:
    try:
        return max(0.0, float(os.environ.get(REBUILD_PAUSE_ENV, "0") or 0))
    except ValueError:
        return 0.0


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


class OnlineRebuilds(LocalIndexes):
    """Rebuilding a library's index while it serves, and moving it to another model."""

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
        self.screen_fresh(row, fresh)
        builder = ThreadPoolExecutor(
            1, thread_name_prefix=f"rebuild-{row.id}", initializer=nicer_by(BACKGROUND_NICENESS)
        )
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
                self.keep_depth(row, fresh)
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
            present = live_keys(fresh, found)
            if present:
                await loop.run_in_executor(builder, fresh.delete_now, present, fresh.seq)
            await loop.run_in_executor(builder, fresh.add_now, found, vectors, fresh.seq, tags)

    async def _build(
        self, fresh: LibraryIndex, row: LibraryRow, upto: int, progress: RebuildProgress, builder: Executor
    ) -> None:
        """Insert the rows stored up to seq ``upto`` into ``fresh``, a batch per graph insert."""
        loop = asyncio.get_running_loop()

        async def add(keys: np.ndarray, vectors: np.ndarray, tags: np.ndarray, seq: int) -> None:
            await loop.run_in_executor(builder, fresh.add_now, keys, vectors, seq, tags)
            progress.done += len(keys)
            pause = _rebuild_pause_s()  # read per batch, so a test can end its slow-down midway
            if pause:
                await asyncio.sleep(pause)

        rows = self.store.tagged_vectors_since(row.id, 0, row.dim, REBUILD_BATCH, upto)
        await feed_rows(rows, row.dim, add, ProgressLog(row.appid, "rebuild indexed", progress.total))

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

        async def add(keys: np.ndarray, vectors: np.ndarray, tags: np.ndarray, seq: int) -> None:
            present = live_keys(fresh, keys)
            if present:
                await loop.run_in_executor(builder, fresh.delete_now, present, seq)
            await loop.run_in_executor(builder, fresh.add_now, keys, vectors, seq, tags)

        rows = self.store.tagged_vectors_since(row.id, since, row.dim, REBUILD_BATCH)
        _, last = await feed_rows(rows, row.dim, add)
        # Read after the rows: every removal of seq up to ``last`` committed before the row of
        # seq ``last`` did, so the index then holds exactly the writes up to ``last`` (a saved
        # snapshot's promise); a later removal applied early is applied again at replay.
        removed = await self.store.removals_since(row.id, upto)
        if removed:
            await loop.run_in_executor(builder, fresh.delete_now, removed, upto)
        return since if last is None else last

    def wants_reduction(self, lib: Library) -> bool:
        """Whether the library is large enough for a reduced index and does not hold one (a
        library whose vectors are no wider than ``reduce_dim`` never does)."""
        index, cfg = index_of(lib), self.cfg.index
        if self.spaces_chosen.get(lib.row.id):
            return self._space_due(index, self.cfg.index.space_min_items)
        return index.kind == "full" and cfg.reduce_dim < lib.row.dim and index.count() >= cfg.reduce_min_items

    @staticmethod
    def _space_due(index: LibraryIndex, min_items: int) -> bool:
        """A library that chose its learned space rebuilds into it once it holds ``min_items``,
        and again (a new fit) when it has grown by REFIT_GROWTH since the fit it ranks in."""
        if isinstance(index, SpaceIndex):
            return index.space.due(index.count())
        return index.count() >= min_items

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

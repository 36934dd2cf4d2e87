"""Writes of the local backend: SQLite first, the index only after the commit.

Every write of a library holds its write lock, so the index never holds something the database
does not; a crash between the two is repaired at start-up by replaying the rows newer than the
index snapshot (``indexes``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Sequence

from same_search.backends.base import (
    AlreadyExists,
    IndexingFailed,
    Library,
    LibraryFull,
    LibraryRow,
    LibrarySettings,
    ModelChanged,
    NewItem,
    NewLibrary,
    Tags,
    Unavailable,
)
from same_search.backends.local.rebuilds import OnlineRebuilds
from same_search.backends.local.state import index_of, tag_pair
from same_search.index import graph_files
from same_search.index.heap import release_free_heap
from same_search.index.library_index import LibraryIndex

log = logging.getLogger(__name__)


#: The most a full-dimension graph insert is counted as costing, in reduced inserts.
MAX_FULL_DIM_COST = 5.0


def _full_dim_cost(dim: int, reduced_dim: int) -> float:
    """How many reduced graph inserts cost as much as one at the library's full dimension.

    An HNSW insert's time goes mostly into distance computations, linear in the dimension
    (docs/benchmarks.md: 2,548 inserts/s at 256-d against 477/s at 1280-d, 5.3x for a ratio of
    5). Counted at most ``MAX_FULL_DIM_COST``: for a wide model or a narrow reduction the walk's
    fixed work stops being negligible, and erring low keeps imports on the live path."""
    return min(MAX_FULL_DIM_COST, dim / reduced_dim)


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


class LocalWrites(OnlineRebuilds):
    """Creating and deleting libraries, adding, updating, removing and importing items."""

    async def create_library(self, new: NewLibrary) -> Library:
        row = await self.store.create_library(new)
        return Library(row, LibraryIndex.empty(new.dim, self.cfg.index, self._index_pool))

    async def delete_library(self, lib: Library | Unavailable) -> None:
        async with self._locks.setdefault(lib.row.id, asyncio.Lock()):
            await self.store.delete_library(lib.row.id)
            for path in graph_files.all_files(self.index_dir, lib.row.id):
                path.unlink(missing_ok=True)
        self._locks.pop(lib.row.id, None)

    async def save_settings(self, lib: Library, settings: LibrarySettings) -> None:
        await self.store.save_settings(lib.row.id, settings)

    async def drop_rows(self, row: LibraryRow, keys: Sequence[int]) -> None:
        await self.store.remove_items(row.id, keys)

    async def add_items(self, lib: Library, items: Sequence[NewItem], capacity: int = 0) -> list[bool]:
        stored = []
        async with self.write_lock(lib):
            index = index_of(lib)
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
                await index.add(item.key, item.vector, seq, tag_pair(item.tags))
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
                index_of(lib).set_tags([key], tag_pair(tags))
        return updated

    async def remove_items(self, lib: Library, keys: Sequence[int]) -> list[int]:
        async with self.write_lock(lib):
            removed, seq = await self.store.remove_items(lib.row.id, keys)
            if removed:
                await index_of(lib).delete(removed, seq)
        return removed

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
                await self._index_committed(index_of(target), target.row, live=True)
            _log_import(target.row, index_of(target), result.inserted, stored_s, time.monotonic() - started)
        await asyncio.to_thread(release_free_heap)
        return target, result.inserted, result.duplicates

    def _reduces_on_import(self, lib: Library, imported: int, total: int) -> bool:
        """Whether an import of ``imported`` rows, leaving ``total``, should build the reduced
        index from every stored row rather than add the rows to the full-dimension one.

        Only when that is no more work under the write lock: a reduced insert costs a fraction
        of a full-dimension one (:func:`_full_dim_cost`), so rebuilding ``total`` rows reduced
        beats adding ``imported`` at full dimension once ``imported * cost >= total``. A
        smaller import takes the live path and the library adopts the reduction in the
        background, as it would after adds, as it does while a rebuild of it runs (that rebuild
        catches up with the import and swaps in the right kind itself)."""
        cfg = self.cfg.index
        return (
            lib.row.id not in self._retagged  # no rebuild of this library running
            and index_of(lib).kind != "reduced"
            and cfg.reduce_dim < lib.row.dim
            and total >= cfg.reduce_min_items
            and imported * _full_dim_cost(lib.row.dim, cfg.reduce_dim) >= total
        )

    async def _index_committed(self, index: LibraryIndex, row: LibraryRow, live: bool) -> None:
        try:
            await self._replay(index, row, live=live)
        except Exception as exc:
            log.exception("library %s: indexing the imported rows failed", row.appid)
            raise IndexingFailed(row, exc) from exc

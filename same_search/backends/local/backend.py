"""The local backend, whole: the contract's reads and lifecycle here, its writes, index loading
and rebuilds in the modules it derives from (``writes``, ``rebuilds``, ``indexes``)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Sequence

import numpy as np

from same_search.backends.base import (
    Backend,
    Figures,
    ItemRow,
    JobLedger,
    Library,
    LibraryRow,
    SearchResult,
    TagFilter,
    Unavailable,
)
from same_search.backends.capabilities import (
    LearnedSpaces,
    RecallTuned,
    ReducedIndexes,
    Reembedding,
    ReembedLedger,
    RefilledFeatures,
)
from same_search.backends.local.state import index_of
from same_search.backends.local.writes import LocalWrites
from same_search.index.heap import release_free_heap
from same_search.index.reduced import ReducedIndex
from same_search.index.space import WEIGHT, LearnedSpace
from same_search.index.space_index import SpaceIndex
from same_search.rows import load_failure_reason, raw_item_problems

log = logging.getLogger(__name__)


class LocalBackend(
    LocalWrites, Backend, RefilledFeatures, Reembedding, ReducedIndexes, RecallTuned, LearnedSpaces
):
    """Libraries in ``<data_dir>/same_search.sqlite3``, indexes snapshotted to ``<data_dir>/indexes``."""

    name = "local"

    # ---- lifecycle -------------------------------------------------------------------------------

    async def open(self) -> None:
        await self.store.open()

    async def close(self) -> None:
        """Stop the index threads and close the database (the service saves indexes first).

        The threads are joined off the event loop: work still running on them (a long insert)
        finishes while the loop keeps answering whatever else is shutting down."""
        for pool in (self._index_pool, self._save_pool):
            await asyncio.to_thread(pool.shutdown, wait=True)
        await self.store.close()

    @property
    def jobs(self) -> JobLedger:
        return self.store

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
        await self.restore_tuning(row, index)
        log.info("library %s ready: %d items in %.2fs", row.appid, index.count(), time.monotonic() - started)
        return Library(row, index)

    async def stored_count(self, row: LibraryRow) -> int:
        return await self.store.count(row.id)

    async def bad_rows(self, row: LibraryRow) -> list[tuple[int, str]]:
        bad: list[tuple[int, str]] = []
        async for chunk in self.store.raw_items(row.id):
            bad += raw_item_problems(chunk, row.dim)
        return bad

    # ---- learned spaces --------------------------------------------------------------------------

    async def choose_space(self, lib: Library, learned: bool) -> None:
        space = self.space_of(lib)
        await self.store.choose_space(lib.row.id, learned, space.weight if space else WEIGHT)
        self.spaces_chosen[lib.row.id] = learned

    async def adopt_space(self, lib: Library, space: LearnedSpace) -> None:
        await self.store.save_space(lib.row.id, space)
        self.spaces_chosen[lib.row.id] = True

    def space_of(self, lib: Library) -> LearnedSpace | None:
        index = index_of(lib)
        return index.space if isinstance(index, SpaceIndex) else None

    def space_state(self, lib: Library) -> dict[str, object]:
        space, chosen = self.space_of(lib), self.spaces_chosen.get(lib.row.id, False)
        state: dict[str, object] = {
            "chosen": "learned" if chosen else "native",
            "ranks_in": "learned" if space is not None else "native",
            "min_items": self.cfg.index.space_min_items,
        }
        if space is not None:
            state |= space.to_json()
        return state

    # ---- items -----------------------------------------------------------------------------------

    async def count(self, lib: Library) -> int:
        return index_of(lib).count()

    async def get_items(self, lib: Library, keys: Sequence[int]) -> dict[int, ItemRow]:
        return await self.store.get_items(lib.row.id, keys)

    async def vector(self, lib: Library, key: int) -> np.ndarray | None:
        """The stored vector of a live item (a reduced index reads it from SQLite: its graph
        holds reduced vectors, and one row is as cheap to read there as from the native file)."""
        index = index_of(lib)
        if not index.contains(key):
            return None
        if isinstance(index, ReducedIndex | SpaceIndex):  # their indexes hold other vectors
            return (await self.store.vectors_of(lib.row.id, [key], lib.row.dim)).get(key)
        try:
            return (await index.vectors_of([key]))[0]
        except (KeyError, RuntimeError):  # removed between the check and the read: not stored
            return None

    async def search(
        self, lib: Library, vector: np.ndarray, k: int, tag_filter: TagFilter | None, stored: bool = False
    ) -> SearchResult:
        """The index answers tag filters from its own tag table (no database read per search)."""
        index = index_of(lib)
        k = min(k, index.count())
        if k <= 0:
            return SearchResult([])
        if tag_filter is not None and tag_filter.active:
            return SearchResult(
                await index.search(vector, k, None, tuple(tag_filter.tags), tag_filter.match_all, stored)
            )
        return SearchResult(await index.search(vector, k, stored=stored))

    async def page_items(self, lib: Library, offset: int, limit: int) -> list[ItemRow]:
        return await self.store.page_items(lib.row.id, offset, limit)

    async def thumbnail(self, lib: Library, key: int) -> bytes | None:
        return await self.store.thumbnail(lib.row.id, key)

    async def local_features(self, lib: Library, keys: Sequence[int]) -> dict[int, bytes]:
        return await self.store.local_features(lib.row.id, keys)

    async def items_without_local_features(self, lib: Library) -> int:
        return await self.store.items_without_local_features(lib.row.id)

    async def features_pending(
        self, lib: Library, limit: int, after_seq: int = 0
    ) -> list[tuple[int, str, int]]:
        return await self.store.features_pending(lib.row.id, limit, after_seq)

    async def save_local_features(self, lib: Library, features: Sequence[tuple[int, bytes]]) -> None:
        await self.store.save_local_features(lib.row.id, features)

    def export_items(self, lib: Library) -> AsyncIterator[list[tuple[ItemRow, np.ndarray]]]:
        return self.store.items_with_vectors(lib.row.id)

    def describe(self, lib: Library) -> Figures:
        index = index_of(lib)
        return {
            "last_index_save": index.saved_at,
            "index_slots": index.capacity(),
            "search": index.strategy,
            "recall": self.recall_state(lib),
            **(
                {"reduced_dim": index.projection.dim, "projection": index.projection.fingerprint}
                if isinstance(index, ReducedIndex)
                else {}
            ),
        }

    # ---- kept originals and re-embedding ---------------------------------------------------------

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

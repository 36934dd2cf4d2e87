"""Library logic: the layer between routes and the embedder and the library backend.

This is the only module that talks to a backend (``same_search.backends``): routes, the
management API, import jobs, export/import, metrics and the console go through
:class:`LibraryService`, and none of them knows whether libraries live in SQLite + hnswlib on
this box or in a Milvus cluster shared by several daemons. The API's rules (err_no 101/102/103/
104, paging, ``min_score``) are decided here, once, for every backend.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from same_search.backends.base import (
    AlreadyExists,
    Backend,
    ItemRow,
    JobLedger,
    Library,
    LibraryFull,
    LibraryGone,
    NewItem,
    StorageError,
    TagFilter,
    Tags,
)
from same_search.config import Config
from same_search.contsign import ContSign
from same_search.embed.images import Region
from same_search.embed.service import EmbedService
from same_search.errors import ApiError, ErrNo
from same_search.near_duplicates import DEFAULT_MIN_SCORE, OFF, DupPolicy, Query, select

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Nearest items offered to the near-duplicate decision (more than it reports: a verifier may drop some).
NEAR_DUPLICATE_CANDIDATES = 32

__all__ = [
    "AddResult",
    "DuplicateAdd",
    "Hit",
    "Item",
    "Library",
    "LibraryService",
    "ModelMismatch",
    "NearDuplicateAdd",
    "SearchPage",
    "TagFilter",
]


class DuplicateAdd(ApiError):
    """err_no 101; carries the stored item so the route can show it, as the spec's example does."""

    def __init__(self, item: Item) -> None:
        super().__init__(ErrNo.DUPLICATED_ADD, "duplicated add")
        self.item = item


class NearDuplicateAdd(ApiError):
    """err_no 101 under the ``reject`` policy: the image is not stored; carries the close items."""

    def __init__(self, hits: list[Hit]) -> None:
        super().__init__(ErrNo.DUPLICATED_ADD, "duplicated add")
        self.hits = hits


@dataclass(frozen=True)
class AddResult:
    """A stored image's contsign, and the near-duplicates found under the ``warn`` policy."""

    contsign: ContSign
    near_duplicates: list[Hit]


class ModelMismatch(RuntimeError):
    """A library was built with another model than the one serving; never mix vectors."""


@dataclass(frozen=True)
class Item:
    """A stored image as clients see it."""

    contsign: ContSign
    brief: bytes
    tags: Tags | None


@dataclass(frozen=True)
class Hit:
    """One search result."""

    item: Item
    score: float


@dataclass(frozen=True)
class SearchPage:
    """One page of results and whether more exist beyond it."""

    hits: list[Hit]
    has_more: bool


@dataclass(frozen=True)
class LibraryCensus:
    """What /metrics reports per library."""

    appid: str
    items: int
    last_index_save: float | None


def _item(row: ItemRow) -> Item:
    return Item(ContSign.from_key(row.key), row.brief, row.tags)


def _storage_failed(exc: StorageError) -> ApiError:
    return ApiError(ErrNo.INTERNAL, f"storage write failed, nothing was changed: {exc}")


def _not_signed_up(appid: str) -> ApiError:
    return ApiError(ErrNo.NOT_SIGNED_UP, f"appid {appid!r} has not signed up")


class LibraryService:
    """Every library of the daemon and the operations the API offers on them."""

    def __init__(self, cfg: Config, backend: Backend, embed: EmbedService) -> None:
        self.cfg = cfg
        self.backend = backend
        self.embed = embed
        self.libraries: dict[str, Library] = {}
        self._signup_lock = asyncio.Lock()
        #: Per library: held while a near-duplicate check and the store that follows it run.
        self._dup_locks: dict[str, asyncio.Lock] = {}

    # ---- lifecycle -----------------------------------------------------------------------------

    async def open(self) -> None:
        """Open the backend and load every library (refusing libraries of another model)."""
        await self.backend.open()
        for lib in await self.backend.load_libraries():
            self._check_model(lib)
            self.libraries[lib.row.appid] = lib

    def _check_model(self, lib: Library) -> None:
        info, row = self.embed.info, lib.row
        if row.fingerprint != info.fingerprint or row.dim != info.dim:
            raise ModelMismatch(
                f"library {row.appid!r} holds vectors of model {row.model_id} "
                f"(fingerprint {row.fingerprint}, dim {row.dim}) but this daemon serves {info.model_id} "
                f"(fingerprint {info.fingerprint}, dim {info.dim}). Start with the [model] "
                "settings the library was built with, or point --data-dir at a new directory "
                "and add the images again."
            )

    async def save_indexes(self, only_dirty: bool = True) -> int:
        """Make every (changed) library's search structure durable; returns how many were saved."""
        return await self.backend.save(list(self.libraries.values()), only_dirty)

    async def close(self) -> None:
        """Save changed indexes, then close the backend.

        A failed save (disk full, say) is logged, not raised: snapshots only shorten the next
        start, which replays or rebuilds from the database; nothing acknowledged depends on them.
        """
        try:
            await self.save_indexes()
        except Exception:
            log.exception(
                "could not save the indexes at shutdown; the next start rebuilds them from the database"
            )
        finally:
            await self.backend.close()

    @property
    def jobs(self) -> JobLedger:
        """Where import jobs are recorded (daemon state, on this box whatever the backend)."""
        return self.backend.jobs

    @property
    def backend_name(self) -> str:
        return self.backend.name

    # ---- libraries -------------------------------------------------------------------------------

    async def get(self, appid: str) -> Library:
        """A signed-up library, or err_no 103.

        A library this daemon has not seen may have been created by another daemon sharing the
        backend: it is looked up there before the answer is 103.
        """
        lib = self.libraries.get(appid)
        if lib is None:
            lib = await self.backend.find_library(appid)
            if lib is None:
                raise _not_signed_up(appid)
            try:
                self._check_model(lib)
            except ModelMismatch as exc:  # made by a daemon serving another model: never mix
                raise ApiError(ErrNo.INTERNAL, str(exc)) from exc
            lib = self.libraries.setdefault(appid, lib)
        return lib

    async def all(self) -> list[Library]:
        """Every library, including those other daemons created on a shared backend."""
        if self.backend.shared:
            current = {lib.row.appid: lib for lib in await self.backend.load_libraries()}
            for appid in list(self.libraries):
                if appid not in current:  # deleted through another daemon
                    del self.libraries[appid]
            for appid, lib in current.items():
                self.libraries.setdefault(appid, lib)
        return list(self.libraries.values())

    async def signup(self, appid: str) -> Library:
        """Create a library for the serving model; err_no 104 if it exists."""
        async with self._signup_lock:
            exists = ApiError(ErrNo.ALREADY_SIGNED_UP, f"appid {appid!r} already signed up")
            if appid in self.libraries or await self.backend.find_library(appid) is not None:
                raise exists
            info = self.embed.info
            try:
                lib = await self.backend.create_library(appid, info.model_id, info.dim, info.fingerprint)
            except AlreadyExists as exc:
                raise exists from exc
            except StorageError as exc:
                raise _storage_failed(exc) from exc
            self.libraries[appid] = lib
            log.info("library %s signed up (model %s, dim %d)", appid, info.model_id, info.dim)
            return lib

    async def _call(self, lib: Library, operation: Awaitable[T]) -> T:
        """Await a backend call on ``lib``: storage failures become err_no answers.

        A library deleted behind this daemon's back (another daemon, shared backend) is
        forgotten and answered as 103, as it would be here.
        """
        try:
            return await operation
        except LibraryGone:
            self.libraries.pop(lib.row.appid, None)
            raise _not_signed_up(lib.row.appid) from None
        except LibraryFull as exc:
            raise ApiError(ErrNo.INTERNAL, str(exc)) from exc
        except StorageError as exc:
            raise _storage_failed(exc) from exc

    async def count(self, lib: Library) -> int:
        """Items stored in a library."""
        return await self._call(lib, self.backend.count(lib))

    # ---- items ------------------------------------------------------------------------------------

    async def add(
        self,
        lib: Library,
        image: bytes,
        brief: bytes,
        tags: Tags | None,
        policy: DupPolicy = OFF,
        region: Region | None = None,
    ) -> AddResult:
        """Embed and store one image; err_no 101 (with the stored item) if its contsign is stored.

        Under an active near-duplicate ``policy`` the close items are looked up first: ``reject``
        raises :class:`NearDuplicateAdd` and stores nothing, ``warn`` stores and returns them.
        With a ``region`` only that part of the picture is embedded (and kept as the thumbnail);
        the contsign stays the whole file's.
        """
        contsign = ContSign.of_image(image)
        await self._refuse_duplicate(lib, contsign)
        vector, thumbnail = await self.embed.embed_with_thumbnail(
            image, self.cfg.storage.thumbnail_side, region
        )
        # Shielded: once the row is being committed, the index must follow even if the caller is
        # cancelled (client gone, shutdown), or index and database would disagree until a restart.
        close = await asyncio.shield(
            self.store_vector(lib, contsign, brief, tags, vector, thumbnail, policy, Query(vector, image))
        )
        return AddResult(contsign, close)

    async def store_vector(
        self,
        lib: Library,
        contsign: ContSign,
        brief: bytes,
        tags: Tags | None,
        vector: np.ndarray,
        thumbnail: bytes | None = None,
        policy: DupPolicy = OFF,
        query: Query | None = None,
    ) -> list[Hit]:
        """Store an item with an already computed vector (``add`` and imports); 101 if stored.

        Under an active ``policy`` the near-duplicate check and the store run under the library's
        near-duplicate lock, so two close images added at once through this daemon cannot both
        pass it (through two daemons on a shared backend they can: docs/scale-out.md). Returns the
        near-duplicates found (always empty when ``policy`` is off).
        """
        if not policy.active:
            await self._store_one(lib, contsign, brief, tags, vector, thumbnail)
            return []
        async with self._dup_locks.setdefault(lib.row.appid, asyncio.Lock()):
            close = await self._near_duplicates(lib, query or Query(vector), policy)
            if close and policy.rejects:
                raise NearDuplicateAdd(close)
            await self._store_one(lib, contsign, brief, tags, vector, thumbnail)
        return close

    async def _store_one(
        self,
        lib: Library,
        contsign: ContSign,
        brief: bytes,
        tags: Tags | None,
        vector: np.ndarray,
        thumbnail: bytes | None,
    ) -> None:
        stored = await self.store_vectors(lib, [NewItem(contsign.key, brief, tags, vector, thumbnail)])
        if not stored[0]:
            await self._refuse_duplicate(lib, contsign)
            raise ApiError(ErrNo.DUPLICATED_ADD, "duplicated add")  # removed again meanwhile

    async def _near_duplicates(self, lib: Library, query: Query, policy: DupPolicy) -> list[Hit]:
        """Stored items the policy's decision calls near-duplicates of ``query``, best first."""
        if not policy.active:
            return []
        result = await self._call(
            lib, self.backend.search(lib, query.vector, NEAR_DUPLICATE_CANDIDATES, None)
        )
        chosen = select(query, result.found, policy)
        rows = result.rows
        missing = [c.key for c in chosen if c.key not in rows]
        if missing:
            rows = {**rows, **await self._call(lib, self.backend.get_items(lib, missing))}
        return [Hit(_item(rows[c.key]), c.score) for c in chosen if c.key in rows]

    async def set_dup_policy(self, lib: Library, mode: str, min_score: float | None) -> None:
        """Store a library's default near-duplicate policy (``min_score`` None: the built-in floor)."""
        row = dataclasses.replace(lib.row, dup_policy=mode, dup_min_score=min_score)
        await self._call(lib, self.backend.update_library(lib, row))
        lib.row = row

    async def store_vectors(self, lib: Library, items: list[NewItem]) -> list[bool]:
        """Store a batch of items with their vectors; False for each key already stored."""
        capacity = self.cfg.limits.library_capacity
        return await self._call(lib, self.backend.add_items(lib, items, capacity))

    async def _refuse_duplicate(self, lib: Library, contsign: ContSign) -> None:
        rows = await self._call(lib, self.backend.get_items(lib, [contsign.key]))
        if contsign.key in rows:
            raise DuplicateAdd(_item(rows[contsign.key]))

    async def update(self, lib: Library, contsign: ContSign, brief: bytes | None, tags: Tags | None) -> None:
        """Replace brief and/or tags; err_no 102 if the item is not stored."""
        found = await self._call(lib, self.backend.update_item(lib, contsign.key, brief, tags))
        if not found:
            raise ApiError(ErrNo.UPDATE_MISSING, f"contsign {contsign} is not in library {lib.row.appid!r}")

    async def remove(self, lib: Library, contsigns: list[ContSign]) -> int:
        """Remove items (absent ones are ignored); returns how many were removed."""
        removing = self._call(lib, self.backend.remove_items(lib, [c.key for c in contsigns]))
        return len(await asyncio.shield(removing))

    async def vector_of(self, lib: Library, contsign: ContSign) -> np.ndarray:
        """The stored vector of an item (search by contsign); err_no 1 if it is not stored."""
        vector = await self._call(lib, self.backend.vector(lib, contsign.key))
        if vector is None:
            raise ApiError(ErrNo.BAD_REQUEST, f"contsign {contsign} is not in library {lib.row.appid!r}")
        return vector

    async def search(
        self,
        lib: Library,
        vector: np.ndarray,
        pn: int,
        rn: int,
        tag_filter: TagFilter | None,
        min_score: float | None = None,
    ) -> SearchPage:
        """Results ``pn .. pn+rn`` by descending cosine similarity (only those >= ``min_score``).

        One result past the page is asked for: it tells whether more exist, on every backend.
        """
        result = await self._call(lib, self.backend.search(lib, vector, pn + rn + 1, tag_filter))
        found = result.found
        if min_score is not None:
            found = [(key, score) for key, score in found if score >= min_score]
        window = found[pn : pn + rn]
        rows = result.rows
        missing = [key for key, _ in window if key not in rows]
        if missing:
            rows = {**rows, **await self._call(lib, self.backend.get_items(lib, missing))}
        hits = [Hit(_item(rows[key]), score) for key, score in window if key in rows]
        return SearchPage(hits, has_more=len(found) > pn + rn)

    # ---- management ------------------------------------------------------------------------------

    async def delete_library(self, lib: Library) -> None:
        """Drop a library: its items, thumbnails and search structure."""
        await self._call(lib, self.backend.delete_library(lib))
        self.libraries.pop(lib.row.appid, None)
        log.info("library %s deleted", lib.row.appid)

    async def rebuild(self, lib: Library) -> float:
        """Rebuild a library's search structure from its items (drops deleted slots); returns seconds."""
        started = asyncio.get_running_loop().time()
        await self._call(lib, self.backend.rebuild(lib))
        log.info("library %s: index rebuilt (%d items)", lib.row.appid, await self.count(lib))
        return asyncio.get_running_loop().time() - started

    async def items_page(self, lib: Library, offset: int, limit: int) -> list[tuple[Item, float, float]]:
        """(item, created_at, updated_at) in insertion order."""
        rows = await self._call(lib, self.backend.page_items(lib, offset, limit))
        return [(_item(row), row.created_at, row.updated_at) for row in rows]

    async def items(self, lib: Library, keys: list[int]) -> dict[int, Item]:
        """Stored items by key (absent keys are left out)."""
        rows = await self._call(lib, self.backend.get_items(lib, keys))
        return {key: _item(row) for key, row in rows.items()}

    async def nearest(self, lib: Library, vector: np.ndarray, k: int) -> list[tuple[int, float]]:
        """The ``k`` nearest stored items as (key, score), best first, no filter, no paging."""
        return (await self._call(lib, self.backend.search(lib, vector, k, None))).found

    async def item(self, lib: Library, contsign: ContSign) -> tuple[Item, float, float] | None:
        """One item with its timestamps, or None."""
        rows = await self._call(lib, self.backend.get_items(lib, [contsign.key]))
        row = rows.get(contsign.key)
        return None if row is None else (_item(row), row.created_at, row.updated_at)

    async def thumbnail(self, lib: Library, contsign: ContSign) -> bytes | None:
        """The small JPEG stored with an item, if any."""
        return await self._call(lib, self.backend.thumbnail(lib, contsign.key))

    async def export_items(self, lib: Library) -> AsyncIterator[list[tuple[Item, np.ndarray]]]:
        """Every item with its vector, in insertion order, in chunks of (Item, vector)."""
        async for chunk in self.backend.export_items(lib):
            yield [(_item(row), vector) for row, vector in chunk]

    async def stats(self, lib: Library) -> dict:
        """What the management API reports about one library."""
        return {
            "appid": lib.row.appid,
            "items": await self.count(lib),
            "capacity": self.cfg.limits.library_capacity,
            "model": lib.row.model_id,
            "dim": lib.row.dim,
            "fingerprint": lib.row.fingerprint,
            "created": lib.row.created_at,
            "backend": self.backend.name,
            **self.backend.describe(lib),
            "dup_policy": lib.row.dup_policy,
            "dup_min_score": lib.row.dup_min_score
            if lib.row.dup_min_score is not None
            else DEFAULT_MIN_SCORE,
        }

    async def snapshot(self, lib: Library) -> dict[str, int]:
        """The spec's snapshot block for one library."""
        return {
            "tag": 0,
            "index_size": await self.count(lib),
            "index_capacity": self.cfg.limits.library_capacity,
            "queue_size": self.embed.queue_size,
        }

    async def census(self) -> list[LibraryCensus]:
        """Per-library figures for /metrics, read at scrape time."""
        found = []
        for lib in list(self.libraries.values()):
            try:
                items = await self.count(lib)
            except ApiError:
                continue  # deleted meanwhile
            found.append(LibraryCensus(lib.row.appid, items, self.backend.describe(lib)["last_index_save"]))
        return found

"""Writing a library one item at a time: add (with the near-duplicate policy), update, remove.

The last checks before storage live here (a finite unit vector of the library's dimension,
tags within uint32, a bounded brief), whatever path an item came by, so no stored row can later
keep the library from loading. Bulk imports are :mod:`same_search.libraries.imports`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import numpy as np

from same_search.backends.base import Library, ModelChanged, NewItem, Tags
from same_search.backends.capabilities import KeptOriginals, LocalFeatures
from same_search.config import Config
from same_search.contsign import ContSign
from same_search.embed.images import Region
from same_search.embed.service import EmbedService
from same_search.errors import ApiError, ErrNo, bad_request
from same_search.index.vectors import vector_problem
from same_search.libraries.reads import LibraryReads
from same_search.libraries.records import AddResult, Hit, Item, item_of
from same_search.libraries.registry import LibraryRegistry
from same_search.near_duplicates import MAX_REPORTED, OFF, DupPolicy
from same_search.rows import tags_problem
from same_search.verify import decision
from same_search.verify.service import SamePictureService

log = logging.getLogger(__name__)

#: Nearest items offered to the near-duplicate decision (more than it reports: a verifier may drop some).
NEAR_DUPLICATE_CANDIDATES = 32


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


async def _nothing() -> None:
    return None


def check_vector(lib: Library, key: int, vector: np.ndarray) -> None:
    """err_no 11 for a vector that is not a finite unit vector of the library's dimension: a
    bug upstream, never the client's input."""
    problem = vector_problem(np.asarray(vector), lib.row.dim)
    if problem is not None:
        raise ApiError(ErrNo.INTERNAL, f"refusing to store contsign {ContSign.from_key(key)}: {problem}")


class LibraryWrites:
    """Adds, updates and removals of single items."""

    def __init__(
        self,
        registry: LibraryRegistry,
        reads: LibraryReads,
        verifier: SamePictureService,
        on_stored: Callable[[Library], None],
    ) -> None:
        self.registry = registry
        self.reads = reads
        self.backend = registry.backend
        self.cfg: Config = registry.cfg
        self.verifier = verifier
        #: Called after items were stored (the library may now be due for a reduced index).
        self._on_stored = on_stored
        #: Per library: held while a near-duplicate check and the store that follows it run.
        self._dup_locks: dict[str, asyncio.Lock] = {}

    @property
    def keeps_originals(self) -> bool:
        """Whether adds keep the uploaded bytes (configured on, and the backend can)."""
        return self.cfg.storage.keep_originals and isinstance(self.backend, KeptOriginals)

    @property
    def keeps_local_features(self) -> bool:
        """Whether adds extract local features: configured on, and the backend stores them."""
        return self.cfg.storage.local_features and isinstance(self.backend, LocalFeatures)

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
        await self.refuse_duplicate(lib, contsign)
        while True:
            try:
                return await self._add(lib, contsign, image, brief, tags, policy, region)
            except ModelChanged:  # a re-embed switched the library while this image was embedded
                continue

    async def _add(
        self,
        lib: Library,
        contsign: ContSign,
        image: bytes,
        brief: bytes,
        tags: Tags | None,
        policy: DupPolicy,
        region: Region | None,
    ) -> AddResult:
        embed = self.registry.embed_for(lib)
        vector, thumbnail, local = await self.embed_picture(embed, image, region)
        # Shielded: once the row is being committed, the index must follow even if the caller is
        # cancelled (client gone, shutdown), or index and database would disagree until a restart.
        # Only the whole upload is kept, and a re-embed embeds its original whole: an item added
        # with a region keeps none (a re-embed names it) rather than get the whole picture's vector.
        original = image if self.keeps_originals and region is None else None
        item = NewItem(contsign.key, brief, tags, vector, thumbnail, local, original, embed.info.fingerprint)
        close = await asyncio.shield(self.store(lib, item, policy))
        return AddResult(contsign, close)

    async def embed_picture(
        self, embed: EmbedService, image: bytes, region: Region | None = None
    ) -> tuple[np.ndarray, bytes | None, bytes | None]:
        """(vector, thumbnail, local features) of a picture about to be stored, by ``embed``
        (the library's own model).

        Local features of the whole picture (same-picture checks) are extracted alongside the
        forward pass; when the embedder refuses (busy, timeout, bad image) the extraction is
        cancelled too, so refused adds never pile up work outside the embedder's admission limit.
        """
        extraction = asyncio.ensure_future(
            self.verifier.extract(image) if self.keeps_local_features else _nothing()
        )
        try:
            vector, thumbnail = await embed.embed_with_thumbnail(
                image, self.cfg.storage.thumbnail_side, region
            )
        except BaseException:
            extraction.cancel()
            raise
        return vector, thumbnail, await extraction

    def check(self, lib: Library, item: NewItem) -> None:
        """The last check before storage (module doc)."""
        self.check_fields(item.brief, item.tags)
        check_vector(lib, item.key, item.vector)

    def check_fields(self, brief: bytes, tags: Tags | None) -> None:
        """err_no 1 for tags outside uint32 or a brief that is not bytes within the limit."""
        problem = tags_problem(tags)
        if problem is not None:
            raise bad_request(problem)
        if not isinstance(brief, bytes) or len(brief) > self.cfg.limits.brief_max_bytes:
            raise bad_request(f"brief must be at most {self.cfg.limits.brief_max_bytes} bytes")

    async def store(self, lib: Library, item: NewItem, policy: DupPolicy = OFF) -> list[Hit]:
        """Store an item with an already computed vector (adds and imports); 101 if stored.

        Under an active ``policy`` the near-duplicate check and the store run under the library's
        near-duplicate lock, so two close images added at once through this daemon cannot both
        pass it (through two daemons on a shared backend they can: docs/scale-out.md). Returns the
        near-duplicates found (always empty when ``policy`` is off).
        """
        self.check(lib, item)
        if not policy.active:
            await self._store_one(lib, item)
            return []
        async with self._dup_locks.setdefault(lib.row.appid, asyncio.Lock()):
            close = await self._near_duplicates(lib, item, policy)
            if item.fingerprint is not None and item.fingerprint != lib.row.fingerprint:
                # A re-embed switched the library while this vector was compared with its index:
                # the comparison meant nothing (and must not reject); the add embeds again.
                raise ModelChanged(f"library {lib.row.appid!r} moved to model {lib.row.model_id}")
            if close and policy.rejects:
                raise NearDuplicateAdd(close)
            await self._store_one(lib, item)
        return close

    async def _store_one(self, lib: Library, item: NewItem) -> None:
        stored = await self.store_many(lib, [item])
        if not stored[0]:
            contsign = ContSign.from_key(item.key)
            await self.refuse_duplicate(lib, contsign)
            raise ApiError(ErrNo.DUPLICATED_ADD, "duplicated add")  # removed again meanwhile

    async def store_many(self, lib: Library, items: list[NewItem]) -> list[bool]:
        """Store a batch of checked items with their vectors; False for each key already stored."""
        capacity = self.cfg.limits.library_capacity
        stored = await self.registry.call(lib, self.backend.add_items(lib, items, capacity))
        self._on_stored(lib)
        return stored

    async def _near_duplicates(self, lib: Library, item: NewItem, policy: DupPolicy) -> list[Hit]:
        """Stored items that are the same picture as ``item`` under the policy's floors, best
        first (:func:`same_search.verify.decision.is_same_picture`): a look-alike above a floor
        is not a near-duplicate."""
        floors = self.reads.floors(lib)[2] if policy.floors == decision.ADD else policy.floors
        result = await self.reads.nearest(lib, item.vector, NEAR_DUPLICATE_CANDIDATES)
        close = [(key, score) for key, score in result.found if score >= floors.lowest]
        stored = await self.reads.local_features(lib, [key for key, _ in close])
        query = self.verifier.stored_query(item.local_features)
        verdicts = await self.verifier.judge(query, close, stored, floors)
        chosen = [v for v in verdicts if v.same][:MAX_REPORTED]
        rows = result.rows
        missing = [v.key for v in chosen if v.key not in rows]
        if missing:
            rows = {**rows, **await self.reads.rows(lib, missing)}
        return [Hit(item_of(rows[v.key]), v.score, confirmed=True) for v in chosen if v.key in rows]

    async def refuse_duplicate(self, lib: Library, contsign: ContSign) -> None:
        """err_no 101 (with the stored item) when ``contsign`` is stored already."""
        rows = await self.reads.rows(lib, [contsign.key])
        if contsign.key in rows:
            raise DuplicateAdd(item_of(rows[contsign.key]))

    async def update(self, lib: Library, contsign: ContSign, brief: bytes | None, tags: Tags | None) -> None:
        """Replace brief and/or tags; err_no 102 if the item is not stored."""
        found = await self.registry.call(lib, self.backend.update_item(lib, contsign.key, brief, tags))
        if not found:
            raise ApiError(ErrNo.UPDATE_MISSING, f"contsign {contsign} is not in library {lib.row.appid!r}")

    async def remove(self, lib: Library, contsigns: list[ContSign]) -> int:
        """Remove items (absent ones are ignored); returns how many were removed."""
        removing = self.registry.call(lib, self.backend.remove_items(lib, [c.key for c in contsigns]))
        return len(await asyncio.shield(removing))

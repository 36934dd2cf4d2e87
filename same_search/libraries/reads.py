"""Reading a library: items and their pages, vectors, thumbnails, local features, originals.

Every read goes through the registry's :meth:`~same_search.libraries.registry.LibraryRegistry.call`,
so a storage failure or a library deleted meanwhile answers as the API says. This is also what
the search pipeline reads through (:class:`same_search.search.reads.LibraryReads`).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

import numpy as np

from same_search.backends.base import ItemRow, Library, SearchResult, StorageError, TagFilter
from same_search.backends.capabilities import KeptOriginals, KeyedSearch, LearnedSpaces, LocalFeatures
from same_search.contsign import ContSign
from same_search.embed.images import Region
from same_search.errors import ApiError, ErrNo
from same_search.index import space
from same_search.libraries.records import Item, item_of
from same_search.libraries.registry import LibraryRegistry, storage_failed
from same_search.verify import decision
from same_search.verify.service import QueryFeatures, SamePictureService


class LibraryReads:
    """What can be read from a served library."""

    def __init__(self, registry: LibraryRegistry, verifier: SamePictureService) -> None:
        self.registry = registry
        self.backend = registry.backend
        self.verifier = verifier

    async def nearest(
        self,
        lib: Library,
        vector: np.ndarray,
        k: int,
        tag_filter: TagFilter | None = None,
        stored: bool = False,
    ) -> SearchResult:
        """Up to ``k`` stored items by descending score (among those passing ``tag_filter``).
        ``stored``: ``vector`` is a stored item's, searched at the library's tuned depth; any
        other (an image's) walks deeper (``[index] new_vector_depth``)."""
        return await self.registry.call(lib, self.backend.search(lib, vector, k, tag_filter, stored))

    def space(self, lib: Library) -> space.LearnedSpace | None:
        """The learned space the library ranks in (None: native cosine)."""
        return self.backend.space_of(lib) if isinstance(self.backend, LearnedSpaces) else None

    def floors(self, lib: Library) -> tuple[decision.Floors, decision.Floors, decision.Floors]:
        """The decision's (search, deep, add) floors for the scores the library's searches give:
        the built-in ones, or those refitted for its learned space (index/space.py)."""
        return space.floors(self.space(lib))

    async def rows(self, lib: Library, keys: Sequence[int]) -> dict[int, ItemRow]:
        """Stored rows by key (absent keys are left out)."""
        return await self.registry.call(lib, self.backend.get_items(lib, keys))

    async def items(self, lib: Library, keys: Sequence[int]) -> dict[int, Item]:
        """Stored items by key (absent keys are left out)."""
        return {key: item_of(row) for key, row in (await self.rows(lib, keys)).items()}

    async def item(self, lib: Library, contsign: ContSign) -> Item | None:
        """One item, or None."""
        return (await self.items(lib, [contsign.key])).get(contsign.key)

    async def items_page(self, lib: Library, offset: int, limit: int) -> list[Item]:
        """Items in insertion order."""
        rows = await self.registry.call(lib, self.backend.page_items(lib, offset, limit))
        return [item_of(row) for row in rows]

    async def vector_of(self, lib: Library, contsign: ContSign) -> np.ndarray:
        """The stored vector of an item (search by contsign); err_no 1 if it is not stored."""
        vector = await self.registry.call(lib, self.backend.vector(lib, contsign.key))
        if vector is None:
            raise _not_stored(lib, contsign)
        return vector

    async def nearest_to_item(
        self, lib: Library, contsign: ContSign, k: int, tag_filter: TagFilter | None = None
    ) -> tuple[np.ndarray, SearchResult]:
        """A stored item's vector and its ``k`` nearest items (:meth:`vector_of`, then
        :meth:`nearest`), in one backend call where the backend can (:class:`KeyedSearch`)."""
        if not isinstance(self.backend, KeyedSearch):
            vector = await self.vector_of(lib, contsign)
            return vector, await self.nearest(lib, vector, k, tag_filter, stored=True)
        found = await self.registry.call(lib, self.backend.search_by_key(lib, contsign.key, k, tag_filter))
        if found is None:
            raise _not_stored(lib, contsign)
        return found

    async def vectors(self, lib: Library, keys: Sequence[int]) -> dict[int, np.ndarray]:
        """Stored vectors by key, read concurrently (keys removed meanwhile are left out)."""
        read = await asyncio.gather(*(self.registry.call(lib, self.backend.vector(lib, key)) for key in keys))
        pairs = zip(keys, read, strict=True)
        return {key: np.asarray(v, dtype=np.float32).ravel() for key, v in pairs if v is not None}

    async def thumbnail(self, lib: Library, contsign: ContSign) -> bytes | None:
        """The small JPEG stored with an item, if any."""
        return await self.registry.call(lib, self.backend.thumbnail(lib, contsign.key))

    async def local_features(self, lib: Library, keys: Sequence[int]) -> dict[int, bytes]:
        """Stored local features by key (items without any are left out; all of them on a
        backend that keeps none)."""
        if not isinstance(self.backend, LocalFeatures):
            return {}
        return await self.registry.call(lib, self.backend.local_features(lib, keys))

    async def query_features(
        self, lib: Library, image: bytes | None, contsign: ContSign | None, region: Region | None = None
    ) -> QueryFeatures | None:
        """A query's local features: from its image (only ``region`` of it, the part the search
        looks for, so that promotion never confirms a copy of what lies outside the box), else
        from the stored item it names."""
        if image is not None:
            return await self.verifier.query(image, region)
        if contsign is None:
            return None
        stored = await self.local_features(lib, [contsign.key])
        return self.verifier.stored_query(stored.get(contsign.key))

    async def export_items(self, lib: Library) -> AsyncIterator[list[tuple[Item, np.ndarray]]]:
        """Every item with its vector, in insertion order, in chunks of (Item, vector)."""
        async for chunk in self.backend.export_items(lib):
            yield [(item_of(row), vector) for row, vector in chunk]

    async def read_original(self, sha256: str) -> bytes:
        """A kept original's bytes (err_no 11 when its file cannot be read)."""
        try:
            if not isinstance(self.backend, KeptOriginals):
                raise StorageError(f"the {self.backend.name} backend keeps no originals")
            return await self.backend.read_original(sha256)
        except StorageError as exc:
            raise storage_failed(exc) from exc

    async def read_originals(self, shas: Sequence[str]) -> AsyncIterator[tuple[str, bytes]]:
        """Kept originals by sha256, one at a time (export)."""
        for sha in shas:
            yield sha, await self.read_original(sha)


def _not_stored(lib: Library, contsign: ContSign) -> ApiError:
    """err_no 1: a search or read by a contsign the library does not hold."""
    return ApiError(ErrNo.BAD_REQUEST, f"contsign {contsign} is not in library {lib.row.appid!r}")

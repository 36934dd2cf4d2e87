"""What the search pipeline reads from a library: a narrow view of the library service.

The pipeline never talks to a backend itself; the library service provides these reads with
its error mapping (a storage failure is err_no 11, a library deleted meanwhile is err_no 103).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np

from same_search.contsign import ContSign
from same_search.embed.images import Region
from same_search.records import ItemRow, Library, SearchResult, TagFilter
from same_search.verify.service import QueryFeatures

#: (key, score) pairs, best first unless a re-ranking says otherwise.
Ranked = list[tuple[int, float]]


class LibraryReads(Protocol):
    """The reads a search makes."""

    async def nearest(
        self,
        lib: Library,
        vector: np.ndarray,
        k: int,
        tag_filter: TagFilter | None = None,
        stored: bool = False,
    ) -> SearchResult:
        """Up to ``k`` stored items by descending score (among those passing ``tag_filter``);
        ``stored``: the vector is a stored item's (the tuned depth), else the walk goes deeper."""

    async def nearest_to_item(
        self, lib: Library, contsign: ContSign, k: int, tag_filter: TagFilter | None = None
    ) -> tuple[np.ndarray, SearchResult]:
        """A stored item's vector and its ``k`` nearest items (err_no 1 when it is not stored)."""

    async def vectors(self, lib: Library, keys: Sequence[int]) -> dict[int, np.ndarray]:
        """Stored vectors by key (removed keys are left out)."""

    async def rows(self, lib: Library, keys: Sequence[int]) -> dict[int, ItemRow]:
        """Stored items by key (removed keys are left out)."""

    async def local_features(self, lib: Library, keys: Sequence[int]) -> dict[int, bytes]:
        """Stored local features by key (items without any are left out)."""

    async def vector_of(self, lib: Library, contsign: ContSign) -> np.ndarray:
        """A stored item's vector (err_no 1 when it is not stored)."""

    async def query_features(
        self, lib: Library, image: bytes | None, contsign: ContSign | None, region: Region | None = None
    ) -> QueryFeatures | None:
        """The query's local features (the image's region, or the stored item's)."""


def at_least(found: Ranked, min_score: float | None) -> Ranked:
    """The hits scoring at least ``min_score`` (all of them when it is None), order kept."""
    if min_score is None:
        return found
    return [(key, score) for key, score in found if score >= min_score]

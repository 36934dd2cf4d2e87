"""Reads of stored items by key: the rows, vectors, thumbnails and local features a search or a
page asks for, each a query by primary key in chunks."""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import Any

import numpy as np

from same_search.backends.capabilities import LocalFeatures
from same_search.backends.milvus.connection import Connection
from same_search.backends.milvus.schema import CHUNK, FEATURES
from same_search.records import Library


def _name(lib: Library) -> str:
    """The collection of a loaded library (its handle)."""
    return str(lib.handle)


class KeyedReads(LocalFeatures):
    """What :class:`MilvusBackend` reads by key; the backend opens the connection and learns,
    per collection, whether it has the local-features field."""

    milvus: Connection
    #: collection -> whether it has the local-features field (older collections may not).
    _features: dict[str, bool]

    async def count(self, lib: Library) -> int:
        found = await self.milvus.read(
            self.milvus.client.query, _name(lib), filter="", output_fields=["count(*)"]
        )
        return int(found[0]["count(*)"])

    async def _present(self, lib: Library, keys: Sequence[int], field: str = "key") -> dict[int, Any]:
        """key -> ``field`` of the stored ones among ``keys``."""
        found: dict[int, Any] = {}
        for start in range(0, len(keys), CHUNK):
            chunk = list(keys[start : start + CHUNK])
            entities = await self.milvus.read(
                self.milvus.client.query, _name(lib), ids=chunk, output_fields=["key", field]
            )
            found.update({int(e["key"]): e[field] for e in entities})
        return found

    async def vector(self, lib: Library, key: int) -> np.ndarray | None:
        found = await self._present(lib, [key], "vector")
        return np.asarray(found[key], dtype=np.float32) if key in found else None

    async def thumbnail(self, lib: Library, key: int) -> bytes | None:
        found = await self._present(lib, [key], "thumbnail")
        return base64.b64decode(found[key]) if found.get(key) else None

    async def local_features(self, lib: Library, keys: Sequence[int]) -> dict[int, bytes]:
        if not self._features.get(_name(lib)):
            return {}
        found = await self._present(lib, list(keys), FEATURES)
        return {key: base64.b64decode(text) for key, text in found.items() if text}

    async def items_without_local_features(self, lib: Library) -> int:
        if not self._features.get(_name(lib)):
            return await self.count(lib)
        found = await self.milvus.read(
            self.milvus.client.query, _name(lib), filter=f"{FEATURES} is null", output_fields=["count(*)"]
        )
        return int(found[0]["count(*)"])

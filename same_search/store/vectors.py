"""A library's items as an index reads them: in write order from any point, and by key.

An index is loaded from a snapshot plus the rows and removals written after the snapshot's seq,
or built from every row (``same_search.backends.local``). Every full pass over a library (replay,
rebuild, tags at load, repair, export) pages by seq rather than OFFSET, so a chunk costs the same
however deep it is.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

import numpy as np

from same_search.records import BadRows, ItemRow, RawItem
from same_search.store.database import Database, in_list
from same_search.store.items import ITEM_COLUMNS, item_row

_ALL = -(1 << 63)
_NO_LIMIT = (1 << 63) - 1


def is_vector(value: object, dim: int) -> bool:
    """Whether a stored value is a blob of ``dim`` float32."""
    return isinstance(value, bytes) and len(value) == 4 * dim


def _shape_problem(value: object, dim: int) -> str:
    if not isinstance(value, bytes):
        return f"vector is stored as {type(value).__name__}, not a blob"
    return f"vector of {len(value)} bytes, expected {4 * dim} ({dim} float32)"


def _matrix(blobs: Sequence[bytes], dim: int) -> np.ndarray:
    return np.frombuffer(b"".join(blobs), dtype="<f4").reshape(len(blobs), dim)


class VectorReads(Database):
    """Reads of tables ``items`` and ``removals`` for indexes, repairs and exports."""

    async def _rows_by_seq(
        self, columns: str, lib_id: int, after: int, chunk: int, upto: int | None = None
    ) -> AsyncIterator[list[tuple]]:
        """Chunks of a library's rows (``columns`` then ``seq``, last) with ``after < seq <=
        upto``, in seq order."""
        last = after
        top = _NO_LIMIT if upto is None else upto
        while True:
            async with self.reader.execute(
                f"SELECT {columns}, seq FROM items WHERE lib_id=? AND seq>? AND seq<=? ORDER BY seq LIMIT ?",
                (lib_id, last, top, chunk),
            ) as cur:
                rows = await cur.fetchall()
            if not rows:
                return
            last = int(rows[-1][-1])
            yield rows

    async def tagged_vectors_since(
        self, lib_id: int, seq: int, dim: int, chunk: int = 4096, max_seq: int | None = None
    ) -> AsyncIterator[tuple[np.ndarray, np.ndarray, np.ndarray, int]]:
        """(keys, vectors, tags, max seq) chunks of items inserted after ``seq`` (and at or before
        ``max_seq`` when given: a rebuild's starting point), in seq order; tags an (n, 2) uint32
        array, 0 where a row has none (what an index answering tag filters is given).

        A vector that is not a blob of ``dim`` float32 raises :class:`BadRows` naming it, rather
        than a reshape or an index error that says nothing about which row is at fault.
        """
        columns = "key, vector, coalesce(tag1, 0), coalesce(tag2, 0)"
        async for rows in self._rows_by_seq(columns, lib_id, seq, chunk, max_seq):
            bad = [(int(r[0]), _shape_problem(r[1], dim)) for r in rows if not is_vector(r[1], dim)]
            if bad:
                raise BadRows(bad)
            keys = np.array([r[0] for r in rows], dtype=np.int64)
            tags = np.array([(r[2], r[3]) for r in rows], dtype=np.uint32).reshape(len(rows), 2)
            yield keys, _matrix([r[1] for r in rows], dim), tags, int(rows[-1][-1])

    async def tagged_vectors_of(
        self, lib_id: int, keys: Sequence[int], dim: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(keys, vectors, tags) of the stored ones among ``keys`` (at most 500 at a time)."""
        async with self.reader.execute(
            f"SELECT key, vector, tag1, tag2 FROM items WHERE lib_id=? AND key IN ({in_list(len(keys))})",
            (lib_id, *keys),
        ) as cur:
            rows = [r for r in await cur.fetchall() if is_vector(r[1], dim)]
        found = np.array([r[0] for r in rows], dtype=np.int64)
        tags = np.array([(r[2] or 0, r[3] or 0) for r in rows], dtype=np.uint32).reshape(len(rows), 2)
        return found, _matrix([r[1] for r in rows], dim), tags

    async def vectors_of(self, lib_id: int, keys: Sequence[int], dim: int) -> dict[int, np.ndarray]:
        """Stored float32 vectors by key (missing keys absent)."""
        rows = await self._select_in(
            "SELECT key, vector FROM items WHERE lib_id=? AND key IN ({keys})", lib_id, keys
        )
        return {
            int(key): np.frombuffer(raw, "<f4").astype(np.float32) for key, raw in rows if is_vector(raw, dim)
        }

    async def item_tags(
        self, lib_id: int, chunk: int = 50_000
    ) -> AsyncIterator[tuple[np.ndarray, np.ndarray]]:
        """(keys, tags (n, 2) uint32) of every item, in chunks: an index loaded from a snapshot
        learns the tags as they are now (a tag update does not move an item's seq)."""
        async for rows in self._rows_by_seq("key, coalesce(tag1, 0), coalesce(tag2, 0)", lib_id, _ALL, chunk):
            keys = np.array([r[0] for r in rows], np.int64)
            tags = np.array([(r[1], r[2]) for r in rows], np.int64).astype(np.uint32)
            yield keys, tags

    async def keys(self, lib_id: int, max_seq: int | None = None) -> list[int]:
        """Stored keys of one library (inserted at or before ``max_seq`` when given)."""
        limit = _NO_LIMIT if max_seq is None else max_seq
        async with self.reader.execute(
            "SELECT key FROM items WHERE lib_id=? AND seq<=?", (lib_id, limit)
        ) as cur:
            return [int(row[0]) for row in await cur.fetchall()]

    async def removals_since(self, lib_id: int, seq: int) -> list[int]:
        """Keys removed after ``seq`` (and not re-added since)."""
        async with self.reader.execute(
            "SELECT key FROM removals WHERE lib_id=? AND seq>?", (lib_id, seq)
        ) as cur:
            return [int(row[0]) for row in await cur.fetchall()]

    async def rows_with_bad_tags(self, lib_id: int, limit: int = 5) -> list[tuple[int, str]]:
        """(key, problem) of up to ``limit`` rows whose tags are not uint32 (negative, too large,
        text or blob: SQLite orders text and blobs after every number). Index seeks only, so it is
        cheap enough for every start; such a row would fail every search that returns it."""
        found: list[tuple[int, str]] = []
        for column in ("tag1", "tag2"):
            async with self.reader.execute(
                f"SELECT key, {column} FROM items WHERE lib_id=? AND ({column} < 0 OR {column} > ?) LIMIT ?",
                (lib_id, 0xFFFFFFFF, limit),
            ) as cur:
                found += [
                    (int(r[0]), f"{column} is {r[1]!r}, not an unsigned 32-bit integer")
                    for r in await cur.fetchall()
                ]
        return found[:limit]

    async def raw_items(self, lib_id: int, chunk: int = 1024) -> AsyncIterator[list[RawItem]]:
        """Every row of a library as stored, in seq order, in chunks (a repair's scan)."""
        async for rows in self._rows_by_seq("key, brief, tag1, tag2, vector", lib_id, _ALL, chunk):
            yield [RawItem(int(r[0]), r[1], r[2], r[3], r[4]) for r in rows]

    async def items_with_vectors(
        self, lib_id: int, chunk: int = 2048
    ) -> AsyncIterator[list[tuple[ItemRow, np.ndarray]]]:
        """Every item with its vector, in insertion order, in chunks (export)."""
        async for rows in self._rows_by_seq(f"{ITEM_COLUMNS}, vector", lib_id, -1, chunk):
            yield [(item_row(row[:7]), np.frombuffer(row[7], dtype="<f4")) for row in rows]

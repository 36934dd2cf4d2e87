"""Libraries and their items: the rows, their thumbnails, local features and kept originals.

Every item write takes the next number of one write sequence (``seq``), shared by insertions and
removals (the ``removals`` log): an index snapshot records the highest seq it holds, and loading
it replays only what came after (``same_search.store.vectors``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from same_search.files import sha256_hex
from same_search.records import ItemRow, LibraryRow, LibrarySettings, NewItem, NewLibrary, Tags, TooManyItems
from same_search.store.database import Statement, chunked, in_list
from same_search.store.originals import OriginalStore

ITEM_COLUMNS = "key, brief, tag1, tag2, created_at, updated_at, original"
_LIBRARY_COLUMNS = (
    "id, appid, model_id, dim, fingerprint, created_at, dup_policy, dup_min_score, query_expansion, "
    "promote_same_picture"
)
_SAVE_SETTINGS = (
    "UPDATE libraries SET dup_policy=?, dup_min_score=?, query_expansion=?, promote_same_picture=? WHERE id=?"
)
_INSERT_ITEM = (
    "INSERT INTO items(lib_id, key, brief, tag1, tag2, vector, seq, created_at, updated_at, original) "
    "VALUES (?,?,?,?,?,?,?,?,?,?)"
)
_FORGET_REMOVAL = "DELETE FROM removals WHERE lib_id=? AND key=?"
_SAVE_THUMBNAIL = "INSERT OR REPLACE INTO thumbnails(lib_id, key, jpeg) VALUES (?,?,?)"
_SAVE_LOCAL_FEATURES = "INSERT OR REPLACE INTO local_features(lib_id, key, data) VALUES (?,?,?)"


def vector_blob(vector: np.ndarray) -> bytes:
    """How a vector is stored: little-endian float32 bytes."""
    return np.asarray(vector, dtype="<f4").tobytes()


def item_row(row: Sequence) -> ItemRow:
    """An :class:`ItemRow` from the columns ``ITEM_COLUMNS``."""
    key, brief, tag1, tag2, created, updated, original = row
    tags = None if tag1 is None else (int(tag1), int(tag2))
    return ItemRow(int(key), bytes(brief), tags, created, updated, original)


def _library(row: Sequence) -> LibraryRow:
    *head, promote = row
    return LibraryRow(*head, promote_same_picture=bool(promote))


def _settings_values(settings: LibrarySettings) -> tuple:
    return (
        settings.dup_policy,
        settings.dup_min_score,
        settings.query_expansion,
        int(settings.promote_same_picture),
    )


def _insert_library(new: NewLibrary, now: float) -> Statement:
    """The statement that creates ``new`` with its settings."""
    return (
        "INSERT INTO libraries(appid, model_id, dim, fingerprint, created_at, dup_policy, dup_min_score, "
        "query_expansion, promote_same_picture) VALUES (?,?,?,?,?,?,?,?,?)",
        (new.appid, new.model_id, new.dim, new.fingerprint, now, *_settings_values(new.settings)),
    )


def _new_row(lib_id: int, new: NewLibrary, now: float) -> LibraryRow:
    return LibraryRow(
        lib_id, new.appid, new.model_id, new.dim, new.fingerprint, now, **dataclasses.asdict(new.settings)
    )


@dataclass(frozen=True)
class BulkResult:
    """What a bulk insert did: the library (created by it or not), inserted and skipped items."""

    library: LibraryRow
    inserted: int
    duplicates: int


class ItemStore(OriginalStore):
    """Tables ``libraries``, ``items``, ``removals``, ``thumbnails`` and ``local_features``."""

    def __init__(self, path: Path, max_bytes: int = 0) -> None:
        super().__init__(path, max_bytes)
        self._seq = 0

    async def open(self) -> None:
        """Open the database and load the write sequence."""
        await super().open()
        async with self.reader.execute(
            "SELECT max(coalesce((SELECT max(seq) FROM items), 0), "
            "coalesce((SELECT max(seq) FROM removals), 0))"
        ) as cur:
            row = await cur.fetchone()
        self._seq = int(row[0]) if row else 0

    @property
    def seq(self) -> int:
        """The highest write sequence handed out so far."""
        return self._seq

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    # ---- libraries -------------------------------------------------------------------------------

    async def libraries(self) -> list[LibraryRow]:
        """Every library, oldest first."""
        async with self.reader.execute(f"SELECT {_LIBRARY_COLUMNS} FROM libraries ORDER BY id") as cur:
            return [_library(row) for row in await cur.fetchall()]

    async def save_settings(self, lib_id: int, settings: LibrarySettings) -> None:
        """A library's operator settings (near-duplicate policy, ranking), all in one write."""
        async with self._write_lock:
            await self._write([(_SAVE_SETTINGS, (*_settings_values(settings), lib_id))])

    async def create_library(self, new: NewLibrary) -> LibraryRow:
        """Insert a library with its settings; :class:`AlreadyExists` if the appid is taken."""
        now = time.time()
        async with self._write_lock:
            lib_id = await self._write([_insert_library(new, now)])
        assert lib_id is not None
        return _new_row(lib_id, new, now)

    # ---- writes ----------------------------------------------------------------------------------

    async def add_item(
        self,
        lib_id: int,
        key: int,
        brief: bytes,
        tags: Tags | None,
        vector: np.ndarray,
        thumbnail: bytes | None = None,
        local_features: bytes | None = None,
        original: bytes | None = None,
    ) -> int:
        """Insert one item (its thumbnail, its local features, its kept original) and return its
        seq; :class:`AlreadyExists` if stored, :class:`LibraryGone` if the library was deleted.
        The original's file is durable before the row commits; a file this call created is
        removed again if the row is not stored."""
        now = time.time()
        tag1, tag2 = tags if tags is not None else (None, None)
        async with self._write_lock:
            sha, kept, new_row = None, False, False
            if original is not None:
                sha = sha256_hex(original)
                kept, new_row = await self._keep_original(sha, original)
            seq = self._next_seq()
            statements: list[Statement] = [
                (_INSERT_ITEM, (lib_id, key, brief, tag1, tag2, vector_blob(vector), seq, now, now, sha)),
                (_FORGET_REMOVAL, (lib_id, key)),
                # A new-model vector a running re-embed made for an earlier item of this key
                # (removed since) is not this item's: it is embedded again.
                ("DELETE FROM reembed_vectors WHERE lib_id=? AND key=?", (lib_id, key)),
            ]
            if thumbnail:
                statements.append((_SAVE_THUMBNAIL, (lib_id, key, thumbnail)))
            if local_features:
                statements.append((_SAVE_LOCAL_FEATURES, (lib_id, key, local_features)))
            if sha is not None and original is not None:
                statements.append(self._kept_row(sha, len(original)))
            try:
                await self._write(statements)
            except BaseException:
                if sha is not None and kept:
                    await asyncio.to_thread(self.originals.remove, sha)
                raise
            if new_row and original is not None:
                self._originals_bytes += len(original)
        return seq

    async def insert_items(
        self,
        library: LibraryRow | NewLibrary,
        batches: AsyncIterator[Sequence[NewItem]],
        capacity: int = 0,
    ) -> BulkResult:
        """Insert many items as ONE transaction: all of them are stored or none.

        ``library`` is an existing library, or a :class:`NewLibrary` created in the same
        transaction (so a failed import leaves no empty library behind).
        Each batch is one ``executemany``; keys already stored are skipped and counted as
        duplicates. Past ``capacity`` items (0 = unbounded) :class:`TooManyItems` rolls it all
        back; :class:`LibraryGone` if an existing library was deleted meanwhile. Other writers
        wait for the commit; readers go on (WAL).
        """
        created: list[tuple[str, int]] = []  # originals this import wrote: removed again on failure
        async with self._write_lock:
            try:
                result = await self._insert_items(library, batches, capacity, created)
            except BaseException:
                for sha, _ in created:
                    await asyncio.to_thread(self.originals.remove, sha)
                raise
            await self._count_originals()  # rows new to this import, files new or left by a kill
            return result

    async def _insert_items(
        self,
        library: LibraryRow | NewLibrary,
        batches: AsyncIterator[Sequence[NewItem]],
        capacity: int,
        created: list[tuple[str, int]],
    ) -> BulkResult:
        inserted = duplicates = 0
        async with self._transaction() as conn:
            if isinstance(library, LibraryRow):
                row = library
            else:
                now = time.time()
                cursor = await conn.execute(*_insert_library(library, now))
                assert cursor.lastrowid is not None
                row = _new_row(cursor.lastrowid, library, now)
            async with conn.execute("SELECT count(*) FROM items WHERE lib_id=?", (row.id,)) as cur:
                stored = int((await cur.fetchone())[0])  # type: ignore[index]
            async for batch in batches:
                keys = [item.key for item in batch]
                async with conn.execute(
                    f"SELECT key FROM items WHERE lib_id=? AND key IN ({in_list(len(keys))})", (row.id, *keys)
                ) as cur:
                    present = {int(r[0]) for r in await cur.fetchall()}
                fresh = [item for item in batch if item.key not in present]
                duplicates += len(batch) - len(fresh)
                if capacity and stored + inserted + len(fresh) > capacity:
                    raise TooManyItems(
                        f"library {row.appid!r} would hold more than its capacity of {capacity} items"
                    )
                now = time.time()
                shas = {}
                for item in fresh:
                    if item.original is not None:
                        sha = shas[item.key] = sha256_hex(item.original)
                        pending = sum(size for _, size in created)
                        made, _ = await self._keep_original(sha, item.original, pending)
                        if made:
                            created.append((sha, len(item.original)))
                        await conn.execute(*self._kept_row(sha, len(item.original)))
                await conn.executemany(
                    _INSERT_ITEM,
                    [
                        (
                            row.id,
                            item.key,
                            item.brief,
                            *(item.tags or (None, None)),
                            vector_blob(item.vector),
                            self._next_seq(),
                            now,
                            now,
                            shas.get(item.key),
                        )
                        for item in fresh
                    ],
                )
                await conn.executemany(_FORGET_REMOVAL, [(row.id, item.key) for item in fresh])
                await conn.executemany(
                    _SAVE_THUMBNAIL, [(row.id, item.key, item.thumbnail) for item in fresh if item.thumbnail]
                )
                await conn.executemany(
                    _SAVE_LOCAL_FEATURES,
                    [(row.id, item.key, item.local_features) for item in fresh if item.local_features],
                )
                inserted += len(fresh)
        return BulkResult(row, inserted, duplicates)

    async def update_item(self, lib_id: int, key: int, brief: bytes | None, tags: Tags | None) -> bool:
        """Replace the brief and/or tags of a stored item; False if it is not stored."""
        sets, params = ["updated_at=?"], [time.time()]
        if brief is not None:
            sets.append("brief=?")
            params.append(brief)
        if tags is not None:
            sets += ["tag1=?", "tag2=?"]
            params += list(tags)
        async with self._write_lock:
            if not await self._present(lib_id, [key]):
                return False
            await self._write(
                [(f"UPDATE items SET {', '.join(sets)} WHERE lib_id=? AND key=?", (*params, lib_id, key))]
            )
        return True

    async def remove_items(self, lib_id: int, keys: Sequence[int]) -> tuple[list[int], int]:
        """Delete the stored ones among ``keys``; returns (removed keys, seq of the removal)."""
        async with self._write_lock:
            present = await self._present(lib_id, keys)
            if not present:
                return [], self._seq
            kept = await self._original_sizes(await self._originals_of(lib_id, present))
            seq = self._next_seq()
            statements: list[Statement] = []
            for chunk in chunked(present):
                for table in ("items", "reembed_vectors"):  # a re-embed's vector goes with its item
                    statements.append(
                        (
                            f"DELETE FROM {table} WHERE lib_id=? AND key IN ({in_list(len(chunk))})",
                            (lib_id, *chunk),
                        )
                    )
            statements += [
                ("INSERT OR REPLACE INTO removals(lib_id, key, seq) VALUES (?,?,?)", (lib_id, key, seq))
                for key in present
            ]
            await self._write(statements + self._unreferenced_statements(kept))
            await self._drop_unreferenced(kept)
        return present, seq

    async def _present(self, lib_id: int, keys: Sequence[int]) -> list[int]:
        """The stored ones among ``keys``, each once."""
        unique = list(dict.fromkeys(keys))
        rows = await self._select_in(
            "SELECT key FROM items WHERE lib_id=? AND key IN ({keys})", lib_id, unique
        )
        return [int(row[0]) for row in rows]

    # ---- reads -----------------------------------------------------------------------------------

    async def get_items(self, lib_id: int, keys: Sequence[int]) -> dict[int, ItemRow]:
        """Items by key (missing keys are simply absent from the result)."""
        rows = await self._select_in(
            f"SELECT {ITEM_COLUMNS} FROM items WHERE lib_id=? AND key IN ({{keys}})", lib_id, keys
        )
        return {item.key: item for item in map(item_row, rows)}

    async def count(self, lib_id: int) -> int:
        """Stored items of one library."""
        async with self.reader.execute("SELECT count(*) FROM items WHERE lib_id=?", (lib_id,)) as cur:
            row = await cur.fetchone()
        return int(row[0]) if row else 0

    async def page_items(self, lib_id: int, offset: int, limit: int) -> list[ItemRow]:
        """Items in insertion order, for browsing a library."""
        async with self.reader.execute(
            f"SELECT {ITEM_COLUMNS} FROM items WHERE lib_id=? ORDER BY seq LIMIT ? OFFSET ?",
            (lib_id, limit, offset),
        ) as cur:
            return [item_row(row) for row in await cur.fetchall()]

    async def thumbnail(self, lib_id: int, key: int) -> bytes | None:
        """The stored thumbnail JPEG of an item, if any."""
        async with self.reader.execute(
            "SELECT jpeg FROM thumbnails WHERE lib_id=? AND key=?", (lib_id, key)
        ) as cur:
            row = await cur.fetchone()
        return None if row is None else bytes(row[0])

    async def local_features(self, lib_id: int, keys: Sequence[int]) -> dict[int, bytes]:
        """Stored local features by key; items without any are absent from the result."""
        rows = await self._select_in(
            "SELECT key, data FROM local_features WHERE lib_id=? AND key IN ({keys})", lib_id, keys
        )
        return {int(key): bytes(data) for key, data in rows}

    async def features_pending(
        self, lib_id: int, limit: int, after_seq: int = 0
    ) -> list[tuple[int, str, int]]:
        """(key, kept original, seq) of items without local features that keep their original,
        oldest first from ``after_seq`` on (a refill's cursor)."""
        async with self.reader.execute(
            "SELECT i.key, i.original, i.seq FROM items i WHERE i.lib_id=? AND i.seq>? "
            "AND i.original IS NOT NULL AND NOT EXISTS "
            "(SELECT 1 FROM local_features f WHERE f.lib_id=i.lib_id AND f.key=i.key) "
            "ORDER BY i.seq LIMIT ?",
            (lib_id, after_seq, limit),
        ) as cur:
            return [(int(key), str(original), int(seq)) for key, original, seq in await cur.fetchall()]

    async def save_local_features(self, lib_id: int, features: Sequence[tuple[int, bytes]]) -> None:
        """Store local features of items, one transaction; an item removed meanwhile is skipped."""
        async with self._write_lock:
            await self._write(
                (
                    "INSERT OR REPLACE INTO local_features(lib_id, key, data) SELECT ?, ?, ? "
                    "WHERE EXISTS (SELECT 1 FROM items WHERE lib_id=? AND key=?)",
                    (lib_id, key, data, lib_id, key),
                )
                for key, data in features
            )

    async def items_without_local_features(self, lib_id: int) -> int:
        """Items of a library stored without local features."""
        async with self.reader.execute(
            "SELECT count(*) FROM items i WHERE i.lib_id=? AND NOT EXISTS "
            "(SELECT 1 FROM local_features f WHERE f.lib_id=i.lib_id AND f.key=i.key)",
            (lib_id,),
        ) as cur:
            return int((await cur.fetchone())[0])  # type: ignore[index]

"""SQLite storage through aiosqlite: one writer connection behind a lock, one reader connection.

Every acknowledged write is a committed transaction in WAL mode with ``synchronous=FULL``, so it
survives a power cut. The writer lock makes each method one transaction even though aiosqlite
would happily interleave statements of concurrent coroutines on a shared connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import sqlite3
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import aiosqlite
import numpy as np

from same_search.index.projection import Projection
from same_search.store.originals import Originals, sha256_hex

#: Version 1 is schema.sql; each later version is ``migration_NNNN.sql`` beside it, applied in order
#: in one transaction each. Shipped files are never edited: a change is a new file.
MIGRATIONS = (2, 3, 4, 5, 6)
SCHEMA_VERSION = MIGRATIONS[-1]

_ITEM_COLUMNS = "key, brief, tag1, tag2, created_at, updated_at, original"


@dataclass(frozen=True)
class LibraryRow:
    """A signed-up library and the model its vectors were made with."""

    id: int
    appid: str
    model_id: str
    dim: int
    fingerprint: str
    created_at: float
    #: The library's default near-duplicate policy on add: off | warn | reject.
    dup_policy: str = "off"
    #: Its score floor; None means the built-in floors (``verify.decision``).
    dup_min_score: float | None = None
    #: The library's ranking of searches by image: how many best hits expand the query (0: off)
    #: and whether confirmed copies of the query move to the top. 0 / False: the spec's order.
    query_expansion: int = 0
    promote_same_picture: bool = False

    @property
    def settings(self) -> LibrarySettings:
        """What the operator chose for this library."""
        return LibrarySettings(
            self.dup_policy, self.dup_min_score, self.query_expansion, self.promote_same_picture
        )


@dataclass(frozen=True)
class LibrarySettings:
    """A library's operator settings: its near-duplicate policy on add and its ranking."""

    dup_policy: str = "off"
    dup_min_score: float | None = None
    query_expansion: int = 0
    promote_same_picture: bool = False


_LIBRARY_COLUMNS = (
    "id, appid, model_id, dim, fingerprint, created_at, dup_policy, dup_min_score, query_expansion, "
    "promote_same_picture"
)


def _library(row: Sequence) -> LibraryRow:
    *head, promote = row
    return LibraryRow(*head, promote_same_picture=bool(promote))


@dataclass(frozen=True)
class ItemRow:
    """One stored image, without its vector."""

    key: int
    brief: bytes
    tags: tuple[int, int] | None
    created_at: float
    updated_at: float
    #: sha256 of the kept original (``[storage] keep_originals``), or None.
    original: str | None = None


@dataclass
class JobRow:
    """A bulk import job and its progress."""

    id: int
    appid: str
    kind: str
    source: str
    status: str
    position: int
    total: int
    done: int
    failed: int
    duplicates: int
    message: str
    created_at: float
    updated_at: float
    #: The job's own near-duplicate policy; None: the library's when the job runs.
    dup_policy: str | None = None
    dup_min_score: float | None = None
    #: Images that had near-duplicates in the library (rejected, or stored with a warning).
    near_duplicates: int = 0


_JOB_COLUMNS = (
    "id, appid, kind, source, status, position, total, done, failed, duplicates, message, "
    "created_at, updated_at, dup_policy, dup_min_score, near_duplicates"
)


class AlreadyExists(Exception):
    """The row being created is already there."""


class StorageError(Exception):
    """The database refused a write (disk full, read-only file system, I/O error)."""


class BadRows(Exception):
    """Stored rows that cannot be loaded into an index; ``rows`` holds (key, problem) pairs."""

    def __init__(self, rows: Sequence[tuple[int, str]]) -> None:
        self.rows = list(rows)
        shown = "; ".join(f"key {key}: {problem}" for key, problem in self.rows[:3])
        more = f" (and {len(self.rows) - 3} more in the same chunk)" if len(self.rows) > 3 else ""
        super().__init__(f"rows that cannot be loaded: {shown}{more}")


class TooManyItems(Exception):
    """A bulk insert would take a library past its capacity; nothing was written."""


@dataclass(frozen=True)
class NewLibrary:
    """A library to create together with its first items (an import that creates it)."""

    appid: str
    model_id: str
    dim: int
    fingerprint: str
    settings: LibrarySettings = LibrarySettings()


@dataclass(frozen=True)
class NewItem:
    """An item to insert in bulk: key, brief, tags and the vector's little-endian float32 bytes
    (and, from an import job's pictures, the thumbnail and local features)."""

    key: int
    brief: bytes
    tags: tuple[int, int] | None
    vector: bytes
    #: The picture's bytes to keep as its original (an export with originals/), or None.
    original: bytes | None = None
    thumbnail: bytes | None = None
    local_features: bytes | None = None


@dataclass
class ReembedJobRow:
    """A re-embed job: a library built again with another model, and its progress."""

    id: int
    lib_id: int
    appid: str
    model_name: str
    model_id: str
    dim: int
    fingerprint: str
    status: str
    total: int
    done: int
    resumed: int
    resumed_at: int
    message: str
    created_at: float
    updated_at: float


_REEMBED_COLUMNS = (
    "id, lib_id, appid, model_name, model_id, dim, fingerprint, status, total, done, resumed, "
    "resumed_at, message, created_at, updated_at"
)


class ReembedIncomplete(Exception):
    """Items of the library have no vector of the new model yet (added since the last pass)."""


@dataclass(frozen=True)
class RawItem:
    """A row as SQLite holds it, nothing converted: what a repair inspects."""

    key: int
    brief: object
    tag1: object
    tag2: object
    vector: object


@dataclass(frozen=True)
class BulkResult:
    """What a bulk insert did: the library (created by it or not), inserted and skipped items."""

    library: LibraryRow
    inserted: int
    duplicates: int


def _item(row: Sequence) -> ItemRow:
    key, brief, tag1, tag2, created, updated, original = row
    tags = None if tag1 is None else (int(tag1), int(tag2))
    return ItemRow(int(key), bytes(brief), tags, created, updated, original)


_SAVE_SETTINGS = (
    "UPDATE libraries SET dup_policy=?, dup_min_score=?, query_expansion=?, promote_same_picture=? WHERE id=?"
)


def _settings_values(settings: LibrarySettings) -> tuple:
    return (
        settings.dup_policy,
        settings.dup_min_score,
        settings.query_expansion,
        int(settings.promote_same_picture),
    )


def _insert_library(new: NewLibrary, now: float) -> tuple[str, tuple]:
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


def _statements(sql: str) -> list[str]:
    """The complete statements of a SQL script (comments and blank lines dropped)."""
    statements, current = [], ""
    for line in sql.splitlines():
        if line.strip().startswith("--") or not line.strip():
            continue
        current += line + "\n"
        if sqlite3.complete_statement(current):
            statements.append(current.strip())
            current = ""
    return statements


def _placeholders(n: int) -> str:
    return ",".join("?" * n)


def _is_vector(value: object, width: int) -> bool:
    return isinstance(value, bytes) and len(value) == width


def _vector_shape_problem(value: object, dim: int) -> str:
    if not isinstance(value, bytes):
        return f"vector is stored as {type(value).__name__}, not a blob"
    return f"vector of {len(value)} bytes, expected {4 * dim} ({dim} float32)"


class Store:
    """All persistent state of the daemon."""

    def __init__(self, path: Path, max_bytes: int = 0) -> None:
        self.path = path
        self.max_bytes = max_bytes
        #: Kept originals, beside the database; their bytes count against ``max_bytes`` too.
        self.originals = Originals(path.parent / "originals")
        self._originals_bytes = 0
        self._writer: aiosqlite.Connection | None = None
        self._reader: aiosqlite.Connection | None = None
        self._write_lock = asyncio.Lock()
        self._seq = 0

    async def open(self) -> None:
        """Open both connections, create or check the schema, and load the write sequence."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._writer = await aiosqlite.connect(self.path, isolation_level=None)
        await self._writer.execute("PRAGMA journal_mode=WAL")
        await self._writer.execute("PRAGMA synchronous=FULL")
        await self._writer.execute("PRAGMA foreign_keys=ON")
        await self._writer.execute("PRAGMA busy_timeout=5000")
        await self._migrate()
        if self.max_bytes:
            async with self._writer.execute("PRAGMA page_size") as cur:
                page_size = (await cur.fetchone())[0]  # type: ignore[index]
            await self._writer.execute(f"PRAGMA max_page_count={max(1, self.max_bytes // page_size)}")
        self._reader = await aiosqlite.connect(self.path, isolation_level=None)
        await self._reader.execute("PRAGMA busy_timeout=5000")
        self._seq = await self._max_seq()
        await self._sweep_originals()
        await self._count_originals()

    async def _count_originals(self) -> None:
        async with self.reader.execute("SELECT coalesce(sum(size), 0) FROM originals") as cur:
            self._originals_bytes = int((await cur.fetchone())[0])  # type: ignore[index]

    async def _sweep_originals(self) -> None:
        """Drop kept originals no item references (left by a daemon killed mid-removal before
        the removal and the originals' rows were one transaction), rows and files."""
        async with self.reader.execute(
            "SELECT sha256 FROM originals o WHERE NOT EXISTS (SELECT 1 FROM items WHERE original=o.sha256)"
        ) as cur:
            unused = [row[0] for row in await cur.fetchall()]
        if unused:
            await self._write([("DELETE FROM originals WHERE sha256=?", (sha,)) for sha in unused])
            for sha in unused:
                await asyncio.to_thread(self.originals.remove, sha)

    async def close(self) -> None:
        """Close both connections (the writer checkpoints the WAL on close)."""
        for conn in (self._reader, self._writer):
            if conn is not None:
                await conn.close()
        self._reader = self._writer = None

    async def _migrate(self) -> None:
        schema = resources.files("same_search.store").joinpath("schema.sql").read_text()
        assert self._writer is not None
        await self._writer.executescript(schema)
        async with self._writer.execute("SELECT value FROM meta WHERE key='schema_version'") as cur:
            row = await cur.fetchone()
        version = 1 if row is None else int(row[0])
        if row is None:
            await self._writer.execute("INSERT INTO meta(key, value) VALUES('schema_version', '1')")
        if version > SCHEMA_VERSION:
            raise RuntimeError(
                f"{self.path} has schema version {version}, newer than this same_search ({SCHEMA_VERSION}); "
                "upgrade same_search or use another data dir"
            )
        for target in MIGRATIONS:
            if target > version:
                await self._apply_migration(target)

    async def _apply_migration(self, version: int) -> None:
        """One migration file and the new version number, in one transaction: all or nothing."""
        assert self._writer is not None
        sql = resources.files("same_search.store").joinpath(f"migration_{version:04d}.sql").read_text()
        await self._writer.execute("BEGIN IMMEDIATE")
        try:
            for statement in _statements(sql):
                await self._writer.execute(statement)
            await self._writer.execute("UPDATE meta SET value=? WHERE key='schema_version'", (str(version),))
            await self._writer.execute("COMMIT")
        except BaseException:
            await self._writer.execute("ROLLBACK")
            raise

    async def _max_seq(self) -> int:
        async with self.reader.execute(
            "SELECT max(coalesce((SELECT max(seq) FROM items), 0), "
            "coalesce((SELECT max(seq) FROM removals), 0))"
        ) as cur:
            row = await cur.fetchone()
        return int(row[0]) if row else 0

    @property
    def reader(self) -> aiosqlite.Connection:
        assert self._reader is not None, "store is not open"
        return self._reader

    @contextlib.asynccontextmanager
    async def _transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        """One transaction on the writer (caller holds ``_write_lock``): committed when the block
        ends, rolled back when it raises; disk errors become :class:`StorageError`."""
        assert self._writer is not None, "store is not open"
        try:
            await self._writer.execute("BEGIN IMMEDIATE")
            try:
                yield self._writer
                await self._writer.execute("COMMIT")
            except BaseException:
                await self._writer.execute("ROLLBACK")
                raise
        except sqlite3.IntegrityError as exc:
            raise AlreadyExists(str(exc)) from exc
        except (sqlite3.DatabaseError, OSError) as exc:  # full, read-only, I/O error, ...
            raise StorageError(str(exc)) from exc

    async def _write(self, statements: Iterable[tuple[str, Sequence]]) -> int | None:
        """Run statements as one transaction; turn disk errors into :class:`StorageError`.

        Returns the rowid the last statement inserted (read on the writer, inside the
        transaction, so no other write can come between).
        """
        last_rowid = None
        async with self._transaction() as conn:
            for sql, params in statements:
                last_rowid = (await conn.execute(sql, params)).lastrowid
        return last_rowid

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    # ---- libraries -------------------------------------------------------------------------

    async def libraries(self) -> list[LibraryRow]:
        """Every library, oldest first."""
        async with self.reader.execute(f"SELECT {_LIBRARY_COLUMNS} FROM libraries ORDER BY id") as cur:
            return [_library(row) for row in await cur.fetchall()]

    async def save_settings(self, lib_id: int, settings: LibrarySettings) -> None:
        """A library's operator settings (near-duplicate policy, ranking), all in one write."""
        async with self._write_lock:
            await self._write([(_SAVE_SETTINGS, (*_settings_values(settings), lib_id))])

    async def create_library(
        self,
        appid: str,
        model_id: str,
        dim: int,
        fingerprint: str,
        settings: LibrarySettings = LibrarySettings(),
    ) -> LibraryRow:
        """Insert a library with its settings; :class:`AlreadyExists` if the appid is taken."""
        new = NewLibrary(appid, model_id, dim, fingerprint, settings)
        now = time.time()
        async with self._write_lock:
            lib_id = await self._write([_insert_library(new, now)])
        assert lib_id is not None
        return _new_row(lib_id, new, now)

    # ---- items -----------------------------------------------------------------------------

    async def add_item(
        self,
        lib_id: int,
        key: int,
        brief: bytes,
        tags: tuple[int, int] | None,
        vector: np.ndarray,
        thumbnail: bytes | None = None,
        local_features: bytes | None = None,
        original: bytes | None = None,
    ) -> int:
        """Insert one item (its thumbnail, its local features, its kept original) and return its
        seq; :class:`AlreadyExists` if stored. The original's file is durable before the row
        commits; a file this call created is removed again if the row is not stored."""
        now = time.time()
        tag1, tag2 = tags if tags is not None else (None, None)
        async with self._write_lock:
            sha, kept, new_row = None, False, False
            if original is not None:
                sha = sha256_hex(original)
                kept, new_row = await self._keep_original(sha, original)
            seq = self._next_seq()
            statements: list[tuple[str, Sequence]] = [
                (
                    "INSERT INTO items(lib_id, key, brief, tag1, tag2, vector, seq, "
                    "created_at, updated_at, original) VALUES (?,?,?,?,?,?,?,?,?,?)",
                    (lib_id, key, brief, tag1, tag2, vector.astype("<f4").tobytes(), seq, now, now, sha),
                ),
                ("DELETE FROM removals WHERE lib_id=? AND key=?", (lib_id, key)),
                # A new-model vector a running re-embed made for an earlier item of this key
                # (removed since) is not this item's: it is embedded again.
                ("DELETE FROM reembed_vectors WHERE lib_id=? AND key=?", (lib_id, key)),
            ]
            if thumbnail:
                statements.append(
                    (
                        "INSERT OR REPLACE INTO thumbnails(lib_id, key, jpeg) VALUES (?,?,?)",
                        (lib_id, key, thumbnail),
                    )
                )
            if local_features:
                statements.append(
                    (
                        "INSERT OR REPLACE INTO local_features(lib_id, key, data) VALUES (?,?,?)",
                        (lib_id, key, local_features),
                    )
                )
            if sha is not None and original is not None:
                statements.append(
                    ("INSERT OR IGNORE INTO originals(sha256, size) VALUES (?,?)", (sha, len(original)))
                )
            try:
                await self._write(statements)
            except BaseException:
                if sha is not None and kept:
                    await asyncio.to_thread(self.originals.remove, sha)
                raise
            if new_row and original is not None:
                self._originals_bytes += len(original)
        return seq

    async def _keep_original(self, sha: str, data: bytes, pending: int = 0) -> tuple[bool, bool]:
        """Write an original's file (caller holds ``_write_lock``); (whether this call created
        the file, whether its ``originals`` row is new and so its size newly counted).

        Counted against ``max_bytes`` with the database (and ``pending`` bytes an uncommitted
        import kept already): past it, or on a full disk, nothing is written and
        :class:`StorageError` says why (the add answers err_no 11). A file left by a daemon
        killed before its row committed is reused (same name, same size), and counted.
        """
        async with self.reader.execute("SELECT 1 FROM originals WHERE sha256=?", (sha,)) as cur:
            shared = await cur.fetchone() is not None
        if shared and await asyncio.to_thread(self.originals.path(sha).is_file):
            return False, False  # kept already for another item: shared
        if self.max_bytes:
            used = self._database_bytes() + self._originals_bytes + pending
            if used + len(data) > self.max_bytes:
                raise StorageError(
                    "database and kept originals would exceed [storage] max_db_bytes "
                    f"({self.max_bytes} bytes)"
                )
        try:
            return await asyncio.to_thread(self.originals.write, sha, data), not shared
        except OSError as exc:
            raise StorageError(f"could not keep the original: {exc}") from exc

    def _database_bytes(self) -> int:
        total = 0
        for suffix in ("", "-wal"):
            with contextlib.suppress(OSError):
                total += Path(f"{self.path}{suffix}").stat().st_size
        return total

    @staticmethod
    def _unreferenced_statements(shas: Iterable[str]) -> list[tuple[str, Sequence]]:
        """Statements dropping the rows of those originals no item references any more: part of
        the transaction that deletes the items, so a kill -9 cannot leave a row behind."""
        return [
            (
                "DELETE FROM originals WHERE sha256=? AND NOT EXISTS (SELECT 1 FROM items WHERE original=?)",
                (sha, sha),
            )
            for sha in sorted(set(shas))
        ]

    async def _drop_unreferenced(self, sizes: dict[str, int]) -> None:
        """After the commit: delete the files whose rows went (caller holds ``_write_lock``, so
        no add can take one of them meanwhile). A kill -9 before this leaves a file without a
        row, which the next add of those bytes reuses."""
        for sha, size in sizes.items():
            async with self.reader.execute("SELECT 1 FROM originals WHERE sha256=?", (sha,)) as cur:
                if await cur.fetchone() is not None:
                    continue  # still referenced
            await asyncio.to_thread(self.originals.remove, sha)
            self._originals_bytes -= size

    async def _original_sizes(self, shas: Iterable[str]) -> dict[str, int]:
        """Size of each kept original among ``shas``."""
        sizes: dict[str, int] = {}
        for sha in set(shas):
            async with self.reader.execute("SELECT size FROM originals WHERE sha256=?", (sha,)) as cur:
                row = await cur.fetchone()
            if row is not None:
                sizes[sha] = int(row[0])
        return sizes

    async def _originals_of(self, lib_id: int, keys: Sequence[int] | None = None) -> list[str]:
        """The kept originals referenced by some (or all) items of a library."""
        if keys is None:
            async with self.reader.execute(
                "SELECT DISTINCT original FROM items WHERE lib_id=? AND original IS NOT NULL", (lib_id,)
            ) as cur:
                return [row[0] for row in await cur.fetchall()]
        found: list[str] = []
        for start in range(0, len(keys), 500):
            chunk = list(keys[start : start + 500])
            async with self.reader.execute(
                "SELECT original FROM items WHERE original IS NOT NULL AND lib_id=? "
                f"AND key IN ({_placeholders(len(chunk))})",
                (lib_id, *chunk),
            ) as cur:
                found += [row[0] for row in await cur.fetchall()]
        return found

    async def read_original(self, sha: str) -> bytes:
        """A kept original's bytes (StorageError when its file is gone)."""
        try:
            return await asyncio.to_thread(self.originals.read, sha)
        except OSError as exc:
            raise StorageError(f"kept original {sha} cannot be read: {exc}") from exc

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
        back. Other writers wait for the commit; readers go on (WAL).
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
                    f"SELECT key FROM items WHERE lib_id=? AND key IN ({_placeholders(len(keys))})",
                    (row.id, *keys),
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
                        await conn.execute(
                            "INSERT OR IGNORE INTO originals(sha256, size) VALUES (?,?)",
                            (sha, len(item.original)),
                        )
                await conn.executemany(
                    "INSERT INTO items(lib_id, key, brief, tag1, tag2, vector, seq, created_at, updated_at, "
                    "original) VALUES (?,?,?,?,?,?,?,?,?,?)",
                    [
                        (
                            row.id,
                            item.key,
                            item.brief,
                            *(item.tags or (None, None)),
                            item.vector,
                            self._next_seq(),
                            now,
                            now,
                            shas.get(item.key),
                        )
                        for item in fresh
                    ],
                )
                await conn.executemany(
                    "DELETE FROM removals WHERE lib_id=? AND key=?", [(row.id, item.key) for item in fresh]
                )
                await conn.executemany(
                    "INSERT OR REPLACE INTO thumbnails(lib_id, key, jpeg) VALUES (?,?,?)",
                    [(row.id, item.key, item.thumbnail) for item in fresh if item.thumbnail],
                )
                await conn.executemany(
                    "INSERT OR REPLACE INTO local_features(lib_id, key, data) VALUES (?,?,?)",
                    [(row.id, item.key, item.local_features) for item in fresh if item.local_features],
                )
                inserted += len(fresh)
        return BulkResult(row, inserted, duplicates)

    async def update_item(
        self, lib_id: int, key: int, brief: bytes | None, tags: tuple[int, int] | None
    ) -> bool:
        """Replace the brief and/or tags of a stored item; False if it is not stored."""
        sets, params = ["updated_at=?"], [time.time()]
        if brief is not None:
            sets.append("brief=?")
            params.append(brief)
        if tags is not None:
            sets += ["tag1=?", "tag2=?"]
            params += list(tags)
        async with self._write_lock:
            assert self._writer is not None
            if not await self._exists(lib_id, key):
                return False
            await self._write(
                [(f"UPDATE items SET {', '.join(sets)} WHERE lib_id=? AND key=?", (*params, lib_id, key))]
            )
        return True

    async def _exists(self, lib_id: int, key: int) -> bool:
        async with self.reader.execute("SELECT 1 FROM items WHERE lib_id=? AND key=?", (lib_id, key)) as cur:
            return await cur.fetchone() is not None

    async def remove_items(self, lib_id: int, keys: Sequence[int]) -> tuple[list[int], int]:
        """Delete the stored ones among ``keys``; returns (removed keys, seq of the removal)."""
        async with self._write_lock:
            present = await self._present(lib_id, keys)
            if not present:
                return [], self._seq
            kept = await self._original_sizes(await self._originals_of(lib_id, present))
            seq = self._next_seq()
            statements: list[tuple[str, Sequence]] = []
            for start in range(0, len(present), 500):
                chunk = present[start : start + 500]
                for table in ("items", "reembed_vectors"):  # a re-embed's vector goes with its item
                    statements.append(
                        (
                            f"DELETE FROM {table} WHERE lib_id=? AND key IN ({_placeholders(len(chunk))})",
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
        found: list[int] = []
        unique = list(dict.fromkeys(keys))
        for start in range(0, len(unique), 500):
            chunk = unique[start : start + 500]
            async with self.reader.execute(
                f"SELECT key FROM items WHERE lib_id=? AND key IN ({_placeholders(len(chunk))})",
                (lib_id, *chunk),
            ) as cur:
                found += [int(row[0]) for row in await cur.fetchall()]
        return found

    async def get_item(self, lib_id: int, key: int) -> ItemRow | None:
        """One item without its vector, or None."""
        async with self.reader.execute(
            f"SELECT {_ITEM_COLUMNS} FROM items WHERE lib_id=? AND key=?", (lib_id, key)
        ) as cur:
            row = await cur.fetchone()
        return None if row is None else _item(row)

    async def get_items(self, lib_id: int, keys: Sequence[int]) -> dict[int, ItemRow]:
        """Items by key (missing keys are simply absent from the result)."""
        result: dict[int, ItemRow] = {}
        for start in range(0, len(keys), 500):
            chunk = list(keys[start : start + 500])
            async with self.reader.execute(
                f"SELECT {_ITEM_COLUMNS} FROM items WHERE lib_id=? AND key IN ({_placeholders(len(chunk))})",
                (lib_id, *chunk),
            ) as cur:
                for row in await cur.fetchall():
                    item = _item(row)
                    result[item.key] = item
        return result

    async def count(self, lib_id: int) -> int:
        """Stored items of one library."""
        async with self.reader.execute("SELECT count(*) FROM items WHERE lib_id=?", (lib_id,)) as cur:
            row = await cur.fetchone()
        return int(row[0]) if row else 0

    async def keys_with_tags(self, lib_id: int, tags: Sequence[int], match_all: bool) -> list[int]:
        """Keys of items carrying every (``match_all``) or any of the non-zero ``tags``."""
        wanted = [t for t in tags if t != 0]
        clauses = ["(tag1=? OR tag2=?)"] * len(wanted)
        joiner = " AND " if match_all else " OR "
        params: list[int] = [lib_id]
        for tag in wanted:
            params += [tag, tag]
        async with self.reader.execute(
            f"SELECT key FROM items WHERE lib_id=? AND ({joiner.join(clauses)})", params
        ) as cur:
            return [int(row[0]) for row in await cur.fetchall()]

    async def _rows_by_seq(
        self, columns: str, lib_id: int, after: int, chunk: int, upto: int | None = None
    ) -> AsyncIterator[list[tuple]]:
        """Chunks of a library's rows (``columns`` then ``seq``, last) with ``after < seq <=
        upto``, in seq order: every full pass over a library (replay, tags at load, repair,
        export) pages this way, by seq rather than OFFSET, so a chunk costs the same however deep."""
        last = after
        top = (1 << 63) - 1 if upto is None else upto
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
        width = 4 * dim
        columns = "key, vector, coalesce(tag1, 0), coalesce(tag2, 0)"
        async for rows in self._rows_by_seq(columns, lib_id, seq, chunk, max_seq):
            bad = [(int(r[0]), _vector_shape_problem(r[1], dim)) for r in rows if not _is_vector(r[1], width)]
            if bad:
                raise BadRows(bad)
            keys = np.array([r[0] for r in rows], dtype=np.int64)
            vectors = np.frombuffer(b"".join(r[1] for r in rows), dtype="<f4").reshape(len(rows), dim)
            tags = np.array([(r[2], r[3]) for r in rows], dtype=np.uint32).reshape(len(rows), 2)
            yield keys, vectors, tags, int(rows[-1][-1])

    async def tagged_vectors_of(
        self, lib_id: int, keys: Sequence[int], dim: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(keys, vectors, tags) of the stored ones among ``keys`` (at most 500 at a time)."""
        wanted = _placeholders(len(keys))
        async with self.reader.execute(
            f"SELECT key, vector, tag1, tag2 FROM items WHERE lib_id=? AND key IN ({wanted})", (lib_id, *keys)
        ) as cur:
            rows = [r for r in await cur.fetchall() if _is_vector(r[1], 4 * dim)]
        found = np.array([r[0] for r in rows], dtype=np.int64)
        vectors = np.frombuffer(b"".join(r[1] for r in rows), dtype="<f4").reshape(len(rows), dim)
        tags = np.array([(r[2] or 0, r[3] or 0) for r in rows], dtype=np.uint32).reshape(len(rows), 2)
        return found, vectors, tags

    async def item_tags(
        self, lib_id: int, chunk: int = 50_000
    ) -> AsyncIterator[tuple[np.ndarray, np.ndarray]]:
        """(keys, tags (n, 2) uint32) of every item, in chunks: an index loaded from a snapshot
        learns the tags as they are now (a tag update does not move an item's seq)."""
        async for rows in self._rows_by_seq(
            "key, coalesce(tag1, 0), coalesce(tag2, 0)", lib_id, -(1 << 63), chunk
        ):
            keys = np.array([r[0] for r in rows], np.int64)
            tags = np.array([(r[1], r[2]) for r in rows], np.int64).astype(np.uint32)
            yield keys, tags

    async def vectors_of(self, lib_id: int, keys: Sequence[int], dim: int) -> dict[int, np.ndarray]:
        """Stored float32 vectors by key (missing keys absent)."""
        found: dict[int, np.ndarray] = {}
        for start in range(0, len(keys), 500):
            chunk = list(keys[start : start + 500])
            async with self.reader.execute(
                f"SELECT key, vector FROM items WHERE lib_id=? AND key IN ({_placeholders(len(chunk))})",
                (lib_id, *chunk),
            ) as cur:
                for key, raw in await cur.fetchall():
                    if _is_vector(raw, 4 * dim):
                        found[int(key)] = np.frombuffer(raw, "<f4").astype(np.float32)
        return found

    async def sample_vectors(self, lib_id: int, dim: int, limit: int) -> np.ndarray:
        """Up to ``limit`` stored vectors spread evenly over the library's insertion order (every
        n-th seq, read through the seq index), to learn a projection from."""
        total = await self.count(lib_id)
        step = max(1, total // max(limit, 1))
        async with self.reader.execute(
            "SELECT vector FROM items WHERE lib_id=? AND seq % ? = 0 LIMIT ?", (lib_id, step, limit)
        ) as cur:
            rows = [r[0] for r in await cur.fetchall() if _is_vector(r[0], 4 * dim)]
        if len(rows) < min(limit, total) // 2:  # seqs shared with other libraries: take the first ones
            async with self.reader.execute(
                "SELECT vector FROM items WHERE lib_id=? LIMIT ?", (lib_id, limit)
            ) as cur:
                rows = [r[0] for r in await cur.fetchall() if _is_vector(r[0], 4 * dim)]
        return np.frombuffer(b"".join(rows), "<f4").reshape(len(rows), dim).astype(np.float32)

    async def save_projection(self, lib_id: int, projection: Projection, sample_size: int) -> None:
        """Make ``projection`` the library's (replacing any earlier one), durably."""
        mean, components = projection.to_blobs()
        async with self._write_lock:
            await self._write(
                [
                    (
                        "INSERT OR REPLACE INTO projections(lib_id, model_fingerprint, fingerprint, "
                        "native_dim, dim, mean, components, sample_size, created_at) "
                        "VALUES (?,?,?,?,?,?,?,?,?)",
                        (
                            lib_id,
                            projection.model_fingerprint,
                            projection.fingerprint,
                            projection.native_dim,
                            projection.dim,
                            mean,
                            components,
                            sample_size,
                            time.time(),
                        ),
                    )
                ]
            )

    async def projection(self, lib_id: int) -> Projection | None:
        """The library's stored projection, or None; a damaged one raises ValueError."""
        async with self.reader.execute(
            "SELECT mean, components, native_dim, dim, model_fingerprint, fingerprint "
            "FROM projections WHERE lib_id=?",
            (lib_id,),
        ) as cur:
            row = await cur.fetchone()
        if row is None:
            return None
        mean, components, native_dim, dim, model_fingerprint, fingerprint = row
        return Projection.from_blobs(mean, components, native_dim, dim, model_fingerprint, fingerprint)

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
        async for rows in self._rows_by_seq("key, brief, tag1, tag2, vector", lib_id, -(1 << 63), chunk):
            yield [RawItem(int(r[0]), r[1], r[2], r[3], r[4]) for r in rows]

    async def removals_since(self, lib_id: int, seq: int) -> list[int]:
        """Keys removed after ``seq`` (and not re-added since)."""
        async with self.reader.execute(
            "SELECT key FROM removals WHERE lib_id=? AND seq>?", (lib_id, seq)
        ) as cur:
            return [int(row[0]) for row in await cur.fetchall()]

    @property
    def seq(self) -> int:
        """The highest write sequence handed out so far."""
        return self._seq

    async def keys(self, lib_id: int, max_seq: int | None = None) -> list[int]:
        """Stored keys of one library (inserted at or before ``max_seq`` when given)."""
        limit = (1 << 63) - 1 if max_seq is None else max_seq
        async with self.reader.execute(
            "SELECT key FROM items WHERE lib_id=? AND seq<=?", (lib_id, limit)
        ) as cur:
            return [int(row[0]) for row in await cur.fetchall()]

    async def thumbnail(self, lib_id: int, key: int) -> bytes | None:
        """The stored thumbnail JPEG of an item, if any."""
        async with self.reader.execute(
            "SELECT jpeg FROM thumbnails WHERE lib_id=? AND key=?", (lib_id, key)
        ) as cur:
            row = await cur.fetchone()
        return None if row is None else bytes(row[0])

    async def local_features(self, lib_id: int, keys: Sequence[int]) -> dict[int, bytes]:
        """Stored local features by key; items without any are absent from the result."""
        found: dict[int, bytes] = {}
        for start in range(0, len(keys), 500):
            chunk = list(keys[start : start + 500])
            async with self.reader.execute(
                "SELECT key, data FROM local_features "
                f"WHERE lib_id=? AND key IN ({_placeholders(len(chunk))})",
                (lib_id, *chunk),
            ) as cur:
                found.update((int(key), bytes(data)) for key, data in await cur.fetchall())
        return found

    async def page_items(self, lib_id: int, offset: int, limit: int) -> list[ItemRow]:
        """Items in insertion order, for browsing a library."""
        async with self.reader.execute(
            f"SELECT {_ITEM_COLUMNS} FROM items WHERE lib_id=? ORDER BY seq LIMIT ? OFFSET ?",
            (lib_id, limit, offset),
        ) as cur:
            return [_item(row) for row in await cur.fetchall()]

    async def delete_library(self, lib_id: int) -> None:
        """Delete a library and everything in it (items, removals, thumbnails cascade)."""
        async with self._write_lock:
            kept = await self._original_sizes(await self._originals_of(lib_id))
            await self._write(
                [
                    ("DELETE FROM reembed_vectors WHERE lib_id=?", (lib_id,)),
                    ("DELETE FROM reembed_jobs WHERE lib_id=?", (lib_id,)),
                    ("DELETE FROM thumbnails WHERE lib_id=?", (lib_id,)),
                    ("DELETE FROM local_features WHERE lib_id=?", (lib_id,)),
                    ("DELETE FROM removals WHERE lib_id=?", (lib_id,)),
                    ("DELETE FROM projections WHERE lib_id=?", (lib_id,)),
                    ("DELETE FROM items WHERE lib_id=?", (lib_id,)),
                    ("DELETE FROM libraries WHERE id=?", (lib_id,)),
                    *self._unreferenced_statements(kept),
                ]
            )
            await self._drop_unreferenced(kept)

    # ---- bulk import jobs ------------------------------------------------------------------

    async def create_job(
        self,
        appid: str,
        kind: str,
        source: str,
        total: int,
        dup_policy: str | None = None,
        dup_min_score: float | None = None,
    ) -> int:
        """A queued job (with its own near-duplicate policy, if any); returns its id."""
        now = time.time()
        async with self._write_lock:
            job_id = await self._write(
                [
                    (
                        "INSERT INTO jobs(appid, kind, source, status, total, created_at, updated_at, "
                        "dup_policy, dup_min_score) VALUES (?,?,?,'queued',?,?,?,?,?)",
                        (appid, kind, source, total, now, now, dup_policy, dup_min_score),
                    )
                ]
            )
        return int(job_id)  # type: ignore[arg-type]

    async def save_job_progress(self, job: JobRow, errors: Sequence[tuple[str, int, str]] = ()) -> None:
        """Persist a job's counters, position and status, and append its new per-item errors."""
        statements: list[tuple[str, Sequence]] = [
            (
                "UPDATE jobs SET status=?, position=?, total=?, done=?, failed=?, duplicates=?, message=?, "
                "near_duplicates=?, updated_at=? WHERE id=?",
                (
                    job.status,
                    job.position,
                    job.total,
                    job.done,
                    job.failed,
                    job.duplicates,
                    job.message,
                    job.near_duplicates,
                    time.time(),
                    job.id,
                ),
            )
        ]
        statements += [
            ("INSERT INTO job_errors(job_id, file, err_no, reason) VALUES (?,?,?,?)", (job.id, *error))
            for error in errors
        ]
        async with self._write_lock:
            await self._write(statements)

    async def jobs(self, job_id: int | None = None) -> list[JobRow]:
        """All jobs, newest first (or just one)."""
        sql = f"SELECT {_JOB_COLUMNS} FROM jobs"
        params: tuple = ()
        if job_id is not None:
            sql += " WHERE id=?"
            params = (job_id,)
        async with self.reader.execute(sql + " ORDER BY id DESC", params) as cur:
            return [JobRow(*row) for row in await cur.fetchall()]

    async def job_errors(self, job_id: int, limit: int = 1000) -> list[tuple[str, int, str]]:
        """The first ``limit`` per-item failures of a job."""
        async with self.reader.execute(
            "SELECT file, err_no, reason FROM job_errors WHERE job_id=? ORDER BY rowid LIMIT ?",
            (job_id, limit),
        ) as cur:
            return [(r[0], int(r[1]), r[2]) for r in await cur.fetchall()]

    async def items_with_vectors(
        self, lib_id: int, chunk: int = 2048
    ) -> AsyncIterator[list[tuple[ItemRow, bytes]]]:
        """Every item with its raw vector bytes, in insertion order, in chunks (export)."""
        async for rows in self._rows_by_seq(f"{_ITEM_COLUMNS}, vector", lib_id, -1, chunk):
            yield [(_item(row[:7]), bytes(row[7])) for row in rows]

    # ---- re-embedding (a library moved to another model) -------------------------------------

    async def items_without_original(self, lib_id: int) -> int:
        """Items of a library with no kept original (a re-embed cannot rebuild those)."""
        async with self.reader.execute(
            "SELECT count(*) FROM items WHERE lib_id=? AND original IS NULL", (lib_id,)
        ) as cur:
            return int((await cur.fetchone())[0])  # type: ignore[index]

    async def create_reembed_job(
        self, row: LibraryRow, model_name: str, model_id: str, dim: int, fingerprint: str, total: int
    ) -> int:
        """A running job for ``row``; leftover vectors of an earlier job are dropped first."""
        now = time.time()
        async with self._write_lock:
            job_id = await self._write(
                [
                    ("DELETE FROM reembed_vectors WHERE lib_id=?", (row.id,)),
                    (
                        "INSERT INTO reembed_jobs(lib_id, appid, model_name, model_id, dim, fingerprint, "
                        "status, total, created_at, updated_at) VALUES (?,?,?,?,?,?,'running',?,?,?)",
                        (row.id, row.appid, model_name, model_id, dim, fingerprint, total, now, now),
                    ),
                ]
            )
        return int(job_id)  # type: ignore[arg-type]

    async def reembed_jobs(self, job_id: int | None = None, status: str | None = None) -> list[ReembedJobRow]:
        """Re-embed jobs, newest first (one by id, or those with a status)."""
        sql, params = f"SELECT {_REEMBED_COLUMNS} FROM reembed_jobs WHERE 1=1", []
        if job_id is not None:
            sql, params = sql + " AND id=?", [*params, job_id]
        if status is not None:
            sql, params = sql + " AND status=?", [*params, status]
        async with self.reader.execute(sql + " ORDER BY id DESC", params) as cur:
            return [ReembedJobRow(*row) for row in await cur.fetchall()]

    async def save_reembed_job(self, job: ReembedJobRow) -> None:
        """Persist a job's status, counters and message; a job that ends without switching
        (cancelled, failed) drops the vectors it made, so the library is as it was."""
        statements: list[tuple[str, Sequence]] = [
            (
                "UPDATE reembed_jobs SET status=?, total=?, done=?, resumed=?, resumed_at=?, message=?, "
                "updated_at=? WHERE id=?",
                (
                    job.status,
                    job.total,
                    job.done,
                    job.resumed,
                    job.resumed_at,
                    job.message,
                    time.time(),
                    job.id,
                ),
            )
        ]
        if job.status in ("cancelled", "failed"):
            statements.append(("DELETE FROM reembed_vectors WHERE lib_id=?", (job.lib_id,)))
        async with self._write_lock:
            await self._write(statements)

    async def reembed_pending(
        self, lib_id: int, limit: int, after_seq: int = 0
    ) -> list[tuple[int, str | None, int]]:
        """(key, kept original, seq) of items with no vector of the new model yet, oldest first,
        from ``after_seq`` on: a job's cursor, so each chunk does not walk again over every item
        done before it (quadratic in the library's size, and on the reader every search shares)."""
        async with self.reader.execute(
            "SELECT i.key, i.original, i.seq FROM items i WHERE i.lib_id=? AND i.seq>? AND NOT EXISTS "
            "(SELECT 1 FROM reembed_vectors r WHERE r.lib_id=i.lib_id AND r.key=i.key) "
            "ORDER BY i.seq LIMIT ?",
            (lib_id, after_seq, limit),
        ) as cur:
            return [(int(key), original, int(seq)) for key, original, seq in await cur.fetchall()]

    async def reembed_done(self, lib_id: int) -> int:
        """Items of a library that have their new vector (stale rows of removed items excluded)."""
        async with self.reader.execute(
            "SELECT count(*) FROM reembed_vectors r WHERE r.lib_id=? AND EXISTS "
            "(SELECT 1 FROM items i WHERE i.lib_id=r.lib_id AND i.key=r.key)",
            (lib_id,),
        ) as cur:
            return int((await cur.fetchone())[0])  # type: ignore[index]

    async def save_reembedded(self, lib_id: int, vectors: Sequence[tuple[int, np.ndarray]]) -> None:
        """Keep new-model vectors of some items (one transaction: a restart resumes after them)."""
        async with self._write_lock:
            await self._write(
                [
                    (
                        "INSERT OR REPLACE INTO reembed_vectors(lib_id, key, vector) VALUES (?,?,?)",
                        (lib_id, key, np.asarray(vector, dtype="<f4").tobytes()),
                    )
                    for key, vector in vectors
                ]
            )

    async def switch_model(self, row: LibraryRow, job: ReembedJobRow) -> LibraryRow:
        """The switch, in ONE transaction: every item's vector, the library's model, dimension and
        fingerprint, and the job's status. :class:`ReembedIncomplete` (nothing changed) when an
        item still lacks its new vector. Every item's seq moves above every seq handed out so far
        (old seq + the current top, order kept), so no snapshot of the old vectors counts as
        holding the new ones."""
        async with self._write_lock:
            async with self.reader.execute(
                "SELECT count(*) FROM items i WHERE i.lib_id=? AND NOT EXISTS "
                "(SELECT 1 FROM reembed_vectors r WHERE r.lib_id=i.lib_id AND r.key=i.key)",
                (row.id,),
            ) as cur:
                missing = int((await cur.fetchone())[0])  # type: ignore[index]
            if missing:
                raise ReembedIncomplete(f"{missing} items have no vector of the new model yet")
            base = self._seq
            async with self._transaction() as conn:
                await conn.execute(
                    "UPDATE items SET vector=r.vector, seq=?+items.seq FROM reembed_vectors r "
                    "WHERE r.lib_id=items.lib_id AND r.key=items.key AND items.lib_id=?",
                    (base, row.id),
                )
                async with conn.execute(
                    "SELECT count(*), coalesce(max(seq), 0) FROM items WHERE lib_id=?", (row.id,)
                ) as cur:
                    count, top = await cur.fetchone()  # type: ignore[misc]
                await conn.execute(
                    "UPDATE libraries SET model_id=?, dim=?, fingerprint=? WHERE id=?",
                    (job.model_id, job.dim, job.fingerprint, row.id),
                )
                await conn.execute("DELETE FROM reembed_vectors WHERE lib_id=?", (row.id,))
                await conn.execute(
                    "UPDATE reembed_jobs SET status='done', done=?, total=?, message='', updated_at=? "
                    "WHERE id=?",
                    (count, count, time.time(), job.id),
                )
            self._seq = max(self._seq, int(top))
        return dataclasses.replace(row, model_id=job.model_id, dim=job.dim, fingerprint=job.fingerprint)

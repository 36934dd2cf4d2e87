"""One SQLite file through aiosqlite: a writer connection behind a lock, a reader connection.

Every acknowledged write is a committed transaction in WAL mode with ``synchronous=FULL``, so it
survives a power cut. The writer lock makes each write one transaction even though aiosqlite
would happily interleave statements of concurrent coroutines on a shared connection. The schema
is ``schema.sql`` plus the migration files beside it, the same for every file this daemon opens
(the library database, and the job ledger of a daemon whose libraries live elsewhere).
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from importlib import resources
from pathlib import Path
from typing import TypeVar

import aiosqlite

from same_search.records import AlreadyExists, LibraryGone, StorageError

#: Version 1 is schema.sql; each later version is ``migration_NNNN.sql`` beside it, applied in order
#: in one transaction each. Shipped files are never edited: a change is a new file.
MIGRATIONS = (2, 3, 4, 5, 6, 7, 8, 9, 10, 12)
SCHEMA_VERSION = MIGRATIONS[-1]
#: Keys per ``IN (...)`` list: well under SQLite's limit of host parameters (999 before 3.32).
IN_CHUNK = 500

T = TypeVar("T")
Statement = tuple[str, Sequence[object]]


def chunked(values: Sequence[T], size: int = IN_CHUNK) -> Iterator[list[T]]:
    """``values`` in consecutive lists of at most ``size``."""
    for start in range(0, len(values), size):
        yield list(values[start : start + size])


def in_list(n: int) -> str:
    """The placeholders of an ``IN (...)`` list of ``n`` values."""
    return ",".join("?" * n)


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


def _refused(exc: sqlite3.IntegrityError) -> Exception:
    """What a constraint failure means. A foreign key whose parent is gone is a library deleted
    meanwhile: items, removals and projections reference their library, thumbnails and local
    features an item of the same transaction. A unique key already there is a row that exists."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code == sqlite3.SQLITE_CONSTRAINT_FOREIGNKEY:
        return LibraryGone(f"the library was deleted meanwhile ({exc})")
    if code in (sqlite3.SQLITE_CONSTRAINT_UNIQUE, sqlite3.SQLITE_CONSTRAINT_PRIMARYKEY):
        return AlreadyExists(str(exc))
    return StorageError(str(exc))


class Database:
    """A SQLite file with the daemon's schema: opened, migrated, written one transaction at a time."""

    def __init__(self, path: Path, max_bytes: int = 0) -> None:
        self.path = path
        #: The most the file may take (0: no limit); writes past it fail as :class:`StorageError`.
        self.max_bytes = max_bytes
        self._writer: aiosqlite.Connection | None = None
        self._reader: aiosqlite.Connection | None = None
        self._write_lock = asyncio.Lock()

    async def open(self) -> None:
        """Open both connections and create or migrate the schema."""
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

    async def close(self) -> None:
        """Close both connections (the writer checkpoints the WAL on close)."""
        for conn in (self._reader, self._writer):
            if conn is not None:
                await conn.close()
        self._reader = self._writer = None

    @property
    def reader(self) -> aiosqlite.Connection:
        """The connection every read uses (WAL: reads never wait for a write)."""
        assert self._reader is not None, "store is not open"
        return self._reader

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

    @contextlib.asynccontextmanager
    async def _transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        """One transaction on the writer (caller holds ``_write_lock``): committed when the block
        ends, rolled back when it raises. A constraint failure becomes :class:`AlreadyExists`
        or :class:`LibraryGone` (see :func:`_refused`), a disk error :class:`StorageError`."""
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
            raise _refused(exc) from exc
        except (sqlite3.DatabaseError, OSError) as exc:  # full, read-only, I/O error, ...
            raise StorageError(str(exc)) from exc

    async def _write(self, statements: Iterable[Statement]) -> int | None:
        """Run statements as one transaction (caller holds ``_write_lock``).

        Returns the rowid the last statement inserted (read on the writer, inside the
        transaction, so no other write can come between).
        """
        last_rowid = None
        async with self._transaction() as conn:
            for sql, params in statements:
                last_rowid = (await conn.execute(sql, params)).lastrowid
        return last_rowid

    async def _select_in(self, sql: str, lib_id: int, keys: Sequence[int]) -> list[sqlite3.Row]:
        """Rows of ``sql`` for some keys of a library, ``IN_CHUNK`` keys per query: ``sql`` takes
        the library id, then its ``{keys}`` placeholder stands for the ``IN (...)`` list."""
        found: list[sqlite3.Row] = []
        for chunk in chunked(keys):
            async with self.reader.execute(sql.format(keys=in_list(len(chunk))), (lib_id, *chunk)) as cur:
                found += await cur.fetchall()
        return found

    def _database_bytes(self) -> int:
        """The file and its write-ahead log, as they take the disk now."""
        total = 0
        for suffix in ("", "-wal"):
            with contextlib.suppress(OSError):
                total += Path(f"{self.path}{suffix}").stat().st_size
        return total

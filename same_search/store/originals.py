"""Kept originals: uploaded image bytes, content-addressed under ``<data_dir>/originals``.

A file is named by the sha256 of its bytes (``originals/ab/cdef...``), so two items holding the
same picture share it. It is written durably (temporary file, fsync, rename, fsync of the folder)
before the row that references it is committed; which items reference a file, and its size, live
in the database (``items.original``, table ``originals``), so only :class:`OriginalStore` decides
when a file goes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from pathlib import Path

from same_search.files import write_atomically
from same_search.records import StorageError
from same_search.store.database import Database, Statement


class Originals:
    """The folder of kept originals. Blocking file I/O: call from a worker thread."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, sha256: str) -> Path:
        """Where the file of ``sha256`` lives (two-character fan-out keeps folders small)."""
        return self.root / sha256[:2] / sha256[2:]

    def write(self, sha256: str, data: bytes) -> bool:
        """Make the file durable; False when it was already there (same name, same size)."""
        target = self.path(sha256)
        if target.is_file() and target.stat().st_size == len(data):
            return False
        target.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(target, data)
        return True

    def read(self, sha256: str) -> bytes:
        """The kept bytes; OSError when the file is missing."""
        return self.path(sha256).read_bytes()

    def remove(self, sha256: str) -> None:
        """Delete a file no item references any more."""
        self.path(sha256).unlink(missing_ok=True)


class OriginalStore(Database):
    """Table ``originals`` and the folder it describes: which kept files exist, their sizes, and
    their bytes counted with the database's against ``max_bytes``.

    Items reference a file by sha256 (``items.original``); a file goes with the last item that
    references it, its row in the same transaction as the removal, its file after the commit.
    """

    def __init__(self, path: Path, max_bytes: int = 0) -> None:
        super().__init__(path, max_bytes)
        #: Kept originals, beside the database; their bytes count against ``max_bytes`` too.
        self.originals = Originals(path.parent / "originals")
        self._originals_bytes = 0

    async def open(self) -> None:
        """Open the database, then drop the files a crash left unreferenced and count the rest."""
        await super().open()
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

    @staticmethod
    def _kept_row(sha: str, size: int) -> Statement:
        """The statement that records a kept file (a no-op when another item keeps it already)."""
        return ("INSERT OR IGNORE INTO originals(sha256, size) VALUES (?,?)", (sha, size))

    @staticmethod
    def _unreferenced_statements(shas: Iterable[str]) -> list[Statement]:
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
        rows = await self._select_in(
            "SELECT original FROM items WHERE original IS NOT NULL AND lib_id=? AND key IN ({keys})",
            lib_id,
            keys,
        )
        return [row[0] for row in rows]

    async def read_original(self, sha: str) -> bytes:
        """A kept original's bytes (StorageError when its file is gone)."""
        try:
            return await asyncio.to_thread(self.originals.read, sha)
        except OSError as exc:
            raise StorageError(f"kept original {sha} cannot be read: {exc}") from exc

    async def items_without_original(self, lib_id: int) -> int:
        """Items of a library with no kept original (a re-embed cannot rebuild those)."""
        async with self.reader.execute(
            "SELECT count(*) FROM items WHERE lib_id=? AND original IS NULL", (lib_id,)
        ) as cur:
            return int((await cur.fetchone())[0])  # type: ignore[index]

"""Keeping libraries healthy: background rebuilds, the switch to a reduced index, recall
measurements, saving snapshots, repairing a library whose rows cannot be loaded, deleting one."""

from __future__ import annotations

import asyncio
import logging

from same_search.backends.base import Library, StorageError, Unavailable
from same_search.backends.capabilities import LearnedSpaces, ReducedIndexes
from same_search.contsign import ContSign
from same_search.errors import ApiError, ErrNo
from same_search.index.space import LearnedSpace
from same_search.libraries.rebuilds import ADOPTION, DONE, SPACE_MOVE, Rebuild, Rebuilds
from same_search.libraries.records import RepairReport
from same_search.libraries.registry import LibraryRegistry, storage_failed
from same_search.libraries.tuning import RecallChecks
from same_search.libraries.writes import LibraryWrites
from same_search.rows import bad_rows_text, load_failure_reason

log = logging.getLogger(__name__)

#: Rows a repair reports one by one (all of them are dropped).
REPAIR_REPORT_MAX = 1000


class LibraryMaintenance:
    """Rebuilds, adoption of a reduced index, snapshots, repair and deletion."""

    def __init__(self, registry: LibraryRegistry) -> None:
        self.registry = registry
        self.backend = registry.backend
        #: Background index rebuilds, one per library at a time (``rebuild``, ``compact``, adoption).
        self.rebuilds = Rebuilds(registry.backend)
        #: Background recall measurements, one per library at a time.
        self.recall = RecallChecks(registry.backend)
        #: Libraries whose switch to a reduced index was started by this process (asked at most once).
        self._adoptions: set[str] = set()
        self._repair_lock = asyncio.Lock()

    async def save_indexes(self, only_dirty: bool = True) -> int:
        """Make every (changed) library's search structure durable; returns how many were saved."""
        return await self.backend.save(list(self.registry.libraries.values()), only_dirty)

    async def save_periodically(self) -> int:
        """The periodic save: changed libraries, except those being rebuilt. A snapshot's capture
        holds the GIL (about 2 s at a million items on 2 cores: every request waits), and a rebuild
        saves its fresh index before it swaps it in; a crash meanwhile replays the writes made
        since the last save from the database. Shutdown stops the rebuilds, then saves."""
        rebuilding = {rebuild.appid for rebuild in self.rebuilds.running()}
        libs = [lib for appid, lib in self.registry.libraries.items() if appid not in rebuilding]
        return await self.backend.save(libs, only_dirty=True)

    async def close(self) -> None:
        """Stop rebuilds, then save changed indexes.

        A failed save (disk full, say) is logged, not raised: snapshots only shorten the next
        start, which replays or rebuilds from the database; nothing acknowledged depends on them.
        """
        try:
            await self.recall.close()
            await self.rebuilds.close()  # the indexes serving now are the ones saved
            await self.save_indexes()
        except Exception:
            log.exception(
                "could not save the indexes at shutdown; the next start rebuilds them from the database"
            )

    def rebuild(self, lib: Library, reason: str) -> Rebuild:
        """Start rebuilding a library's search structure from its items in the background
        (it drops deleted slots); the running rebuild when one is under way already.

        The library keeps answering searches and accepting writes meanwhile; the state shows in
        its stats and on ``GET /api/libraries/{appid}/rebuild``.
        """
        return self.rebuilds.start(lib, reason, on_end=lambda _: self.recall.tune_if_due(lib))

    async def move_space(self, lib: Library, learned: bool) -> Rebuild:
        """Move a library into its learned space or back to native cosine (``PUT .../space``):
        the choice is stored, then the move job (a rebuild) fits the space when the library is
        large enough and swaps the new index in while the library serves. A rebuild already
        running started before the choice: the move then runs once it has ended."""
        backend = self.backend
        if not isinstance(backend, LearnedSpaces):
            raise ApiError(ErrNo.BAD_REQUEST, f"the {backend.name} backend ranks in native cosine only")
        await backend.choose_space(lib, learned)
        running = self.rebuilds.current(lib.row.appid)
        if running is not None and running.running:
            await self.rebuilds.wait(running)
        return self.rebuild(lib, SPACE_MOVE)

    async def adopt_space(self, lib: Library, space: LearnedSpace) -> Library:
        """Make ``space`` (an imported library's) the one ``lib`` ranks in, and wait for the move:
        an import answers once the library ranks as the exported one did."""
        backend = self.backend
        if not isinstance(backend, LearnedSpaces):
            return lib
        await backend.adopt_space(lib, space)
        running = self.rebuilds.current(lib.row.appid)
        if running is not None and running.running:
            await self.rebuilds.wait(running)
        await self.rebuilds.wait(self.rebuild(lib, SPACE_MOVE))
        return lib

    async def wait_rebuild(self, rebuild: Rebuild) -> None:
        """Until ``rebuild`` has ended (the caller going away does not cancel it)."""
        await self.rebuilds.wait(rebuild)

    def rebuild_state(self, appid: str) -> dict | None:
        """The library's running rebuild, else its last one since the start, else None."""
        rebuild = self.rebuilds.current(appid)
        return None if rebuild is None else rebuild.to_json()

    def keep_up(self, lib: Library) -> None:
        """After a library loaded or stored items: the switch to a reduced index when it is large
        enough, else a recall measurement when its index is new or has doubled (a rebuild under
        way measures the index it swaps in when it ends)."""
        self.adopt_reduction_if_due(lib)
        running = self.rebuilds.current(lib.row.appid)
        if running is None or not running.running:
            self.recall.tune_if_due(lib)

    def adopt_reduction_if_due(self, lib: Library) -> None:
        """Start the switch to a reduced index once the library is large enough.

        An adoption that fails is not tried again by this process (the next start does), so a
        broken library does not rebuild after every add; one that succeeds can be due again
        later, after removals and a compaction took the library back to a full-size index."""
        appid = lib.row.appid
        backend = self.backend
        due = isinstance(backend, ReducedIndexes) and backend.wants_reduction(lib)
        if appid in self._adoptions or not due:
            return
        running = self.rebuilds.current(appid)
        if running is not None and running.running:
            return  # a rebuild under way builds the right kind already (new_index picks it)
        self._adoptions.add(appid)
        log.info("library %s: large enough for a reduced index; switching in the background", appid)
        self.rebuilds.start(lib, ADOPTION, on_end=lambda rebuild: self._adoption_ended(lib, rebuild))

    def _adoption_ended(self, lib: Library, rebuild: Rebuild) -> None:
        if rebuild.state == DONE:
            self._adoptions.discard(rebuild.appid)
        self.recall.tune_if_due(lib)

    async def delete(self, lib: Library | Unavailable) -> None:
        """Drop a library, served or set aside: its items, thumbnails and search structure."""
        await self.rebuilds.cancel(lib.row.appid)
        await self.recall.cancel(lib.row.appid)
        try:
            await self.backend.delete_library(lib)
        except StorageError as exc:
            raise storage_failed(exc) from exc
        self.registry.forget(lib.row.appid)
        self._adoptions.discard(lib.row.appid)
        self.rebuilds.latest.pop(lib.row.appid, None)
        log.info("library %s deleted", lib.row.appid)

    async def repair(self, appid: str, writes: LibraryWrites) -> RepairReport:
        """Drop every row of a library that cannot be loaded or served, and bring it back.

        Scans all rows (vector size, finite unit vector, tags, brief type). A served library
        loses those rows through the ordinary removal path; a set-aside one loses them, then it
        is loaded again: on success it serves, otherwise it stays aside with the new reason
        (err_no 6). Nothing is dropped automatically at start: the operator decides (a backup
        may hold the good rows).
        """
        async with self._repair_lock:
            return await self._repair(appid, writes)

    async def _repair(self, appid: str, writes: LibraryWrites) -> RepairReport:
        target = await self.registry.get_any(appid)
        try:
            bad = await self.backend.bad_rows(target.row)
        except StorageError as exc:
            raise storage_failed(exc) from exc
        dropped = [(ContSign.from_key(key), problem) for key, problem in bad]
        if isinstance(target, Library):
            if dropped:
                await writes.remove(target, [contsign for contsign, _ in dropped])
                log.warning("library %s: repair dropped %d rows: %s", appid, len(bad), bad_rows_text(bad))
            return RepairReport(appid, dropped, restored=False)
        if bad:
            try:
                await self.backend.drop_rows(target.row, [key for key, _ in bad])
            except StorageError as exc:
                raise storage_failed(exc) from exc
        try:
            lib = await self.backend.load_library(target.row)
        except Exception as exc:
            reason = load_failure_reason(exc)
            self.registry.set_aside(target.row, reason)
            raise ApiError(
                ErrNo.BS_UNAVAILABLE,
                f"library {appid!r} is still unavailable after dropping {len(bad)} rows: {reason}",
            ) from exc
        self.registry.unavailable.pop(appid, None)
        self.registry.libraries[appid] = lib
        log.warning(
            "library %s repaired: %d rows dropped, serving again with %d items",
            appid,
            len(bad),
            await self.registry.count(lib),
        )
        return RepairReport(appid, dropped, restored=True)

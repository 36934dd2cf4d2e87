"""Folder-sync schedules in the job ledger: one row per library that follows a folder.

They sit beside the jobs they start (daemon state: the folder is on this box), in the library
database of the local backend and in the ledger file of the others, so a schedule survives a
restart whatever the backend.
"""

from __future__ import annotations

import time

from same_search.records import SyncScheduleRow
from same_search.store.database import Database

_COLUMNS = (
    "appid, folder, remove_missing, interval_s, created_at, updated_at, next_run_at, "
    "last_run_at, last_job_id, last_message"
)


def _row(values: tuple) -> SyncScheduleRow:
    appid, folder, remove_missing, *rest = values
    return SyncScheduleRow(appid, folder, bool(remove_missing), *rest)


class ScheduleStore(Database):
    """Table ``sync_schedules``."""

    async def set_schedule(
        self, appid: str, folder: str, remove_missing: bool, interval_s: int, next_run_at: float
    ) -> SyncScheduleRow:
        """Create or replace a library's schedule (its last run is kept); returns it."""
        now = time.time()
        async with self._write_lock:
            await self._write(
                [
                    (
                        "INSERT INTO sync_schedules(appid, folder, remove_missing, interval_s, created_at, "
                        "updated_at, next_run_at) VALUES (?,?,?,?,?,?,?) ON CONFLICT(appid) DO UPDATE SET "
                        "folder=excluded.folder, remove_missing=excluded.remove_missing, "
                        "interval_s=excluded.interval_s, updated_at=excluded.updated_at, "
                        "next_run_at=excluded.next_run_at",
                        (appid, folder, int(remove_missing), interval_s, now, now, next_run_at),
                    )
                ]
            )
        found = await self.schedule(appid)
        assert found is not None
        return found

    async def schedule(self, appid: str) -> SyncScheduleRow | None:
        """One library's schedule, if it has one."""
        async with self.reader.execute(
            f"SELECT {_COLUMNS} FROM sync_schedules WHERE appid=?", (appid,)
        ) as cur:
            row = await cur.fetchone()
        return None if row is None else _row(tuple(row))

    async def schedules(self) -> list[SyncScheduleRow]:
        """Every schedule, by library name."""
        async with self.reader.execute(f"SELECT {_COLUMNS} FROM sync_schedules ORDER BY appid") as cur:
            return [_row(tuple(row)) for row in await cur.fetchall()]

    async def record_run(
        self, appid: str, ran_at: float, next_run_at: float, job_id: int | None, message: str
    ) -> None:
        """A due run: the job it started (None: it started none, ``message`` says why) and the
        next time it is due. A run that started no job keeps the last job's result."""
        async with self._write_lock:
            await self._write(
                [
                    (
                        "UPDATE sync_schedules SET next_run_at=?, last_message=?, "
                        "last_run_at=CASE WHEN ? IS NULL THEN last_run_at ELSE ? END, "
                        "last_job_id=COALESCE(?, last_job_id) WHERE appid=?",
                        (next_run_at, message, job_id, ran_at, job_id, appid),
                    )
                ]
            )

    async def delete_schedule(self, appid: str) -> int:
        """Forget a library's schedule; returns 1 if it had one, else 0."""
        async with self._write_lock, self._transaction() as conn:
            cur = await conn.execute("DELETE FROM sync_schedules WHERE appid=?", (appid,))
            return cur.rowcount

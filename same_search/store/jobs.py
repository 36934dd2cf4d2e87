"""The import-job ledger: bulk import jobs, their progress and their per-item errors.

Jobs are daemon state, not library state (a job reads files on this box), so every backend keeps
them in a SQLite file in the data directory: the local backend in its library database, a backend
whose libraries live elsewhere in a file of their own, opened as nothing but this ledger.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from same_search.records import JobRow
from same_search.store.database import Statement
from same_search.store.schedules import ScheduleStore

_JOB_COLUMNS = (
    "id, appid, kind, source, status, position, total, done, failed, duplicates, message, "
    "created_at, updated_at, dup_policy, dup_min_score, near_duplicates, updated, removed, remove_missing"
)


class JobStore(ScheduleStore):
    """Tables ``jobs`` and ``job_errors`` (and, inherited, the folder-sync schedules)."""

    async def create_job(
        self,
        appid: str,
        kind: str,
        source: str,
        total: int,
        dup_policy: str | None = None,
        dup_min_score: float | None = None,
        remove_missing: bool = False,
    ) -> int:
        """A queued job (with its own near-duplicate policy, if any); returns its id."""
        now = time.time()
        async with self._write_lock:
            job_id = await self._write(
                [
                    (
                        "INSERT INTO jobs(appid, kind, source, status, total, created_at, updated_at, "
                        "dup_policy, dup_min_score, remove_missing) VALUES (?,?,?,'queued',?,?,?,?,?,?)",
                        (
                            appid,
                            kind,
                            source,
                            total,
                            now,
                            now,
                            dup_policy,
                            dup_min_score,
                            int(remove_missing),
                        ),
                    )
                ]
            )
        return int(job_id)  # type: ignore[arg-type]

    async def save_job_progress(self, job: JobRow, errors: Sequence[tuple[str, int, str]] = ()) -> None:
        """Persist a job's counters, position and status, and append its new per-item errors."""
        statements: list[Statement] = [
            (
                "UPDATE jobs SET status=?, position=?, total=?, done=?, failed=?, duplicates=?, message=?, "
                "near_duplicates=?, updated=?, removed=?, updated_at=? WHERE id=?",
                (
                    job.status,
                    job.position,
                    job.total,
                    job.done,
                    job.failed,
                    job.duplicates,
                    job.message,
                    job.near_duplicates,
                    job.updated,
                    job.removed,
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
            return [JobRow(*row[:-1], bool(row[-1])) for row in await cur.fetchall()]

    async def job_errors(self, job_id: int, limit: int = 1000) -> list[tuple[str, int, str]]:
        """The first ``limit`` per-item failures of a job."""
        async with self.reader.execute(
            "SELECT file, err_no, reason FROM job_errors WHERE job_id=? ORDER BY rowid LIMIT ?",
            (job_id, limit),
        ) as cur:
            return [(r[0], int(r[1]), r[2]) for r in await cur.fetchall()]

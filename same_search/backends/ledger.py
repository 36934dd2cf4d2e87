"""The import-job ledger every backend hands the service: daemon state, kept beside the libraries."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from same_search.records import JobRow, SyncScheduleRow


class JobLedger(Protocol):
    """Where import jobs and their per-item errors are recorded.

    Jobs are daemon state, not library state: a job reads a folder, manifest or uploaded ZIP on
    the daemon's own disk, so only that daemon can run it. Every backend therefore keeps them in
    a SQLite file in the data directory (``same_search.store.jobs.JobStore``). The folder-sync
    schedules that start sync jobs live there too (``same_search.store.schedules``).
    """

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

    async def save_job_progress(self, job: JobRow, errors: Sequence[tuple[str, int, str]] = ()) -> None:
        """Persist a job's counters, position and status, and append its new per-item errors."""

    async def jobs(self, job_id: int | None = None) -> list[JobRow]:
        """All jobs, newest first (or just one)."""

    async def job_errors(self, job_id: int, limit: int = 1000) -> list[tuple[str, int, str]]:
        """The first ``limit`` per-item failures of a job."""

    async def set_schedule(
        self, appid: str, folder: str, remove_missing: bool, interval_s: int, next_run_at: float
    ) -> SyncScheduleRow:
        """Create or replace a library's folder-sync schedule; returns it."""

    async def schedule(self, appid: str) -> SyncScheduleRow | None:
        """One library's schedule, if it has one."""

    async def schedules(self) -> list[SyncScheduleRow]:
        """Every schedule, by library name."""

    async def record_run(
        self, appid: str, ran_at: float, next_run_at: float, job_id: int | None, message: str
    ) -> None:
        """A due run: the job it started (or why none) and when the next is due."""

    async def delete_schedule(self, appid: str) -> int:
        """Forget a library's schedule; returns 1 if it had one, else 0."""

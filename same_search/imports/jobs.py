"""Bulk import jobs: run in the background through the same batching embedder as ``add``.

A job walks its source in order, a chunk at a time, with ``concurrency`` images in flight (the
daemon gives twice what its forward passes take at once, so one round is read and decoded
while the other is in the network). After every chunk its position, counters and per-item
errors are committed, so a restart resumes where it stopped (redoing at most one chunk, whose
already-stored images then count as duplicates); a chunk holds at least two rounds, so a large
GPU batch can fill. One job runs at a time; others wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from same_search.errors import ApiError, ErrNo
from same_search.imports.sources import Entry, SourceError, list_entries, read_entry
from same_search.libraries import DuplicateAdd, Library, LibraryService
from same_search.store.db import JobRow, Store

log = logging.getLogger(__name__)

#: Smallest chunk (images per progress commit); see :attr:`ImportJobs.chunk`.
CHUNK = 32
ACTIVE = ("queued", "running")
#: How long a job backs off when the embedder queue is full (interactive traffic wins).
BUSY_BACKOFF_S = 0.5


class ImportJobs:
    """Creates, runs, reports and cancels import jobs."""

    def __init__(self, store: Store, libraries: LibraryService, concurrency: int) -> None:
        self.store = store
        self.libraries = libraries
        self.concurrency = max(1, concurrency)
        #: Images per progress commit: two rounds in flight at least, so chunk ends drain little.
        self.chunk = max(CHUNK, 2 * self.concurrency)
        self._wake = asyncio.Event()
        self._cancelled: set[int] = set()
        self._rates: dict[int, tuple[float, int]] = {}  # job id -> (start time, position at start)
        self._task: asyncio.Task | None = None
        self._stopping = False

    def start(self) -> None:
        """Start the runner; jobs left queued or running by a previous process resume."""
        self._task = asyncio.create_task(self._run(), name="import-jobs")
        self._wake.set()

    async def close(self, grace_s: float = 30.0) -> None:
        """Stop after the chunk in progress (its progress is saved; the job resumes on restart)."""
        self._stopping = True
        self._wake.set()
        if self._task is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(self._task), grace_s)
        except TimeoutError:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def create(self, appid: str, kind: str, source: str) -> JobRow:
        """Queue a job; the library must exist and the source must be readable."""
        self.libraries.get(appid)
        try:
            entries = await asyncio.to_thread(list_entries, kind, source)
        except SourceError as exc:
            raise ApiError(ErrNo.BAD_REQUEST, str(exc)) from exc
        job_id = await self.store.create_job(appid, kind, source, len(entries))
        self._wake.set()
        log.info("import job %d queued: %s %s into %s (%d images)", job_id, kind, source, appid, len(entries))
        return (await self.store.jobs(job_id))[0]

    async def cancel(self, job_id: int) -> JobRow:
        """Cancel a queued or running job (a running one stops after its current chunk)."""
        job = await self.get(job_id)
        if job.status in ACTIVE:
            self._cancelled.add(job_id)
            if job.status == "queued":
                job.status = "cancelled"
                await self.store.save_job_progress(job)
        return await self.get(job_id)

    async def get(self, job_id: int) -> JobRow:
        found = await self.store.jobs(job_id)
        if not found:
            raise ApiError(ErrNo.BAD_REQUEST, f"no import job {job_id}")
        return found[0]

    async def describe(self, job: JobRow, errors: int = 100) -> dict[str, Any]:
        """A job as the API shows it: counters, rate, ETA and the first per-item errors."""
        rate = self._rate(job)
        remaining = job.total - job.position
        return {
            **asdict(job),
            "images_per_s": round(rate, 2) if rate else None,
            "eta_s": round(remaining / rate, 1) if rate and job.status == "running" else None,
            "errors": [
                {"file": f, "err_no": e, "reason": r}
                for f, e, r in await self.store.job_errors(job.id, errors)
            ],
        }

    def _rate(self, job: JobRow) -> float | None:
        started = self._rates.get(job.id)
        if started is None:
            return None
        elapsed = time.monotonic() - started[0]
        return (job.position - started[1]) / elapsed if elapsed > 0 else None

    async def _run(self) -> None:
        while not self._stopping:
            await self._wake.wait()
            self._wake.clear()
            for job in reversed(await self.store.jobs()):  # oldest first
                if job.status not in ACTIVE or self._stopping:
                    continue
                try:
                    await self._run_job(job)
                except Exception as exc:  # a broken job must not stop the runner for the others
                    log.exception("import job %d crashed", job.id)
                    job.status, job.message = "failed", f"internal error: {exc}"
                    with contextlib.suppress(Exception):
                        await self.store.save_job_progress(job)

    async def _run_job(self, job: JobRow) -> None:
        try:
            entries = await asyncio.to_thread(list_entries, job.kind, job.source)
            lib = self.libraries.get(job.appid)
        except (SourceError, ApiError) as exc:
            job.status, job.message = "failed", str(exc)
            await self.store.save_job_progress(job)
            log.warning("import job %d failed: %s", job.id, exc)
            return
        job.status, job.total = "running", len(entries)
        self._rates[job.id] = (time.monotonic(), job.position)
        log.info("import job %d running from %d/%d", job.id, job.position, job.total)
        while job.position < job.total:
            if job.id in self._cancelled:
                job.status = "cancelled"
                break
            if self._stopping:
                await self.store.save_job_progress(job)  # still "running": resumes on restart
                log.info("import job %d paused at %d/%d for shutdown", job.id, job.position, job.total)
                return
            chunk = entries[job.position : job.position + self.chunk]
            errors = await self._import_chunk(job, lib, chunk)
            job.position += len(chunk)
            await self.store.save_job_progress(job, errors)
        else:
            job.status = "done"
        await self.store.save_job_progress(job)
        if job.kind == "zip":  # an uploaded ZIP is ours to delete once its job has ended
            Path(job.source).unlink(missing_ok=True)
        log.info(
            "import job %d %s: %d added, %d duplicates, %d failed of %d",
            job.id,
            job.status,
            job.done,
            job.duplicates,
            job.failed,
            job.total,
        )

    async def _import_chunk(
        self, job: JobRow, lib: Library, chunk: list[Entry]
    ) -> list[tuple[str, int, str]]:
        """Add a chunk with bounded concurrency; count outcomes on ``job``; return its failures."""
        gate = asyncio.Semaphore(self.concurrency)
        errors: list[tuple[str, int, str]] = []

        async def one(entry: Entry) -> None:
            async with gate:
                outcome = await self._import_one(job, lib, entry)
            if outcome == "done":
                job.done += 1
            elif outcome == "duplicate":
                job.duplicates += 1
            else:
                job.failed += 1
                errors.append(outcome)

        await asyncio.gather(*(one(entry) for entry in chunk))
        return errors

    async def _import_one(self, job: JobRow, lib: Library, entry: Entry) -> str | tuple[str, int, str]:
        try:
            data = await asyncio.to_thread(read_entry, job.kind, job.source, entry)
        except (OSError, KeyError) as exc:
            return (entry.name, int(ErrNo.BAD_REQUEST), f"cannot read: {exc}")
        while True:
            try:
                await self.libraries.add(lib, data, entry.brief, entry.tags)
                return "done"
            except DuplicateAdd:
                return "duplicate"
            except ApiError as exc:
                if exc.err_no != ErrNo.BUSY:
                    return (entry.name, int(exc.err_no), exc.err_msg)
            await asyncio.sleep(BUSY_BACKOFF_S)

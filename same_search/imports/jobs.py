"""Bulk import jobs: run in the background through the same batching embedder as ``add``.

A job walks its source in order, a chunk at a time, with ``concurrency`` images in flight (the
daemon gives twice what its forward passes take at once, so one round is read and decoded
while the other is in the network). Its embeddings run at background priority, so interactive
requests overtake the job's images in the embedder (see :mod:`same_search.embed.service`). After
every chunk its position, counters and per-item errors are committed, so a restart resumes where
it stopped (redoing at most one chunk, whose already stored images then count as duplicates); a
chunk holds at least two rounds, so a large GPU batch can fill. One job runs at a time; others wait.

Reading is guarded (:mod:`same_search.imports.finder`): only regular files within the image
limit are read, each in a daemon thread with a deadline, so no entry can exhaust memory, block
the queue or keep the process alive at shutdown; a refused entry is one line in the job's errors.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from same_search.embed.errors import EmbedError
from same_search.embed.service import background_priority
from same_search.error_mapping import api_error
from same_search.errors import ApiError, ErrNo
from same_search.imports.detached import run_detached
from same_search.imports.retry import backoff_s, retryable
from same_search.imports.sources import Entry, EntryError, Source, SourceError, open_source
from same_search.imports.sync import SyncPlan
from same_search.libraries import DuplicateAdd, Library, LibraryService, NearDuplicateAdd
from same_search.near_duplicates import DupPolicy, resolve
from same_search.records import JobRow, NewItem

log = logging.getLogger(__name__)

#: Smallest chunk (images per progress commit); see :attr:`ImportJobs.chunk`.
CHUNK = 32
ACTIVE = ("queued", "running")
#: An entry embedded and waiting in its chunk's batch (stored with the chunk).
EMBEDDED = "embedded"
#: Longest a source may take to open and list (a huge folder on a slow disk) before the job fails.
LIST_TIMEOUT_S = 600.0
#: Longest one entry may take to read before it is recorded as failed and the job goes on.
READ_TIMEOUT_S = 60.0


class _Stopping(Exception):
    """The daemon is stopping: leave the chunk unfinished; it is redone after the restart."""


class ImportJobs:
    """Creates, runs, reports and cancels import jobs."""

    def __init__(self, libraries: LibraryService, concurrency: int) -> None:
        #: The daemon's job ledger (a SQLite file in the data dir, whatever the library backend).
        self.store = libraries.jobs
        self.libraries = libraries
        self.concurrency = max(1, concurrency)
        self.max_image_bytes = libraries.cfg.limits.max_image_bytes
        self.uploads = libraries.cfg.data_path / "uploads"
        #: Images per progress commit: two rounds in flight at least, so chunk ends drain little.
        self.chunk = max(CHUNK, 2 * self.concurrency)
        self._wake = asyncio.Event()
        self._cancelled: set[int] = set()
        self._running: JobRow | None = None  # the runner's own copy of the job it is running
        self._rates: dict[int, tuple[float, int]] = {}  # job id -> (start time, position at start)
        self._task: asyncio.Task | None = None
        self._stopping = False
        #: The library as a sync job found it (None while an import job runs).
        self._plan: SyncPlan | None = None

    async def start(self) -> None:
        """Delete orphaned uploads, then start the runner; jobs left queued or running resume."""
        await self._remove_orphaned_uploads()
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

    async def create(
        self,
        appid: str,
        kind: str,
        source: str,
        dup_policy: str | None = None,
        dup_min_score: float | None = None,
        remove_missing: bool = False,
    ) -> JobRow:
        """Queue a job; the library must exist and the source must be readable.

        ``dup_policy``/``dup_min_score`` are the job's own near-duplicate policy, kept with the
        job; left None, the library's default when the job runs applies. ``remove_missing``: a
        sync job (kind ``sync``) also removes the items whose file is gone.
        """
        await self.libraries.get(appid)
        total = await self.check_source(kind, source)
        job_id = await self.store.create_job(
            appid, kind, source, total, dup_policy, dup_min_score, remove_missing
        )
        self._wake.set()
        log.info("import job %d queued: %s %s into %s (%d images)", job_id, kind, source, appid, total)
        return (await self.store.jobs(job_id))[0]

    async def check_source(self, kind: str, source: str) -> int:
        """Open and list a source as a job would, then close it: how many images it lists, or
        err_no 1 saying why it cannot be used (what a sync schedule checks when it is set)."""
        opened = await self._open(kind, source)
        opened.close()
        return len(opened.entries)

    async def active(self, appid: str, kind: str) -> JobRow | None:
        """The oldest queued or running job of this kind for this library, if any."""
        found = [job for job in await self.store.jobs() if job.appid == appid and job.kind == kind]
        return next((job for job in reversed(found) if job.status in ACTIVE), None)

    async def cancel(self, job_id: int) -> JobRow:
        """Cancel a queued or running job: a running one stops after its current chunk and ends
        ``cancelled`` even if that chunk was its last. An uploaded ZIP is deleted at once."""
        job = await self.get(job_id)
        running = self._running if self._running is not None and self._running.id == job_id else None
        if running is not None:
            job = running
        if job.status not in ACTIVE:
            return job
        self._cancelled.add(job_id)  # no await since the status was read: the runner sees it
        if job.kind == "zip":  # an open archive reads on (Linux keeps an unlinked file's data)
            Path(job.source).unlink(missing_ok=True)
        if running is not None:
            return replace(running)
        job.status = "cancelled"
        await self.store.save_job_progress(job)
        log.info("import job %d cancelled while queued", job.id)
        return await self.get(job_id)

    async def list(self) -> list[JobRow]:
        """Every job, newest first."""
        return await self.store.jobs()

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
            "remove_missing": bool(job.remove_missing),
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

    # ---- uploads -------------------------------------------------------------------------------

    async def _remove_orphaned_uploads(self) -> None:
        """Delete what ``data/uploads`` holds besides the ZIPs of queued or running jobs: uploads
        of jobs that ended while the daemon was down, half-written uploads and export files."""
        if not self.uploads.is_dir():
            return
        keep = {Path(job.source).resolve() for job in await self.store.jobs() if job.status in ACTIVE}
        removed = 0
        for path in self.uploads.iterdir():
            if path.resolve() not in keep and not path.is_dir():
                path.unlink(missing_ok=True)
                removed += 1
        if removed:
            log.info("removed %d orphaned file(s) from %s", removed, self.uploads)

    # ---- the runner ----------------------------------------------------------------------------

    async def _open(self, kind: str, source: str) -> Source:
        """Open and list a source in a daemon thread; err_no 1 when it cannot be used."""
        try:
            return await run_detached(open_source, kind, source, self.max_image_bytes, timeout=LIST_TIMEOUT_S)
        except SourceError as exc:
            raise ApiError(ErrNo.BAD_REQUEST, str(exc)) from exc
        except TimeoutError:
            raise ApiError(
                ErrNo.BAD_REQUEST, f"listing {source} took more than {LIST_TIMEOUT_S:g}s"
            ) from None

    async def _run(self) -> None:
        background_priority()  # every embedding this task (and its children) asks for yields
        while not self._stopping:
            await self._wake.wait()
            self._wake.clear()
            for listed in reversed(await self.store.jobs()):  # oldest first
                if listed.status not in ACTIVE or self._stopping:
                    continue
                job = await self.get(listed.id)  # cancelled while an older job ran?
                if job.status not in ACTIVE or job.id in self._cancelled:
                    continue
                try:
                    await self._run_job(job)
                except Exception as exc:  # a broken job must not stop the runner for the others
                    log.exception("import job %d crashed", job.id)
                    job.message = f"internal error: {exc}"
                    with contextlib.suppress(Exception):
                        await self._finish(job, "failed")
                finally:
                    self._running = None
                    self._plan = None

    async def _run_job(self, job: JobRow) -> None:
        self._running = job  # from here a cancel is the runner's to act on
        try:
            lib = await self.libraries.get(job.appid)
            source = await self._open(job.kind, job.source)
        except ApiError as exc:
            if job.id in self._cancelled:  # e.g. its upload was deleted by the cancel
                await self._finish(job, "cancelled")
                return
            job.message = exc.err_msg
            log.warning("import job %d failed: %s", job.id, exc.err_msg)
            await self._finish(job, "failed")
            return
        with source:
            if job.kind == "sync":  # what the library holds, read again at every (re)start
                self._plan = await SyncPlan(self.libraries, lib, [e.name for e in source.entries]).read()
            job.status, job.total = "running", len(source.entries)
            await self.store.save_job_progress(job)  # "running" shows at once, not after a chunk
            self._rates[job.id] = (time.monotonic(), job.position)
            log.info("import job %d running from %d/%d", job.id, job.position, job.total)
            while job.position < job.total and job.id not in self._cancelled:
                if self._stopping:
                    break
                chunk = source.entries[job.position : job.position + self.chunk]
                errors = await self._import_chunk(job, lib, source, chunk)
                if errors is None:
                    return  # stopping mid-chunk: the last committed chunk stands, resumed from there
                job.position += len(chunk)
                await self.store.save_job_progress(job, errors)
        if job.id in self._cancelled:  # checked last: a cancel during the last chunk counts too
            await self._finish(job, "cancelled")
        elif job.position >= job.total:
            if self._plan is not None and job.remove_missing:  # idempotent: redone after a restart
                job.removed += await self._plan.remove_missing()
            await self._finish(job, "done")
        else:
            log.info("import job %d paused at %d/%d for shutdown", job.id, job.position, job.total)

    async def _finish(self, job: JobRow, status: str) -> None:
        """Record the final status; an uploaded ZIP is deleted once its job has ended."""
        job.status = status
        await self.store.save_job_progress(job)
        if job.kind == "zip":
            Path(job.source).unlink(missing_ok=True)
        log.info(
            "import job %d %s: %d added, %d duplicates, %d near-duplicates, %d failed of %d",
            job.id,
            job.status,
            job.done,
            job.duplicates,
            job.near_duplicates,
            job.failed,
            job.total,
        )

    async def _import_chunk(
        self, job: JobRow, lib: Library, source: Source, chunk: list[Entry]
    ) -> list[tuple[str, int, str]] | None:
        """Add a chunk with bounded concurrency; count outcomes on ``job``; return its failures
        (``None`` when the daemon began stopping: nothing of the chunk is counted).

        Without an active near-duplicate policy the chunk's pictures are embedded concurrently,
        then stored together: one database transaction and one graph insert per batch, not per
        picture. Under a policy each picture is checked and stored in turn, so two close pictures
        of one chunk cannot both pass it.
        """
        gate = asyncio.Semaphore(self.concurrency)
        errors: list[tuple[str, int, str]] = []
        outcomes: list[str] = []
        # A sync decides file by file from what is stored: no batch.
        batching = not _policy(job, lib).active and self._plan is None
        batch: list[tuple[Entry, NewItem]] | None = [] if batching else None

        async def one(entry: Entry) -> None:
            async with gate:
                outcome = await self._import_one(job, lib, source, entry, batch)
            if isinstance(outcome, tuple):
                errors.append(outcome)
                outcome = "failed"
            outcomes.append(outcome)

        try:
            async with asyncio.TaskGroup() as group:  # a _Stopping in one cancels the others
                for entry in chunk:
                    group.create_task(one(entry))
        except* _Stopping:
            stopped = True
        else:
            stopped = False
        if stopped:
            return None
        if batch:
            outcomes = [o for o in outcomes if o != EMBEDDED]
            try:
                stored, duplicates = await self.libraries.imports.store_batch(
                    lib, [item for _, item in batch]
                )
            except ApiError as exc:
                errors += [(entry.name, int(exc.err_no), exc.err_msg) for entry, _ in batch]
                outcomes += ["failed"] * len(batch)
            else:
                outcomes += ["done"] * stored + ["duplicate"] * duplicates
        job.done += outcomes.count("done") + outcomes.count("done_near_duplicate")
        job.duplicates += outcomes.count("duplicate")
        job.near_duplicates += outcomes.count("near_duplicate") + outcomes.count("done_near_duplicate")
        job.failed += outcomes.count("failed")
        job.updated += outcomes.count("updated")
        return errors

    async def _import_one(
        self,
        job: JobRow,
        lib: Library,
        source: Source,
        entry: Entry,
        batch: list[tuple[Entry, NewItem]] | None = None,
    ) -> str | tuple[str, int, str]:
        """The outcome of one entry: ``"done"``, ``"duplicate"``, ``"near_duplicate"`` (refused by
        the policy), ``"done_near_duplicate"`` (stored with a warning), ``"updated"`` (a sync job
        replaced or renamed its item), or the failure ``(file, err_no, reason)``. With a
        ``batch``, the embedded item joins it instead of being stored (outcome ``EMBEDDED``): the
        chunk stores the batch at once."""
        try:
            data = await run_detached(source.read, entry, timeout=READ_TIMEOUT_S)
        except EntryError as exc:
            return (entry.name, int(ErrNo.BAD_REQUEST), str(exc))
        except TimeoutError:
            return (entry.name, int(ErrNo.BAD_REQUEST), f"reading took more than {READ_TIMEOUT_S:g}s")
        old = None
        if self._plan is not None:  # a sync job: the file may be stored already, moved or changed
            try:
                settled = await self._plan.settle(entry.brief, data)
            except ApiError as exc:
                return (entry.name, int(exc.err_no), exc.err_msg)
            if isinstance(settled, str):
                return settled
            old = settled
        outcome = await self._add(job, lib, entry, data, batch)
        if self._plan is not None and outcome in ("done", "done_near_duplicate"):
            try:
                await self._plan.stored(entry.brief, data, old)
            except ApiError as exc:  # the new item is stored; the old one stays until the next sync
                return (entry.name, int(exc.err_no), exc.err_msg)
            return "updated" if old is not None else outcome
        return outcome

    async def _add(
        self, job: JobRow, lib: Library, entry: Entry, data: bytes, batch: list[tuple[Entry, NewItem]] | None
    ) -> str | tuple[str, int, str]:
        """Add one entry's bytes, retrying "not now"; the outcome as :meth:`_import_one` says."""
        policy = _policy(job, lib)
        attempt = 0
        while True:
            try:
                if batch is not None:
                    batch.append(
                        (entry, await self.libraries.imports.embed_item(lib, data, entry.brief, entry.tags))
                    )
                    return EMBEDDED
                result = await self.libraries.writes.add(lib, data, entry.brief, entry.tags, policy)
                return "done_near_duplicate" if result.near_duplicates else "done"
            except DuplicateAdd:
                return "duplicate"
            except NearDuplicateAdd:
                return "near_duplicate"
            except (ApiError, EmbedError) as exc:
                error = api_error(exc)
                if not retryable(error.err_no):
                    return (entry.name, int(error.err_no), error.err_msg)
            if self._stopping:
                raise _Stopping
            await asyncio.sleep(backoff_s(attempt))
            attempt += 1


def _policy(job: JobRow, lib: Library) -> DupPolicy:
    """The job's own near-duplicate policy over the library's current default."""
    return resolve(lib.row.dup_policy, lib.row.dup_min_score, job.dup_policy, job.dup_min_score)

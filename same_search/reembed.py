"""Re-embed jobs: a library built again with another model from its kept originals, then switched.

While a job runs, the library keeps serving with its old model and keeps taking writes. The job
embeds every item's kept original with the new model (at background priority, so searches and
adds overtake it) into a side table, a chunk per transaction; items added meanwhile are picked up
by the next pass (they are kept like every other add), removed ones simply drop out. When a pass
finds nothing left, the backend holds the library's writes, embeds the last few, and switches in
one transaction (every vector and the library's model), then serves a fresh index of the new
vectors. Progress is the side table itself, so a daemon killed mid-job resumes where it stopped;
a cancel (or a failure) drops the side table and leaves the library exactly as it was.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import numpy as np

from same_search.embed.errors import EmbedderBusy, EmbedderTimeout, EmbedError
from same_search.embed.service import EmbedService, background_priority
from same_search.error_mapping import api_error
from same_search.errors import ApiError, bad_request
from same_search.libraries import LibraryService
from same_search.libraries.reembedding import ReembedLedger
from same_search.records import Library, ReembedJobRow

log = logging.getLogger(__name__)

#: Items embedded and committed together: the most a kill -9 can cost a resumed job.
CHUNK = 32
#: Chunks between exact counts of a job's progress (a count walks the whole side table).
RECOUNT_CHUNKS = 64
#: Seconds to wait before retrying an image the embedder refused for load (busy, timeout).
RETRY_S = 0.5


class ReembedFailed(Exception):
    """The job cannot finish (an item without an original, a picture the model refuses)."""


class ReembedJobs:
    """Every re-embed job of the daemon: at most one running per library."""

    def __init__(self, libraries: LibraryService) -> None:
        self.libraries = libraries
        self._tasks: dict[int, asyncio.Task] = {}
        self._jobs: dict[int, ReembedJobRow] = {}
        self._cancelled: set[int] = set()
        self._switching: set[int] = set()
        #: Library ids whose job is being started: a second start meanwhile is refused.
        self._starting: set[int] = set()

    @property
    def _ledger(self) -> ReembedLedger:
        return self.libraries.reembedding.ledger

    async def start(self) -> None:
        """Resume the jobs a previous run left running (killed, or stopped mid-job).

        At most one per library, the newest: older ones (two starts at once, before that was
        refused) are failed first, and with them the side table they shared, which may hold
        another model's vectors; the resumed job then embeds everything again with its own.
        """
        if not self.libraries.reembedding.available:
            return
        newest: dict[int, ReembedJobRow] = {}
        for job in await self._ledger.reembed_jobs(status="running"):  # newest first
            if job.lib_id in newest:  # never two jobs over one side table
                job.status = "failed"
                job.message = f"superseded by job {newest[job.lib_id].id} of the same library"
                await self._ledger.save_reembed_job(job)
                log.warning("re-embed job %d of %s: %s", job.id, job.appid, job.message)
            else:
                newest[job.lib_id] = job
        for job in reversed(newest.values()):
            lib = self.libraries.libraries.get(job.appid)
            embed = self.libraries.models.for_fingerprint(job.fingerprint)
            if lib is None or lib.row.id != job.lib_id or embed is None:
                job.status = "failed"
                job.message = (
                    f"model {job.model_name!r} is not served any more"
                    if embed is None
                    else f"library {job.appid!r} is not served at start"
                )
                await self._ledger.save_reembed_job(job)
                log.warning("re-embed job %d of %s cannot resume: %s", job.id, job.appid, job.message)
                continue
            job.resumed += 1
            job.resumed_at = await self._ledger.reembed_done(lib.row.id)
            await self._ledger.save_reembed_job(job)
            log.info("re-embed job %d of %s resumes at %d/%d", job.id, job.appid, job.resumed_at, job.total)
            self._spawn(job, lib, embed)

    async def close(self) -> None:
        """Stop running jobs where they are (still ``running``: the next start resumes them)."""
        for task in self._tasks.values():
            task.cancel()
        for task in list(self._tasks.values()):
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def begin(self, lib: Library, model: Any) -> ReembedJobRow:
        """Start moving ``lib`` to the model profile ``model``; err_no 1 when refused.

        The library is reserved before the first await: two starts at once would otherwise both
        pass the check and run two jobs over one side table (possibly for two models).
        """
        running = self._running_for(lib)
        if running is not None:
            raise bad_request(f"library {lib.row.appid!r} is being re-embedded already (job {running.id})")
        if lib.row.id in self._starting:
            raise bad_request(f"library {lib.row.appid!r} is being re-embedded already (a job is starting)")
        self._starting.add(lib.row.id)
        try:
            return await self._begin(lib, model)
        finally:
            self._starting.discard(lib.row.id)

    async def _begin(self, lib: Library, model: Any) -> ReembedJobRow:
        embed = await self.libraries.reembedding.target(lib, model)
        info = embed.info
        total = await self.libraries.count(lib)
        job_id = await self._ledger.create_reembed_job(
            lib.row, model, info.model_id, info.dim, info.fingerprint, total
        )
        job = (await self._ledger.reembed_jobs(job_id))[0]
        log.info("re-embed job %d: library %s -> model %s (%d items)", job.id, lib.row.appid, model, total)
        self._spawn(job, lib, embed)
        return job

    def _running_for(self, lib: Library) -> ReembedJobRow | None:
        for job_id, task in self._tasks.items():
            if not task.done() and self._jobs[job_id].lib_id == lib.row.id:
                return self._jobs[job_id]
        return None

    def _spawn(self, job: ReembedJobRow, lib: Library, embed: EmbedService) -> None:
        self._jobs[job.id] = job
        self._tasks[job.id] = asyncio.create_task(self._run(job, lib, embed), name=f"reembed-{job.id}")

    async def get(self, job_id: int) -> ReembedJobRow:
        """One job (live counters while it runs); err_no 1 when there is none. The ledger is
        asked first: a deleted library's jobs are gone with it, even if still held in memory."""
        found = await self._ledger.reembed_jobs(job_id)
        if not found:
            raise bad_request(f"no re-embed job {job_id}")
        live = self._jobs.get(job_id)
        return live if live is not None and live.lib_id == found[0].lib_id else found[0]

    async def of_library(self, lib: Library) -> list[ReembedJobRow]:
        """A library's jobs, newest first."""
        return [
            self._jobs.get(job.id, job)
            for job in await self._ledger.reembed_jobs()
            if job.lib_id == lib.row.id
        ]

    async def cancel(self, job_id: int) -> ReembedJobRow:
        """Stop a running job and drop what it made; the library stays on its old model."""
        job = await self.get(job_id)
        task = self._tasks.get(job_id)
        if task is None or task.done():
            raise bad_request(f"re-embed job {job_id} is {job.status}, not running")
        if job_id in self._switching:
            raise bad_request(
                f"re-embed job {job_id} is switching the library; it can no longer be cancelled"
            )
        self._cancelled.add(job_id)
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.shield(task)
        return job

    async def _run(self, job: ReembedJobRow, lib: Library, embed: EmbedService) -> None:
        background_priority()
        # Items are listed in seq order from a cursor: seqs only grow, so an item added meanwhile
        # comes after it, and a chunk never walks again over those done (see Store.reembed_pending).
        cursor = 0
        try:
            chunks = 0
            while job.id not in self._cancelled:
                self._check_served(lib)
                pending = await self.libraries.reembedding.pending(lib, CHUNK, cursor)
                if not pending:
                    break
                cursor = pending[-1][2]
                made = await self._embed(lib, [(key, original) for key, original, _ in pending], embed)
                await self.libraries.reembedding.save(lib, made)
                chunks += 1
                if chunks % RECOUNT_CHUNKS == 0:  # exact now and then (removals), counted between
                    job.done = await self._ledger.reembed_done(lib.row.id)
                else:
                    job.done += len(made)
                job.total = max(await self.libraries.count(lib), job.done)
                await self._ledger.save_reembed_job(job)
            if job.id in self._cancelled:
                job.status, job.message = "cancelled", "cancelled; the library keeps its model"
                await self._ledger.save_reembed_job(job)
                log.info("re-embed job %d of %s cancelled at %d/%d", job.id, job.appid, job.done, job.total)
                return
            self._check_served(lib)
            self._switching.add(job.id)

            async def catch_up(locked: Library) -> None:
                # Runs under the write lock, first thing: a delete that held the lock before the
                # switch got it has happened; switching a deleted library would resurrect files.
                self._check_served(locked)
                nonlocal cursor
                while pending := await self.libraries.reembedding.pending(locked, CHUNK, cursor):
                    cursor = pending[-1][2]
                    chunk = [(key, original) for key, original, _ in pending]
                    await self.libraries.reembedding.save(locked, await self._embed(locked, chunk, embed))
                cursor = 0  # called again only if the switch found an item without its vector: all

            await self.libraries.reembedding.switch(lib, job, catch_up)
            job.status, job.message = "done", ""
            job.done = job.total = await self.libraries.count(lib)
            log.info("re-embed job %d done: library %s serves model %s", job.id, job.appid, job.model_name)
        except asyncio.CancelledError:
            raise  # shutdown: still "running", resumed at the next start
        except (ReembedFailed, ApiError, EmbedError) as exc:
            await self._fail(job, str(exc) if isinstance(exc, ReembedFailed) else api_error(exc).err_msg)
        except Exception as exc:
            log.exception("re-embed job %d crashed", job.id)
            await self._fail(job, f"internal error: {exc}")
        finally:
            self._switching.discard(job.id)
            self._cancelled.discard(job.id)

    def _check_served(self, lib: Library) -> None:
        """A library deleted (or set aside) while its job runs ends the job."""
        if self.libraries.libraries.get(lib.row.appid) is not lib:
            raise ReembedFailed(f"library {lib.row.appid!r} was deleted or set aside during the job")

    async def _fail(self, job: ReembedJobRow, message: str) -> None:
        job.status, job.message = "failed", f"{message}; the library keeps its model"
        log.warning("re-embed job %d of %s failed: %s", job.id, job.appid, message)
        with contextlib.suppress(Exception):
            await self._ledger.save_reembed_job(job)

    async def _embed(
        self, lib: Library, pending: list[tuple[int, str | None]], embed: EmbedService
    ) -> list[tuple[int, np.ndarray]]:
        """New-model vectors of a chunk of items, from their kept originals. An item removed
        since the chunk was listed (its file gone with it) is skipped, not a failed job."""
        without = [key for key, original in pending if original is None]
        if without:
            raise ReembedFailed(
                f"{len(without)} items have no kept original (imported without originals while the job ran)"
            )

        async def one(key: int, original: str) -> tuple[int, np.ndarray] | None:
            try:
                data = await self.libraries.reads.read_original(original)
            except ApiError:
                if await self._still_kept(lib, key, original):
                    raise  # the file of a stored item is missing: the job cannot finish
                return None
            while True:
                try:
                    return key, await embed.embed_image(data)
                except (EmbedderBusy, EmbedderTimeout):
                    await asyncio.sleep(RETRY_S)  # the embedder is busy with interactive work

        made = await asyncio.gather(*(one(key, original) for key, original in pending if original))
        return [vector for vector in made if vector is not None]

    async def _still_kept(self, lib: Library, key: int, original: str) -> bool:
        """Whether ``key`` is still stored with that kept original."""
        return await self.libraries.reembedding.original_of(lib, key) == original


def describe(job: ReembedJobRow) -> dict[str, Any]:
    """A job as the management API shows it."""
    return {
        "id": job.id,
        "appid": job.appid,
        "model": job.model_name,
        "model_id": job.model_id,
        "fingerprint": job.fingerprint,
        "status": job.status,
        "done": job.done,
        "total": job.total,
        "resumed": job.resumed,
        "resumed_at": job.resumed_at,
        "message": job.message,
        "created": job.created_at,
        "updated": job.updated_at,
    }

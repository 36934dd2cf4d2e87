"""Scheduled folder sync: a library follows a folder by itself, one sync job every interval.

A schedule (``same_search.store.schedules``) names a library, a folder on this box, whether gone
files' items are removed, and an interval. A task in the daemon's event loop sleeps until the
soonest schedule is due, then starts an ordinary sync job (``same_search.imports.sync``) through
:meth:`ImportJobs.create`, so a scheduled run takes the same checks (an absolute path, a folder
the daemon can list), the same file rules and limits, the same queue and progress as a sync job
started by hand, and resumes after a restart like any job.

- **Never two at once.** A due run whose library still has a sync job queued or running starts
  none: it is skipped with a log line (and ``last_message``), and the next one is due an interval
  later. "Sync now" answers the job in progress instead of queueing a second.
- **Catching up.** The next run is due on the schedule's own beat (``next_run_at`` plus whole
  intervals, the first one after now), so a daemon that was down for ten intervals runs once when
  it is back, not ten times, and a nightly run stays at its hour.
- **Gone library.** A library deleted through the API loses its schedule; one found missing when a
  run is due (deleted while this daemon was down) is dropped with a log line.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import re
import time
from pathlib import Path
from typing import Any

from same_search.errors import ApiError, ErrNo, bad_request
from same_search.imports.jobs import ImportJobs
from same_search.libraries import LibraryService
from same_search.records import JobRow, SyncScheduleRow

log = logging.getLogger(__name__)

#: Shortest interval: a sync lists the whole folder, so more often than this only burns disk.
MIN_INTERVAL_S = 60
#: Longest interval: a year and a day.
MAX_INTERVAL_S = 366 * 86400
#: Longest the scheduler sleeps before looking again (a clock change, a row written elsewhere).
MAX_SLEEP_S = 60.0
#: Pause after a run that failed unexpectedly, so a broken row cannot spin the loop.
FAILURE_PAUSE_S = 5.0
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_EVERY = re.compile(r"\s*(\d{1,9})\s*([smhd]?)\s*", re.IGNORECASE)


def parse_every(value: object) -> int:
    """An interval as seconds: a whole number of seconds, or ``"90s"``, ``"15m"``, ``"6h"``,
    ``"1d"``; err_no 1 naming the accepted forms and bounds otherwise."""
    seconds: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        seconds = value
    elif isinstance(value, str) and (match := _EVERY.fullmatch(value)):
        seconds = int(match[1]) * UNITS[(match[2] or "s").lower()]
    if seconds is None:
        raise bad_request('every must be seconds or a number with a unit: "90s", "15m", "6h", "1d"')
    if not MIN_INTERVAL_S <= seconds <= MAX_INTERVAL_S:
        raise bad_request(
            f"every must be from {every_text(MIN_INTERVAL_S)} to {every_text(MAX_INTERVAL_S)}, "
            f"got {every_text(seconds)}"
        )
    return seconds


def every_text(seconds: int) -> str:
    """An interval in the largest unit that divides it (``3600`` -> ``"1h"``)."""
    for unit, size in sorted(UNITS.items(), key=lambda pair: -pair[1]):
        if seconds and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def next_due(due: float, now: float, interval_s: int) -> float:
    """When the run after one due at ``due`` (and run at ``now``) is due: on the same beat, the
    first beat after ``now``, however many were missed meanwhile."""
    if now < due:
        return due + interval_s
    return due + interval_s * (math.floor((now - due) / interval_s) + 1)


def check_folder(folder: object) -> str:
    """The folder of a schedule: an absolute path, as an import job's source must be."""
    if not isinstance(folder, str) or not folder or not Path(folder).is_absolute() or "\0" in folder:
        raise bad_request("folder must be an absolute path to a folder on the daemon's host")
    return folder


class SyncScheduler:
    """Keeps the schedules, runs the due ones in the event loop, answers "sync now"."""

    def __init__(self, jobs: ImportJobs, libraries: LibraryService) -> None:
        self.jobs = jobs
        self.libraries = libraries
        self.store = libraries.jobs
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        """Start the loop; schedules due while the daemon was down run once, at once."""
        self._task = asyncio.create_task(self._run(), name="sync-schedules")

    async def close(self) -> None:
        """Stop the loop (a job it started runs on, and resumes after the restart like any job)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    # ---- the API's operations --------------------------------------------------------------------

    async def set(
        self, appid: str, folder: str, interval_s: int, remove_missing: bool, start_at: float | None = None
    ) -> SyncScheduleRow:
        """Create or change a library's schedule after checking the folder as a job would; its
        first run is due at ``start_at`` (None: at once)."""
        await self.libraries.get(appid)
        await self.jobs.check_source("sync", check_folder(folder))
        due = time.time() if start_at is None else start_at
        row = await self.store.set_schedule(appid, folder, remove_missing, interval_s, due)
        log.info(
            "sync schedule of %s: %s every %s%s, next run %s",
            appid,
            folder,
            every_text(interval_s),
            " (removes gone files' items)" if remove_missing else "",
            _when(due),
        )
        self._wake.set()
        return row

    async def get(self, appid: str) -> SyncScheduleRow | None:
        """A library's schedule, if it has one."""
        return await self.store.schedule(appid)

    async def all(self) -> list[SyncScheduleRow]:
        """Every schedule, by library name."""
        return await self.store.schedules()

    async def delete(self, appid: str) -> int:
        """Stop following the folder (a sync in progress runs on); 1 if there was a schedule."""
        removed = await self.store.delete_schedule(appid)
        if removed:
            log.info("sync schedule of %s removed", appid)
        return removed

    async def run_now(self, appid: str) -> tuple[JobRow, bool]:
        """Start the library's sync now, whatever its schedule says (its beat is kept): the new
        job and True, or the sync job already queued or running and False."""
        row = await self.store.schedule(appid)
        if row is None:
            raise bad_request(f"library {appid!r} follows no folder: PUT a sync schedule first")
        running = await self.jobs.active(appid, "sync")
        if running is not None:
            return running, False
        job = await self.jobs.create(appid, "sync", row.folder, remove_missing=row.remove_missing)
        await self.store.record_run(appid, time.time(), row.next_run_at, job.id, "")
        log.info("sync schedule of %s: job %d started by hand", appid, job.id)
        return job, True

    async def describe(self, row: SyncScheduleRow) -> dict[str, Any]:
        """A schedule as the API shows it, with the last run's job (its status and counters)."""
        last_job = None
        if row.last_job_id is not None:
            with contextlib.suppress(ApiError):
                last_job = await self.jobs.describe(await self.jobs.get(row.last_job_id), errors=0)
        return {
            "appid": row.appid,
            "folder": row.folder,
            "remove_missing": row.remove_missing,
            "interval_s": row.interval_s,
            "every": every_text(row.interval_s),
            "created": row.created_at,
            "updated": row.updated_at,
            "next_run": row.next_run_at,
            "last_run": row.last_run_at,
            "last_message": row.last_message or None,
            "last_job": last_job,
            "running": bool(last_job and last_job["status"] in ("queued", "running")),
        }

    # ---- the loop ----------------------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            pause = 0.0
            try:
                for row in await self.store.schedules():
                    now = time.time()
                    if row.next_run_at <= now:
                        await self._run_due(row, now)
                rows = await self.store.schedules()
            except Exception:  # a broken row or a full disk must not end scheduling for good
                log.exception("sync schedules: a due run failed; trying again in %.0fs", FAILURE_PAUSE_S)
                rows, pause = [], FAILURE_PAUSE_S
            soonest = min((row.next_run_at for row in rows), default=math.inf)
            sleep = max(pause, min(MAX_SLEEP_S, soonest - time.time()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), sleep)
            self._wake.clear()

    async def _run_due(self, row: SyncScheduleRow, now: float) -> None:
        """Start the due run's job, or say why it starts none; the next run is due a beat later."""
        after = next_due(row.next_run_at, now, row.interval_s)
        running = await self.jobs.active(row.appid, "sync")
        if running is not None:
            message = (
                f"run due at {_when(row.next_run_at)} skipped: "
                f"sync job {running.id} was still {running.status}"
            )
            log.info("sync schedule of %s: %s", row.appid, message)
            await self.store.record_run(row.appid, now, after, None, message)
            return
        try:
            job = await self.jobs.create(row.appid, "sync", row.folder, remove_missing=row.remove_missing)
        except ApiError as exc:
            if exc.err_no == ErrNo.NOT_SIGNED_UP:
                log.warning("sync schedule of %s dropped: the library is gone", row.appid)
                await self.store.delete_schedule(row.appid)
                return
            message = f"run due at {_when(row.next_run_at)} started no job: {exc.err_msg}"
            log.warning("sync schedule of %s: %s", row.appid, message)
            await self.store.record_run(row.appid, now, after, None, message)
            return
        log.info("sync schedule of %s: job %d started, next run %s", row.appid, job.id, _when(after))
        await self.store.record_run(row.appid, now, after, job.id, "")


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))

"""Background rebuilds of library indexes: at most one per library, their state for 8103.

A rebuild (``POST .../rebuild`` or ``compact``, or the switch to a reduced index once a library
grows past ``[index] reduce_min_items``) runs as a task of its own while the library keeps
serving; the backend does the work (:meth:`Backend.rebuild`) and moves a
:class:`RebuildProgress` along, which this module turns into what the management API and the
console show: state, phase, done/total, start, ETA and the last error.

Nothing of a rebuild is persisted: one interrupted by a crash or a shutdown is simply gone (the
old index and its snapshot stay valid), and an adoption is asked for again at the next start by
the library service, because the library is still large and unreduced.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from same_search.backends.base import Backend, BadRows, Library, RebuildProgress
from same_search.rows import load_failure_reason

log = logging.getLogger(__name__)

#: Why a rebuild runs: asked for by the operator, or the switch to a reduced index.
MANUAL, COMPACT, ADOPTION = "manual", "compact", "adoption"
#: The move of a library into its learned space or back (PUT .../space).
SPACE_MOVE = "space"
RUNNING, DONE, FAILED, CANCELLED = "running", "done", "failed", "cancelled"


@dataclass
class Rebuild:
    """One rebuild of one library, running or finished (the last one is kept for the API)."""

    appid: str
    reason: str
    progress: RebuildProgress = field(default_factory=RebuildProgress)
    state: str = RUNNING
    started_at: float = field(default_factory=time.time)
    finished_at: float | None = None
    error: str | None = None
    task: asyncio.Task | None = field(default=None, repr=False)
    _started: float = field(default_factory=time.monotonic, repr=False)
    _finished: float | None = field(default=None, repr=False)

    @property
    def running(self) -> bool:
        return self.state == RUNNING

    def seconds(self) -> float:
        """Seconds it ran (so far, while running)."""
        end = self._finished if self._finished is not None else time.monotonic()
        return end - self._started

    def eta_s(self) -> float | None:
        """Seconds left to build, from the rate so far (None before the first batch or when done)."""
        done, total = self.progress.done, self.progress.total
        if not self.running or self.progress.phase != "building" or done <= 0:
            return None
        return max(0.0, total - done) * self.seconds() / done

    def to_json(self) -> dict[str, Any]:
        """The state as the management API and the console show it."""
        eta = self.eta_s()
        return {
            "state": self.state,
            "reason": self.reason,
            "phase": self.progress.phase if self.running else None,
            "done": self.progress.done,
            "total": self.progress.total,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "seconds": round(self.seconds(), 3),
            "eta_s": None if eta is None else round(eta, 1),
            "error": self.error,
        }

    def _end(self, state: str, error: str | None = None) -> None:
        self.state, self.error = state, error
        self.finished_at, self._finished = time.time(), time.monotonic()


class Rebuilds:
    """The rebuilds of every library: started here, one at a time per library."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        #: The latest rebuild of each library (by appid), running or finished.
        self.latest: dict[str, Rebuild] = {}
        #: Finished rebuilds by final state, for /metrics.
        self.finished: dict[str, int] = {DONE: 0, FAILED: 0, CANCELLED: 0}

    def current(self, appid: str) -> Rebuild | None:
        """The library's running rebuild, else its last finished one, else None."""
        return self.latest.get(appid)

    def running(self) -> list[Rebuild]:
        return [r for r in self.latest.values() if r.running]

    def start(self, lib: Library, reason: str, on_end: Callable[[Rebuild], None] | None = None) -> Rebuild:
        """Start rebuilding ``lib`` in the background; the running one if there is one already."""
        appid = lib.row.appid
        found = self.latest.get(appid)
        if found is not None and found.running:
            return found
        rebuild = Rebuild(appid, reason)
        self.latest[appid] = rebuild
        rebuild.task = asyncio.create_task(self._run(lib, rebuild, on_end), name=f"rebuild-{appid}")
        log.info("library %s: %s rebuild started in the background", appid, reason)
        return rebuild

    async def wait(self, rebuild: Rebuild) -> None:
        """Until ``rebuild`` ends (without cancelling it if the waiter goes away)."""
        if rebuild.task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(rebuild.task)

    async def _run(self, lib: Library, rebuild: Rebuild, on_end: Callable[[Rebuild], None] | None) -> None:
        appid = lib.row.appid
        try:
            await self.backend.rebuild(lib, rebuild.progress)
        except asyncio.CancelledError:
            rebuild._end(CANCELLED, "cancelled: the daemon is stopping or the library was deleted")
            log.info("library %s: rebuild cancelled; the previous index keeps serving", appid)
            raise
        except BadRows as exc:
            rebuild._end(
                FAILED,
                f"{load_failure_reason(exc)}; POST /api/libraries/{appid}/repair drops them",
            )
            log.error("library %s: rebuild failed, the old index keeps serving: %s", appid, rebuild.error)
        except Exception as exc:
            rebuild._end(FAILED, f"{type(exc).__name__}: {exc}")
            log.exception("library %s: rebuild failed, the previous index keeps serving", appid)
        else:
            rebuild._end(DONE)
            log.info(
                "library %s: %s rebuild done in %.1fs (%d items)",
                appid,
                rebuild.reason,
                rebuild.seconds(),
                rebuild.progress.total,
            )
        finally:
            if rebuild.state != RUNNING:
                self.finished[rebuild.state] = self.finished.get(rebuild.state, 0) + 1
            if on_end is not None:
                on_end(rebuild)

    async def cancel(self, appid: str) -> None:
        """Cancel the library's running rebuild, if any, and wait until it has stopped."""
        rebuild = self.latest.get(appid)
        if rebuild is None or rebuild.task is None or rebuild.task.done():
            return
        rebuild.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await rebuild.task

    async def close(self) -> None:
        """Cancel every running rebuild (shutdown): the indexes serving now are the ones saved."""
        for appid in [r.appid for r in self.running()]:
            await self.cancel(appid)

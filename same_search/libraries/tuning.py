"""Keeping each library's recall measured: one background measurement per library at a time,
started when its index is new (built, adopted, loaded without a fitting measurement) or has
doubled since it was measured (``same_search.index.recall``)."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from same_search.backends.base import Backend, Library
from same_search.backends.capabilities import RecallTuned

log = logging.getLogger(__name__)

#: Measurements in a row for one library: an index replaced while it was measured (a rebuild
#: swapped in) is measured again, but a library rebuilt over and over does not keep one busy.
ROUNDS = 3


class RecallChecks:
    """The background recall measurements of every library."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self._tasks: dict[str, asyncio.Task] = {}

    def tune_if_due(self, lib: Library) -> None:
        """Start measuring the library in the background if it is due and not measured now."""
        backend, appid = self.backend, lib.row.appid
        if not isinstance(backend, RecallTuned) or not backend.wants_tuning(lib):
            return
        running = self._tasks.get(appid)
        if running is not None and not running.done():
            return
        self._tasks[appid] = asyncio.create_task(self._run(backend, lib), name=f"recall-{appid}")

    async def _run(self, backend: RecallTuned, lib: Library) -> None:
        for _ in range(ROUNDS):
            try:
                await backend.tune(lib)
            except asyncio.CancelledError:
                raise
            except Exception:  # the library keeps serving with the depth it had
                log.exception("library %s: recall measurement failed", lib.row.appid)
                return
            if not backend.wants_tuning(lib):
                return

    async def measure_now(self, lib: Library) -> bool:
        """Measure the library now, whether due or not (after the running measurement, if any);
        False where the backend does not measure recall."""
        if not isinstance(self.backend, RecallTuned):
            return False
        await self.wait(lib.row.appid)
        self._tasks[lib.row.appid] = task = asyncio.create_task(self._run(self.backend, lib), name="recall")
        await asyncio.shield(task)
        return True

    async def wait(self, appid: str) -> None:
        """Until the library's running measurement (if any) has ended."""
        task = self._tasks.get(appid)
        if task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(task)

    async def cancel(self, appid: str) -> None:
        """Stop the library's measurement (deleted, or the daemon stopping)."""
        task = self._tasks.pop(appid, None)
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def close(self) -> None:
        """Stop every measurement (shutdown): a measurement never saves anything half done."""
        for appid in list(self._tasks):
            await self.cancel(appid)

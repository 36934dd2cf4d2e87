"""Giving items their local features back from their kept originals, in the background.

Items stored without local features (before they existed, imported as bare vectors or from an
export that lacked them, with ``storage.local_features`` off at the time) are judged by the strict
score fallback of the same-picture decision. When the item's original is kept
(``[storage] keep_originals``), its features can be extracted again, exactly as an add extracts
them: a refill does that for every such item of a library, oldest first, a batch per transaction,
while the library keeps serving. One refill per library at a time; its state lives in memory (a
restart forgets it; starting again resumes, since done items no longer lack features). Items
without a kept original stay without: the library's stats count them
(``items_without_local_features``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from same_search.backends.base import Library, StorageError
from same_search.backends.capabilities import RefilledFeatures
from same_search.embed.errors import EmbedderBusy
from same_search.errors import bad_request
from same_search.libraries.registry import LibraryRegistry
from same_search.verify.service import SamePictureService

log = logging.getLogger(__name__)

#: Items extracted, then stored in one transaction.
BATCH = 32
#: Pause before trying a picture again when the decode budget is spent (adds and searches first).
BUSY_PAUSE_S = 0.5


@dataclass
class Refill:
    """One library's refill and its progress."""

    appid: str
    status: str = "running"  # running | done | failed | cancelled
    done: int = 0  # items given their features
    failed: int = 0  # originals unreadable or pictures that cannot be described
    message: str = ""
    started: float = field(default_factory=time.time)
    finished: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "appid": self.appid,
            "status": self.status,
            "done": self.done,
            "failed": self.failed,
            "message": self.message,
            "started": self.started,
            "finished": self.finished,
        }


class FeatureRefills:
    """Starts and tracks refills, one per library."""

    def __init__(self, registry: LibraryRegistry, verifier: SamePictureService) -> None:
        self.registry = registry
        self.verifier = verifier
        self.refills: dict[str, Refill] = {}
        self._tasks: dict[str, asyncio.Task] = {}

    def _backend(self) -> RefilledFeatures:
        backend = self.registry.backend
        if not isinstance(backend, RefilledFeatures):
            raise bad_request(f"the {backend.name} backend keeps no originals to extract local features from")
        return backend

    def start(self, lib: Library) -> Refill:
        """Begin a refill of ``lib`` in the background (the running one when one runs)."""
        self._backend()
        appid = lib.row.appid
        if appid in self._tasks:
            return self.refills[appid]
        refill = self.refills[appid] = Refill(appid)
        self._tasks[appid] = asyncio.create_task(self._run(refill, lib), name=f"refill-{appid}")
        return refill

    def state(self, appid: str) -> Refill | None:
        """The library's running refill, else its last one since the daemon started."""
        return self.refills.get(appid)

    async def wait(self, refill: Refill) -> None:
        """Until ``refill`` ends (scripts, tests)."""
        task = self._tasks.get(refill.appid)
        if task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(task)

    async def close(self) -> None:
        """Cancel refills still running (shutdown); what they stored stays."""
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def _run(self, refill: Refill, lib: Library) -> None:
        try:
            await self._refill(refill, lib)
            refill.status = "done"
        except asyncio.CancelledError:
            refill.status, refill.message = "cancelled", "the daemon is shutting down"
            raise
        except Exception as exc:
            log.exception("local-feature refill of %s failed", refill.appid)
            refill.status, refill.message = "failed", str(exc)
        finally:
            refill.finished = time.time()
            self._tasks.pop(refill.appid, None)
            log.info(
                "local-feature refill of %s %s: %d items given features, %d failed",
                refill.appid,
                refill.status,
                refill.done,
                refill.failed,
            )

    async def _refill(self, refill: Refill, lib: Library) -> None:
        backend = self._backend()
        after = 0
        while pending := await self.registry.call(lib, backend.features_pending(lib, BATCH, after)):
            found: list[tuple[int, bytes]] = []
            for key, sha, seq in pending:
                after = seq
                features = await self._extract(backend, sha)
                if features is None:
                    refill.failed += 1
                else:
                    found.append((key, features))
            await self.registry.call(lib, backend.save_local_features(lib, found))
            refill.done += len(found)

    async def _extract(self, backend: RefilledFeatures, sha: str) -> bytes | None:
        """The stored form of a kept original's features (None: unreadable or not describable)."""
        try:
            data = await backend.read_original(sha)
        except StorageError as exc:
            log.warning("kept original %s cannot be read for its local features: %s", sha, exc)
            return None
        while True:
            try:
                return await self.verifier.extract(data)
            except EmbedderBusy:  # the decode budget is spent: adds and searches go first
                await asyncio.sleep(BUSY_PAUSE_S)

"""The shared services behind all three ports, opened and closed in one place.

Order matters and is symmetrical: model, then the library backend (local database and indexes,
or a Milvus connection); on the way down indexes are saved before the backend closes, and the
embedder stops last. Which backend runs is decided by ``backends.create_backend`` and known to
no one above the library service.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from aiohttp import web

from same_search import __version__
from same_search.backends import create_backend
from same_search.config import Config
from same_search.datadir import DataDirLock
from same_search.duplicates import DuplicateScans
from same_search.embed.embedder import Embedder
from same_search.embed.service import EmbedService
from same_search.fetch import Fetcher
from same_search.imports.jobs import ImportJobs
from same_search.libraries import LibraryService
from same_search.metrics import Metrics

log = logging.getLogger(__name__)


@dataclass
class Services:
    """Everything a route handler may use."""

    cfg: Config
    embed: EmbedService
    libraries: LibraryService
    metrics: Metrics
    jobs: ImportJobs
    #: Pictures by URL for search and add (an extension; refuses everything unless [fetch] allows it).
    fetcher: Fetcher
    #: Near-duplicate scans of the duplicates view (an extension).
    duplicates: DuplicateScans
    started_at: float = field(default_factory=time.time)
    #: False once shutdown begins, so /readyz tells load balancers to stop sending.
    ready: bool = True

    def health(self) -> dict:
        """What /healthz reports."""
        info = self.embed.info
        unavailable = [
            {"appid": appid, "reason": aside.reason} for appid, aside in self.libraries.unavailable.items()
        ]
        return {
            "status": "degraded" if unavailable else "ok",
            "version": __version__,
            "model": {
                "id": info.model_id,
                "dim": info.dim,
                "fingerprint": info.fingerprint,
                "device": info.device,
            },
            "backend": self.libraries.backend_name,
            "libraries": len(self.libraries.libraries),
            # Libraries set aside at start because their rows could not be loaded (see repair).
            "unavailable": unavailable,
            "uptime_s": round(time.time() - self.started_at, 3),
        }


SERVICES = web.AppKey("services", Services)


@contextlib.asynccontextmanager
async def open_services(cfg: Config, embedder: Embedder | None = None) -> AsyncIterator[Services]:
    """Lock the data dir, load the model (unless one is given), open storage and indexes; undo it
    all on exit. The lock comes first: a second daemon on the same data dir stops before loading
    anything."""
    with DataDirLock(cfg.data_path):
        async with _open_services(cfg, embedder) as services:
            yield services


@contextlib.asynccontextmanager
async def _open_services(cfg: Config, embedder: Embedder | None) -> AsyncIterator[Services]:
    if embedder is None:
        embedder = await asyncio.to_thread(Embedder, cfg.model)
    metrics = Metrics()
    embed = EmbedService(embedder, cfg.model, cfg.limits, on_batch=metrics.observe_batch)
    try:
        await embed.warm_up()
    except BaseException:
        await embed.close()  # its thread pools exist already; a failed start must not leave them
        raise
    embed.start()
    libraries = LibraryService(cfg, create_backend(cfg), embed)
    try:
        await libraries.open()
        saver = asyncio.create_task(_save_periodically(libraries, cfg.storage.snapshot_interval_s))
        # Two rounds of forward passes in flight: one in the network, the next being decoded.
        jobs = ImportJobs(libraries, 2 * embed.max_batch * embed.workers)
        await jobs.start()
        try:
            duplicates = DuplicateScans(libraries)
            services = Services(cfg, embed, libraries, metrics, jobs, Fetcher(cfg.fetch), duplicates)
            metrics.attach(services)
            try:
                yield services
            finally:
                await duplicates.close()
        finally:
            await jobs.close(cfg.server.shutdown_grace_s)
            saver.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await saver
    finally:
        await libraries.close()
        await embed.close()


async def _save_periodically(libraries: LibraryService, interval: float) -> None:
    """Snapshot changed indexes every ``interval`` seconds, so restarts replay little."""
    while True:
        await asyncio.sleep(interval)
        try:
            await libraries.save_indexes()
        except Exception:
            log.exception("periodic index save failed; will retry in %.0fs", interval)

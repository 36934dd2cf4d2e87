"""The shared services behind all three ports, opened and closed in one place.

Order matters and is symmetrical: models (the default and every [models.*] profile), then the
library backend (local database and indexes, or a Milvus connection); on the way down indexes
are saved before the backend closes, and the models stop last. Which backend runs is decided by
``backends.create_backend`` and known to no one above the library service.
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
from same_search.config import Config
from same_search.datadir import DataDirLock
from same_search.duplicates import DuplicateScans
from same_search.embed.embedder import Embedder
from same_search.embed.registry import ModelRegistry, open_registry
from same_search.embed.service import EmbedService
from same_search.fetch import Fetcher
from same_search.imports.jobs import ImportJobs
from same_search.imports.schedule import SyncScheduler
from same_search.libraries import LibraryService
from same_search.metrics import Metrics
from same_search.reembed import ReembedJobs

log = logging.getLogger(__name__)


@dataclass
class Services:
    """Everything a route handler may use."""

    cfg: Config
    #: The default model's queue: the feature service's, and a new library's unless signup names one.
    embed: EmbedService
    #: Every model served (one queue per fingerprint), by fingerprint and by profile name.
    models: ModelRegistry
    libraries: LibraryService
    metrics: Metrics
    jobs: ImportJobs
    #: Pictures by URL for search and add (an extension; refuses everything unless [fetch] allows it).
    fetcher: Fetcher
    #: Near-duplicate scans of the duplicates view (an extension).
    duplicates: DuplicateScans
    #: Re-embedding jobs: a library moved to another model from its kept originals (an extension).
    reembeds: ReembedJobs
    #: Folder-sync schedules: a sync job of a library's folder every interval (an extension).
    schedules: SyncScheduler
    started_at: float = field(default_factory=time.time)
    #: False once shutdown begins, so /readyz tells load balancers to stop sending.
    ready: bool = True

    def health(self, names: bool = True) -> dict:
        """What /healthz reports; without ``names``, no library is named (counts only)."""
        info = self.embed.info
        unavailable: list[dict] | int = [
            {"appid": appid, "reason": aside.reason} for appid, aside in self.libraries.unavailable.items()
        ]
        models = self.libraries.registry.models_in_use()
        if not names:
            unavailable = len(unavailable)
            for model in models:
                model["libraries"] = len(model.get("libraries", ()))
        return {
            "status": "degraded" if unavailable else "ok",
            "version": __version__,
            "model": {
                "id": info.model_id,
                "dim": info.dim,
                "fingerprint": info.fingerprint,
                "device": info.device,
            },
            # Every model profile, and which libraries each one serves (an extension).
            "models": models,
            "backend": self.libraries.backend.name,
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
    metrics = Metrics()
    models = await open_registry(cfg.model_profiles(), cfg.limits, embedder, metrics.observe_batch)
    embed = models.default
    libraries = LibraryService(cfg, models)
    try:
        await libraries.open()
        saver = asyncio.create_task(_save_periodically(libraries, cfg.storage.snapshot_interval_s))
        # Two rounds of forward passes in flight: one in the network, the next being decoded.
        jobs = ImportJobs(libraries, 2 * embed.max_batch * embed.workers)
        await jobs.start()
        reembeds = ReembedJobs(libraries)
        await reembeds.start()
        schedules = SyncScheduler(jobs, libraries)
        await schedules.start()
        try:
            duplicates = DuplicateScans(libraries)
            services = Services(
                cfg,
                embed,
                models,
                libraries,
                metrics,
                jobs,
                Fetcher(cfg.fetch),
                duplicates,
                reembeds,
                schedules,
            )
            metrics.attach(services)
            try:
                yield services
            finally:
                await duplicates.close()
        finally:
            await schedules.close()
            await reembeds.close()
            await jobs.close(cfg.server.shutdown_grace_s)
            saver.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await saver
    finally:
        await libraries.close()
        await models.close()


async def _save_periodically(libraries: LibraryService, interval: float) -> None:
    """Snapshot changed indexes every ``interval`` seconds, so restarts replay little."""
    while True:
        await asyncio.sleep(interval)
        try:
            await libraries.maintenance.save_periodically()
        except Exception:
            log.exception("periodic index save failed; will retry in %.0fs", interval)

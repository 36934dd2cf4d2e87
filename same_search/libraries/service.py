"""The library service: one object that opens, composes and closes the parts of the layer.

Callers address the part they need (``libraries.writes.add``, ``libraries.search.run``,
``libraries.stats.of``); the few calls nearly every caller makes (:meth:`LibraryService.get`,
``count``) are here as well.
"""

from __future__ import annotations

import logging

from same_search.backends import create_backend
from same_search.backends.base import Backend, JobLedger, Library, Unavailable
from same_search.config import Config
from same_search.embed.registry import ModelRegistry
from same_search.libraries.imports import LibraryImports
from same_search.libraries.maintenance import LibraryMaintenance
from same_search.libraries.reads import LibraryReads
from same_search.libraries.reembedding import LibraryReembedding
from same_search.libraries.refills import FeatureRefills
from same_search.libraries.registry import LibraryRegistry
from same_search.libraries.stats import LibraryStats
from same_search.libraries.writes import LibraryWrites
from same_search.search.pipeline import Searcher
from same_search.verify.service import SamePictureService

log = logging.getLogger(__name__)


class LibraryService:
    """Every library of the daemon and the operations the API offers on them."""

    def __init__(self, cfg: Config, models: ModelRegistry, backend: Backend | None = None) -> None:
        self.cfg = cfg
        #: Where the libraries live: ``[storage] backend`` picks it (``backends.create_backend``).
        self.backend = create_backend(cfg) if backend is None else backend
        self.models = models
        #: The default model's queue (new libraries, the feature service).
        self.embed = models.default
        self.verifier = SamePictureService(models.default.limits, admission=models.default.admission)
        self.registry = LibraryRegistry(cfg, self.backend, models)
        self.maintenance = LibraryMaintenance(self.registry)
        on_stored = self.maintenance.keep_up
        self.reads = LibraryReads(self.registry, self.verifier)
        self.writes = LibraryWrites(self.registry, self.reads, self.verifier, on_stored)
        self.imports = LibraryImports(self.registry, self.writes, on_stored)
        self.stats = LibraryStats(self.registry, self.maintenance)
        self.reembedding = LibraryReembedding(self.registry, self.writes, on_stored)
        #: Local features given back from kept originals, in the background.
        self.refills = FeatureRefills(self.registry, self.verifier)
        self.search = Searcher(self.reads, self.registry, self.verifier, cfg.search)

    async def open(self) -> None:
        """Open the backend and load every library (see :meth:`LibraryRegistry.open`)."""
        await self.backend.open()
        for lib in await self.registry.open():
            self.maintenance.keep_up(lib)  # also resumes an adoption a crash or a shutdown interrupted

    async def close(self) -> None:
        """Stop rebuilds, save changed indexes, then close the backend."""
        try:
            await self.refills.close()
            await self.maintenance.close()
        finally:
            await self.backend.close()
            self.verifier.close()

    @property
    def libraries(self) -> dict[str, Library]:
        """Served libraries by appid."""
        return self.registry.libraries

    @property
    def unavailable(self) -> dict[str, Unavailable]:
        """Libraries set aside, by appid."""
        return self.registry.unavailable

    @property
    def jobs(self) -> JobLedger:
        """Where import jobs are recorded (daemon state, on this box whatever the backend)."""
        return self.backend.jobs

    async def get(self, appid: str) -> Library:
        """A signed-up library, or err_no 103 (:meth:`LibraryRegistry.get`)."""
        return await self.registry.get(appid)

    async def count(self, lib: Library) -> int:
        """Items stored in a library."""
        return await self.registry.count(lib)

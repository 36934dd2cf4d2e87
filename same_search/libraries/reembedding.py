"""Moving a library to another model in place (an extension): what the re-embed jobs of
:mod:`same_search.reembed` ask of the library service.

A re-embed builds the library again from its kept originals with the new model, beside the
serving vectors, then switches in one transaction. Only a backend that keeps originals can.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence

import numpy as np

from same_search.backends.base import Library, ReembedJobRow
from same_search.backends.capabilities import Reembedding, ReembedLedger
from same_search.embed.service import EmbedService
from same_search.errors import bad_request
from same_search.libraries.registry import LibraryRegistry
from same_search.libraries.writes import LibraryWrites

log = logging.getLogger(__name__)

__all__ = ["LibraryReembedding", "ReembedLedger"]


class LibraryReembedding:
    """The library service's side of a re-embed job."""

    def __init__(
        self,
        registry: LibraryRegistry,
        writes: LibraryWrites,
        on_switched: Callable[[Library], None] = lambda lib: None,
    ) -> None:
        self.registry = registry
        self.writes = writes
        self.backend = registry.backend
        #: Told of a library that now serves a new index (its recall is measured).
        self._on_switched = on_switched

    @property
    def available(self) -> bool:
        """Whether this daemon's backend can re-embed libraries."""
        return isinstance(self.backend, Reembedding)

    @property
    def ledger(self) -> ReembedLedger:
        """Where re-embed jobs are recorded; err_no 1 on a backend that cannot re-embed."""
        return self._backend().reembed_ledger

    def _backend(self) -> Reembedding:
        """The backend, as one that re-embeds; err_no 1 on a backend that cannot."""
        if not isinstance(self.backend, Reembedding):
            raise bad_request(f"re-embedding needs the local backend; this daemon uses {self.backend.name}")
        return self.backend

    async def target(self, lib: Library, model: str | None) -> EmbedService:
        """The model a re-embed of ``lib`` would move it to, after every refusal (err_no 1): no
        model named, the one it already has, originals not kept, items without an original."""
        backend = self._backend()
        if not isinstance(model, str) or not model:
            known = ", ".join(self.registry.models.profile_names())
            raise bad_request(f"model is required: the name of a model profile ({known})")
        embed = self.registry.model_named(model)
        if embed.info.fingerprint == lib.row.fingerprint:
            raise bad_request(
                f"library {lib.row.appid!r} is already on model {model!r} (fingerprint {lib.row.fingerprint})"
            )
        if not self.writes.keeps_originals:
            raise bad_request(
                "re-embedding rebuilds a library from its kept originals: set [storage] keep_originals "
                "= true (items added before that have none)"
            )
        missing = await self.registry.call(lib, backend.items_without_original(lib))
        if missing:
            total = await self.registry.count(lib)
            raise bad_request(
                f"library {lib.row.appid!r} has {missing} of {total} items without a kept original "
                "(added before keep_originals was on, added with a region, or imported without "
                "originals): add those images again (or remove them) before re-embedding"
            )
        return embed

    async def pending(
        self, lib: Library, limit: int, after_seq: int = 0
    ) -> list[tuple[int, str | None, int]]:
        """(key, original, seq) of items that have no vector of the new model yet, oldest first."""
        return await self.registry.call(lib, self._backend().reembed_pending(lib, limit, after_seq))

    async def save(self, lib: Library, vectors: Sequence[tuple[int, np.ndarray]]) -> None:
        """Keep new-model vectors until the switch (persisted: a restart resumes after them)."""
        await self.registry.call(lib, self._backend().save_reembedded(lib, vectors))

    async def original_of(self, lib: Library, key: int) -> str | None:
        """The sha256 of the original kept for ``key``, None when the item is gone or has none."""
        rows = await self.registry.call(lib, self.backend.get_items(lib, [key]))
        return rows[key].original if key in rows else None

    async def switch(
        self, lib: Library, job: ReembedJobRow, catch_up: Callable[[Library], Awaitable[None]]
    ) -> None:
        """Move ``lib`` to the job's model in one transaction, then serve the new index."""
        await self.registry.call(lib, self._backend().switch_model(lib, job, catch_up))
        self._on_switched(lib)
        log.info(
            "library %s now serves model %s (fingerprint %s)",
            lib.row.appid,
            lib.row.model_id,
            lib.row.fingerprint,
        )

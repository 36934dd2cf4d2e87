"""Writing a library in bulk: an export imported over HTTP, and the batches of an import job.

On the local backend one database transaction holds every row of an import (and the library
when the import creates it), so a failure leaves nothing behind; on Milvus batches are upserted
one by one (docs/scale-out.md). Once storing starts it is shielded: the index must follow the
rows even if the caller goes away.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Sequence

from same_search.backends.base import (
    AlreadyExists,
    IndexingFailed,
    Library,
    NewItem,
    NewLibrary,
    StorageError,
    Tags,
    TooManyItems,
)
from same_search.contsign import ContSign
from same_search.errors import ApiError, ErrNo, bad_request
from same_search.libraries.registry import LibraryRegistry, storage_failed
from same_search.libraries.writes import LibraryWrites, check_vector
from same_search.rows import load_failure_reason

log = logging.getLogger(__name__)


async def _while_on_model(
    lib: Library, fingerprint: str, batches: AsyncIterator[Sequence[NewItem]]
) -> AsyncIterator[Sequence[NewItem]]:
    """``batches``, checked against the library's model as each one is stored.

    The import's fingerprint is first checked before the library's write lock is taken; a
    re-embed may switch the library while the import waits for that lock. Batches are pulled
    under the lock, so this check refuses (rolls back) an import whose vectors the library no
    longer holds: never old-model vectors in a library that moved to another model.
    """
    async for batch in batches:
        if lib.row.fingerprint != fingerprint:
            raise bad_request(
                f"library {lib.row.appid!r} moved to fingerprint {lib.row.fingerprint} (a re-embed "
                f"switched it) while this import waited; the export's are {fingerprint}: not "
                "comparable, nothing was imported"
            )
        yield batch


class LibraryImports:
    """Bulk writes: export imports and import-job batches."""

    def __init__(
        self, registry: LibraryRegistry, writes: LibraryWrites, on_stored: Callable[[Library], None]
    ) -> None:
        self.registry = registry
        self.writes = writes
        self.backend = registry.backend
        self._on_stored = on_stored

    def accepted_models(self, appid: str) -> dict[str, int]:
        """Fingerprint -> dimension of the vectors an export import into ``appid`` may hold:
        the library's own model when it exists, else any model served."""
        lib = self.registry.libraries.get(appid)
        if lib is not None:
            return {lib.row.fingerprint: lib.row.dim}
        return {fingerprint: served.info.dim for fingerprint, served in self.registry.models.served.items()}

    async def import_items(
        self, appid: str, batches: AsyncIterator[Sequence[NewItem]], fingerprint: str | None = None
    ) -> tuple[Library, int, int]:
        """Store already validated items with their vectors; (library, imported, duplicates).
        The library is created when missing."""
        return await asyncio.shield(self._import(appid, batches, fingerprint))

    async def embed_item(self, lib: Library, image: bytes, brief: bytes, tags: Tags | None) -> NewItem:
        """An image made ready to store in a batch (:meth:`store_batch`): embedded, with its
        thumbnail and local features, checked as every write is; err_no 101
        (:class:`~same_search.libraries.writes.DuplicateAdd`) when its contsign is stored
        already, before any embedding."""
        contsign = ContSign.of_image(image)
        await self.writes.refuse_duplicate(lib, contsign)
        self.writes.check_fields(brief, tags)
        embed = self.registry.embed_for(lib)
        vector, thumbnail, local = await self.writes.embed_picture(embed, image)
        if embed.info.fingerprint != lib.row.fingerprint:  # a re-embed switched the library meanwhile
            embed = self.registry.embed_for(lib)
            vector, thumbnail, local = await self.writes.embed_picture(embed, image)
        check_vector(lib, contsign.key, vector)
        return NewItem(
            contsign.key,
            brief,
            tags,
            vector,
            original=image if self.writes.keeps_originals else None,
            thumbnail=thumbnail,
            local_features=local,
        )

    async def store_batch(self, lib: Library, items: Sequence[NewItem]) -> tuple[int, int]:
        """Store embedded items (:meth:`embed_item`) as one batch: one database transaction and
        one graph insert per batch of rows instead of one of each per item (import jobs);
        (stored, duplicates). A contsign twice in ``items`` is stored once. Shielded like
        :meth:`import_items`; err_no 103 if the library was deleted meanwhile (never re-created)."""
        first: dict[int, NewItem] = {}
        for item in items:
            first.setdefault(item.key, item)
        unique = list(first.values())

        async def one_batch() -> AsyncIterator[Sequence[NewItem]]:
            yield unique

        _, stored, duplicates = await asyncio.shield(
            # The library's fingerprint: a re-embed that switched it meanwhile refuses the batch
            # (err_no 1) instead of mixing two models' vectors.
            self._import(lib.row.appid, one_batch(), lib.row.fingerprint, create=False)
        )
        return stored, duplicates + len(items) - len(unique)

    async def _target(self, appid: str, fingerprint: str | None, create: bool) -> Library | NewLibrary:
        """The library an import goes into, or the one it creates (err_no 1 when its vectors are
        not comparable with the import's)."""
        if appid in self.registry.unavailable:
            raise self.registry.unavailable_error(appid)
        try:
            target: Library | NewLibrary = await self.registry.get(appid)
        except ApiError as exc:
            if exc.err_no != ErrNo.NOT_SIGNED_UP or not create:
                raise
            models = self.registry.models
            embed = models.default if fingerprint is None else models.for_fingerprint(fingerprint)
            if embed is None:
                raise bad_request(
                    f"no model served here makes vectors of fingerprint {fingerprint}"
                ) from None
            target = self.registry.new_library(appid, embed.info)
        held = target.fingerprint if isinstance(target, NewLibrary) else target.row.fingerprint
        if fingerprint is not None and held != fingerprint:
            raise bad_request(
                f"library {appid!r} holds vectors of fingerprint {held}, the export's are "
                f"{fingerprint}: not comparable"
            )
        return target

    async def _import(
        self,
        appid: str,
        batches: AsyncIterator[Sequence[NewItem]],
        fingerprint: str | None,
        create: bool = True,
    ) -> tuple[Library, int, int]:
        capacity = self.registry.cfg.limits.library_capacity
        target = await self._target(appid, fingerprint, create)
        try:
            if isinstance(target, NewLibrary):
                async with self.registry.signup_lock:  # a signup meanwhile gets 104
                    lib, imported, duplicates = await self.backend.import_items(target, batches, capacity)
                    self.registry.libraries[appid] = lib
                log.info("library %s created by an import of %d items", appid, imported)
                self._on_stored(lib)  # a new index: its recall is measured (large enough: reduced already)
            else:
                if fingerprint is not None:
                    batches = _while_on_model(target, fingerprint, batches)
                lib, imported, duplicates = await self.registry.call(
                    target, self.backend.import_items(target, batches, capacity)
                )
                self._on_stored(lib)
                log.log(
                    logging.INFO if create else logging.DEBUG,
                    "library %s: imported %d items (%d duplicates)",
                    appid,
                    imported,
                    duplicates,
                )
        except TooManyItems as exc:
            raise ApiError(ErrNo.INTERNAL, f"{exc}; nothing was imported") from exc
        except AlreadyExists as exc:
            raise ApiError(ErrNo.ALREADY_SIGNED_UP, f"appid {appid!r} already signed up") from exc
        except StorageError as exc:
            raise storage_failed(exc) from exc
        except IndexingFailed as exc:
            # The index no longer matches the stored rows: set aside (named, repairable), not served.
            self.registry.set_aside(exc.row, load_failure_reason(exc.cause))
            raise ApiError(
                ErrNo.INTERNAL,
                f"the import was stored but could not be indexed: {load_failure_reason(exc.cause)}",
            ) from exc
        return lib, imported, duplicates

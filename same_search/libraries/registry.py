"""The libraries a daemon serves: which exist, which model serves each, which are set aside.

A library is loaded at start (or found on a shared backend when another daemon created it) and
is always served by the model its vectors were made with: its row's fingerprint picks the
model's batching queue, and a library whose model is not served is set aside (err_no 6), never
served by another. Every backend call of the library service goes through :meth:`call`, which
turns storage failures into the API's err_no answers.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

import numpy as np

from same_search.backends.base import (
    AlreadyExists,
    Backend,
    Library,
    LibraryFull,
    LibraryGone,
    LibraryRow,
    LibrarySettings,
    NewLibrary,
    StorageError,
    Unavailable,
)
from same_search.backends.capabilities import SharedLibraries
from same_search.config import DEFAULT_MODEL, Config
from same_search.embed.embedder import ModelInfo
from same_search.embed.images import Region
from same_search.embed.registry import ModelRegistry
from same_search.embed.service import EmbedService
from same_search.errors import ApiError, ErrNo, bad_request

log = logging.getLogger(__name__)

T = TypeVar("T")


def storage_failed(exc: StorageError) -> ApiError:
    """err_no 11 for a write the storage refused (disk full, read-only, I/O error)."""
    return ApiError(ErrNo.INTERNAL, f"storage write failed, nothing was changed: {exc}")


def not_signed_up(appid: str) -> ApiError:
    return ApiError(ErrNo.NOT_SIGNED_UP, f"appid {appid!r} has not signed up")


class LibraryRegistry:
    """Every library of the daemon, the model serving each, and the backend calls on them."""

    def __init__(self, cfg: Config, backend: Backend, models: ModelRegistry) -> None:
        self.cfg = cfg
        self.backend = backend
        #: Every model served; each library embeds with the one its fingerprint names.
        self.models = models
        self.libraries: dict[str, Library] = {}
        #: Libraries whose rows could not be loaded, by appid: named, not served.
        self.unavailable: dict[str, Unavailable] = {}
        self._signup_lock = asyncio.Lock()

    async def open(self) -> list[Library]:
        """Load every library; one whose model is not served is set aside (err_no 6, named in
        /healthz), never served with another model, never a failed start. Returns those served."""
        for lib in await self.backend.load_libraries():
            if isinstance(lib, Unavailable):
                self.set_aside(lib.row, lib.reason)
                continue
            missing = self.model_missing(lib.row)
            if missing is not None:
                self.set_aside(lib.row, missing)
                continue
            self.libraries[lib.row.appid] = lib
        return list(self.libraries.values())

    def set_aside(self, row: LibraryRow, reason: str) -> None:
        """Stop serving a library whose rows cannot be served; its rows stay untouched."""
        self.libraries.pop(row.appid, None)
        self.unavailable[row.appid] = Unavailable(row, reason)
        log.error(
            "library %s is UNAVAILABLE, every other library serves: %s. Its rows are untouched; "
            "POST /api/libraries/%s/repair drops the rows that cannot be loaded and brings it back",
            row.appid,
            reason,
            row.appid,
        )

    def model_missing(self, row: LibraryRow) -> str | None:
        """Why no served model fits a library's vectors, or None when one does."""
        embed = self.models.for_fingerprint(row.fingerprint)
        if embed is not None and embed.info.dim == row.dim:
            return None
        failed = "; ".join(
            f"profile {name!r} failed to load: {why}" for name, why in self.models.failed.items()
        )
        return (
            f"built with model {row.model_id} (fingerprint {row.fingerprint}, dim {row.dim}), which no "
            "configured model profile provides"
            + (f" ({failed})" if failed else "")
            + ". Add a [models.<name>] profile with the settings it was built with and restart"
        )

    # ---- models ------------------------------------------------------------------------------

    def embed_for(self, lib: Library) -> EmbedService:
        """The batching queue of the model a library's vectors were made with."""
        embed = self.models.for_fingerprint(lib.row.fingerprint)
        if embed is None:  # only after a profile vanished under a served library: never mix
            raise ApiError(ErrNo.BS_UNAVAILABLE, f"library {lib.row.appid!r}: {self.model_missing(lib.row)}")
        return embed

    async def embed_query(self, lib: Library, image: bytes, region: Region | None = None) -> np.ndarray:
        """A query picture's vector, made by the library's own model."""
        return await self.embed_for(lib).embed_image(image, region)

    async def on_one_model(self, lib: Library, query: Callable[[], Awaitable[T]]) -> T:
        """Run ``query`` (make a query vector, then search with it) again when a re-embed switched
        the library while it ran: the vector and the searched index must come from one model.

        A switch swaps the library's row and index together, so an unchanged fingerprint after
        the search means both steps saw the same model. A failure of a query that straddled a
        switch (another dimension) is retried the same way.
        """
        while True:
            fingerprint = lib.row.fingerprint
            try:
                result = await query()
            except Exception:
                if lib.row.fingerprint == fingerprint:
                    raise
                continue
            if lib.row.fingerprint == fingerprint:
                return result

    def model_named(self, name: str | None) -> EmbedService:
        """The queue of a model profile by name (None: the default); err_no 1 for an unknown one,
        err_no 6 for one configured but not loaded."""
        name = DEFAULT_MODEL if name is None else name
        embed = self.models.by_name(name)
        if embed is not None:
            return embed
        if name in self.models.failed:
            raise ApiError(
                ErrNo.BS_UNAVAILABLE, f"model {name!r} is not available: {self.models.failed[name]}"
            )
        known = ", ".join(self.models.profile_names())
        shown = repr(name) if len(name) <= 80 else f"{name[:80]!r}... ({len(name)} characters)"
        raise bad_request(f"model {shown} is not configured; configured models: {known}")

    def models_in_use(self) -> list[dict]:
        """Every model profile and the libraries each one serves (/healthz, the console)."""
        shown = self.models.describe()
        for model in shown:
            fingerprint = model.get("fingerprint")
            model["libraries"] = sorted(
                appid for appid, lib in self.libraries.items() if lib.row.fingerprint == fingerprint
            )
        return shown

    # ---- libraries ---------------------------------------------------------------------------

    async def get(self, appid: str) -> Library:
        """A signed-up library, or err_no 103.

        A library this daemon has not seen may have been created by another daemon sharing the
        backend: it is looked up there before the answer is 103.
        """
        lib = self.libraries.get(appid)
        if lib is None:
            if appid in self.unavailable:
                raise self.unavailable_error(appid)
            lib = await self._find_elsewhere(appid)
            if lib is None:
                raise not_signed_up(appid)
            missing = self.model_missing(lib.row)
            if missing is not None:  # made by a daemon serving another model: never mix
                raise ApiError(ErrNo.BS_UNAVAILABLE, f"library {appid!r} is unavailable here: {missing}")
            lib = self.libraries.setdefault(appid, lib)
        return lib

    async def _find_elsewhere(self, appid: str) -> Library | None:
        """A library another daemon created on a shared backend, or None."""
        if isinstance(self.backend, SharedLibraries):
            return await self.backend.find_library(appid)
        return None

    def unavailable_error(self, appid: str) -> ApiError:
        return ApiError(
            ErrNo.BS_UNAVAILABLE,
            f"library {appid!r} is unavailable: {self.unavailable[appid].reason}. The operator can "
            f"drop the rows that cannot be loaded with POST /api/libraries/{appid}/repair",
        )

    async def get_any(self, appid: str) -> Library | Unavailable:
        """A library whether it serves or is set aside (deleting, listing); err_no 103 otherwise."""
        found = self.unavailable.get(appid)
        return found if found is not None else await self.get(appid)

    async def all(self) -> list[Library]:
        """Every library, including those other daemons created on a shared backend."""
        if isinstance(self.backend, SharedLibraries):
            loaded = await self.backend.load_libraries()
            current = {
                lib.row.appid: lib
                for lib in loaded
                if isinstance(lib, Library) and self.model_missing(lib.row) is None
            }
            for appid in list(self.libraries):
                if appid not in current:  # deleted through another daemon
                    del self.libraries[appid]
            for appid, lib in current.items():
                self.libraries.setdefault(appid, lib)
        return list(self.libraries.values())

    async def signup(self, appid: str, model: str | None = None) -> Library:
        """Create a library for the model profile ``model`` (None: the default); err_no 104 if
        it exists, 1 for an unknown model."""
        info = self.model_named(model).info
        async with self._signup_lock:
            exists = ApiError(ErrNo.ALREADY_SIGNED_UP, f"appid {appid!r} already signed up")
            taken = appid in self.libraries or appid in self.unavailable
            if taken or await self._find_elsewhere(appid) is not None:
                raise exists
            try:
                lib = await self.backend.create_library(self.new_library(appid, info))
            except AlreadyExists as exc:
                raise exists from exc
            except StorageError as exc:
                raise storage_failed(exc) from exc
            self.libraries[appid] = lib
            log.info("library %s signed up (model %s, dim %d)", appid, info.model_id, info.dim)
            return lib

    @property
    def signup_lock(self) -> asyncio.Lock:
        """Held while a library is created (a signup, or an import that creates its library)."""
        return self._signup_lock

    def new_library(self, appid: str, info: ModelInfo) -> NewLibrary:
        """A library about to be created for model ``info``, with the configured default ranking."""
        search = self.cfg.search
        settings = LibrarySettings(
            query_expansion=search.query_expansion, promote_same_picture=search.promote_same_picture
        )
        return NewLibrary(appid, info.model_id, info.dim, info.fingerprint, settings)

    async def save_settings(self, lib: Library, settings: LibrarySettings) -> None:
        """Store a library's operator settings: its near-duplicate policy (``dup_min_score``
        None: the built-in floors) and its ranking."""
        await self.call(lib, self.backend.save_settings(lib, settings))
        lib.row = dataclasses.replace(lib.row, **dataclasses.asdict(settings))

    def forget(self, appid: str) -> None:
        """Drop a deleted library from the daemon's lists."""
        self.libraries.pop(appid, None)
        self.unavailable.pop(appid, None)

    async def stored_count(self, lib: Library | Unavailable) -> int | None:
        """Items a library holds (also one set aside, whose index is not loaded); None when the
        backend cannot count them (a set-aside Milvus collection that does not load), so that
        deleting such a library still works."""
        try:
            return await self.backend.stored_count(lib.row)
        except (StorageError, LibraryGone):
            if isinstance(lib, Library):
                raise
            return None

    async def count(self, lib: Library) -> int:
        """Items stored in a library."""
        return await self.call(lib, self.backend.count(lib))

    async def call(self, lib: Library, operation: Awaitable[T]) -> T:
        """Await a backend call on ``lib``: storage failures become err_no answers.

        A library deleted behind this daemon's back (another daemon, shared backend) is
        forgotten and answered as 103, as it would be here.
        """
        try:
            return await operation
        except LibraryGone:
            self.libraries.pop(lib.row.appid, None)
            raise not_signed_up(lib.row.appid) from None
        except LibraryFull as exc:
            raise ApiError(ErrNo.INTERNAL, str(exc)) from exc
        except StorageError as exc:
            raise storage_failed(exc) from exc

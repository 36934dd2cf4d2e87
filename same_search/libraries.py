"""Library logic: the layer between routes and the embedder and the library backend.

This is the only module that talks to a backend (``same_search.backends``): routes, the
management API, import jobs, export/import, metrics and the console go through
:class:`LibraryService`, and none of them knows whether libraries live in SQLite + hnswlib on
this box or in a Milvus cluster shared by several daemons. The API's rules (err_no 101/102/103/
104, paging, ``min_score``) are decided here, once, for every backend.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from same_search import promotion
from same_search import query_expansion as qe
from same_search.backends.base import (
    AlreadyExists,
    Backend,
    IndexingFailed,
    ItemRow,
    ItemToAdd,
    JobLedger,
    Library,
    LibraryFull,
    LibraryGone,
    LibraryRow,
    ModelChanged,
    NewItem,
    NewLibrary,
    ReembedJobRow,
    StorageError,
    TagFilter,
    Tags,
    TooManyItems,
    Unavailable,
)
from same_search.config import DEFAULT_MODEL, Config
from same_search.contsign import ContSign
from same_search.embed.images import Region
from same_search.embed.registry import ModelRegistry
from same_search.embed.service import EmbedService
from same_search.errors import ApiError, ErrNo, bad_request
from same_search.index.vectors import vector_problem
from same_search.near_duplicates import (
    DEFAULT_MIN_SCORE,
    MAX_REPORTED,
    OFF,
    Candidate,
    DupPolicy,
    Query,
    resolve,
    select,
)
from same_search.rebuilds import ADOPTION, DONE, Rebuild, Rebuilds
from same_search.rows import bad_rows_text, load_failure_reason, tags_problem
from same_search.verify import decision
from same_search.verify.service import QueryFeatures, SamePictureService, Verdict

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Rows a repair reports one by one (all of them are dropped).
REPAIR_REPORT_MAX = 1000
#: Nearest items offered to the near-duplicate decision (more than it reports: a verifier may drop some).
NEAR_DUPLICATE_CANDIDATES = 32

__all__ = [
    "AddResult",
    "DuplicateAdd",
    "Hit",
    "Item",
    "Library",
    "LibraryService",
    "NearDuplicateAdd",
    "SearchPage",
    "TagFilter",
    "Unavailable",
]


class DuplicateAdd(ApiError):
    """err_no 101; carries the stored item so the route can show it, as the spec's example does."""

    def __init__(self, item: Item) -> None:
        super().__init__(ErrNo.DUPLICATED_ADD, "duplicated add")
        self.item = item


class NearDuplicateAdd(ApiError):
    """err_no 101 under the ``reject`` policy: the image is not stored; carries the close items."""

    def __init__(self, hits: list[Hit]) -> None:
        super().__init__(ErrNo.DUPLICATED_ADD, "duplicated add")
        self.hits = hits


@dataclass(frozen=True)
class AddResult:
    """A stored image's contsign, and the near-duplicates found under the ``warn`` policy."""

    contsign: ContSign
    near_duplicates: list[Hit]


@dataclass(frozen=True)
class Item:
    """A stored image as clients see it."""

    contsign: ContSign
    brief: bytes
    tags: Tags | None
    #: sha256 of its kept original, if one is kept.
    original: str | None = None


@dataclass(frozen=True)
class Hit:
    """One search result."""

    item: Item
    score: float


@dataclass(frozen=True)
class SearchPage:
    """One page of results and whether more exist beyond it."""

    hits: list[Hit]
    has_more: bool


@dataclass(frozen=True)
class RepairReport:
    """What a repair dropped, and whether it brought a set-aside library back."""

    appid: str
    dropped: list[tuple[ContSign, str]]
    restored: bool


@dataclass(frozen=True)
class LibraryCensus:
    """What /metrics reports per library."""

    appid: str
    items: int
    last_index_save: float | None


def _item(row: ItemRow) -> Item:
    return Item(ContSign.from_key(row.key), row.brief, row.tags, row.original)


def _near_duplicate_verdict(verdict: Verdict, policy: DupPolicy) -> bool:
    """A checked candidate is a near-duplicate when the check confirms it; one the check could
    not look at (no local features) when its score alone reaches the policy's strict floor."""
    if verdict.evidence is None:
        return verdict.score >= policy.min_score
    return verdict.same


async def _nothing() -> None:
    return None


def _storage_failed(exc: StorageError) -> ApiError:
    return ApiError(ErrNo.INTERNAL, f"storage write failed, nothing was changed: {exc}")


def _not_signed_up(appid: str) -> ApiError:
    return ApiError(ErrNo.NOT_SIGNED_UP, f"appid {appid!r} has not signed up")


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


class LibraryService:
    """Every library of the daemon and the operations the API offers on them."""

    def __init__(self, cfg: Config, backend: Backend, models: ModelRegistry) -> None:
        self.cfg = cfg
        self.backend = backend
        #: Every model served; each library embeds with the one its fingerprint names.
        self.models = models
        #: The default model's queue (new libraries, the feature service).
        self.embed = models.default
        embed = models.default
        self.libraries: dict[str, Library] = {}
        self._signup_lock = asyncio.Lock()
        #: Per library: held while a near-duplicate check and the store that follows it run.
        self._dup_locks: dict[str, asyncio.Lock] = {}
        self.verifier = SamePictureService(embed.limits, admission=embed.admission)
        #: Libraries whose rows could not be loaded at start, by appid: named, not served.
        self.unavailable: dict[str, Unavailable] = {}
        self._repair_lock = asyncio.Lock()
        #: Background index rebuilds, one per library at a time (``rebuild``, ``compact``, adoption).
        self.rebuilds = Rebuilds(backend)
        #: Libraries whose switch to a reduced index was started by this process (asked at most once).
        self._adoptions: set[str] = set()

    # ---- lifecycle -----------------------------------------------------------------------------

    async def open(self) -> None:
        """Open the backend and load every library; one whose model is not served is set aside
        (err_no 6, named in /healthz), never served with another model, never a failed start."""
        await self.backend.open()
        for lib in await self.backend.load_libraries():
            if isinstance(lib, Unavailable):
                self._set_aside(lib.row, lib.reason)
                continue
            missing = self._model_missing(lib.row)
            if missing is not None:
                self._set_aside(lib.row, missing)
                continue
            self.libraries[lib.row.appid] = lib
        for lib in self.libraries.values():
            self._adopt_reduction_if_due(lib)  # also resumes one a crash or a shutdown interrupted

    def _set_aside(self, row: LibraryRow, reason: str) -> None:
        self.unavailable[row.appid] = Unavailable(row, reason)
        log.error(
            "library %s is UNAVAILABLE, every other library serves: %s. Its rows are untouched; "
            "POST /api/libraries/%s/repair drops the rows that cannot be loaded and brings it back",
            row.appid,
            reason,
            row.appid,
        )

    def _model_missing(self, row: LibraryRow) -> str | None:
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

    def embed_for(self, lib: Library) -> EmbedService:
        """The batching queue of the model a library's vectors were made with."""
        embed = self.models.for_fingerprint(lib.row.fingerprint)
        if embed is None:  # only after a profile vanished under a served library: never mix
            raise ApiError(ErrNo.BS_UNAVAILABLE, f"library {lib.row.appid!r}: {self._model_missing(lib.row)}")
        return embed

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

    async def embed_query(self, lib: Library, image: bytes, region: Region | None = None) -> np.ndarray:
        """A query picture's vector, made by the library's own model."""
        return await self.embed_for(lib).embed_image(image, region)

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

    async def save_indexes(self, only_dirty: bool = True) -> int:
        """Make every (changed) library's search structure durable; returns how many were saved."""
        return await self.backend.save(list(self.libraries.values()), only_dirty)

    async def close(self) -> None:
        """Save changed indexes, then close the backend.

        A failed save (disk full, say) is logged, not raised: snapshots only shorten the next
        start, which replays or rebuilds from the database; nothing acknowledged depends on them.
        """
        try:
            await self.rebuilds.close()  # the indexes serving now are the ones saved
            await self.save_indexes()
        except Exception:
            log.exception(
                "could not save the indexes at shutdown; the next start rebuilds them from the database"
            )
        finally:
            await self.backend.close()
            self.verifier.close()

    @property
    def jobs(self) -> JobLedger:
        """Where import jobs are recorded (daemon state, on this box whatever the backend)."""
        return self.backend.jobs

    @property
    def backend_name(self) -> str:
        return self.backend.name

    # ---- libraries -------------------------------------------------------------------------------

    async def get(self, appid: str) -> Library:
        """A signed-up library, or err_no 103.

        A library this daemon has not seen may have been created by another daemon sharing the
        backend: it is looked up there before the answer is 103.
        """
        lib = self.libraries.get(appid)
        if lib is None:
            if appid in self.unavailable:
                raise self._unavailable_error(appid)
            lib = await self.backend.find_library(appid)
            if lib is None:
                raise _not_signed_up(appid)
            missing = self._model_missing(lib.row)
            if missing is not None:  # made by a daemon serving another model: never mix
                raise ApiError(ErrNo.BS_UNAVAILABLE, f"library {appid!r} is unavailable here: {missing}")
            lib = self.libraries.setdefault(appid, lib)
        return lib

    def _unavailable_error(self, appid: str) -> ApiError:
        return ApiError(
            ErrNo.BS_UNAVAILABLE,
            f"library {appid!r} is unavailable: {self.unavailable[appid].reason}. The operator can "
            f"drop the rows that cannot be loaded with POST /api/libraries/{appid}/repair",
        )

    async def get_any(self, appid: str) -> Library | Unavailable:
        """A library whether it serves or is set aside (deleting, listing); err_no 103 otherwise."""
        found = self.unavailable.get(appid)
        return found if found is not None else await self.get(appid)

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

    async def all(self) -> list[Library]:
        """Every library, including those other daemons created on a shared backend."""
        if self.backend.shared:
            loaded = await self.backend.load_libraries()
            current = {
                lib.row.appid: lib
                for lib in loaded
                if isinstance(lib, Library) and self._model_missing(lib.row) is None
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
            if taken or await self.backend.find_library(appid) is not None:
                raise exists
            try:
                lib = await self.backend.create_library(appid, info.model_id, info.dim, info.fingerprint)
            except AlreadyExists as exc:
                raise exists from exc
            except StorageError as exc:
                raise _storage_failed(exc) from exc
            self.libraries[appid] = lib
            log.info("library %s signed up (model %s, dim %d)", appid, info.model_id, info.dim)
            return lib

    async def _call(self, lib: Library, operation: Awaitable[T]) -> T:
        """Await a backend call on ``lib``: storage failures become err_no answers.

        A library deleted behind this daemon's back (another daemon, shared backend) is
        forgotten and answered as 103, as it would be here.
        """
        try:
            return await operation
        except LibraryGone:
            self.libraries.pop(lib.row.appid, None)
            raise _not_signed_up(lib.row.appid) from None
        except LibraryFull as exc:
            raise ApiError(ErrNo.INTERNAL, str(exc)) from exc
        except StorageError as exc:
            raise _storage_failed(exc) from exc

    async def count(self, lib: Library) -> int:
        """Items stored in a library."""
        return await self._call(lib, self.backend.count(lib))

    # ---- items ------------------------------------------------------------------------------------

    async def add(
        self,
        lib: Library,
        image: bytes,
        brief: bytes,
        tags: Tags | None,
        policy: DupPolicy = OFF,
        region: Region | None = None,
    ) -> AddResult:
        """Embed and store one image; err_no 101 (with the stored item) if its contsign is stored.

        Under an active near-duplicate ``policy`` the close items are looked up first: ``reject``
        raises :class:`NearDuplicateAdd` and stores nothing, ``warn`` stores and returns them.
        With a ``region`` only that part of the picture is embedded (and kept as the thumbnail);
        the contsign stays the whole file's.
        """
        contsign = ContSign.of_image(image)
        await self._refuse_duplicate(lib, contsign)
        while True:
            try:
                return await self._add(lib, contsign, image, brief, tags, policy, region)
            except ModelChanged:  # a re-embed switched the library while this image was embedded
                continue

    async def _add(
        self,
        lib: Library,
        contsign: ContSign,
        image: bytes,
        brief: bytes,
        tags: Tags | None,
        policy: DupPolicy,
        region: Region | None,
    ) -> AddResult:
        embed = self.embed_for(lib)
        vector, thumbnail, local = await self._embed_picture(embed, image, region)
        # Shielded: once the row is being committed, the index must follow even if the caller is
        # cancelled (client gone, shutdown), or index and database would disagree until a restart.
        # Only the whole upload is kept, and a re-embed embeds its original whole: an item added
        # with a region keeps none (a re-embed names it) rather than get the whole picture's vector.
        original = image if self.keeps_originals and region is None else None
        close = await asyncio.shield(
            self.store_vector(
                lib,
                contsign,
                brief,
                tags,
                vector,
                thumbnail,
                policy,
                Query(vector, image),
                local,
                original,
                embed.info.fingerprint,
            )
        )
        return AddResult(contsign, close)

    async def _embed_picture(
        self, embed: EmbedService, image: bytes, region: Region | None = None
    ) -> tuple[np.ndarray, bytes | None, bytes | None]:
        """(vector, thumbnail, local features) of a picture about to be stored, by ``embed``
        (the library's own model).

        Local features of the whole picture (same-picture checks) are extracted alongside the
        forward pass; when the embedder refuses (busy, timeout, bad image) the extraction is
        cancelled too, so refused adds never pile up work outside the embedder's admission limit.
        """
        extraction = asyncio.ensure_future(
            self.verifier.extract(image) if self._keeps_local_features else _nothing()
        )
        try:
            vector, thumbnail = await embed.embed_with_thumbnail(
                image, self.cfg.storage.thumbnail_side, region
            )
        except BaseException:
            extraction.cancel()
            raise
        return vector, thumbnail, await extraction

    @property
    def keeps_originals(self) -> bool:
        """Whether adds keep the uploaded bytes (configured on, and the backend can)."""
        return self.cfg.storage.keep_originals and self.backend.can_reembed

    async def store_vector(
        self,
        lib: Library,
        contsign: ContSign,
        brief: bytes,
        tags: Tags | None,
        vector: np.ndarray,
        thumbnail: bytes | None = None,
        policy: DupPolicy = OFF,
        query: Query | None = None,
        local_features: bytes | None = None,
        original: bytes | None = None,
        fingerprint: str | None = None,
    ) -> list[Hit]:
        """Store an item with an already computed vector (``add`` and imports); 101 if stored.

        The last check before storage: a vector that is not a finite unit vector of the
        library's dimension, tags outside uint32 or an over-long brief are refused here, whatever
        path they came by, so no stored row can later keep the library from loading.

        Under an active ``policy`` the near-duplicate check and the store run under the library's
        near-duplicate lock, so two close images added at once through this daemon cannot both
        pass it (through two daemons on a shared backend they can: docs/scale-out.md). Returns the
        near-duplicates found (always empty when ``policy`` is off).
        """
        problem = vector_problem(np.asarray(vector), lib.row.dim)
        if problem is not None:
            raise ApiError(ErrNo.INTERNAL, f"refusing to store contsign {contsign}: {problem}")
        problem = tags_problem(tags)
        if problem is not None:
            raise bad_request(problem)
        if not isinstance(brief, bytes) or len(brief) > self.cfg.limits.brief_max_bytes:
            raise bad_request(f"brief must be at most {self.cfg.limits.brief_max_bytes} bytes")
        stored = ItemToAdd(
            contsign.key, brief, tags, vector, thumbnail, local_features, original, fingerprint
        )
        if not policy.active:
            await self._store_one(lib, contsign, stored)
            return []
        async with self._dup_locks.setdefault(lib.row.appid, asyncio.Lock()):
            close = await self._near_duplicates(lib, query or Query(vector), policy, local_features)
            if fingerprint is not None and fingerprint != lib.row.fingerprint:
                # A re-embed switched the library while this vector was compared with its index:
                # the comparison meant nothing (and must not reject); the add embeds again.
                raise ModelChanged(f"library {lib.row.appid!r} moved to model {lib.row.model_id}")
            if close and policy.rejects:
                raise NearDuplicateAdd(close)
            await self._store_one(lib, contsign, stored)
        return close

    async def _store_one(self, lib: Library, contsign: ContSign, item: ItemToAdd) -> None:
        stored = await self.store_vectors(lib, [item])
        self._adopt_reduction_if_due(lib)
        if not stored[0]:
            await self._refuse_duplicate(lib, contsign)
            raise ApiError(ErrNo.DUPLICATED_ADD, "duplicated add")  # removed again meanwhile

    async def _near_duplicates(
        self, lib: Library, query: Query, policy: DupPolicy, local_features: bytes | None = None
    ) -> list[Hit]:
        """Stored items the policy's decision calls near-duplicates of ``query``, best first.

        Candidates above the policy's score floor are also verified as the same picture when both
        sides have local features (:mod:`same_search.verify`): a look-alike above the floor is not
        a near-duplicate. Candidates without local features keep the floor alone.
        """
        if not policy.active:
            return []
        result = await self._call(
            lib, self.backend.search(lib, query.vector, NEAR_DUPLICATE_CANDIDATES, None)
        )
        features = self.verifier.stored_query(local_features)
        if features is None:
            chosen = select(query, result.found, policy)
        else:
            # With the built-in floors, candidates the check confirms may score as low as
            # policy.verified_min_score; unverifiable ones still need policy.min_score.
            close = [(key, score) for key, score in result.found if score >= policy.candidate_floor]
            stored = await self._call(lib, self.backend.local_features(lib, [key for key, _ in close]))
            verdicts = await self.verifier.judge(features, close, stored)
            kept = [v for v in verdicts if _near_duplicate_verdict(v, policy)]
            chosen = [Candidate(v.key, v.score) for v in kept[:MAX_REPORTED]]
        rows = result.rows
        missing = [c.key for c in chosen if c.key not in rows]
        if missing:
            rows = {**rows, **await self._call(lib, self.backend.get_items(lib, missing))}
        return [Hit(_item(rows[c.key]), c.score) for c in chosen if c.key in rows]

    async def set_dup_policy(self, lib: Library, mode: str, min_score: float | None) -> None:
        """Store a library's default near-duplicate policy (``min_score`` None: the built-in floor)."""
        row = dataclasses.replace(lib.row, dup_policy=mode, dup_min_score=min_score)
        await self._call(lib, self.backend.update_library(lib, row))
        lib.row = row

    async def store_vectors(self, lib: Library, items: list[ItemToAdd]) -> list[bool]:
        """Store a batch of items with their vectors; False for each key already stored."""
        capacity = self.cfg.limits.library_capacity
        return await self._call(lib, self.backend.add_items(lib, items, capacity))

    async def _refuse_duplicate(self, lib: Library, contsign: ContSign) -> None:
        rows = await self._call(lib, self.backend.get_items(lib, [contsign.key]))
        if contsign.key in rows:
            raise DuplicateAdd(_item(rows[contsign.key]))

    async def update(self, lib: Library, contsign: ContSign, brief: bytes | None, tags: Tags | None) -> None:
        """Replace brief and/or tags; err_no 102 if the item is not stored."""
        found = await self._call(lib, self.backend.update_item(lib, contsign.key, brief, tags))
        if not found:
            raise ApiError(ErrNo.UPDATE_MISSING, f"contsign {contsign} is not in library {lib.row.appid!r}")

    async def remove(self, lib: Library, contsigns: list[ContSign]) -> int:
        """Remove items (absent ones are ignored); returns how many were removed."""
        removing = self._call(lib, self.backend.remove_items(lib, [c.key for c in contsigns]))
        return len(await asyncio.shield(removing))

    async def vector_of(self, lib: Library, contsign: ContSign) -> np.ndarray:
        """The stored vector of an item (search by contsign); err_no 1 if it is not stored."""
        vector = await self._call(lib, self.backend.vector(lib, contsign.key))
        if vector is None:
            raise ApiError(ErrNo.BAD_REQUEST, f"contsign {contsign} is not in library {lib.row.appid!r}")
        return vector

    async def search(
        self,
        lib: Library,
        vector: np.ndarray,
        pn: int,
        rn: int,
        tag_filter: TagFilter | None,
        min_score: float | None = None,
        query_expansion: int = 0,
        promote: bool = False,
        query: QueryFeatures | None = None,
    ) -> SearchPage:
        """Results ``pn .. pn+rn`` (only those >= ``min_score``), scored by cosine similarity.

        With query expansion (``query_expansion`` hits; 0 = off; callers resolve the configured
        default with ``SearchConfig.ranking_for``) the order comes from the expanded query
        (:mod:`same_search.query_expansion`); without it, by descending score. ``promote`` moves
        the best candidates that the same-picture check confirms against ``query`` (its local
        features; None: it has none, and only the strict score fallback confirms) to the top
        (:mod:`same_search.promotion`). One result past the page is asked for: it tells whether
        more exist, on every backend.
        """
        n = query_expansion
        # With promotion every page is cut from the promoted ranking (so pages never repeat or
        # skip a hit); hits from as deep as DEEP_DEPTH may move to the front, so that many more
        # are read.
        depth = pn + rn + 1 + (promotion.DEEP_DEPTH if promote else 0)
        if n > 0:
            found, rows, plain = await self._expanded_ranking(lib, vector, n, depth, tag_filter, min_score)
        else:
            result = await self._call(lib, self.backend.search(lib, vector, depth, tag_filter))
            found, rows = result.found, result.rows
            if min_score is not None:
                found = [(key, score) for key, score in found if score >= min_score]
            plain = found
        if promote:
            found = await self._promoted(lib, plain[: promotion.DEEP_DEPTH], found, query, min_score)
        return await self._page(lib, found, rows, pn, rn)

    async def _page(
        self, lib: Library, found: list[tuple[int, float]], rows: dict[int, ItemRow], pn: int, rn: int
    ) -> SearchPage:
        """Hits ``pn .. pn+rn`` of ``found`` with their rows.

        An item removed while the search ran (its row gone, e.g. a confirmed copy removed during
        the same-picture check) is left out of the ranking and the page filled from the hits
        after it, which the search read anyway: a page is never short while ``has_more`` says
        more exist.
        """
        while True:
            window = found[pn : pn + rn]
            missing = [key for key, _ in window if key not in rows]
            if missing:
                rows = {**rows, **await self._call(lib, self.backend.get_items(lib, missing))}
            gone = {key for key in missing if key not in rows}
            if not gone:
                hits = [Hit(_item(rows[key]), score) for key, score in window]
                return SearchPage(hits, has_more=len(found) > pn + rn)
            found = [hit for hit in found if hit[0] not in gone]

    async def _expanded_ranking(
        self,
        lib: Library,
        vector: np.ndarray,
        n: int,
        want: int,
        tag_filter: TagFilter | None,
        min_score: float | None,
    ) -> tuple[list[tuple[int, float]], dict[int, ItemRow], list[tuple[int, float]]]:
        """At least ``want`` hits (when there are) in query-expansion order, scored against the
        original query, the rows the searches read on the way, and the plain search's hits.

        Two searches: the plain one (its best ``n`` hits, copies of the query aside, expand the
        query; its near-duplicates lead; its scores are reused) and the expanded one. Hits the
        plain search did not reach have their score computed from their stored vector. When
        ``min_score`` leaves too few, the expanded search is asked deeper (at most
        ``MAX_DEEPENING`` times the page); the plain search's hits at or above it that even the
        deepest expanded search did not reach follow, by score.
        """
        first = await self._call(lib, self.backend.search(lib, vector, max(n + 1, want), tag_filter))
        floor = resolve(lib.row.dup_policy, lib.row.dup_min_score).min_score
        leading = qe.near_duplicate_prefix(first.found, floor)
        if len(leading) >= want or len(first.found) <= 1:  # expansion cannot change this page
            found = first.found
            if min_score is not None:
                found = [(key, score) for key, score in found if score >= min_score]
            return found, first.rows, first.found
        neighbours = await self._vectors(lib, qe.expanding_keys(first.found, n))
        expanded = qe.expanded_query(vector, list(neighbours.values()))
        query = np.asarray(vector, dtype=np.float32).ravel()
        original = dict(first.found)
        rows = dict(first.rows)
        depth = want
        while True:
            second = await self._call(lib, self.backend.search(lib, expanded, depth, tag_filter))
            rows.update(second.rows)
            unscored = [key for key, _ in second.found if key not in original]
            for key, stored in (await self._vectors(lib, unscored)).items():
                original[key] = float(np.dot(query, stored))
            found = qe.merged_ranking(leading, (key for key, _ in second.found), original, min_score)
            if len(found) >= want or len(second.found) < depth:
                return found, rows, first.found
            if depth >= want * qe.MAX_DEEPENING:
                return qe.with_unreached(found, first.found, min_score), rows, first.found
            depth *= 2

    async def _promoted(
        self,
        lib: Library,
        head: list[tuple[int, float]],
        found: list[tuple[int, float]],
        query: QueryFeatures | None,
        min_score: float | None,
    ) -> list[tuple[int, float]]:
        """``found`` with the candidates of ``head`` (the plain ranking's best) that are the
        query's picture first (:mod:`same_search.promotion`): the first DEPTH checked, and the
        rest of ``head`` screened under the stricter rule only when none of those is one."""
        if min_score is not None:
            head = [(key, score) for key, score in head if score >= min_score]
        first, deeper = head[: promotion.DEPTH], head[promotion.DEPTH :]
        stored = await self._call(lib, self.backend.local_features(lib, [key for key, _ in first]))
        verdicts = await self.verifier.judge(query, first, stored)
        if deeper and query is not None and not any(v.same for v in verdicts):
            stored = await self._call(lib, self.backend.local_features(lib, [key for key, _ in deeper]))
            verdicts = await self.verifier.judge_deep(query, deeper, stored)
        return promotion.promoted(found, [(v.key, v.score) for v in verdicts if v.same])

    async def _vectors(self, lib: Library, keys: Sequence[int]) -> dict[int, np.ndarray]:
        """Stored vectors by key, read concurrently (keys removed meanwhile are left out)."""
        read = await asyncio.gather(*(self._call(lib, self.backend.vector(lib, key)) for key in keys))
        pairs = zip(keys, read, strict=True)
        return {key: np.asarray(v, dtype=np.float32).ravel() for key, v in pairs if v is not None}

    async def same_pictures(
        self,
        lib: Library,
        vector: np.ndarray,
        query: QueryFeatures | None,
        depth: int = decision.DEPTH,
        tag_filter: TagFilter | None = None,
        min_score: float | None = None,
    ) -> list[tuple[Hit, Verdict]]:
        """The stored items judged to be the same picture as the query (possibly edited), best
        score first, among the ``depth`` best-scoring candidates.

        ``query`` comes from :meth:`query_features` (None: the query has no local features, and
        only the strict score fallback of :func:`decision.is_same_picture` can say yes). Search's
        ``same_picture``, the near-duplicate policy on add and the duplicates view share this
        decision (:mod:`same_search.verify`).
        """
        result = await self._call(lib, self.backend.search(lib, vector, depth, tag_filter))
        found = result.found
        if min_score is not None:
            found = [(key, score) for key, score in found if score >= min_score]
        stored = await self._call(lib, self.backend.local_features(lib, [key for key, _ in found]))
        verdicts = [v for v in await self.verifier.judge(query, found, stored) if v.same]
        rows = result.rows
        missing = [v.key for v in verdicts if v.key not in rows]
        if missing:
            rows = {**rows, **await self._call(lib, self.backend.get_items(lib, missing))}
        return [(Hit(_item(rows[v.key]), v.score), v) for v in verdicts if v.key in rows]

    @property
    def _keeps_local_features(self) -> bool:
        """Whether adds extract local features: configured on, and the backend stores them."""
        return self.cfg.storage.local_features and self.backend.keeps_local_features

    async def local_features(self, lib: Library, keys: Sequence[int]) -> dict[int, bytes]:
        """Stored local features by key (items without any are left out)."""
        return await self._call(lib, self.backend.local_features(lib, keys))

    async def query_features(
        self, lib: Library, image: bytes | None, contsign: ContSign | None, region: Region | None = None
    ) -> QueryFeatures | None:
        """A query's local features: from its image (only ``region`` of it, the part the search
        looks for, so that promotion never confirms a copy of what lies outside the box), else
        from the stored item it names."""
        if image is not None:
            return await self.verifier.query(image, region)
        if contsign is None:
            return None
        stored = await self._call(lib, self.backend.local_features(lib, [contsign.key]))
        return self.verifier.stored_query(stored.get(contsign.key))

    async def search_same_picture(
        self,
        lib: Library,
        vector: np.ndarray,
        query: QueryFeatures | None,
        pn: int,
        rn: int,
        tag_filter: TagFilter | None,
        min_score: float | None = None,
    ) -> SearchPage:
        """Search's ``same_picture``: results ``pn .. pn+rn`` of the hits judged the same picture.

        Verifies the :data:`decision.DEPTH` best candidates, more when the page reaches further
        (at most :data:`decision.MAX_DEPTH`).
        """
        depth = min(max(decision.DEPTH, pn + rn + 1), decision.MAX_DEPTH)
        judged = await self.same_pictures(lib, vector, query, depth, tag_filter, min_score)
        return SearchPage([hit for hit, _ in judged[pn : pn + rn]], has_more=len(judged) > pn + rn)

    # ---- management ------------------------------------------------------------------------------

    async def delete_library(self, lib: Library | Unavailable) -> None:
        """Drop a library, served or set aside: its items, thumbnails and search structure."""
        await self.rebuilds.cancel(lib.row.appid)
        try:
            await self.backend.delete_library(lib)
        except StorageError as exc:
            raise _storage_failed(exc) from exc
        self.libraries.pop(lib.row.appid, None)
        self.unavailable.pop(lib.row.appid, None)
        self._adoptions.discard(lib.row.appid)
        self.rebuilds.latest.pop(lib.row.appid, None)
        log.info("library %s deleted", lib.row.appid)

    def rebuild(self, lib: Library, reason: str) -> Rebuild:
        """Start rebuilding a library's search structure from its items in the background
        (it drops deleted slots); the running rebuild when one is under way already.

        The library keeps answering searches and accepting writes meanwhile; the state shows on
        :meth:`stats` and ``GET /api/libraries/{appid}/rebuild``.
        """
        return self.rebuilds.start(lib, reason)

    async def wait_rebuild(self, rebuild: Rebuild) -> None:
        """Until ``rebuild`` has ended (the caller going away does not cancel it)."""
        await self.rebuilds.wait(rebuild)

    def _adopt_reduction_if_due(self, lib: Library) -> None:
        """Start the switch to a reduced index once the library is large enough.

        An adoption that fails is not tried again by this process (the next start does), so a
        broken library does not rebuild after every add; one that succeeds can be due again
        later, after removals and a compaction took the library back to a full-size index."""
        appid = lib.row.appid
        if appid in self._adoptions or not self.backend.wants_reduction(lib):
            return
        running = self.rebuilds.current(appid)
        if running is not None and running.running:
            return  # a rebuild under way builds the right kind already (new_index picks it)
        self._adoptions.add(appid)
        log.info("library %s: large enough for a reduced index; switching in the background", appid)
        self.rebuilds.start(lib, ADOPTION, on_end=self._adoption_ended)

    def _adoption_ended(self, rebuild: Rebuild) -> None:
        if rebuild.state == DONE:
            self._adoptions.discard(rebuild.appid)

    async def repair(self, appid: str) -> RepairReport:
        """Drop every row of a library that cannot be loaded or served, and bring it back.

        Scans all rows (vector size, finite unit vector, tags, brief type). A served library
        loses those rows through the ordinary removal path; a set-aside one loses them, then it
        is loaded again: on success it serves, otherwise it stays aside with the new reason
        (err_no 6). Nothing is dropped automatically at start: the operator decides (a backup
        may hold the good rows).
        """
        async with self._repair_lock:
            target = await self.get_any(appid)
            try:
                bad = await self.backend.bad_rows(target.row)
            except StorageError as exc:
                raise _storage_failed(exc) from exc
            dropped = [(ContSign.from_key(key), problem) for key, problem in bad]
            if isinstance(target, Library):
                if dropped:
                    await self.remove(target, [contsign for contsign, _ in dropped])
                    log.warning("library %s: repair dropped %d rows: %s", appid, len(bad), bad_rows_text(bad))
                return RepairReport(appid, dropped, restored=False)
            if bad:
                try:
                    await self.backend.drop_rows(target.row, [key for key, _ in bad])
                except StorageError as exc:
                    raise _storage_failed(exc) from exc
            try:
                lib = await self.backend.load_library(target.row)
            except Exception as exc:
                reason = load_failure_reason(exc)
                self._set_aside(target.row, reason)
                raise ApiError(
                    ErrNo.BS_UNAVAILABLE,
                    f"library {appid!r} is still unavailable after dropping {len(bad)} rows: {reason}",
                ) from exc
            self.unavailable.pop(appid, None)
            self.libraries[appid] = lib
            log.warning(
                "library %s repaired: %d rows dropped, serving again with %d items",
                appid,
                len(bad),
                await self.count(lib),
            )
            return RepairReport(appid, dropped, restored=True)

    async def import_items(
        self, appid: str, batches: AsyncIterator[Sequence[NewItem]], fingerprint: str | None = None
    ) -> tuple[Library, int, int]:
        """Store already validated items with their vectors; (library, imported, duplicates).

        The library is created when missing. On the local backend one database transaction holds
        every row (and the library when the import creates it), so a failure leaves nothing
        behind; on Milvus batches are upserted one by one (docs/scale-out.md). Shielded: once
        storing starts, the index must follow it even if the caller goes away.
        """
        return await asyncio.shield(self._import_items(appid, batches, fingerprint))

    def import_models(self, appid: str) -> dict[str, int]:
        """Fingerprint -> dimension of the vectors an export import into ``appid`` may hold:
        the library's own model when it exists, else any model served."""
        lib = self.libraries.get(appid)
        if lib is not None:
            return {lib.row.fingerprint: lib.row.dim}
        return {fingerprint: served.info.dim for fingerprint, served in self.models.served.items()}

    async def embed_item(self, lib: Library, image: bytes, brief: bytes, tags: Tags | None) -> NewItem:
        """An image made ready to store in a batch (:meth:`store_batch`): embedded, with its
        thumbnail and local features, checked as :meth:`store_vector` checks; err_no 101
        (:class:`DuplicateAdd`) when its contsign is stored already, before any embedding."""
        contsign = ContSign.of_image(image)
        await self._refuse_duplicate(lib, contsign)
        problem = tags_problem(tags)
        if problem is not None:
            raise bad_request(problem)
        if not isinstance(brief, bytes) or len(brief) > self.cfg.limits.brief_max_bytes:
            raise bad_request(f"brief must be at most {self.cfg.limits.brief_max_bytes} bytes")
        embed = self.embed_for(lib)
        vector, thumbnail, local = await self._embed_picture(embed, image)
        if embed.info.fingerprint != lib.row.fingerprint:  # a re-embed switched the library meanwhile
            embed = self.embed_for(lib)
            vector, thumbnail, local = await self._embed_picture(embed, image)
        problem = vector_problem(np.asarray(vector), lib.row.dim)
        if problem is not None:
            raise ApiError(ErrNo.INTERNAL, f"refusing to store contsign {contsign}: {problem}")
        vector_bytes = np.asarray(vector, dtype="<f4").tobytes()
        return NewItem(
            contsign.key,
            brief,
            tags,
            vector_bytes,
            original=image if self.keeps_originals else None,
            thumbnail=thumbnail,
            local_features=local,
        )

    async def store_batch(self, lib: Library, items: Sequence[NewItem]) -> tuple[int, int]:
        """Store embedded items (:meth:`embed_item`) as one batch: one database transaction and
        one graph insert per ``LIVE_BATCH`` rows instead of one of each per item (import jobs);
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
            self._import_items(lib.row.appid, one_batch(), lib.row.fingerprint, create=False)
        )
        return stored, duplicates + len(items) - len(unique)

    async def _import_items(
        self,
        appid: str,
        batches: AsyncIterator[Sequence[NewItem]],
        fingerprint: str | None,
        create: bool = True,
    ) -> tuple[Library, int, int]:
        capacity = self.cfg.limits.library_capacity
        if appid in self.unavailable:
            raise self._unavailable_error(appid)
        try:
            target: Library | NewLibrary = await self.get(appid)
        except ApiError as exc:
            if exc.err_no != ErrNo.NOT_SIGNED_UP or not create:
                raise
            embed = self.embed if fingerprint is None else self.models.for_fingerprint(fingerprint)
            if embed is None:
                raise bad_request(
                    f"no model served here makes vectors of fingerprint {fingerprint}"
                ) from None
            info = embed.info
            target = NewLibrary(appid, info.model_id, info.dim, info.fingerprint)
        held = target.fingerprint if isinstance(target, NewLibrary) else target.row.fingerprint
        if fingerprint is not None and held != fingerprint:
            raise bad_request(
                f"library {appid!r} holds vectors of fingerprint {held}, the export's are "
                f"{fingerprint}: not comparable"
            )
        try:
            if isinstance(target, NewLibrary):
                async with self._signup_lock:  # a signup meanwhile gets 104
                    lib, imported, duplicates = await self.backend.import_items(target, batches, capacity)
                    self.libraries[appid] = lib
                log.info("library %s created by an import of %d items", appid, imported)
            else:
                if fingerprint is not None:
                    batches = _while_on_model(target, fingerprint, batches)
                lib, imported, duplicates = await self._call(
                    target, self.backend.import_items(target, batches, capacity)
                )
                self._adopt_reduction_if_due(lib)
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
            raise _storage_failed(exc) from exc
        except IndexingFailed as exc:
            # The index no longer matches the stored rows: set aside (named, repairable), not served.
            self.libraries.pop(appid, None)
            self._set_aside(exc.row, load_failure_reason(exc.cause))
            raise ApiError(
                ErrNo.INTERNAL,
                f"the import was stored but could not be indexed: {load_failure_reason(exc.cause)}",
            ) from exc
        return lib, imported, duplicates

    # ---- re-embedding (an extension: a library moved to another model from its kept originals) ---

    @property
    def reembed_ledger(self) -> Any:
        """Where re-embed jobs are recorded; err_no 1 on a backend that cannot re-embed."""
        if not self.backend.can_reembed:
            raise bad_request(f"re-embedding needs the local backend; this daemon uses {self.backend.name}")
        return self.backend.reembed_ledger

    async def reembed_target(self, lib: Library, model: str | None) -> EmbedService:
        """The model a re-embed of ``lib`` would move it to, after every refusal (err_no 1): no
        model named, the one it already has, originals not kept, items without an original."""
        if not self.backend.can_reembed:
            raise bad_request(f"re-embedding needs the local backend; this daemon uses {self.backend.name}")
        if not isinstance(model, str) or not model:
            known = ", ".join(self.models.profile_names())
            raise bad_request(f"model is required: the name of a model profile ({known})")
        embed = self.model_named(model)
        if embed.info.fingerprint == lib.row.fingerprint:
            raise bad_request(
                f"library {lib.row.appid!r} is already on model {model!r} (fingerprint {lib.row.fingerprint})"
            )
        if not self.keeps_originals:
            raise bad_request(
                "re-embedding rebuilds a library from its kept originals: set [storage] keep_originals "
                "= true (items added before that have none)"
            )
        missing = await self._call(lib, self.backend.items_without_original(lib))
        if missing:
            total = await self.count(lib)
            raise bad_request(
                f"library {lib.row.appid!r} has {missing} of {total} items without a kept original "
                "(added before keep_originals was on, added with a region, or imported without "
                "originals): add those images again (or remove them) before re-embedding"
            )
        return embed

    async def read_original(self, sha256: str) -> bytes:
        """A kept original's bytes (err_no 11 when its file cannot be read)."""
        try:
            return await self.backend.read_original(sha256)
        except StorageError as exc:
            raise _storage_failed(exc) from exc

    async def reembed_pending(
        self, lib: Library, limit: int, after_seq: int = 0
    ) -> list[tuple[int, str | None, int]]:
        """(key, original) of items that have no vector of the new model yet, oldest first."""
        return await self._call(lib, self.backend.reembed_pending(lib, limit, after_seq))

    async def save_reembedded(self, lib: Library, vectors: Sequence[tuple[int, np.ndarray]]) -> None:
        """Keep new-model vectors until the switch (persisted: a restart resumes after them)."""
        await self._call(lib, self.backend.save_reembedded(lib, vectors))

    async def switch_model(self, lib: Library, job: ReembedJobRow, catch_up: Any) -> None:
        """Move ``lib`` to the job's model in one transaction, then serve the new index."""
        await self._call(lib, self.backend.switch_model(lib, job, catch_up))
        log.info(
            "library %s now serves model %s (fingerprint %s)",
            lib.row.appid,
            lib.row.model_id,
            lib.row.fingerprint,
        )

    async def items_page(self, lib: Library, offset: int, limit: int) -> list[tuple[Item, float, float]]:
        """(item, created_at, updated_at) in insertion order."""
        rows = await self._call(lib, self.backend.page_items(lib, offset, limit))
        return [(_item(row), row.created_at, row.updated_at) for row in rows]

    async def items(self, lib: Library, keys: list[int]) -> dict[int, Item]:
        """Stored items by key (absent keys are left out)."""
        rows = await self._call(lib, self.backend.get_items(lib, keys))
        return {key: _item(row) for key, row in rows.items()}

    async def nearest(self, lib: Library, vector: np.ndarray, k: int) -> list[tuple[int, float]]:
        """The ``k`` nearest stored items as (key, score), best first, no filter, no paging."""
        return (await self._call(lib, self.backend.search(lib, vector, k, None))).found

    async def item(self, lib: Library, contsign: ContSign) -> tuple[Item, float, float] | None:
        """One item with its timestamps, or None."""
        rows = await self._call(lib, self.backend.get_items(lib, [contsign.key]))
        row = rows.get(contsign.key)
        return None if row is None else (_item(row), row.created_at, row.updated_at)

    async def thumbnail(self, lib: Library, contsign: ContSign) -> bytes | None:
        """The small JPEG stored with an item, if any."""
        return await self._call(lib, self.backend.thumbnail(lib, contsign.key))

    async def read_originals(self, shas: Sequence[str]) -> AsyncIterator[tuple[str, bytes]]:
        """Kept originals by sha256, one at a time (export)."""
        for sha in shas:
            yield sha, await self.read_original(sha)

    async def export_items(self, lib: Library) -> AsyncIterator[list[tuple[Item, np.ndarray]]]:
        """Every item with its vector, in insertion order, in chunks of (Item, vector)."""
        async for chunk in self.backend.export_items(lib):
            yield [(_item(row), vector) for row, vector in chunk]

    async def all_stats(self) -> list[dict]:
        """Every library, served ones first, then those set aside (with their reason)."""
        served = [await self.stats(lib) for lib in await self.all()]
        return served + [self.unavailable_stats(aside) for aside in self.unavailable.values()]

    def unavailable_stats(self, aside: Unavailable) -> dict:
        """What the management API reports about a library set aside at start."""
        return {
            "appid": aside.row.appid,
            "status": "unavailable",
            "reason": aside.reason,
            "items": None,
            "model": aside.row.model_id,
            "dim": aside.row.dim,
            "fingerprint": aside.row.fingerprint,
            "created": aside.row.created_at,
        }

    async def stats(self, lib: Library) -> dict:
        """What the management API reports about one library."""
        return {
            "appid": lib.row.appid,
            "status": "ok",
            "items": await self.count(lib),
            "capacity": self.cfg.limits.library_capacity,
            "model": lib.row.model_id,
            # The model profile serving it (an extension; None when none does).
            "model_name": self.models.name_of(lib.row.fingerprint),
            "dim": lib.row.dim,
            "fingerprint": lib.row.fingerprint,
            "created": lib.row.created_at,
            "backend": self.backend.name,
            **self.backend.describe(lib),
            "dup_policy": lib.row.dup_policy,
            "dup_min_score": lib.row.dup_min_score
            if lib.row.dup_min_score is not None
            else DEFAULT_MIN_SCORE,
            # The built-in floor for candidates the same-picture check confirms (None when the
            # library sets its own floor, which then applies to every candidate).
            "dup_verified_min_score": resolve(lib.row.dup_policy, lib.row.dup_min_score).verified_min_score,
            "rebuild": self.rebuild_state(lib.row.appid),
        }

    def rebuild_state(self, appid: str) -> dict | None:
        """The library's running rebuild, else its last one since the start, else None."""
        rebuild = self.rebuilds.current(appid)
        return None if rebuild is None else rebuild.to_json()

    async def snapshot(self, lib: Library) -> dict[str, int]:
        """The spec's snapshot block for one library."""
        return {
            "tag": 0,
            "index_size": await self.count(lib),
            "index_capacity": self.cfg.limits.library_capacity,
            "queue_size": self.embed_for(lib).queue_size,
        }

    async def census(self) -> list[LibraryCensus]:
        """Per-library figures for /metrics, read at scrape time."""
        found = []
        for lib in list(self.libraries.values()):
            try:
                items = await self.count(lib)
            except ApiError:
                continue  # deleted meanwhile
            found.append(LibraryCensus(lib.row.appid, items, self.backend.describe(lib)["last_index_save"]))
        return found

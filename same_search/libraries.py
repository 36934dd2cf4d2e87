"""Library logic: the layer between routes and the embedder, the index and the store.

Writes go to SQLite first and to the index only after the commit, under the library's write
lock, so the index never holds something the database does not, and a crash between the two
is repaired at start-up by replaying rows newer than the index snapshot.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from same_search.config import Config
from same_search.contsign import ContSign
from same_search.embed.images import Region
from same_search.embed.service import EmbedService
from same_search.errors import ApiError, ErrNo, bad_request
from same_search.index import snapshot
from same_search.index.hnsw import HnswIndex
from same_search.index.library_index import LibraryIndex, key_to_label
from same_search.index.vectors import row_problems, vector_problem
from same_search.near_duplicates import DEFAULT_MIN_SCORE, OFF, DupPolicy, Query, select
from same_search.rows import bad_rows_text, load_failure_reason, raw_item_problems, tags_problem
from same_search.store.db import (
    AlreadyExists,
    BadRows,
    BulkResult,
    ItemRow,
    LibraryRow,
    NewItem,
    NewLibrary,
    StorageError,
    Store,
    TooManyItems,
)
from same_search.verify import decision
from same_search.verify.service import QueryFeatures, SamePictureService, Verdict

log = logging.getLogger(__name__)

#: Seconds between progress lines of a long index rebuild or replay.
REPLAY_LOG_S = 15.0
#: Rows per graph insert when a library that serves takes a bulk import. Each insert holds the
#: index thread, which every library's searches share, so it is kept small: a search waits for
#: at most one such batch (HNSW inserts at 1280-d cost milliseconds each).
LIVE_BATCH = 128
#: Rows a repair reports one by one (all of them are dropped).
REPAIR_REPORT_MAX = 1000

Tags = tuple[int, int]
#: Nearest items offered to the near-duplicate decision (more than it reports: a verifier may drop some).
NEAR_DUPLICATE_CANDIDATES = 32


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


class ModelMismatch(RuntimeError):
    """A library was built with another model than the one serving; never mix vectors."""


@dataclass(frozen=True)
class Item:
    """A stored image as clients see it."""

    contsign: ContSign
    brief: bytes
    tags: Tags | None


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
class TagFilter:
    """Search only items carrying all (``match_all``) or any of the non-zero ``tags``."""

    tags: Tags
    match_all: bool

    @property
    def active(self) -> bool:
        return any(self.tags)


@dataclass
class Library:
    """A signed-up appid with its index."""

    row: LibraryRow
    index: LibraryIndex


@dataclass(frozen=True)
class Unavailable:
    """A library whose index could not be built from its rows (at start, or after an import
    that could not be indexed): set aside, named, not served, until repaired or deleted."""

    row: LibraryRow
    reason: str


@dataclass(frozen=True)
class RepairReport:
    """What a repair dropped, and whether it brought a set-aside library back."""

    appid: str
    dropped: list[tuple[ContSign, str]]
    restored: bool


def _item(row: ItemRow) -> Item:
    return Item(ContSign.from_key(row.key), row.brief, row.tags)


async def _nothing() -> None:
    return None


def _storage_failed(exc: StorageError) -> ApiError:
    return ApiError(ErrNo.INTERNAL, f"storage write failed, nothing was changed: {exc}")


class LibraryService:
    """Every library of the daemon and the operations the API offers on them."""

    def __init__(self, cfg: Config, store: Store, embed: EmbedService) -> None:
        self.cfg = cfg
        self.store = store
        self.embed = embed
        self.index_dir = cfg.data_path / "indexes"
        self.libraries: dict[str, Library] = {}
        self._index_pool = ThreadPoolExecutor(1, thread_name_prefix="index")
        self._save_pool = ThreadPoolExecutor(1, thread_name_prefix="index-save")
        self._signup_lock = asyncio.Lock()
        #: Libraries whose rows could not be loaded at start, by appid: named, not served.
        self.unavailable: dict[str, Unavailable] = {}
        self._repair_lock = asyncio.Lock()
        self.verifier = SamePictureService(embed.limits)

    # ---- lifecycle -----------------------------------------------------------------------------

    async def open(self) -> None:
        """Load every library's index: snapshot plus replay, or a rebuild from SQLite."""
        info = self.embed.info
        rows = await self.store.libraries()
        for row in rows:
            if row.fingerprint != info.fingerprint or row.dim != info.dim:
                raise ModelMismatch(
                    f"library {row.appid!r} holds vectors of model {row.model_id} "
                    f"(fingerprint {row.fingerprint}, dim {row.dim}) but this daemon serves {info.model_id} "
                    f"(fingerprint {info.fingerprint}, dim {info.dim}). Start with the [model] "
                    "settings the library was built with, or point --data-dir at a new directory "
                    "and add the images again."
                )
        for row in rows:
            started = time.monotonic()
            try:
                index = await self._load_index(row)
            except Exception as exc:  # one library's rows must never stop the others from serving
                self._set_aside(row, load_failure_reason(exc))
                continue
            self.libraries[row.appid] = Library(row, index)
            log.info(
                "library %s ready: %d items in %.2fs", row.appid, index.count(), time.monotonic() - started
            )

    def _set_aside(self, row: LibraryRow, reason: str) -> None:
        self.unavailable[row.appid] = Unavailable(row, reason)
        log.error(
            "library %s is UNAVAILABLE, every other library serves: %s. Its rows are untouched; "
            "POST /api/libraries/%s/repair drops the rows that cannot be loaded and brings it back",
            row.appid,
            reason,
            row.appid,
        )

    async def _load_index(self, row: LibraryRow) -> LibraryIndex:
        """The saved graph brought up to date with the database, or else a rebuild from it.

        A snapshot's graph holds exactly the items stored up to its seq: removals after that seq
        are marked deleted in it, then the rows inserted after it are added. Anything wrong with
        the snapshot (missing, corrupt, inconsistent) costs a rebuild, never a failed start.
        Rows that cannot be loaded or served raise :class:`BadRows` (the caller sets the library
        aside): tags are checked first, vectors as they are replayed.
        """
        bad_tags = await self.store.rows_with_bad_tags(row.id)
        if bad_tags:
            raise BadRows(bad_tags)
        count = await self.store.count(row.id)
        try:
            index, removed = await self._open_snapshot(row)
            replayed = await self._replay(index, row)
            if index.count() != count:
                raise snapshot.SnapshotInvalid(f"{index.count()} items after replay, database has {count}")
        except Exception as exc:
            log.warning(
                "library %s: index snapshot not usable (%s); rebuilding from the database", row.appid, exc
            )
            index = LibraryIndex.empty(row.dim, self.cfg.index, self._index_pool, capacity=max(count, 16))
            await self._replay(index, row, count)
            return index
        if replayed or removed:
            log.info(
                "library %s: replayed %d adds, %d removals after the snapshot",
                row.appid,
                replayed,
                len(removed),
            )
        return index

    async def _replay(
        self, index: LibraryIndex, row: LibraryRow, total: int | None = None, live: bool = False
    ) -> int:
        """Add the rows inserted after the index's seq; returns how many.

        Every chunk is checked first: a row that is not a finite unit vector of the library's
        dimension raises :class:`BadRows` naming it, before anything of that chunk is indexed.
        ``live``: the index is already serving, so inserts go through its own thread in batches
        of ``LIVE_BATCH``. A long replay (a rebuild of a large library takes minutes) logs its
        progress every ``REPLAY_LOG_S`` seconds, so an operator watching the log knows it is alive.
        """
        replayed = 0
        started = last_log = time.monotonic()
        chunk = LIVE_BATCH if live else 4096
        async for chunk_keys, vectors, seq in self.store.vectors_since(row.id, index.seq, row.dim, chunk):
            bad = row_problems(vectors, row.dim)
            if bad:
                raise BadRows([(int(chunk_keys[i]), problem) for i, problem in bad])
            if live:
                await index.add_batch(chunk_keys, vectors, seq)
            else:
                await asyncio.to_thread(index.add_now, chunk_keys, vectors, seq)
            replayed += len(chunk_keys)
            now = time.monotonic()
            if now - last_log >= REPLAY_LOG_S:
                last_log = now
                rate = replayed / (now - started)
                left = f", about {(total - replayed) / rate:.0f}s left" if total and rate > 0 else ""
                of = f" of {total:,}" if total else ""
                log.info(
                    "library %s: indexed %s%s items (%.0f/s%s)", row.appid, f"{replayed:,}", of, rate, left
                )
        index.seq = max(index.seq, self.store.seq)
        return replayed

    async def _open_snapshot(self, row: LibraryRow) -> tuple[LibraryIndex, list[int]]:
        """The verified snapshot graph with later removals applied; (index, removed keys)."""
        header = snapshot.read_header(self.index_dir, row.id, row.fingerprint, row.dim)
        in_graph = {key_to_label(k) for k in await self.store.keys(row.id, max_seq=header.seq)}
        graph_path, _ = snapshot.paths(self.index_dir, row.id)
        graph = await asyncio.to_thread(
            HnswIndex.load, graph_path, row.dim, self.cfg.index.ef_search, in_graph
        )
        removed = await self.store.removals_since(row.id, header.seq)
        graph.forget(np.array([key_to_label(k) for k in removed], dtype=np.uint64))
        index = LibraryIndex(graph, self.cfg.index, header.seq, self._index_pool)
        index.saved_seq, index.saved_at = header.seq, header.saved_at
        return index, removed

    async def save_indexes(self, only_dirty: bool = True) -> int:
        """Snapshot every (changed) library; returns how many were written."""
        saved = 0
        for lib in list(self.libraries.values()):
            if only_dirty and not lib.index.dirty:
                continue
            async with lib.index.write_lock:
                started = time.monotonic()
                saving = asyncio.get_running_loop().run_in_executor(
                    self._save_pool, lib.index.save_now, self.index_dir, lib.row.id, lib.row.fingerprint
                )
                try:
                    await asyncio.shield(saving)
                except asyncio.CancelledError:
                    await saving  # keep writers out until the file is complete, then stop
                    raise
                finally:
                    if saving.done() and not saving.cancelled() and saving.exception() is None:
                        log.info(
                            "library %s: index saved (%d items, %.2fs)",
                            lib.row.appid,
                            lib.index.count(),
                            time.monotonic() - started,
                        )
            saved += 1
        return saved

    async def close(self) -> None:
        """Save changed indexes and stop the index threads.

        A failed save (disk full, say) is logged, not raised: snapshots only shorten the next
        start, which replays or rebuilds from the database; nothing acknowledged depends on them.
        """
        try:
            await self.save_indexes()
        except Exception:
            log.exception(
                "could not save the indexes at shutdown; the next start rebuilds them from the database"
            )
        finally:
            self._index_pool.shutdown(wait=True)
            self._save_pool.shutdown(wait=True)
            self.verifier.close()

    # ---- libraries -------------------------------------------------------------------------------

    def get(self, appid: str) -> Library:
        """A signed-up library; err_no 6 if it is set aside as unavailable, 103 if there is none."""
        lib = self.libraries.get(appid)
        if lib is None:
            if appid in self.unavailable:
                raise self._unavailable_error(appid)
            raise ApiError(ErrNo.NOT_SIGNED_UP, f"appid {appid!r} has not signed up")
        return lib

    def _unavailable_error(self, appid: str) -> ApiError:
        return ApiError(
            ErrNo.BS_UNAVAILABLE,
            f"library {appid!r} is unavailable: {self.unavailable[appid].reason}. The operator can "
            f"drop the rows that cannot be loaded with POST /api/libraries/{appid}/repair",
        )

    async def signup(self, appid: str) -> Library:
        """Create a library for the serving model; err_no 104 if it exists."""
        async with self._signup_lock:
            if appid in self.libraries or appid in self.unavailable:
                raise ApiError(ErrNo.ALREADY_SIGNED_UP, f"appid {appid!r} already signed up")
            info = self.embed.info
            try:
                row = await self.store.create_library(appid, info.model_id, info.dim, info.fingerprint)
            except AlreadyExists as exc:
                raise ApiError(ErrNo.ALREADY_SIGNED_UP, f"appid {appid!r} already signed up") from exc
            except StorageError as exc:
                raise _storage_failed(exc) from exc
            lib = Library(row, LibraryIndex.empty(info.dim, self.cfg.index, self._index_pool))
            self.libraries[appid] = lib
            log.info("library %s signed up (model %s, dim %d)", appid, info.model_id, info.dim)
            return lib

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
        # Local features of the whole picture (same-picture checks) are extracted alongside the
        # forward pass.
        (vector, thumbnail), local = await asyncio.gather(
            self.embed.embed_with_thumbnail(image, self.cfg.storage.thumbnail_side, region),
            self.verifier.extract(image) if self.cfg.storage.local_features else _nothing(),
        )
        # Shielded: once the row is being committed, the index must follow even if the caller is
        # cancelled (client gone, shutdown), or index and database would disagree until a restart.
        close = await asyncio.shield(
            self.store_vector(
                lib, contsign, brief, tags, vector, thumbnail, policy, Query(vector, image), local
            )
        )
        return AddResult(contsign, close)

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
    ) -> list[Hit]:
        """Commit an item with an already computed vector, then index it (``add`` and imports).

        The last check before the database: a vector that is not a finite unit vector of the
        library's dimension, tags outside uint32 or an over-long brief are refused here, whatever
        path they came by, so no stored row can later keep the library from loading. The
        near-duplicate check runs under the write lock, so two close images added at once cannot
        both pass it. Returns the near-duplicates found (always empty when ``policy`` is off).
        """
        problem = vector_problem(np.asarray(vector), lib.row.dim)
        if problem is not None:
            raise ApiError(ErrNo.INTERNAL, f"refusing to store contsign {contsign}: {problem}")
        problem = tags_problem(tags)
        if problem is not None:
            raise bad_request(problem)
        if not isinstance(brief, bytes) or len(brief) > self.cfg.limits.brief_max_bytes:
            raise bad_request(f"brief must be at most {self.cfg.limits.brief_max_bytes} bytes")
        async with lib.index.write_lock:
            capacity = self.cfg.limits.library_capacity
            if capacity and lib.index.count() >= capacity:
                raise ApiError(ErrNo.INTERNAL, f"library {lib.row.appid!r} is full ({capacity} items)")
            close = await self._near_duplicates(lib, query or Query(vector), policy, local_features)
            if close and policy.rejects:
                raise NearDuplicateAdd(close)
            try:
                seq = await self.store.add_item(
                    lib.row.id, contsign.key, brief, tags, vector, thumbnail, local_features
                )
            except AlreadyExists:
                await self._refuse_duplicate(lib, contsign)
                raise
            except StorageError as exc:
                raise _storage_failed(exc) from exc
            await lib.index.add(contsign.key, vector, seq)
        return close

    async def _near_duplicates(
        self, lib: Library, query: Query, policy: DupPolicy, local_features: bytes | None = None
    ) -> list[Hit]:
        """Stored items the policy's decision calls near-duplicates of ``query``, best first.

        Candidates above the policy's score floor are also verified as the same picture when both
        sides have local features (:mod:`same_search.verify`): a look-alike above the floor is not
        a near-duplicate. Candidates without local features keep the floor alone.
        """
        if not policy.active or lib.index.count() == 0:
            return []
        found = await lib.index.search(query.vector, min(lib.index.count(), NEAR_DUPLICATE_CANDIDATES))
        chosen = select(query, found, policy)
        if chosen and local_features is not None:
            stored = await self.store.local_features(lib.row.id, [c.key for c in chosen])
            features = self.verifier.stored_query(local_features)
            verdicts = await self.verifier.judge(features, [(c.key, c.score) for c in chosen], stored)
            kept = {v.key for v in verdicts if v.same or v.evidence is None}
            chosen = [c for c in chosen if c.key in kept]
        rows = await self.store.get_items(lib.row.id, [c.key for c in chosen])
        return [Hit(_item(rows[c.key]), c.score) for c in chosen if c.key in rows]

    async def set_dup_policy(self, lib: Library, mode: str, min_score: float | None) -> None:
        """Store a library's default near-duplicate policy (``min_score`` None: the built-in floor)."""
        try:
            await self.store.set_dup_policy(lib.row.id, mode, min_score)
        except StorageError as exc:
            raise _storage_failed(exc) from exc
        lib.row = dataclasses.replace(lib.row, dup_policy=mode, dup_min_score=min_score)

    async def _refuse_duplicate(self, lib: Library, contsign: ContSign) -> None:
        row = await self.store.get_item(lib.row.id, contsign.key)
        if row is not None:
            raise DuplicateAdd(_item(row))

    async def update(self, lib: Library, contsign: ContSign, brief: bytes | None, tags: Tags | None) -> None:
        """Replace brief and/or tags; err_no 102 if the item is not stored."""
        try:
            found = await self.store.update_item(lib.row.id, contsign.key, brief, tags)
        except StorageError as exc:
            raise _storage_failed(exc) from exc
        if not found:
            raise ApiError(ErrNo.UPDATE_MISSING, f"contsign {contsign} is not in library {lib.row.appid!r}")

    async def remove(self, lib: Library, contsigns: list[ContSign]) -> int:
        """Remove items (absent ones are ignored); returns how many were removed."""
        return await asyncio.shield(self._remove(lib, contsigns))

    async def _remove(self, lib: Library, contsigns: list[ContSign]) -> int:
        async with lib.index.write_lock:
            try:
                removed, seq = await self.store.remove_items(lib.row.id, [c.key for c in contsigns])
            except StorageError as exc:
                raise _storage_failed(exc) from exc
            if removed:
                await lib.index.delete(removed, seq)
        return len(removed)

    async def vector_of(self, lib: Library, contsign: ContSign) -> np.ndarray:
        """The stored vector of an item (search by contsign); err_no 1 if it is not stored."""
        if lib.index.graph.contains(key_to_label(contsign.key)):
            try:
                return (await lib.index.vectors_of([contsign.key]))[0]
            except (KeyError, RuntimeError):  # removed between the check and the read: not stored
                pass
        raise ApiError(ErrNo.BAD_REQUEST, f"contsign {contsign} is not in library {lib.row.appid!r}")

    async def search(
        self,
        lib: Library,
        vector: np.ndarray,
        pn: int,
        rn: int,
        tag_filter: TagFilter | None,
        min_score: float | None = None,
    ) -> SearchPage:
        """Results ``pn .. pn+rn`` by descending cosine similarity (only those >= ``min_score``)."""
        candidates = None
        total = lib.index.count()
        if tag_filter is not None and tag_filter.active:
            candidates = await self.store.keys_with_tags(lib.row.id, tag_filter.tags, tag_filter.match_all)
            total = len(candidates)
        # With a score floor, one result past the page tells whether more qualify.
        depth = min(pn + rn + (1 if min_score is not None else 0), total)
        found = await lib.index.search(vector, depth, candidates) if depth > pn else []
        if min_score is not None:
            found = [(key, score) for key, score in found if score >= min_score]
            total = len(found)
        window = found[pn : pn + rn]
        rows = await self.store.get_items(lib.row.id, [key for key, _ in window])
        hits = [Hit(_item(rows[key]), score) for key, score in window if key in rows]
        return SearchPage(hits, has_more=total > pn + rn)

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
        only the strict score fallback of :func:`decision.is_same_picture` can say yes). This is
        the one decision search's ``same_picture`` and a near-duplicate policy on add share.
        """
        candidates = None
        total = lib.index.count()
        if tag_filter is not None and tag_filter.active:
            candidates = await self.store.keys_with_tags(lib.row.id, tag_filter.tags, tag_filter.match_all)
            total = len(candidates)
        depth = min(depth, total)
        found = await lib.index.search(vector, depth, candidates) if depth > 0 else []
        if min_score is not None:
            found = [(key, score) for key, score in found if score >= min_score]
        stored = await self.store.local_features(lib.row.id, [key for key, _ in found])
        verdicts = [v for v in await self.verifier.judge(query, found, stored) if v.same]
        rows = await self.store.get_items(lib.row.id, [v.key for v in verdicts])
        return [(Hit(_item(rows[v.key]), v.score), v) for v in verdicts if v.key in rows]

    async def query_features(
        self, lib: Library, image: bytes | None, contsign: ContSign | None
    ) -> QueryFeatures | None:
        """A query's local features: from its image, else from the stored item it names."""
        if image is not None:
            return await self.verifier.query(image)
        if contsign is None:
            return None
        stored = await self.store.local_features(lib.row.id, [contsign.key])
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
        """Drop a library, served or set aside: its rows, its thumbnails and its index files."""
        lock = lib.index.write_lock if isinstance(lib, Library) else self._repair_lock
        async with lock:
            try:
                await self.store.delete_library(lib.row.id)
            except StorageError as exc:
                raise _storage_failed(exc) from exc
            self.libraries.pop(lib.row.appid, None)
            self.unavailable.pop(lib.row.appid, None)
            for path in snapshot.paths(self.index_dir, lib.row.id):
                path.unlink(missing_ok=True)
        log.info("library %s deleted", lib.row.appid)

    async def stored_count(self, lib: Library | Unavailable) -> int:
        """Rows of a library in the database (also for one set aside, whose index is not loaded)."""
        return await self.store.count(lib.row.id)

    def get_any(self, appid: str) -> Library | Unavailable:
        """A library whether it serves or is set aside (deleting, listing); err_no 103 otherwise."""
        found = self.libraries.get(appid) or self.unavailable.get(appid)
        if found is None:
            raise ApiError(ErrNo.NOT_SIGNED_UP, f"appid {appid!r} has not signed up")
        return found

    async def repair(self, appid: str) -> RepairReport:
        """Drop every row of a library that cannot be loaded or served, and bring it back.

        Scans all rows (vector blob size, finite unit vector, tags, brief type). A served library
        loses those rows through the ordinary removal path; a set-aside one loses them, then its
        index is loaded again: on success it serves, otherwise it stays aside with the new reason
        (err_no 6). Nothing is dropped automatically at start: the operator decides (a backup
        may hold the good rows).
        """
        async with self._repair_lock:
            target = self.get_any(appid)
            bad: list[tuple[int, str]] = []
            async for chunk in self.store.raw_items(target.row.id):
                bad += raw_item_problems(chunk, target.row.dim)
            dropped = [(ContSign.from_key(key), problem) for key, problem in bad]
            if isinstance(target, Library):
                if dropped:
                    await self.remove(target, [contsign for contsign, _ in dropped])
                    log.warning("library %s: repair dropped %d rows: %s", appid, len(bad), bad_rows_text(bad))
                return RepairReport(appid, dropped, restored=False)
            if bad:
                try:
                    await self.store.remove_items(target.row.id, [key for key, _ in bad])
                except StorageError as exc:
                    raise _storage_failed(exc) from exc
            try:
                index = await self._load_index(target.row)
            except Exception as exc:
                reason = load_failure_reason(exc)
                self._set_aside(target.row, reason)
                raise ApiError(
                    ErrNo.BS_UNAVAILABLE,
                    f"library {appid!r} is still unavailable after dropping {len(bad)} rows: {reason}",
                ) from exc
            self.unavailable.pop(appid, None)
            self.libraries[appid] = Library(target.row, index)
            log.warning(
                "library %s repaired: %d rows dropped, serving again with %d items",
                appid,
                len(bad),
                index.count(),
            )
            return RepairReport(appid, dropped, restored=True)

    async def import_items(
        self, appid: str, batches: AsyncIterator[Sequence[NewItem]]
    ) -> tuple[Library, int, int]:
        """Store already validated items with their vectors, all or nothing; (library, imported, duplicates).

        One database transaction holds every row (and the library itself when the import creates
        it), so a failure or a crash leaves nothing behind. Once committed, the rows enter the
        index in batches of ``LIVE_BATCH``, one graph insert each. Shielded: once the commit
        starts, the index must follow it even if the caller goes away.
        """
        return await asyncio.shield(self._import_items(appid, batches))

    async def _import_items(
        self, appid: str, batches: AsyncIterator[Sequence[NewItem]]
    ) -> tuple[Library, int, int]:
        capacity = self.cfg.limits.library_capacity
        lib = self.libraries.get(appid)
        if lib is None:
            async with self._signup_lock:
                if appid in self.unavailable:
                    raise self._unavailable_error(appid)
                created = None
                if appid not in self.libraries:
                    info = self.embed.info
                    new = NewLibrary(appid, info.model_id, info.dim, info.fingerprint)
                    created = await self._insert(new, batches, capacity)
            if created is not None:
                # Built outside the signup lock: the row exists, so a signup meanwhile gets 104.
                index = LibraryIndex.empty(
                    created.library.dim, self.cfg.index, self._index_pool, capacity=max(created.inserted, 16)
                )
                await self._index_committed(index, created.library, live=False)
                lib = Library(created.library, index)
                self.libraries[appid] = lib
                log.info("library %s created by an import of %d items", appid, created.inserted)
                return lib, created.inserted, created.duplicates
            lib = self.get(appid)
        async with lib.index.write_lock:
            if self.libraries.get(appid) is not lib:  # deleted meanwhile
                raise ApiError(ErrNo.NOT_SIGNED_UP, f"appid {appid!r} has not signed up")
            result = await self._insert(lib.row, batches, capacity)
            await self._index_committed(lib.index, lib.row, live=True)
        log.info("library %s: imported %d items (%d duplicates)", appid, result.inserted, result.duplicates)
        return lib, result.inserted, result.duplicates

    async def _index_committed(self, index: LibraryIndex, row: LibraryRow, live: bool) -> None:
        """Index rows just committed; if that fails the index no longer matches the database,
        so the library is set aside (named, repairable) rather than served half-indexed."""
        try:
            await self._replay(index, row, live=live)
        except Exception as exc:
            log.exception("library %s: indexing the imported rows failed", row.appid)
            self.libraries.pop(row.appid, None)
            self._set_aside(row, load_failure_reason(exc))
            raise ApiError(
                ErrNo.INTERNAL, f"the import was stored but could not be indexed: {load_failure_reason(exc)}"
            ) from exc

    async def _insert(
        self,
        library: LibraryRow | NewLibrary,
        batches: AsyncIterator[Sequence[NewItem]],
        capacity: int,
    ) -> BulkResult:
        try:
            return await self.store.insert_items(library, batches, capacity)
        except TooManyItems as exc:
            raise ApiError(ErrNo.INTERNAL, f"{exc}; nothing was imported") from exc
        except AlreadyExists as exc:
            raise ApiError(ErrNo.ALREADY_SIGNED_UP, f"appid {library.appid!r} already signed up") from exc
        except StorageError as exc:
            raise _storage_failed(exc) from exc

    async def rebuild(self, lib: Library) -> float:
        """Rebuild a library's graph from the database (also drops deleted slots); returns seconds."""
        started = time.monotonic()
        async with lib.index.write_lock:
            count = await self.store.count(lib.row.id)
            fresh = LibraryIndex.empty(lib.row.dim, self.cfg.index, self._index_pool, capacity=max(count, 16))
            try:
                await self._replay(fresh, lib.row)
            except BadRows as exc:
                raise ApiError(
                    ErrNo.INTERNAL,
                    f"cannot rebuild library {lib.row.appid!r}, the current index keeps serving: "
                    f"{load_failure_reason(exc)}; POST /api/libraries/{lib.row.appid}/repair drops them",
                ) from exc
            lib.index = fresh
        await self.save_indexes()
        log.info("library %s: index rebuilt (%d items)", lib.row.appid, lib.index.count())
        return time.monotonic() - started

    async def items_page(self, lib: Library, offset: int, limit: int) -> list[tuple[Item, float, float]]:
        """(item, created_at, updated_at) in insertion order."""
        rows = await self.store.page_items(lib.row.id, offset, limit)
        return [(_item(row), row.created_at, row.updated_at) for row in rows]

    async def item(self, lib: Library, contsign: ContSign) -> tuple[Item, float, float] | None:
        """One item with its timestamps, or None."""
        row = await self.store.get_item(lib.row.id, contsign.key)
        return None if row is None else (_item(row), row.created_at, row.updated_at)

    def all_stats(self) -> list[dict]:
        """Every library, served ones first, then those set aside (with their reason)."""
        return [self.stats(lib) for lib in self.libraries.values()] + [
            self.unavailable_stats(aside) for aside in self.unavailable.values()
        ]

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

    def stats(self, lib: Library) -> dict:
        """What the management API reports about one library."""
        return {
            "appid": lib.row.appid,
            "status": "ok",
            "items": lib.index.count(),
            "capacity": self.cfg.limits.library_capacity,
            "model": lib.row.model_id,
            "dim": lib.row.dim,
            "fingerprint": lib.row.fingerprint,
            "created": lib.row.created_at,
            "last_index_save": lib.index.saved_at,
            "index_slots": lib.index.capacity(),
            "search": "exact" if lib.index.exact is not None else "hnsw",
            "dup_policy": lib.row.dup_policy,
            "dup_min_score": lib.row.dup_min_score
            if lib.row.dup_min_score is not None
            else DEFAULT_MIN_SCORE,
        }

    def snapshot(self, lib: Library) -> dict[str, int]:
        """The spec's snapshot block for one library."""
        return {
            "tag": 0,
            "index_size": lib.index.count(),
            "index_capacity": self.cfg.limits.library_capacity,
            "queue_size": self.embed.queue_size,
        }

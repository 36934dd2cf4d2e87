"""The backend contract over Milvus collections (the package docstring has the layout)."""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import asdict, fields, replace
from typing import Any

import numpy as np

from same_search.backends.base import (
    AlreadyExists,
    Backend,
    BackendUnavailable,
    Figures,
    ItemRow,
    JobLedger,
    Library,
    LibraryFull,
    LibraryGone,
    LibraryRow,
    LibrarySettings,
    NewItem,
    NewLibrary,
    RebuildProgress,
    SearchResult,
    StorageError,
    TagFilter,
    Tags,
    TooManyItems,
    Unavailable,
)
from same_search.backends.capabilities import KeyedSearch, SharedLibraries
from same_search.backends.milvus.connection import Connection
from same_search.backends.milvus.reads import KeyedReads, _name
from same_search.backends.milvus.schema import (
    CATALOGUE,
    CHUNK,
    FEATURES,
    ITEM_FIELDS,
    MAX_TOPK,
    MAX_VARCHAR,
    add_features_field,
    collection_name,
    create_catalogue,
    create_items,
    item_entity,
    item_row,
    row_id,
    tag_expression,
)
from same_search.config import Config
from same_search.index.paging import SearchDepth
from same_search.store.jobs import JobStore

log = logging.getLogger(__name__)


class MilvusBackend(KeyedReads, Backend, SharedLibraries, KeyedSearch):
    """Libraries as Milvus collections; the daemon itself keeps only its import-job ledger."""

    name = "milvus"

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.milvus = Connection(cfg.storage)
        self._jobs = JobStore(cfg.data_path / "jobs.sqlite3", cfg.storage.max_db_bytes)
        self._flushed_at: dict[str, float] = {}
        self._dirty: set[str] = set()
        self._warned_thumbnail = False
        #: Collections that have the local-features field (found when each is loaded).
        self._features: dict[str, bool] = {}

    # ---- lifecycle -------------------------------------------------------------------------------

    async def open(self) -> None:
        """Connect, create the database and the catalogue when missing, open the job ledger."""
        await self._jobs.open()
        storage = self.cfg.storage
        try:
            await self.milvus.open()
        except Exception as exc:
            raise BackendUnavailable(
                f"cannot use Milvus at {storage.uri!r} (database {storage.db_name or 'default'!r}): {exc}"
            ) from exc
        if not await self.milvus.read(self.milvus.client.has_collection, CATALOGUE):
            try:
                await self.milvus.write(create_catalogue, self.milvus.client)
            except StorageError:
                if not await self.milvus.read(
                    self.milvus.client.has_collection, CATALOGUE
                ):  # not a daemon beside us
                    raise
        await self.milvus.write(self.milvus.client.load_collection, CATALOGUE)
        log.info("milvus backend: %s, database %r", storage.uri, storage.db_name or "default")
        if self.milvus.server_address is not None:
            log.warning(
                "milvus-lite runs inside this daemon (file mode, %s): for trials, not production. It "
                "serves every library on %s without authentication: any local user can read and "
                "change them, whatever [auth] tokens say. Writes go through one thread "
                '(docs/scale-out.md, "milvus-lite")',
                storage.uri,
                self.milvus.server_address,
            )
        elif self.milvus.lite:
            log.warning(
                "the Milvus at %s is milvus-lite: for tests, not production. This daemon's writes go "
                "through one thread; writes of other daemons to it are not serialised with them",
                storage.uri,
            )

    async def close(self) -> None:
        await self.milvus.close()
        await self._jobs.close()

    @property
    def jobs(self) -> JobLedger:
        """A SQLite file in the data dir: jobs read this box's files, so they are this box's state."""
        return self._jobs

    # ---- libraries -------------------------------------------------------------------------------

    def _library(self, entity: dict[str, Any]) -> Library:
        known = {f.name for f in fields(LibraryRow)}
        values = {k: v for k, v in json.loads(entity["row"]).items() if k in known}
        return Library(LibraryRow(**{**values, "id": row_id(entity["name"])}), entity["name"])

    async def load_libraries(self) -> list[Library | Unavailable]:
        entities = await self.milvus.read(
            self.milvus.client.query,
            CATALOGUE,
            filter='name != ""',
            output_fields=["name", "row"],
            limit=MAX_TOPK,
        )
        libs: list[Library | Unavailable] = []
        for entity in entities:
            lib = self._library(entity)
            try:
                await self._load(_name(lib))
            except (StorageError, LibraryGone) as exc:  # one collection must not stop the others
                libs.append(Unavailable(lib.row, f"Milvus cannot load its collection: {exc}"))
                continue
            libs.append(lib)
        return sorted(libs, key=lambda lib: lib.row.created_at)

    async def load_library(self, row: LibraryRow) -> Library:
        name = collection_name(row.appid)
        await self._load(name)
        return Library(row, name)

    async def _load(self, name: str) -> None:
        """Load a library's collection into the query nodes (needed again after a restart)."""
        replicas = self.cfg.storage.milvus_replicas
        if replicas > 1:
            await self.milvus.write(self.milvus.client.load_collection, name, replica_number=replicas)
        else:
            await self.milvus.write(self.milvus.client.load_collection, name)
        self._features[name] = await self._has_features_field(name)

    async def _has_features_field(self, name: str) -> bool:
        """Whether the collection keeps local features: those created before the field existed
        get it added in place where the server can (Milvus 2.6); elsewhere their items go without,
        judged by the score fallback, and the library's stats say how many."""
        if FEATURES in await self._field_names(name):
            return True
        if self.milvus.lite:  # has no call to add a field
            log.info("collection %s keeps no local features (milvus-lite cannot add the field)", name)
            return False
        try:
            await self.milvus.write(add_features_field, self.milvus.client, name)
        except Exception as exc:  # milvus-lite, or a server before 2.6: the collection stays as it is
            log.info("collection %s keeps no local features (the field cannot be added: %s)", name, exc)
        return FEATURES in await self._field_names(name)  # added here, or by a daemon beside us

    async def _field_names(self, name: str) -> set[str]:
        described = await self.milvus.read(self.milvus.client.describe_collection, name)
        return {field["name"] for field in described["fields"]}

    async def find_library(self, appid: str) -> Library | None:
        name = collection_name(appid)
        found = await self.milvus.read(
            self.milvus.client.query, CATALOGUE, ids=[name], output_fields=["name", "row"]
        )
        if not found:
            return None
        lib = self._library(found[0])
        await self._load(name)
        return lib

    async def create_library(self, new: NewLibrary) -> Library:
        """Collection first, catalogue row last: a library is visible only once it is usable.

        Two daemons signing up the same appid at once may both succeed (Milvus has no
        conditional insert); they create the same collection name and the same catalogue key,
        so the outcome is one library either way.
        """
        if await self.find_library(new.appid) is not None:
            raise AlreadyExists(new.appid)
        name = collection_name(new.appid)
        if not await self.milvus.read(self.milvus.client.has_collection, name):
            try:
                await self.milvus.write(create_items, self.milvus.client, self.cfg, name, new.dim)
            except StorageError:
                if not await self.milvus.read(self.milvus.client.has_collection, name):  # not a racing twin
                    raise
        await self._load(name)
        row = LibraryRow(
            row_id(name),
            new.appid,
            new.model_id,
            new.dim,
            new.fingerprint,
            time.time(),
            **asdict(new.settings),
        )
        await self._write_catalogue(name, row)
        return Library(row, name)

    async def _write_catalogue(self, name: str, row: LibraryRow) -> None:
        """The library's catalogue record: every LibraryRow field (settings included) but the id."""
        record = {k: v for k, v in asdict(row).items() if k != "id"}
        await self.milvus.write(
            self.milvus.client.upsert,
            CATALOGUE,
            [{"name": name, "appid": row.appid, "row": json.dumps(record), "placeholder": [0.0, 0.0]}],
        )

    async def save_settings(self, lib: Library, settings: LibrarySettings) -> None:
        """Settings are fields of the catalogue record: rewritten whole (other daemons read them
        when they load the library; a daemon that has it loaded keeps its copy until restart)."""
        await self._write_catalogue(_name(lib), replace(lib.row, **asdict(settings)))

    async def delete_library(self, lib: Library | Unavailable) -> None:
        """Catalogue row first (the library disappears for every daemon), then the collection."""
        name = collection_name(lib.row.appid)
        await self.milvus.write(self.milvus.client.delete, CATALOGUE, ids=[name])
        with contextlib.suppress(LibraryGone):  # dropped by another daemon at the same time
            await self.milvus.write(self.milvus.client.drop_collection, name)

    async def stored_count(self, row: LibraryRow) -> int:
        return await self.count(Library(row, collection_name(row.appid)))

    async def bad_rows(self, row: LibraryRow) -> list[tuple[int, str]]:
        """None: Milvus's schema refuses a wrong dimension or type at write time."""
        return []

    async def drop_rows(self, row: LibraryRow, keys: Sequence[int]) -> None:
        await self.milvus.write(self.milvus.client.delete, collection_name(row.appid), ids=list(keys))

    async def import_items(
        self, target: Library | NewLibrary, batches: AsyncIterator[Sequence[NewItem]], capacity: int = 0
    ) -> tuple[Library, int, int]:
        """Upserted batch by batch: unlike SQLite there is no transaction around the whole file,
        so a failure part-way leaves the batches before it stored (importing the file again
        counts them as duplicates); the capacity is checked before each batch."""
        if isinstance(target, NewLibrary):
            lib = await self.create_library(target)
        else:
            lib = target
        inserted = duplicates = 0
        async for batch in batches:
            if capacity and await self.count(lib) + len(batch) > capacity:
                raise TooManyItems(f"library {lib.row.appid!r} would hold more than {capacity} items")
            stored = await self.add_items(lib, batch)
            inserted += sum(stored)
            duplicates += len(stored) - sum(stored)
        return lib, inserted, duplicates

    # ---- items -----------------------------------------------------------------------------------

    async def add_items(self, lib: Library, items: Sequence[NewItem], capacity: int = 0) -> list[bool]:
        """Upsert the new items, then read back whose write each key holds.

        Milvus has no conditional insert, so "stored by this call" is decided in three steps:
        keys already stored are left alone (False); the others are upserted with this call's
        random ``writer`` nonce; a key whose row then carries another nonce was written by a
        racing add on another daemon after ours, and counts as a duplicate (False). Two racing
        adds of one image thus leave one row; at least one of them is answered 0, and both only
        when the second write lands after the first one's read-back.
        """
        if capacity and await self.count(lib) >= capacity:
            raise LibraryFull(f"library {lib.row.appid!r} is full ({capacity} items)")
        stored = await self._present(lib, [item.key for item in items])
        fresh = [item for item in items if item.key not in stored]
        if fresh:
            writer = secrets.randbits(63)
            now, seq = time.time(), time.time_ns()
            features = self._features.get(_name(lib), False)
            entities = [item_entity(item, now, seq + i, writer, features) for i, item in enumerate(fresh)]
            self._warn_thumbnails(fresh, entities)
            for start in range(0, len(entities), CHUNK):
                await self.milvus.write(
                    self.milvus.client.upsert, _name(lib), entities[start : start + CHUNK]
                )
            self._dirty.add(_name(lib))
            writers = await self._present(lib, [item.key for item in fresh], "writer")
            won = {key for key, nonce in writers.items() if int(nonce) == writer}
        else:
            won = set()
        return [item.key in won for item in items]

    def _warn_thumbnails(self, items: Sequence[NewItem], entities: list[dict[str, Any]]) -> None:
        """Say once that thumbnails too long for Milvus are not stored."""
        if self._warned_thumbnail:
            return
        pairs = zip(items, entities, strict=True)
        if any(item.thumbnail and not entity["thumbnail"] for item, entity in pairs):
            log.warning("thumbnails over %d bytes of base64 are not stored in Milvus", MAX_VARCHAR)
            self._warned_thumbnail = True

    async def update_item(self, lib: Library, key: int, brief: bytes | None, tags: Tags | None) -> bool:
        """A partial upsert of the changed fields (Milvus 2.6+), only if the item is stored."""
        if not await self._present(lib, [key]):
            return False
        entity: dict[str, Any] = {"key": key, "updated_at": time.time()}
        if brief is not None:
            entity["brief"] = base64.b64encode(brief).decode()
        if tags is not None:
            entity["tag1"], entity["tag2"] = tags
        await self.milvus.write(self.milvus.client.upsert, _name(lib), [entity], partial_update=True)
        self._dirty.add(_name(lib))
        return True

    async def remove_items(self, lib: Library, keys: Sequence[int]) -> list[int]:
        present = list(await self._present(lib, list(dict.fromkeys(keys))))
        for start in range(0, len(present), CHUNK):
            await self.milvus.write(self.milvus.client.delete, _name(lib), ids=present[start : start + CHUNK])
        if present:
            self._dirty.add(_name(lib))
        return present

    async def get_items(self, lib: Library, keys: Sequence[int]) -> dict[int, ItemRow]:
        found: dict[int, ItemRow] = {}
        for start in range(0, len(keys), CHUNK):
            chunk = list(keys[start : start + CHUNK])
            entities = await self.milvus.read(
                self.milvus.client.query, _name(lib), ids=chunk, output_fields=ITEM_FIELDS
            )
            found.update({int(e["key"]): item_row(e) for e in entities})
        return found

    async def search(
        self, lib: Library, vector: np.ndarray, k: int, tag_filter: TagFilter | None, stored: bool = False
    ) -> SearchResult:
        """HNSW search with ``ef`` widened to the depth, returning the rows with the hits (one
        round trip for a whole page); pages past ``MAX_TOPK`` are not reachable."""
        data = np.asarray(vector, dtype=np.float32).ravel().tolist()
        return await self.milvus.read(self._search, _name(lib), data, k, tag_filter, stored)

    async def search_by_key(
        self, lib: Library, key: int, k: int, tag_filter: TagFilter | None
    ) -> tuple[np.ndarray, SearchResult] | None:
        """The item's vector read and searched with in one hand-over to the pool (each costs a
        wake-up of a pool thread and of the event loop: a tenth of a millisecond idle, more on a
        busy machine), the vector passed on as pymilvus returned it."""
        return await self.milvus.read(self._search_by_key, _name(lib), key, k, tag_filter)

    def _search_by_key(
        self, name: str, key: int, k: int, tag_filter: TagFilter | None
    ) -> tuple[np.ndarray, SearchResult] | None:
        """:meth:`search_by_key` in the pool thread."""
        found = self.milvus.client.query(name, ids=[key], output_fields=["vector"])
        if not found:
            return None
        vector = found[0]["vector"]
        return np.asarray(vector, dtype=np.float32), self._search(name, vector, k, tag_filter, True)

    def _search(
        self, name: str, data: list[float], k: int, tag_filter: TagFilter | None, stored: bool
    ) -> SearchResult:
        """The search and its hits' rows, in the pool thread (the rows are decoded there too, off
        the event loop); ``ef`` is ``[index] ef_search``, deeper for a vector that is not a stored
        item's as the local graphs walk (:meth:`SearchDepth.for_new_vectors`)."""
        k = min(k, MAX_TOPK)
        ef = self.cfg.index.ef_search
        if not stored:
            ef = SearchDepth(ef, ef).for_new_vectors(self.cfg.index.new_vector_depth).ef
        expression = tag_expression(tag_filter) if tag_filter is not None and tag_filter.active else ""
        hits = self.milvus.client.search(
            name,
            data=[data],
            limit=k,
            filter=expression,
            output_fields=ITEM_FIELDS,
            search_params={"metric_type": "IP", "params": {"ef": max(ef, k)}},
        )[0]
        return SearchResult(
            [(int(hit["key"]), float(hit["distance"])) for hit in hits],
            {int(hit["key"]): item_row({**hit["entity"], "key": hit["key"]}) for hit in hits},
        )

    async def _keys_in_order(self, lib: Library) -> list[int]:
        """Every key by insertion time: Milvus cannot sort a query, so all (key, seq) are read."""
        iterator = await self.milvus.read(
            self.milvus.client.query_iterator,
            _name(lib),
            batch_size=4096,
            filter="",
            output_fields=["key", "seq"],
        )
        pairs: list[tuple[int, int]] = []
        try:
            while batch := await self.milvus.read(iterator.next):
                pairs += [(int(e["seq"]), int(e["key"])) for e in batch]
        finally:
            await self.milvus.read(iterator.close)
        return [key for _, key in sorted(pairs)]

    async def page_items(self, lib: Library, offset: int, limit: int) -> list[ItemRow]:
        keys = (await self._keys_in_order(lib))[offset : offset + limit]
        rows = await self.get_items(lib, keys)
        return [rows[key] for key in keys if key in rows]

    async def export_items(self, lib: Library) -> AsyncIterator[list[tuple[ItemRow, np.ndarray]]]:
        keys = await self._keys_in_order(lib)
        for start in range(0, len(keys), CHUNK):
            chunk = keys[start : start + CHUNK]
            entities = await self.milvus.read(
                self.milvus.client.query, _name(lib), ids=chunk, output_fields=[*ITEM_FIELDS, "vector"]
            )
            by_key = {int(e["key"]): e for e in entities}
            yield [
                (item_row(by_key[key]), np.asarray(by_key[key]["vector"], dtype=np.float32))
                for key in chunk
                if key in by_key
            ]

    # ---- maintenance -----------------------------------------------------------------------------

    async def save(self, libs: Sequence[Library], only_dirty: bool = True) -> int:
        """Flush (seal) the changed collections: Milvus has every write in its log already."""
        saved = 0
        for lib in libs:
            name = _name(lib)
            if only_dirty and name not in self._dirty:
                continue
            self._dirty.discard(name)
            await self.milvus.write(self.milvus.client.flush, name)
            self._flushed_at[name] = time.time()
            saved += 1
        return saved

    async def rebuild(self, lib: Library, progress: RebuildProgress | None = None) -> None:
        """Milvus compaction: rewrites segments without deleted rows and rebuilds their index."""
        if progress is not None:
            progress.phase = "compacting"
        await self.milvus.write(self.milvus.client.compact, _name(lib))

    def describe(self, lib: Library) -> Figures:
        return {
            "last_index_save": self._flushed_at.get(_name(lib)),
            "index_slots": None,
            "search": "milvus-hnsw",
        }

"""The Milvus backend: every library in a Milvus collection, shared by any number of daemons.

Layout (in the configured Milvus database):

- ``same_search_libraries``: the catalogue, one row per library (appid, model, dimension,
  fingerprint, creation time and any further library settings, as JSON). Milvus wants a vector
  field in every collection; the catalogue's is a 2-d placeholder.
- ``same_search_lib_<hash of appid>``: one collection per library. Primary key ``key`` is the
  ContSign as a signed int64 (:attr:`ContSign.key`: sign1/sign2 packed little-endian and read
  as int64, reversible by :meth:`ContSign.from_key`), then ``brief`` (base64), ``tag1``/``tag2``
  (nullable int64), timestamps, ``seq`` (nanosecond insertion time, for paging in insertion
  order), ``writer`` (a per-write nonce, see ``add_items``), ``thumbnail`` (base64 JPEG) and
  ``vector`` (HNSW, inner product on unit vectors = cosine).

A collection per library, not one shared collection with a partition key: libraries here are
catalogues (few, often millions of items each) rather than millions of tiny tenants, and a
collection of its own gives each one its own index, an instant drop, a cheap count, and loading
and compaction that do not touch the other libraries. Milvus handles thousands of collections per
cluster; beyond that a partition-key layout would be the better choice.

Every collection is created with consistency level ``Strong``: a search or query waits until the
query nodes have applied every write acknowledged before it, on any daemon. The price is latency
under write load (a read may wait for the next time tick, up to ``common.timeTickInterval``,
200 ms by default), not throughput.

pymilvus is synchronous; its calls run in a small thread pool so the event loop never blocks.

**milvus-lite** (``uri`` a local ``.db`` path, which runs it inside the daemon, or a server that
reports itself as ``milvus_lite``) is a single-writer engine: "concurrent writes against the same
Collection are not" safe (milvus_lite/adapter/grpc/server.py). Two upserts at once interleave their
Arrow IPC batches in the collection's write-ahead log, and after a crash its recovery stops at the
first torn batch ("Invalid IPC message: negative metadata length"), dropping every acknowledged
write after it: 191 of 352 adds in one kill -9 test. Against milvus-lite every write of this daemon
therefore goes through one thread (:meth:`MilvusBackend._write`); reads stay concurrent. Each
write reaches the OS before it is acknowledged (milvus-lite flushes its log on every write), so a
``kill -9`` loses nothing acknowledged (tests/test_milvus_file_mode.py). Several daemons writing
to one milvus-lite server are not serialised with each other: that is for tests only.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, fields, replace
from typing import Any, TypeVar

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
from same_search.backends.capabilities import SharedLibraries
from same_search.config import Config
from same_search.store.jobs import JobStore

log = logging.getLogger(__name__)
#: Tries to reach Milvus at start (0.5 s, then 1 s, between them).
CONNECT_ATTEMPTS = 3

T = TypeVar("T")

CATALOGUE = "same_search_libraries"
PREFIX = "same_search_lib_"
#: Milvus refuses searches and queries whose offset + limit exceed this.
MAX_TOPK = 16384
#: Longest VARCHAR Milvus stores (bytes); briefs and thumbnails are base64 in VARCHARs.
MAX_VARCHAR = 65535
#: Rows per query or upsert call in bulk paths.
CHUNK = 512
#: pymilvus error code of "collection not found".
COLLECTION_NOT_FOUND = 100
#: How milvus-lite names itself in ``get_server_version``.
LITE_VERSION_PREFIX = "milvus_lite"

_ITEM_FIELDS = ["key", "brief", "tag1", "tag2", "created_at", "updated_at"]


def collection_name(appid: str) -> str:
    """The collection of a library: appids may hold any character, collection names may not."""
    return PREFIX + hashlib.sha256(appid.encode()).hexdigest()[:32]


def _row_id(name: str) -> int:
    """A stable positive int64 for :attr:`LibraryRow.id` (unused by this backend's storage)."""
    return int(hashlib.sha256(name.encode()).hexdigest()[:15], 16)


def _name(lib: Library) -> str:
    return str(lib.handle)


def _item(entity: dict[str, Any]) -> ItemRow:
    tag1, tag2 = entity.get("tag1"), entity.get("tag2")
    tags = None if tag1 is None else (int(tag1), int(tag2 or 0))
    return ItemRow(
        int(entity["key"]),
        base64.b64decode(entity["brief"]),
        tags,
        float(entity["created_at"]),
        float(entity["updated_at"]),
    )


def tag_expression(tag_filter: TagFilter) -> str:
    """The Milvus boolean expression of a tag filter (tags are integers: nothing to escape)."""
    clauses = [f"(tag1 == {int(t)} or tag2 == {int(t)})" for t in tag_filter.wanted]
    return (" and " if tag_filter.match_all else " or ").join(clauses)


def _is_lite(client: Any) -> bool:
    """Whether the server ``client`` reached is milvus-lite (a server started on its own)."""
    try:
        return str(client.get_server_version()).startswith(LITE_VERSION_PREFIX)
    except Exception:  # an old server without the call is not milvus-lite 3
        return False


class MilvusBackend(Backend, SharedLibraries):
    """Libraries as Milvus collections; the daemon itself keeps only its import-job ledger."""

    name = "milvus"

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.client: Any = None
        self._pool = ThreadPoolExecutor(8, thread_name_prefix="milvus")
        #: Every write against milvus-lite, one at a time (module docstring).
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="milvus-write")
        #: Whether the server is milvus-lite (file mode, or a server saying so): writes serialised.
        self.lite = cfg.storage.milvus_file_mode
        self._jobs = JobStore(cfg.data_path / "jobs.sqlite3", cfg.storage.max_db_bytes)
        self._flushed_at: dict[str, float] = {}
        self._dirty: set[str] = set()
        self._warned_thumbnail = False
        self._server_address: str | None = None

    # ---- plumbing --------------------------------------------------------------------------------

    async def _run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a pymilvus read in the pool (:meth:`_call`)."""
        return await self._call(self._pool, fn, *args, **kwargs)

    async def _write(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a pymilvus call that changes anything: against milvus-lite in the one writer
        thread, so no two writes reach its engine at once (module docstring)."""
        return await self._call(self._writer if self.lite else self._pool, fn, *args, **kwargs)

    async def _call(self, pool: ThreadPoolExecutor, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a pymilvus call in ``pool``; a missing collection is :class:`LibraryGone`,
        any other Milvus failure :class:`StorageError` (the API answers it, nothing half-done)."""
        from pymilvus.exceptions import MilvusException

        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(pool, lambda: fn(*args, **kwargs))
        except MilvusException as exc:
            if exc.code == COLLECTION_NOT_FOUND or "not exist" in str(exc.message):
                raise LibraryGone(str(exc.message)) from exc
            raise StorageError(f"milvus: {exc.message}") from exc

    # ---- lifecycle -------------------------------------------------------------------------------

    async def open(self) -> None:
        """Connect, create the database and the catalogue when missing, open the job ledger."""
        await self._jobs.open()
        storage = self.cfg.storage
        try:
            await self._connect_with_retries(storage)
        except Exception as exc:
            raise BackendUnavailable(
                f"cannot use Milvus at {storage.uri!r} (database {storage.db_name or 'default'!r}): {exc}"
            ) from exc
        if not await self._run(self.client.has_collection, CATALOGUE):
            try:
                await self._write(self._create_catalogue)
            except StorageError:
                if not await self._run(self.client.has_collection, CATALOGUE):  # not a daemon beside us
                    raise
        await self._write(self.client.load_collection, CATALOGUE)
        log.info("milvus backend: %s, database %r", storage.uri, storage.db_name or "default")
        if self._server_address is not None:
            log.warning(
                "milvus-lite runs inside this daemon (file mode, %s): for trials, not production. It "
                "serves every library on %s without authentication: any local user can read and "
                "change them, whatever [auth] tokens say. Writes go through one thread "
                '(docs/scale-out.md, "milvus-lite")',
                storage.uri,
                self._server_address,
            )
        elif self.lite:
            log.warning(
                "the Milvus at %s is milvus-lite: for tests, not production. This daemon's writes go "
                "through one thread; writes of other daemons to it are not serialised with them",
                storage.uri,
            )

    async def _connect_with_retries(self, storage: Any, attempts: int = CONNECT_ATTEMPTS) -> None:
        """Connect, retrying a few times: a Milvus that is restarting, or a gRPC channel the server
        just closed (GOAWAY), fails the first attempt and serves the next."""
        for attempt in range(attempts):
            try:
                await asyncio.get_running_loop().run_in_executor(self._pool, self._connect, storage)
                return
            except Exception as exc:
                if attempt == attempts - 1:
                    raise
                log.warning("milvus at %s not reachable (%s); retrying", storage.uri, exc)
                await asyncio.sleep(0.5 * 2**attempt)

    def _connect(self, storage: Any) -> None:
        from pymilvus import MilvusClient

        uri = storage.uri
        if storage.milvus_file_mode:  # started here (pymilvus would do the same), to name its port
            from milvus_lite import server_manager_instance

            uri = server_manager_instance.start_and_get_uri(storage.uri) or storage.uri
            self._server_address = uri
        client = MilvusClient(uri=uri, token=storage.token)
        self.lite = self.lite or _is_lite(client)
        if storage.db_name:
            if storage.db_name not in client.list_databases():
                try:
                    client.create_database(storage.db_name)
                except Exception:
                    if storage.db_name not in client.list_databases():  # not a daemon starting beside us
                        raise
            client.use_database(storage.db_name)
        self.client = client

    def _create_catalogue(self) -> None:
        from pymilvus import DataType, MilvusClient

        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("name", DataType.VARCHAR, is_primary=True, max_length=128)
        schema.add_field("appid", DataType.VARCHAR, max_length=4096)
        schema.add_field("row", DataType.VARCHAR, max_length=MAX_VARCHAR)
        schema.add_field("placeholder", DataType.FLOAT_VECTOR, dim=2)
        index = self.client.prepare_index_params()
        index.add_index("placeholder", index_type="FLAT", metric_type="L2")
        self.client.create_collection(
            CATALOGUE, schema=schema, index_params=index, consistency_level="Strong"
        )

    async def close(self) -> None:
        if self.client is not None:
            await self._run(self.client.close)
        self._pool.shutdown(wait=True)
        self._writer.shutdown(wait=True)
        await self._jobs.close()

    @property
    def jobs(self) -> JobLedger:
        """A SQLite file in the data dir: jobs read this box's files, so they are this box's state."""
        return self._jobs

    # ---- libraries -------------------------------------------------------------------------------

    def _library(self, entity: dict[str, Any]) -> Library:
        known = {f.name for f in fields(LibraryRow)}
        values = {k: v for k, v in json.loads(entity["row"]).items() if k in known}
        return Library(LibraryRow(**{**values, "id": _row_id(entity["name"])}), entity["name"])

    async def load_libraries(self) -> list[Library | Unavailable]:
        entities = await self._run(
            self.client.query, CATALOGUE, filter='name != ""', output_fields=["name", "row"], limit=MAX_TOPK
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
            await self._write(self.client.load_collection, name, replica_number=replicas)
        else:
            await self._write(self.client.load_collection, name)

    async def find_library(self, appid: str) -> Library | None:
        name = collection_name(appid)
        found = await self._run(self.client.query, CATALOGUE, ids=[name], output_fields=["name", "row"])
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
        if not await self._run(self.client.has_collection, name):
            try:
                await self._write(self._create_items, name, new.dim)
            except StorageError:
                if not await self._run(self.client.has_collection, name):  # not a racing twin
                    raise
        await self._load(name)
        row = LibraryRow(
            _row_id(name),
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
        await self._write(
            self.client.upsert,
            CATALOGUE,
            [{"name": name, "appid": row.appid, "row": json.dumps(record), "placeholder": [0.0, 0.0]}],
        )

    async def save_settings(self, lib: Library, settings: LibrarySettings) -> None:
        """Settings are fields of the catalogue record: rewritten whole (other daemons read them
        when they load the library; a daemon that has it loaded keeps its copy until restart)."""
        await self._write_catalogue(_name(lib), replace(lib.row, **asdict(settings)))

    def _create_items(self, name: str, dim: int) -> None:
        from pymilvus import DataType, MilvusClient

        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("key", DataType.INT64, is_primary=True)
        schema.add_field("brief", DataType.VARCHAR, max_length=MAX_VARCHAR)
        schema.add_field("tag1", DataType.INT64, nullable=True)
        schema.add_field("tag2", DataType.INT64, nullable=True)
        schema.add_field("created_at", DataType.DOUBLE)
        schema.add_field("updated_at", DataType.DOUBLE)
        schema.add_field("seq", DataType.INT64)
        schema.add_field("writer", DataType.INT64)
        schema.add_field("thumbnail", DataType.VARCHAR, max_length=MAX_VARCHAR)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=dim)
        index = self.client.prepare_index_params()
        hnsw = self.cfg.index
        index.add_index(
            "vector",
            index_type="HNSW",
            metric_type="IP",
            params={"M": hnsw.m, "efConstruction": hnsw.ef_construction},
        )
        self.client.create_collection(
            name,
            schema=schema,
            index_params=index,
            consistency_level="Strong",
            num_shards=self.cfg.storage.milvus_shards,
        )

    async def delete_library(self, lib: Library | Unavailable) -> None:
        """Catalogue row first (the library disappears for every daemon), then the collection."""
        name = collection_name(lib.row.appid)
        await self._write(self.client.delete, CATALOGUE, ids=[name])
        with contextlib.suppress(LibraryGone):  # dropped by another daemon at the same time
            await self._write(self.client.drop_collection, name)

    async def stored_count(self, row: LibraryRow) -> int:
        return await self.count(Library(row, collection_name(row.appid)))

    async def bad_rows(self, row: LibraryRow) -> list[tuple[int, str]]:
        """None: Milvus's schema refuses a wrong dimension or type at write time."""
        return []

    async def drop_rows(self, row: LibraryRow, keys: Sequence[int]) -> None:
        await self._write(self.client.delete, collection_name(row.appid), ids=list(keys))

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

    async def count(self, lib: Library) -> int:
        found = await self._run(self.client.query, _name(lib), filter="", output_fields=["count(*)"])
        return int(found[0]["count(*)"])

    async def _present(self, lib: Library, keys: Sequence[int], field: str = "key") -> dict[int, Any]:
        """key -> ``field`` of the stored ones among ``keys``."""
        found: dict[int, Any] = {}
        for start in range(0, len(keys), CHUNK):
            chunk = list(keys[start : start + CHUNK])
            entities = await self._run(self.client.query, _name(lib), ids=chunk, output_fields=["key", field])
            found.update({int(e["key"]): e[field] for e in entities})
        return found

    def _entity(self, item: NewItem, now: float, seq: int, writer: int) -> dict[str, Any]:
        thumbnail = base64.b64encode(item.thumbnail or b"").decode()
        if len(thumbnail) > MAX_VARCHAR:
            if not self._warned_thumbnail:
                log.warning("thumbnails over %d bytes of base64 are not stored in Milvus", MAX_VARCHAR)
                self._warned_thumbnail = True
            thumbnail = ""
        tag1, tag2 = item.tags if item.tags is not None else (None, None)
        return {
            "key": item.key,
            "brief": base64.b64encode(item.brief).decode(),
            "tag1": tag1,
            "tag2": tag2,
            "created_at": now,
            "updated_at": now,
            "seq": seq,
            "writer": writer,
            "thumbnail": thumbnail,
            "vector": np.asarray(item.vector, dtype=np.float32).ravel().tolist(),
        }

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
            entities = [self._entity(item, now, seq + i, writer) for i, item in enumerate(fresh)]
            for start in range(0, len(entities), CHUNK):
                await self._write(self.client.upsert, _name(lib), entities[start : start + CHUNK])
            self._dirty.add(_name(lib))
            writers = await self._present(lib, [item.key for item in fresh], "writer")
            won = {key for key, nonce in writers.items() if int(nonce) == writer}
        else:
            won = set()
        return [item.key in won for item in items]

    async def update_item(self, lib: Library, key: int, brief: bytes | None, tags: Tags | None) -> bool:
        """A partial upsert of the changed fields (Milvus 2.6+), only if the item is stored."""
        if not await self._present(lib, [key]):
            return False
        entity: dict[str, Any] = {"key": key, "updated_at": time.time()}
        if brief is not None:
            entity["brief"] = base64.b64encode(brief).decode()
        if tags is not None:
            entity["tag1"], entity["tag2"] = tags
        await self._write(self.client.upsert, _name(lib), [entity], partial_update=True)
        self._dirty.add(_name(lib))
        return True

    async def remove_items(self, lib: Library, keys: Sequence[int]) -> list[int]:
        present = list(await self._present(lib, list(dict.fromkeys(keys))))
        for start in range(0, len(present), CHUNK):
            await self._write(self.client.delete, _name(lib), ids=present[start : start + CHUNK])
        if present:
            self._dirty.add(_name(lib))
        return present

    async def get_items(self, lib: Library, keys: Sequence[int]) -> dict[int, ItemRow]:
        found: dict[int, ItemRow] = {}
        for start in range(0, len(keys), CHUNK):
            chunk = list(keys[start : start + CHUNK])
            entities = await self._run(self.client.query, _name(lib), ids=chunk, output_fields=_ITEM_FIELDS)
            found.update({int(e["key"]): _item(e) for e in entities})
        return found

    async def vector(self, lib: Library, key: int) -> np.ndarray | None:
        found = await self._present(lib, [key], "vector")
        return np.asarray(found[key], dtype=np.float32) if key in found else None

    async def search(
        self, lib: Library, vector: np.ndarray, k: int, tag_filter: TagFilter | None
    ) -> SearchResult:
        """HNSW search with ``ef`` widened to the depth, returning the rows with the hits (one
        round trip for a whole page); pages past ``MAX_TOPK`` are not reachable."""
        k = min(k, MAX_TOPK)
        expression = tag_expression(tag_filter) if tag_filter is not None and tag_filter.active else ""
        results = await self._run(
            self.client.search,
            _name(lib),
            data=[np.asarray(vector, dtype=np.float32).ravel().tolist()],
            limit=k,
            filter=expression,
            output_fields=_ITEM_FIELDS,
            search_params={"metric_type": "IP", "params": {"ef": max(self.cfg.index.ef_search, k)}},
        )
        hits = results[0]
        return SearchResult(
            [(int(hit["key"]), float(hit["distance"])) for hit in hits],
            {int(hit["key"]): _item({**hit["entity"], "key": hit["key"]}) for hit in hits},
        )

    async def _keys_in_order(self, lib: Library) -> list[int]:
        """Every key by insertion time: Milvus cannot sort a query, so all (key, seq) are read."""
        iterator = await self._run(
            self.client.query_iterator, _name(lib), batch_size=4096, filter="", output_fields=["key", "seq"]
        )
        pairs: list[tuple[int, int]] = []
        try:
            while batch := await self._run(iterator.next):
                pairs += [(int(e["seq"]), int(e["key"])) for e in batch]
        finally:
            await self._run(iterator.close)
        return [key for _, key in sorted(pairs)]

    async def page_items(self, lib: Library, offset: int, limit: int) -> list[ItemRow]:
        keys = (await self._keys_in_order(lib))[offset : offset + limit]
        rows = await self.get_items(lib, keys)
        return [rows[key] for key in keys if key in rows]

    async def thumbnail(self, lib: Library, key: int) -> bytes | None:
        found = await self._present(lib, [key], "thumbnail")
        return base64.b64decode(found[key]) if found.get(key) else None

    async def export_items(self, lib: Library) -> AsyncIterator[list[tuple[ItemRow, np.ndarray]]]:
        keys = await self._keys_in_order(lib)
        for start in range(0, len(keys), CHUNK):
            chunk = keys[start : start + CHUNK]
            entities = await self._run(
                self.client.query, _name(lib), ids=chunk, output_fields=[*_ITEM_FIELDS, "vector"]
            )
            by_key = {int(e["key"]): e for e in entities}
            yield [
                (_item(by_key[key]), np.asarray(by_key[key]["vector"], dtype=np.float32))
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
            await self._write(self.client.flush, name)
            self._flushed_at[name] = time.time()
            saved += 1
        return saved

    async def rebuild(self, lib: Library, progress: RebuildProgress | None = None) -> None:
        """Milvus compaction: rewrites segments without deleted rows and rebuilds their index."""
        if progress is not None:
            progress.phase = "compacting"
        await self._write(self.client.compact, _name(lib))

    def describe(self, lib: Library) -> Figures:
        return {
            "last_index_save": self._flushed_at.get(_name(lib)),
            "index_slots": None,
            "search": "milvus-hnsw",
        }

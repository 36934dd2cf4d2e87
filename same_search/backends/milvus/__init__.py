"""The Milvus backend: every library in a Milvus collection, shared by any number of daemons.

Layout (in the configured Milvus database):

- ``same_search_libraries``: the catalogue, one row per library (appid, model, dimension,
  fingerprint, creation time and any further library settings, as JSON). Milvus wants a vector
  field in every collection; the catalogue's is a 2-d placeholder.
- ``same_search_lib_<hash of appid>``: one collection per library. Primary key ``key`` is the
  ContSign as a signed int64 (:attr:`ContSign.key`: sign1/sign2 packed little-endian and read
  as int64, reversible by :meth:`ContSign.from_key`), then ``brief`` (base64), ``tag1``/``tag2``
  (nullable int64), timestamps, ``seq`` (nanosecond insertion time, for paging in insertion
  order), ``writer`` (a per-write nonce, see ``MilvusBackend.add_items``), ``thumbnail`` (base64 JPEG) and
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

pymilvus is synchronous; its calls run in a small thread pool so the event loop never blocks. A
search by a stored item reads its vector and searches with it in one hand-over to the pool
(``KeyedSearch``): each hand-over wakes a pool thread and then the event loop, which on a busy
machine costs more than the Python around it (docs/benchmarks.md, "The Milvus backend").

**milvus-lite** (``uri`` a local ``.db`` path, which runs it inside the daemon, or a server that
reports itself as ``milvus_lite``) is a single-writer engine: "concurrent writes against the same
Collection are not" safe (milvus_lite/adapter/grpc/server.py). Two upserts at once interleave their
Arrow IPC batches in the collection's write-ahead log, and after a crash its recovery stops at the
first torn batch ("Invalid IPC message: negative metadata length"), dropping every acknowledged
write after it: 191 of 352 adds in one kill -9 test. Against milvus-lite every write of this daemon
therefore goes through one thread (:meth:`Connection.write`); reads stay concurrent. Each
write reaches the OS before it is acknowledged (milvus-lite flushes its log on every write), so a
``kill -9`` loses nothing acknowledged (tests/test_milvus_file_mode.py). Several daemons writing
to one milvus-lite server are not serialised with each other: that is for tests only.

The package: ``schema`` (names and collection layouts), ``connection`` (the client, its threads
and its errors), ``backend`` (the contract).
"""

from same_search.backends.milvus.backend import MilvusBackend
from same_search.backends.milvus.schema import ITEM_FIELDS, collection_name, tag_expression

__all__ = ["ITEM_FIELDS", "MilvusBackend", "collection_name", "tag_expression"]

"""What this backend stores in Milvus: collection names, the two collection layouts, and the
conversions between rows of the contract and Milvus entities."""

from __future__ import annotations

import base64
import hashlib
from typing import Any

import numpy as np

from same_search.backends.base import ItemRow, NewItem, TagFilter
from same_search.config import Config

CATALOGUE = "same_search_libraries"
PREFIX = "same_search_lib_"
#: Milvus refuses searches and queries whose offset + limit exceed this.
MAX_TOPK = 16384
#: Longest VARCHAR Milvus stores (bytes); briefs and thumbnails are base64 in VARCHARs.
MAX_VARCHAR = 65535
#: Rows per query or upsert call in bulk paths.
CHUNK = 512
#: The fields an item's row is read from.
ITEM_FIELDS = ["key", "brief", "tag1", "tag2", "created_at", "updated_at"]
#: The field holding an item's local features (base64 of their stored form, about 53,000
#: characters for 300 keypoints; null when the item has none). Collections created before it
#: existed lack it until the backend adds it (``MilvusBackend``).
FEATURES = "local_features"


def collection_name(appid: str) -> str:
    """The collection of a library: appids may hold any character, collection names may not."""
    return PREFIX + hashlib.sha256(appid.encode()).hexdigest()[:32]


def row_id(name: str) -> int:
    """A stable positive int64 for :attr:`LibraryRow.id` (unused by this backend's storage)."""
    return int(hashlib.sha256(name.encode()).hexdigest()[:15], 16)


def item_row(entity: dict[str, Any]) -> ItemRow:
    """The contract's row of a stored entity (read with :data:`ITEM_FIELDS`)."""
    tag1, tag2 = entity.get("tag1"), entity.get("tag2")
    tags = None if tag1 is None else (int(tag1), int(tag2 or 0))
    return ItemRow(
        int(entity["key"]),
        base64.b64decode(entity["brief"]),
        tags,
        float(entity["created_at"]),
        float(entity["updated_at"]),
    )


def item_entity(item: NewItem, now: float, seq: int, writer: int, features: bool) -> dict[str, Any]:
    """A new item as the entity upserted; a thumbnail too long for a VARCHAR is left empty.
    ``features``: the collection has the :data:`FEATURES` field."""
    thumbnail = base64.b64encode(item.thumbnail or b"").decode()
    tag1, tag2 = item.tags if item.tags is not None else (None, None)
    extra = {FEATURES: features_value(item.local_features)} if features else {}
    return {
        **extra,
        "key": item.key,
        "brief": base64.b64encode(item.brief).decode(),
        "tag1": tag1,
        "tag2": tag2,
        "created_at": now,
        "updated_at": now,
        "seq": seq,
        "writer": writer,
        "thumbnail": thumbnail if len(thumbnail) <= MAX_VARCHAR else "",
        "vector": np.asarray(item.vector, dtype=np.float32).ravel().tolist(),
    }


def features_value(data: bytes | None) -> str | None:
    """Stored local features as the field's value (None: none, or too long for a VARCHAR, which
    300 keypoints never are)."""
    if not data:
        return None
    text = base64.b64encode(data).decode()
    return text if len(text) <= MAX_VARCHAR else None


def add_features_field(client: Any, name: str) -> None:
    """Give a collection created without it the :data:`FEATURES` field (Milvus 2.6 adds a
    nullable field in place; milvus-lite cannot, and its old collections go without)."""
    from pymilvus import DataType

    client.add_collection_field(
        name, field_name=FEATURES, data_type=DataType.VARCHAR, max_length=MAX_VARCHAR, nullable=True
    )


def tag_expression(tag_filter: TagFilter) -> str:
    """The Milvus boolean expression of a tag filter (tags are integers: nothing to escape)."""
    clauses = [f"(tag1 == {int(t)} or tag2 == {int(t)})" for t in tag_filter.wanted]
    return (" and " if tag_filter.match_all else " or ").join(clauses)


def create_catalogue(client: Any) -> None:
    """The catalogue collection: one row per library (its record as JSON, keyed by collection)."""
    from pymilvus import DataType, MilvusClient

    schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
    schema.add_field("name", DataType.VARCHAR, is_primary=True, max_length=128)
    schema.add_field("appid", DataType.VARCHAR, max_length=4096)
    schema.add_field("row", DataType.VARCHAR, max_length=MAX_VARCHAR)
    schema.add_field("placeholder", DataType.FLOAT_VECTOR, dim=2)
    index = client.prepare_index_params()
    index.add_index("placeholder", index_type="FLAT", metric_type="L2")
    client.create_collection(CATALOGUE, schema=schema, consistency_level="Strong")
    _index_and_load(client, CATALOGUE, index)


def create_items(client: Any, cfg: Config, name: str, dim: int) -> None:
    """A library's collection, HNSW on inner product with the configured graph parameters."""
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
    schema.add_field(FEATURES, DataType.VARCHAR, max_length=MAX_VARCHAR, nullable=True)
    schema.add_field("vector", DataType.FLOAT_VECTOR, dim=dim)
    index = client.prepare_index_params()
    hnsw = cfg.index
    index.add_index(
        "vector",
        index_type="HNSW",
        metric_type="IP",
        params={"M": hnsw.m, "efConstruction": hnsw.ef_construction},
    )
    client.create_collection(
        name, schema=schema, consistency_level="Strong", num_shards=cfg.storage.milvus_shards
    )
    _index_and_load(client, name, index)


def _index_and_load(client: Any, name: str, index: Any) -> None:
    """Index a new, empty collection and load it, without pymilvus's half-second wait.

    ``create_collection(index_params=...)`` creates the index with ``sync=True``, and pymilvus then
    sleeps 0.5 s before it first asks whether the index is built: every signup on Milvus waited
    half a second for an index that has nothing to build (an empty collection). The index's
    definition exists once ``create_index`` returns, which is all loading needs, and
    ``load_collection`` waits for the load itself.
    """
    client.create_index(name, index, sync=False)
    client.load_collection(name)

"""The in-memory tag table and row map answer filters exactly as the database query they replace."""

from __future__ import annotations

import numpy as np
import pytest

from same_search.index.rows import RowMap
from same_search.index.tags import TagTable
from same_search.records import NewItem, NewLibrary
from same_search.store.db import Store


def reference(items: dict[int, tuple[int, int]], tags: tuple[int, int], match_all: bool) -> set[int]:
    wanted = [t for t in tags if t]
    hits = set()
    for key, pair in items.items():
        found = [t in pair for t in wanted]
        if (all(found) if match_all else any(found)) if wanted else True:
            hits.add(key)
    return hits


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_adds_updates_removes_match_the_reference(seed):
    rng = np.random.default_rng(seed)
    rows = RowMap(capacity=16)
    table, items = TagTable(rows), {}
    for _ in range(30):
        keys = rng.integers(-2500, 2500, size=200)
        tags = rng.integers(0, 6, size=(200, 2)).astype(np.uint32)
        got_rows, _ = rows.add(keys)
        table.set(got_rows, tags)
        for key, pair in zip(keys.tolist(), tags.tolist(), strict=True):
            items[key] = tuple(pair)  # the last of a repeated key wins, as in the table
        gone = rng.integers(-2500, 2500, size=150)
        rows.remove(gone)
        for key in gone.tolist():
            items.pop(key, None)
        assert len(table) == len(items)
        for query in ((1, 0), (0, 2), (1, 2), (3, 3), (0, 0), (5, 4)):
            for match_all in (True, False):
                got = table.select(query, match_all)
                assert len(got) == len(set(got.tolist()))
                assert set(got.tolist()) == reference(items, query, match_all)


def test_row_map_lookups_survive_merges_and_re_adds():
    rows = RowMap()
    keys = np.arange(-10_000, 10_000, dtype=np.int64) * 7919  # past several merges
    first, fresh = rows.add(keys)
    assert fresh.all() and first.tolist() == list(range(20_000))
    assert (rows.rows_of(keys) == first).all()
    rows.remove(keys[:5000])
    assert (rows.rows_of(keys[:5000]) == -1).all() and len(rows) == 15_000
    again, fresh = rows.add(keys[:10])  # a re-added key gets a new row, the old one stays dead
    assert fresh.all() and (again >= 20_000).all()
    assert (rows.rows_of(keys[:10]) == again).all()
    same, fresh = rows.add(keys[100_00:100_05])  # live keys keep their row
    assert not fresh.any() and (same == first[10_000:10_005]).all()
    restored = RowMap.restore(*rows.state())
    assert (restored.rows_of(keys) == rows.rows_of(keys)).all() and len(restored) == len(rows)


def test_row_map_is_compact():
    """No Python object per item: the arrays are all there is (1M keys in well under 40 MB)."""
    rows = RowMap()
    rows.add(np.arange(1_000_000, dtype=np.int64) * 3)
    rows.add(np.arange(10, dtype=np.int64) * 3 + 1)
    arrays = rows.keys.nbytes + rows.live.nbytes + rows._sorted_keys.nbytes + rows._sorted_rows.nbytes
    assert arrays < 40e6 and len(rows._recent) < 200_000


async def keys_with_tags(store: Store, lib_id: int, tags: tuple[int, int], match_all: bool) -> set[int]:
    """The SQL filter the tag table replaced: keys carrying every or any of the non-zero tags."""
    wanted = [t for t in tags if t != 0]
    clauses = (" AND " if match_all else " OR ").join(["(tag1=? OR tag2=?)"] * len(wanted))
    params = [lib_id, *(t for tag in wanted for t in (tag, tag))]
    async with store.reader.execute(f"SELECT key FROM items WHERE lib_id=? AND ({clauses})", params) as cur:
        return {int(row[0]) for row in await cur.fetchall()}


async def test_tag_table_fed_by_the_store_equals_the_sql_filter(tmp_path):
    """The table as the daemon fills it (replayed rows, then updates and removals) selects the
    very keys the SQL filter it replaced selects, at broad, medium and narrow selectivity."""
    rng = np.random.default_rng(5)
    store = Store(tmp_path / "db.sqlite3")
    await store.open()
    try:
        lib = await store.create_library(NewLibrary("lib", "m", 4, "fp"))
        keys = rng.choice(1 << 40, 3000, replace=False).astype(np.int64) - (1 << 39)
        tag1 = np.where(rng.random(3000) < 0.5, 1, rng.integers(10, 40, 3000))  # tag 1: ~50%
        tag2 = np.where(rng.random(3000) < 0.02, 2, np.where(rng.random(3000) < 0.001, 3, 0))
        vector = np.full(4, 0.5, "<f4")

        async def batches():
            yield [
                NewItem(int(k), b"", None if i % 50 == 0 else (int(a), int(b)), vector)
                for i, (k, a, b) in enumerate(zip(keys, tag1, tag2, strict=True))
            ]

        await store.insert_items(lib, batches())
        rows = RowMap()
        table = TagTable(rows)
        async for chunk_keys, _, tags, _ in store.tagged_vectors_since(lib.id, 0, 4, chunk=700):
            table.set(rows.add(chunk_keys)[0], tags)
        for key in keys[:40].tolist():  # updates, as LocalBackend.update_item applies them
            await store.update_item(lib.id, key, None, (3, 1))
            table.set(rows.rows_of([key]), np.array([[3, 1]], np.uint32))
        removed, _ = await store.remove_items(lib.id, keys[40:90].tolist())
        rows.remove(removed)
        for query in ((1, 0), (2, 0), (3, 0), (1, 2), (2, 3), (0, 3), (17, 1)):
            for match_all in (True, False):
                sql = await keys_with_tags(store, lib.id, query, match_all)
                assert set(table.select(query, match_all).tolist()) == sql, (query, match_all)
    finally:
        await store.close()

"""The store on a real SQLite file: what concurrent callers get back is their own row."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from same_search.records import AlreadyExists, LibraryGone, NewItem, NewLibrary
from same_search.store.db import Store

#: A read that keeps the reader connection busy for a while (a long export or page, say).
LONG_READ = (
    "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < 2000000) SELECT count(*) FROM n"
)


async def test_concurrent_job_creations_each_get_their_own_id(tmp_path: Path):
    store = Store(tmp_path / "db.sqlite3")
    await store.open()
    try:
        busy_reader = asyncio.create_task(store.reader.execute_fetchall(LONG_READ))
        sources = [f"/photos/batch-{i}" for i in range(8)]
        ids = await asyncio.gather(*(store.create_job("lib", "dir", source, 0) for source in sources))
        await busy_reader
        assert len(set(ids)) == len(sources), ids
        for job_id, source in zip(ids, sources, strict=True):
            (row,) = await store.jobs(job_id)
            assert row.source == source
    finally:
        await store.close()


async def test_a_write_into_a_deleted_library_is_library_gone_not_already_exists(tmp_path: Path):
    """A refused foreign key (the library was deleted meanwhile) and a key already stored are two
    different answers: 103 and 101 upstairs."""
    store = Store(tmp_path / "db.sqlite3")
    await store.open()
    try:
        row = await store.create_library(NewLibrary("lib", "m", 4, "f"))
        vector = np.array([1, 0, 0, 0], np.float32)
        await store.add_item(row.id, 1, b"", None, vector)
        with pytest.raises(AlreadyExists):
            await store.add_item(row.id, 1, b"", None, vector)
        await store.delete_library(row.id)
        with pytest.raises(LibraryGone):
            await store.add_item(row.id, 2, b"", None, vector)

        async def batches():
            yield [NewItem(3, b"", None, vector)]

        with pytest.raises(LibraryGone):
            await store.insert_items(row, batches())
        assert await store.count(row.id) == 0
    finally:
        await store.close()

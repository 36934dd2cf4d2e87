"""The store on a real SQLite file: what concurrent callers get back is their own row."""

from __future__ import annotations

import asyncio
from pathlib import Path

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

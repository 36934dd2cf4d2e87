"""The re-embed ledger: jobs that move a library to another model, and the vectors they made.

A job embeds every item's kept original with the new model into ``reembed_vectors``, a chunk per
transaction; those rows are its progress, so a restart resumes after them. The switch itself
(``Store.switch_model``) copies them into the items in one transaction.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

from same_search.records import LibraryRow, ReembedJobRow
from same_search.store.database import Database, Statement
from same_search.store.items import vector_blob

_REEMBED_COLUMNS = (
    "id, lib_id, appid, model_name, model_id, dim, fingerprint, status, total, done, resumed, "
    "resumed_at, message, created_at, updated_at"
)


class ReembedStore(Database):
    """Tables ``reembed_jobs`` and ``reembed_vectors``."""

    async def create_reembed_job(
        self, row: LibraryRow, model_name: str, model_id: str, dim: int, fingerprint: str, total: int
    ) -> int:
        """A running job for ``row``; leftover vectors of an earlier job are dropped first."""
        now = time.time()
        async with self._write_lock:
            job_id = await self._write(
                [
                    ("DELETE FROM reembed_vectors WHERE lib_id=?", (row.id,)),
                    (
                        "INSERT INTO reembed_jobs(lib_id, appid, model_name, model_id, dim, fingerprint, "
                        "status, total, created_at, updated_at) VALUES (?,?,?,?,?,?,'running',?,?,?)",
                        (row.id, row.appid, model_name, model_id, dim, fingerprint, total, now, now),
                    ),
                ]
            )
        return int(job_id)  # type: ignore[arg-type]

    async def reembed_jobs(self, job_id: int | None = None, status: str | None = None) -> list[ReembedJobRow]:
        """Re-embed jobs, newest first (one by id, or those with a status)."""
        sql, params = f"SELECT {_REEMBED_COLUMNS} FROM reembed_jobs WHERE 1=1", []
        if job_id is not None:
            sql, params = sql + " AND id=?", [*params, job_id]
        if status is not None:
            sql, params = sql + " AND status=?", [*params, status]
        async with self.reader.execute(sql + " ORDER BY id DESC", params) as cur:
            return [ReembedJobRow(*row) for row in await cur.fetchall()]

    async def save_reembed_job(self, job: ReembedJobRow) -> None:
        """Persist a job's status, counters and message; a job that ends without switching
        (cancelled, failed) drops the vectors it made, so the library is as it was."""
        statements: list[Statement] = [
            (
                "UPDATE reembed_jobs SET status=?, total=?, done=?, resumed=?, resumed_at=?, message=?, "
                "updated_at=? WHERE id=?",
                (
                    job.status,
                    job.total,
                    job.done,
                    job.resumed,
                    job.resumed_at,
                    job.message,
                    time.time(),
                    job.id,
                ),
            )
        ]
        if job.status in ("cancelled", "failed"):
            statements.append(("DELETE FROM reembed_vectors WHERE lib_id=?", (job.lib_id,)))
        async with self._write_lock:
            await self._write(statements)

    async def reembed_pending(
        self, lib_id: int, limit: int, after_seq: int = 0
    ) -> list[tuple[int, str | None, int]]:
        """(key, kept original, seq) of items with no vector of the new model yet, oldest first,
        from ``after_seq`` on: a job's cursor, so each chunk does not walk again over every item
        done before it (quadratic in the library's size, and on the reader every search shares)."""
        async with self.reader.execute(
            "SELECT i.key, i.original, i.seq FROM items i WHERE i.lib_id=? AND i.seq>? AND NOT EXISTS "
            "(SELECT 1 FROM reembed_vectors r WHERE r.lib_id=i.lib_id AND r.key=i.key) "
            "ORDER BY i.seq LIMIT ?",
            (lib_id, after_seq, limit),
        ) as cur:
            return [(int(key), original, int(seq)) for key, original, seq in await cur.fetchall()]

    async def reembed_done(self, lib_id: int) -> int:
        """Items of a library that have their new vector (stale rows of removed items excluded)."""
        async with self.reader.execute(
            "SELECT count(*) FROM reembed_vectors r WHERE r.lib_id=? AND EXISTS "
            "(SELECT 1 FROM items i WHERE i.lib_id=r.lib_id AND i.key=r.key)",
            (lib_id,),
        ) as cur:
            return int((await cur.fetchone())[0])  # type: ignore[index]

    async def save_reembedded(self, lib_id: int, vectors: Sequence[tuple[int, np.ndarray]]) -> None:
        """Keep new-model vectors of some items (one transaction: a restart resumes after them)."""
        async with self._write_lock:
            await self._write(
                [
                    (
                        "INSERT OR REPLACE INTO reembed_vectors(lib_id, key, vector) VALUES (?,?,?)",
                        (lib_id, key, vector_blob(vector)),
                    )
                    for key, vector in vectors
                ]
            )

"""The local backend's database: every table family of one SQLite file, joined.

Each family keeps its own module and class over the same connections and writer lock
(``database.Database``): items with their kept originals (``items``, ``originals``), the reads an
index is loaded from (``vectors``), projections, index tuning, the re-embed ledger and the import-job ledger
(``jobs``, which a daemon whose libraries live elsewhere opens alone). What spans families lives
here: deleting a library with everything in it, and switching a library to another model.
"""

from __future__ import annotations

import dataclasses
import time

from same_search.records import LibraryRow, ReembedIncomplete, ReembedJobRow
from same_search.store.items import ItemStore
from same_search.store.jobs import JobStore
from same_search.store.projections import ProjectionStore
from same_search.store.reembeds import ReembedStore
from same_search.store.tuning import TuningStore
from same_search.store.vectors import VectorReads


class Store(ItemStore, VectorReads, ProjectionStore, TuningStore, ReembedStore, JobStore):
    """All persistent state of a daemon with the local backend."""

    async def delete_library(self, lib_id: int) -> None:
        """Delete a library and everything in it (items, removals, thumbnails cascade)."""
        async with self._write_lock:
            kept = await self._original_sizes(await self._originals_of(lib_id))
            await self._write(
                [
                    ("DELETE FROM reembed_vectors WHERE lib_id=?", (lib_id,)),
                    ("DELETE FROM reembed_jobs WHERE lib_id=?", (lib_id,)),
                    ("DELETE FROM thumbnails WHERE lib_id=?", (lib_id,)),
                    ("DELETE FROM local_features WHERE lib_id=?", (lib_id,)),
                    ("DELETE FROM removals WHERE lib_id=?", (lib_id,)),
                    ("DELETE FROM projections WHERE lib_id=?", (lib_id,)),
                    ("DELETE FROM index_tuning WHERE lib_id=?", (lib_id,)),
                    ("DELETE FROM learned_spaces WHERE lib_id=?", (lib_id,)),
                    ("DELETE FROM items WHERE lib_id=?", (lib_id,)),
                    ("DELETE FROM libraries WHERE id=?", (lib_id,)),
                    *self._unreferenced_statements(kept),
                ]
            )
            await self._drop_unreferenced(kept)

    async def switch_model(self, row: LibraryRow, job: ReembedJobRow) -> LibraryRow:
        """The switch, in ONE transaction: every item's vector, the library's model, dimension and
        fingerprint, and the job's status. :class:`ReembedIncomplete` (nothing changed) when an
        item still lacks its new vector. Every item's seq moves above every seq handed out so far
        (old seq + the current top, order kept), so no snapshot of the old vectors counts as
        holding the new ones."""
        async with self._write_lock:
            async with self.reader.execute(
                "SELECT count(*) FROM items i WHERE i.lib_id=? AND NOT EXISTS "
                "(SELECT 1 FROM reembed_vectors r WHERE r.lib_id=i.lib_id AND r.key=i.key)",
                (row.id,),
            ) as cur:
                missing = int((await cur.fetchone())[0])  # type: ignore[index]
            if missing:
                raise ReembedIncomplete(f"{missing} items have no vector of the new model yet")
            base = self._seq
            async with self._transaction() as conn:
                await conn.execute(
                    "UPDATE items SET vector=r.vector, seq=?+items.seq FROM reembed_vectors r "
                    "WHERE r.lib_id=items.lib_id AND r.key=items.key AND items.lib_id=?",
                    (base, row.id),
                )
                async with conn.execute(
                    "SELECT count(*), coalesce(max(seq), 0) FROM items WHERE lib_id=?", (row.id,)
                ) as cur:
                    count, top = await cur.fetchone()  # type: ignore[misc]
                await conn.execute(
                    "UPDATE libraries SET model_id=?, dim=?, fingerprint=? WHERE id=?",
                    (job.model_id, job.dim, job.fingerprint, row.id),
                )
                await conn.execute("DELETE FROM reembed_vectors WHERE lib_id=?", (row.id,))
                await conn.execute(
                    "UPDATE reembed_jobs SET status='done', done=?, total=?, message='', updated_at=? "
                    "WHERE id=?",
                    (count, count, time.time(), job.id),
                )
            self._seq = max(self._seq, int(top))
        return dataclasses.replace(row, model_id=job.model_id, dim=job.dim, fingerprint=job.fingerprint)

"""Index projections: the reduction each large library learned from a sample of its vectors."""

from __future__ import annotations

import time

import numpy as np

from same_search.index.projection import Projection
from same_search.store.database import Database
from same_search.store.vectors import is_vector


class ProjectionStore(Database):
    """Table ``projections`` (one per library), and the sample a projection is learned from."""

    async def sample_vectors(self, lib_id: int, dim: int, limit: int) -> np.ndarray:
        """Up to ``limit`` stored vectors spread evenly over the library's insertion order (every
        n-th seq, read through the seq index), to learn a projection from."""
        async with self.reader.execute("SELECT count(*) FROM items WHERE lib_id=?", (lib_id,)) as cur:
            total = int((await cur.fetchone())[0])  # type: ignore[index]
        step = max(1, total // max(limit, 1))
        async with self.reader.execute(
            "SELECT vector FROM items WHERE lib_id=? AND seq % ? = 0 LIMIT ?", (lib_id, step, limit)
        ) as cur:
            rows = [r[0] for r in await cur.fetchall() if is_vector(r[0], dim)]
        if len(rows) < min(limit, total) // 2:  # seqs shared with other libraries: take the first ones
            async with self.reader.execute(
                "SELECT vector FROM items WHERE lib_id=? LIMIT ?", (lib_id, limit)
            ) as cur:
                rows = [r[0] for r in await cur.fetchall() if is_vector(r[0], dim)]
        return np.frombuffer(b"".join(rows), "<f4").reshape(len(rows), dim).astype(np.float32)

    async def save_projection(self, lib_id: int, projection: Projection, sample_size: int) -> None:
        """Make ``projection`` the library's (replacing any earlier one), durably."""
        mean, components = projection.to_blobs()
        async with self._write_lock:
            await self._write(
                [
                    (
                        "INSERT OR REPLACE INTO projections(lib_id, model_fingerprint, fingerprint, "
                        "native_dim, dim, mean, components, sample_size, created_at) "
                        "VALUES (?,?,?,?,?,?,?,?,?)",
                        (
                            lib_id,
                            projection.model_fingerprint,
                            projection.fingerprint,
                            projection.native_dim,
                            projection.dim,
                            mean,
                            components,
                            sample_size,
                            time.time(),
                        ),
                    )
                ]
            )

    async def projection(self, lib_id: int) -> Projection | None:
        """The library's stored projection, or None; a damaged one raises ValueError."""
        async with self.reader.execute(
            "SELECT mean, components, native_dim, dim, model_fingerprint, fingerprint "
            "FROM projections WHERE lib_id=?",
            (lib_id,),
        ) as cur:
            row = await cur.fetchone()
        if row is None:
            return None
        mean, components, native_dim, dim, model_fingerprint, fingerprint = row
        return Projection.from_blobs(mean, components, native_dim, dim, model_fingerprint, fingerprint)

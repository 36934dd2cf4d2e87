"""Index projections: the reduction each large library learned from a sample of its vectors."""

from __future__ import annotations

import time

import numpy as np

from same_search.index.projection import Projection
from same_search.index.space import LearnedSpace
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

    async def _one_row(self, sql: str, lib_id: int) -> tuple | None:
        async with self.reader.execute(sql, (lib_id,)) as cur:
            return await cur.fetchone()

    async def projection(self, lib_id: int) -> Projection | None:
        """The library's stored projection, or None; a damaged one raises ValueError."""
        row = await self._one_row(
            "SELECT mean, components, native_dim, dim, model_fingerprint, fingerprint "
            "FROM projections WHERE lib_id=?",
            lib_id,
        )
        if row is None:
            return None
        mean, components, native_dim, dim, model_fingerprint, fingerprint = row
        return Projection.from_blobs(mean, components, native_dim, dim, model_fingerprint, fingerprint)

    # ---- learned spaces (index/space.py) ---------------------------------------------------------

    async def choose_space(self, lib_id: int, learned: bool, weight: float) -> None:
        """Record the library's space: learned (its fitted projection, if any, is kept) or native."""
        if learned:
            sql = (
                "INSERT INTO learned_spaces(lib_id, chosen_at, weight) VALUES (?,?,?) "
                "ON CONFLICT(lib_id) DO NOTHING"
            )
            args: tuple = (lib_id, time.time(), weight)
        else:
            sql, args = "DELETE FROM learned_spaces WHERE lib_id=?", (lib_id,)
        async with self._write_lock:
            await self._write([(sql, args)])

    async def save_space(self, lib_id: int, space: LearnedSpace) -> None:
        """Store the library's fitted space (the library chose the learned space before)."""
        mean, components = space.projection.to_blobs()
        p = space.projection
        async with self._write_lock:
            await self._write(
                [
                    (
                        "INSERT INTO learned_spaces(lib_id, chosen_at, weight, model_fingerprint, "
                        "fingerprint, native_dim, dim, mean, components, items, fitted_at) "
                        "VALUES (?,?,?,?,?,?,?,?,?,?,?) ON CONFLICT(lib_id) DO UPDATE SET "
                        "weight=excluded.weight, model_fingerprint=excluded.model_fingerprint, "
                        "fingerprint=excluded.fingerprint, native_dim=excluded.native_dim, "
                        "dim=excluded.dim, mean=excluded.mean, components=excluded.components, "
                        "items=excluded.items, fitted_at=excluded.fitted_at",
                        (
                            lib_id,
                            time.time(),
                            space.weight,
                            p.model_fingerprint,
                            p.fingerprint,
                            p.native_dim,
                            p.dim,
                            mean,
                            components,
                            space.items,
                            space.fitted_at,
                        ),
                    )
                ]
            )

    async def learned_space(self, lib_id: int) -> tuple[bool, LearnedSpace | None]:
        """(whether the library chose its learned space, the fitted space or None); a damaged
        projection raises ValueError."""
        row = await self._one_row(
            "SELECT weight, mean, components, native_dim, dim, model_fingerprint, fingerprint, items, "
            "fitted_at FROM learned_spaces WHERE lib_id=?",
            lib_id,
        )
        if row is None:
            return False, None
        weight, mean, components, native_dim, dim, model_fingerprint, fingerprint, items, fitted_at = row
        if mean is None:
            return True, None
        projection = Projection.from_blobs(mean, components, native_dim, dim, model_fingerprint, fingerprint)
        return True, LearnedSpace(projection, float(weight), int(items), float(fitted_at))

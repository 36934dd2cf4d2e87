"""Index tuning: each library's measured recall and the search depth chosen for it."""

from __future__ import annotations

import dataclasses

from same_search.index.recall import Tuning
from same_search.store.database import Database, in_list

_FIELDS = [field.name for field in dataclasses.fields(Tuning)]


class TuningStore(Database):
    """Table ``index_tuning`` (one row per library)."""

    async def save_tuning(self, lib_id: int, tuning: Tuning) -> None:
        """Make ``tuning`` the library's (replacing an earlier one), durably."""
        values = [lib_id, *(getattr(tuning, name) for name in _FIELDS)]
        columns = ", ".join(["lib_id", *_FIELDS])
        sql = f"INSERT OR REPLACE INTO index_tuning({columns}) VALUES ({in_list(len(values))})"
        async with self._write_lock:
            await self._write([(sql, values)])

    async def tuning(self, lib_id: int) -> Tuning | None:
        """The library's last measurement, or None."""
        async with self.reader.execute(
            f"SELECT {', '.join(_FIELDS)} FROM index_tuning WHERE lib_id=?", (lib_id,)
        ) as cur:
            row = await cur.fetchone()
        if row is None:
            return None
        stored = Tuning(*row)
        return dataclasses.replace(stored, flat=bool(stored.flat))  # SQLite keeps 0 / 1

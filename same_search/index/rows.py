"""key <-> row of one library's index, in numpy arrays (no Python object per item).

Everything an index keeps per item (its tags, its native vector on disk, its node in a reduced
graph) lives at the item's row. Rows are handed out in insertion order and never reused: a
removal only marks its row dead, until a rebuild starts a fresh map.

A dict of a million ints costs about 100 bytes per item, which alone would blow the memory
budget of a large library (1.5 KB per item, docs/operations.md). Here a key lookup is a binary
search in a sorted key array (8 + 4 bytes per item), plus a small dict of the keys added since
the sorted arrays were last rebuilt, merged once it grows past an eighth of the library.
"""

from __future__ import annotations

import numpy as np

#: Fewest recent keys before they are merged into the sorted arrays.
MERGE_MIN = 4096


class RowMap:
    """Rows of one index: row -> key, which rows are live, and key -> live row."""

    def __init__(self, capacity: int = 1024) -> None:
        capacity = max(capacity, 16)
        self.keys = np.zeros(capacity, np.int64)  # row -> key
        self.live = np.zeros(capacity, bool)  # row -> live
        self.used = 0  # rows handed out, dead ones included
        self._count = 0
        self._sorted_keys = np.empty(0, np.int64)
        self._sorted_rows = np.empty(0, np.int32)
        self._recent: dict[int, int] = {}

    def __len__(self) -> int:
        return self._count

    @property
    def capacity(self) -> int:
        """Rows allocated (arrays grow by doubling)."""
        return len(self.keys)

    def rows_of(self, keys: np.ndarray | list[int]) -> np.ndarray:
        """The live row of each key, -1 where it is not live."""
        keys = np.asarray(keys, np.int64).reshape(-1)
        rows = np.full(len(keys), -1, np.int64)
        if len(self._sorted_keys) and len(keys):
            pos = np.minimum(np.searchsorted(self._sorted_keys, keys), len(self._sorted_keys) - 1)
            hit = self._sorted_keys[pos] == keys
            rows[hit] = self._sorted_rows[pos[hit]]
        if self._recent:
            for i, key in enumerate(keys.tolist()):
                row = self._recent.get(key)
                if row is not None:
                    rows[i] = row
        valid = rows >= 0
        valid[valid] = self.live[rows[valid]] & (self.keys[rows[valid]] == keys[valid])
        rows[~valid] = -1
        return rows

    def add(self, keys: np.ndarray | list[int]) -> tuple[np.ndarray, np.ndarray]:
        """Rows for ``keys``: their live row if they have one, else a new one.

        Returns (rows, fresh) where ``fresh`` marks the keys that got a new row. A key repeated
        within ``keys`` gets one row.
        """
        keys = np.asarray(keys, np.int64).reshape(-1)
        rows = self.rows_of(keys)
        fresh = rows < 0
        if fresh.any():
            new_keys, first = np.unique(keys[fresh], return_index=True)
            order = np.argsort(first, kind="stable")  # rows in the order keys came
            new_keys = new_keys[order]
            start = self.used
            self._grow(start + len(new_keys))
            new_rows = np.arange(start, start + len(new_keys))
            self.keys[new_rows] = new_keys
            self.live[new_rows] = True
            self.used += len(new_keys)
            self._count += len(new_keys)
            self._recent.update(zip(new_keys.tolist(), new_rows.tolist(), strict=True))
            lookup = dict(zip(new_keys.tolist(), new_rows.tolist(), strict=True))
            rows[fresh] = [lookup[k] for k in keys[fresh].tolist()]
            seen = set()
            for i in np.flatnonzero(fresh).tolist():  # only the first of a repeated key is fresh
                if int(keys[i]) in seen:
                    fresh[i] = False
                seen.add(int(keys[i]))
            if len(self._recent) > max(MERGE_MIN, self._count // 8):
                self._merge()
        return rows, fresh

    def remove(self, keys: np.ndarray | list[int]) -> np.ndarray:
        """Mark the live rows of ``keys`` dead; returns those rows."""
        rows = self.rows_of(keys)
        rows = np.unique(rows[rows >= 0])
        self.live[rows] = False
        self._count -= len(rows)
        return rows

    def live_rows(self) -> np.ndarray:
        """Every live row, ascending."""
        return np.flatnonzero(self.live[: self.used])

    def _grow(self, needed: int) -> None:
        if needed <= len(self.keys):
            return
        size = max(needed, 2 * len(self.keys))
        keys, live = np.zeros(size, np.int64), np.zeros(size, bool)
        keys[: self.used], live[: self.used] = self.keys[: self.used], self.live[: self.used]
        self.keys, self.live = keys, live

    def _merge(self) -> None:
        """Rebuild the sorted arrays from the live rows (dropping dead ones) and empty the dict."""
        rows = self.live_rows()
        keys = self.keys[rows]
        order = np.argsort(keys, kind="stable")
        self._sorted_keys, self._sorted_rows = keys[order], rows[order].astype(np.int32)
        self._recent = {}

    def state(self) -> tuple[np.ndarray, np.ndarray]:
        """(keys, live) of the rows handed out, for a snapshot."""
        return self.keys[: self.used].copy(), self.live[: self.used].copy()

    @classmethod
    def restore(cls, keys: np.ndarray, live: np.ndarray) -> RowMap:
        """The map a snapshot recorded."""
        self = cls(len(keys) + 1024)
        n = len(keys)
        self.keys[:n], self.live[:n] = keys, live
        self.used, self._count = n, int(live.sum())
        self._merge()
        return self

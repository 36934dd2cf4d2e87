"""Every live item's two tags in memory, so a tag filter is a vector scan, not a database query.

A filtered search used to read every matching key from SQLite on every query: with a tag that
half of a 1M library carries, 500k rows per search. Two uint32 columns at the item's row of the
index's :class:`RowMap` cost 8 bytes per item and answer a filter over a million items in a few
milliseconds with numpy. Dead rows keep their tags; the map's live mask hides them.
"""

from __future__ import annotations

import numpy as np

from same_search.index.rows import RowMap


class TagTable:
    """row -> (tag1, tag2), sharing the rows of an index's :class:`RowMap`."""

    def __init__(self, rows: RowMap) -> None:
        self.rows = rows
        self._tags = np.zeros((rows.capacity, 2), np.uint32)

    def __len__(self) -> int:
        return len(self.rows)

    def set(self, rows: np.ndarray, tags: np.ndarray | None) -> None:
        """Tags of ``rows``; ``tags`` is (n, 2), zeros meaning none (None: none at all)."""
        if len(self._tags) < self.rows.capacity:
            grown = np.zeros((self.rows.capacity, 2), np.uint32)
            grown[: len(self._tags)] = self._tags
            self._tags = grown
        rows = np.asarray(rows, np.int64)
        if tags is None:
            self._tags[rows] = 0
        else:
            self._tags[rows] = np.asarray(tags, np.uint32).reshape(-1, 2)

    def of(self, rows: np.ndarray) -> np.ndarray:
        """(n, 2) tags of ``rows``."""
        return self._tags[np.asarray(rows, np.int64)]

    def mask(self, tags: tuple[int, int], match_all: bool) -> np.ndarray:
        """Live rows carrying every (``match_all``) or any of the non-zero ``tags``, as a bool
        array over the rows handed out.

        The same rule as the database query it replaces: a wanted tag matches either column.
        """
        used = self.rows.used
        live = self.rows.live[:used]
        wanted = [t for t in tags if t != 0]
        if not wanted:
            return live.copy()
        table = self._tags[:used]
        hits = [(table[:, 0] == t) | (table[:, 1] == t) for t in wanted]
        found = np.logical_and.reduce(hits) if match_all else np.logical_or.reduce(hits)
        return found & live

    def select(self, tags: tuple[int, int], match_all: bool) -> np.ndarray:
        """Keys of the live items matching the filter."""
        return self.rows.keys[np.flatnonzero(self.mask(tags, match_all))]

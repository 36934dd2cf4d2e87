"""An in-memory int8 copy of a reduced index's native vectors, to screen thousands of candidates.

A reduced index re-ranks its graph's candidates with the native float32 vectors read from disk:
about 3 us a candidate (a ``preadv`` of 5 KB and its share of the product at 1280-d). On a
catalogue of tight clusters that is too dear at the depth the target needs: at 100k items of
such a catalogue the 256-d graph kept recall@10 0.963 with 3,200 candidates and reached 0.989
only with 6,400, 28 ms a search of which about 17 were the native reads (docs/operations.md,
"Recall"). The native ranking of the candidates, not the graph, is what these catalogues need,
and an int8 copy of the native vectors ranks them almost as the float32 ones do: over a whole
100k library the true ten neighbours of a query rank at most 31st by int8 score (18th at the
99th percentile). So a deep search scores its candidates with this copy in RAM, and only the
best :func:`kept` of them are read from disk and re-ranked in float32: the scores returned stay
the exact native cosines.

The copy costs ``native_dim + 4`` bytes an item (128 MB at 100k of 1280-d): a library holds one
only while its tuned depth screens (candidates above ``SCREEN_FROM``); the 1M libraries of the
shipped defaults never do. It is not saved: it is filled from the native file when needed.
"""

from __future__ import annotations

import numpy as np

from same_search.index.int8_rows import PRODUCTS_KERNEL, Int8Rows

#: Candidate depths above this are screened (the deepest one re-ranked natively in full).
SCREEN_FROM = 1600
#: Candidates re-ranked natively after the screen: at least this many, and a sixteenth of the
#: screened (the int8 rank of a true neighbour stays far below either).
KEEP_MIN = 200
KEEP_SHARE = 16


def kept(screened: int) -> int:
    """How many of ``screened`` candidates are re-ranked natively after the screen."""
    return max(KEEP_MIN, screened // KEEP_SHARE)  # read at call time: tests lower them


class Screen:
    """int8 codes of each row's native vector with the row's scale (code x scale = value); the
    codes are only ever read a few thousand given rows at a time: a gather and torch's int8
    product (index/int8_rows.py, :data:`PRODUCTS_KERNEL`)."""

    def __init__(self, capacity: int, native_dim: int) -> None:
        self.codes = Int8Rows(capacity, native_dim, kernel=PRODUCTS_KERNEL)
        self.scales = np.zeros(capacity, np.float32)

    @property
    def nbytes(self) -> int:
        """Bytes held."""
        return int(self.codes.nbytes + self.scales.nbytes)

    def set(self, rows: np.ndarray, vectors: np.ndarray) -> None:
        """Store the codes of ``vectors`` (n x native_dim) at ``rows``, growing when needed."""
        rows = np.asarray(rows, np.int64)
        if not len(rows):
            return
        vectors = np.asarray(vectors, np.float32)
        peak = np.abs(vectors).max(axis=1)
        scale = np.where(peak > 0, peak / 127.0, 1.0).astype(np.float32)
        self.codes.set(rows, np.clip(np.rint(vectors / scale[:, None]), -127, 127).astype(np.int8))
        self._grow(len(self.codes))
        self.scales[rows] = scale

    def scores(self, rows: np.ndarray, query: np.ndarray) -> np.ndarray:
        """Approximate native scores of ``rows`` against ``query`` (within a few 1e-3).

        The query is coded as int8 too and the products summed in int32 (127 x 127 x 1280 fits):
        3,200 rows of 1280 codes in 1.6 ms (index/int8_rows.py).
        """
        query = np.asarray(query, np.float32)
        peak = float(np.abs(query).max())
        scale = peak / 127.0 if peak > 0 else 1.0
        coded = np.rint(query / scale).astype(np.int8)
        rows = np.asarray(rows, np.int64)
        dots = self.codes.products(coded, rows)
        return dots.astype(np.float32) * self.scales[rows] * np.float32(scale)

    def best(self, rows: np.ndarray, query: np.ndarray, count: int) -> np.ndarray:
        """The ``count`` of ``rows`` that score highest (any order)."""
        if len(rows) <= count:
            return rows
        scores = self.scores(rows, query)
        return rows[np.argpartition(-scores, count - 1)[:count]]

    def _grow(self, needed: int) -> None:
        """``needed`` scales: as many as the codes have rows (they grow by themselves)."""
        if needed <= len(self.scales):
            return
        scales = np.zeros(needed, np.float32)
        scales[: len(self.scales)] = self.scales
        self.scales = scales

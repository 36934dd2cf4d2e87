"""Fixed-width rows of codes in RAM, growing as rows are written, that faiss can scan in place.

The int8 reduced vectors (index/int8_rows.py) and the sign bits (index/signs.py) are both rows of
bytes that are written one row at a time and scanned all at once. faiss scans the codes vector of
its own index, so where a table is given one, its rows *are* that vector: it is resized in place
and viewed as a numpy array, never copied (adding zero vectors instead would encode a float32
copy of every new slot: 512 MB for 100k rows of 1280-d).
"""

from __future__ import annotations

import numpy as np

try:
    import faiss
except ImportError:  # pragma: no cover - the project's environment has it
    faiss = None


#: A table grows by a ``1 / HEADROOM`` share of its rows (at least 1,024 rows) beyond what it needs.
HEADROOM = 8


class CodeTable:
    """``capacity`` rows (growing) of ``width`` codes of ``dtype``; held in the code vector named
    ``vector`` of the faiss ``index`` where one is given (uint8 there), else in a numpy array.
    Slots not written yet hold ``fill``; no read ever selects one."""

    def __init__(
        self, capacity: int, width: int, dtype: type, index: object = None, vector: str = "", fill: int = 0
    ) -> None:
        self._index = index
        self._vector = vector
        self._fill = fill
        self._stored = np.zeros((0, width), np.uint8 if index is not None else dtype)
        self._grow(max(capacity, 16))

    def __len__(self) -> int:
        return len(self._stored)

    @property
    def nbytes(self) -> int:
        """Bytes held."""
        return int(self._stored.nbytes)

    def _writable(self, rows: np.ndarray) -> np.ndarray | slice:
        """Where ``rows`` are in the table, with room made for every one of them: a slice when
        they are consecutive (a load writes every row at once: no gather of a million indices),
        else the rows as int64."""
        rows = np.asarray(rows, np.int64)
        if not len(rows):
            return rows
        first, last = int(rows[0]), int(rows[-1])
        self._grow(int(rows.max()) + 1)
        if last - first + 1 == len(rows) and (len(rows) == 1 or bool((np.diff(rows) == 1).all())):
            return slice(first, last + 1)
        return rows

    def _faiss_best(self, query: np.ndarray, allowed: np.ndarray, count: int) -> np.ndarray:
        """faiss's scan of the ``allowed`` rows (a bool mask over the first rows, passed as a
        bitmap) for the float32 or packed ``query``: its best ``count`` rows. On this thread alone
        (an OpenMP setting of the calling thread only; index/int8_rows.py says why)."""
        mask = np.zeros(len(self._stored), bool)
        mask[: len(allowed)] = allowed
        bitmap = np.packbits(mask, bitorder="little")  # referenced until the search returns
        selector = faiss.IDSelectorBitmap(len(mask), faiss.swig_ptr(bitmap))
        faiss.omp_set_num_threads(1)
        params = faiss.SearchParameters(sel=selector)
        _, labels = self._index.search(query.reshape(1, -1), count, params=params)
        return labels[0][labels[0] >= 0].astype(np.int64)

    def _grow(self, needed: int) -> None:
        """Room for ``needed`` rows (with faiss: its code vector resized in place, the array a view).

        An eighth more than needed, not double: every new slot is written (faiss's vector is
        zero-filled, an offset code filled with 128), so its pages are resident at once, and a
        library grown by doubling to 1.6M slots for 1M items held 0.6M rows of codes for nothing.
        """
        if needed <= len(self._stored):
            return
        capacity = max(needed, len(self._stored) + max(len(self._stored) // HEADROOM, 1024))
        width = self._stored.shape[1]
        if self._index is None:
            grown = np.full((capacity, width), self._fill, self._stored.dtype)
            grown[: len(self._stored)] = self._stored
            self._stored = grown
            return
        old = self._index.ntotal
        codes = getattr(self._index, self._vector)
        codes.resize(capacity * width)
        self._index.ntotal = capacity
        self._stored = faiss.rev_swig_ptr(codes.data(), codes.size()).reshape(capacity, width)
        self._stored[old:] = self._fill

"""Every row's reduced vector as sign bits, and the rows nearest a query by Hamming distance.

A reduced index walks a graph for its candidates, and a walk toward a query that is not one of
its nodes (a new photo: a search by image) ends among near-ties: at 1M descriptor-like items an
edited copy of a stored photo found the photo first 0.753 of the time at ef 4,096 where exact
search did 0.790, although the photo ranked at most 8th in an exact search of the 256-d reduced
space (docs/benchmarks.md, "A second source of candidates"). The loss is the walk's, not the
reduction's, so a second source that does not walk closes it: a scan of every row's sign bits
(one bit a reduced coordinate: 32 bytes an item at 256-d), whose best few thousand by Hamming
distance are then scored with the rows' int8 reduced codes (index/flat.py) and the best of those
joined to the walk's candidates before the native re-rank.

Kernels (one query against 1M rows of 256 bits, the best 3,200 kept): faiss's
``IndexBinaryFlat`` 4 to 6 ms on one thread of the 2-core AMD EPYC (avx2 fma), the filter as an
``IDSelectorBitmap``; numpy's XOR and ``bitwise_count`` where faiss does not import.
"""

from __future__ import annotations

import numpy as np

from same_search.index.code_table import CodeTable

try:
    import faiss
except ImportError:  # pragma: no cover - the project's environment has it
    faiss = None

#: The kernel of the scan (the fastest that imports).
KERNEL = "faiss" if faiss is not None else "numpy"


def sign_bits(codes: np.ndarray) -> np.ndarray:
    """The packed sign bits (1: positive) of int8 codes, one row per item."""
    return np.packbits(np.asarray(codes) > 0, axis=-1)


class SignCodes(CodeTable):
    """``capacity`` rows (growing) of ``dim`` sign bits, packed 8 to a byte (the last byte's
    unused bits zero in every row and query alike)."""

    def __init__(self, capacity: int, dim: int, kernel: str = KERNEL) -> None:
        self.dim = dim
        self.width = -(-dim // 8)  # bytes a row
        self.kernel = kernel
        index = faiss.IndexBinaryFlat(8 * self.width) if kernel == "faiss" else None
        super().__init__(capacity, self.width, np.uint8, index, "xb")

    def set(self, rows: np.ndarray, codes: np.ndarray) -> None:
        """Store the sign bits of ``codes`` (n x dim int8) at ``rows``, growing when needed."""
        if len(rows):
            where = self._writable(rows)  # may grow the table: before self._stored is read
            self._stored[where] = sign_bits(codes)

    def nearest(self, query: np.ndarray, allowed: np.ndarray, count: int) -> np.ndarray:
        """The (at most) ``count`` rows whose ``allowed`` (a bool mask over the first rows) is
        set nearest the reduced ``query`` by Hamming distance, in any order."""
        allowed = np.asarray(allowed, bool)
        if int(allowed.sum()) <= count:
            return np.flatnonzero(allowed)
        bits = sign_bits(np.asarray(query).reshape(1, -1))
        if self.kernel == "faiss":
            return self._faiss_best(bits, allowed, count)
        distances = np.bitwise_count(self._stored[: len(allowed)] ^ bits).sum(axis=1, dtype=np.int32)
        distances[~allowed] = np.iinfo(np.int32).max
        return np.argpartition(distances, count - 1)[:count].astype(np.int64)

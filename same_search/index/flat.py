"""A flat scan of every row's reduced vector, as int8 in RAM: the candidates of a deep search
without a graph walk.

On a catalogue of tight clusters the depth the target recall needs is a large share of the
library: at 100k items the 256-d graph had to walk ef 4,800 (three times wider under a 50% tag
filter) for recall@10 0.98, 26 ms at the median over HTTP on an idle machine and 39 / 62 ms at
the 99th percentile. An *exact* 256-d ranking keeps the true ten among its first 3,200
candidates 0.984 of the time and among 4,800 0.991 (int8 coordinates keep exactly as many as
float32), and scanning every row costs the same whatever the filter: the filter is a mask of the
same pass, so a filtered search is exact and never widened. The candidates are then screened
with the int8 copy of the native vectors (index/screen.py) and the best re-ranked natively.

Kernels (one query against 100k rows of 256 int8 codes, the 2-core Xeon with AVX-512 VNNI and AMX,
2026-12-07, load average 8 to 9 from other work, medians): faiss's scalar-quantizer scan
(``QT_8bit_direct_signed``, SIMD, the filter as an ``IDSelectorBitmap``, the best K kept in its own
heap) 3 to 5 ms for K 1,600 to 4,800 (2 to 5 ms at best); torch's ``_int_mm`` 8 to 9 ms (3.4 at best)
plus 0.2 ms to select; numpy's int32 ``einsum`` 24 ms; a float32 BLAS product of the same
vectors (100 MB) 15 to 20 ms. So faiss when it imports, else torch, else numpy
(:data:`KERNEL`). Codes are coordinates times 127, as the graph's sketches: a reduced vector's
coordinates lie within [-1, 1]. ``dim`` bytes an item (256 at the shipped ``reduce_dim``).

One thread: the index thread searches one query at a time, and OpenMP's default of every core
made each scan wait for the other core's share (26 ms instead of 4 at 30k items, load 5 to 7,
with torch's threads and the rest of the machine busy). faiss's OpenMP thread count is set in
the calling thread only (an OpenMP setting per thread), so nothing else in the process changes.
For the same reason the torch fallback is the last resort: torch's thread pool is the process's.
"""

from __future__ import annotations

import numpy as np

try:
    import faiss
except ImportError:  # pragma: no cover - the project's environment has it
    faiss = None

try:
    import torch
except ImportError:  # pragma: no cover - a dependency of the daemon
    torch = None

#: The kernel that scans (the fastest that imports, module docstring).
KERNEL = "faiss" if faiss is not None else "torch" if torch is not None else "numpy"
#: torch's ``_int_mm`` wants more than 16 rows, and column counts that are multiples of 8.
_TORCH_MIN_ROWS = 17
_TORCH_COLUMNS = 8


def quantise(values: np.ndarray) -> np.ndarray:
    """Reduced coordinates (within [-1, 1]) as int8 codes."""
    return np.clip(np.rint(np.asarray(values, np.float32) * 127.0), -127, 127).astype(np.int8)


def query_codes(query: np.ndarray) -> np.ndarray:
    """The query scaled to use int8's whole range (the ranking does not depend on its scale)."""
    query = np.asarray(query, np.float32)
    peak = float(np.abs(query).max())
    return np.rint(query * (127.0 / peak)).astype(np.int8) if peak > 0 else np.zeros(len(query), np.int8)


class FlatScan:
    """Every row's reduced vector as int8, and the best rows of a scan of them all.

    With faiss the codes live in its index (stored as ``code + 128`` in uint8, faiss's
    convention) and are written through a view of its memory; otherwise in an int8 array.
    """

    def __init__(self, capacity: int, dim: int, kernel: str = KERNEL) -> None:
        self.dim = dim
        self.kernel = kernel
        self._offset = 128 if kernel == "faiss" else 0
        if kernel == "faiss":
            quantiser = faiss.ScalarQuantizer.QT_8bit_direct_signed
            self._faiss = faiss.IndexScalarQuantizer(dim, quantiser, faiss.METRIC_INNER_PRODUCT)
            self._faiss.train(np.zeros((1, dim), np.float32))  # direct codes: nothing to learn
        self._stored = np.zeros((0, dim), np.uint8 if self._offset else np.int8)
        self._grow(max(capacity, 16))

    @property
    def nbytes(self) -> int:
        """Bytes held."""
        return int(self._stored.nbytes)

    def set(self, rows: np.ndarray, codes: np.ndarray) -> None:
        """Store ``codes`` (n x dim int8, :func:`quantise`) at ``rows``, growing when needed."""
        rows = np.asarray(rows, np.int64)
        if not len(rows):
            return
        self._grow(int(rows.max()) + 1)
        self._stored[rows] = (np.asarray(codes, np.int16) + self._offset).astype(self._stored.dtype)

    def codes(self, rows: np.ndarray) -> np.ndarray:
        """The int8 codes of ``rows``."""
        return (self._stored[np.asarray(rows, np.int64)].astype(np.int16) - self._offset).astype(np.int8)

    def best(self, query: np.ndarray, allowed: np.ndarray, count: int) -> np.ndarray:
        """The (at most) ``count`` rows whose ``allowed`` is set that score highest against the
        reduced ``query``, in any order; ``allowed`` is a bool mask over the first rows."""
        allowed = np.asarray(allowed, bool)
        if int(allowed.sum()) <= count:
            return np.flatnonzero(allowed)
        coded = query_codes(query)
        if self.kernel == "faiss":
            return self._best_faiss(coded, allowed, count)
        scores = self._scores(coded, len(allowed)).astype(np.float32)
        scores[~allowed] = -np.inf
        return np.argpartition(-scores, count - 1)[:count].astype(np.int64)

    def _best_faiss(self, coded: np.ndarray, allowed: np.ndarray, count: int) -> np.ndarray:
        mask = np.zeros(len(self._stored), bool)
        mask[: len(allowed)] = allowed
        bitmap = np.packbits(mask, bitorder="little")
        selector = faiss.IDSelectorBitmap(len(mask), faiss.swig_ptr(bitmap))
        faiss.omp_set_num_threads(1)  # this thread's setting only (below)
        _, labels = self._faiss.search(
            coded.astype(np.float32).reshape(1, -1), count, params=faiss.SearchParameters(sel=selector)
        )
        found = labels[0]
        return found[found >= 0].astype(np.int64)

    def _scores(self, coded: np.ndarray, used: int) -> np.ndarray:
        """int32 products of the first ``used`` rows with the coded query (torch or numpy)."""
        codes = self._stored[:used]
        if self.kernel == "torch" and used >= _TORCH_MIN_ROWS and self.dim % 8 == 0:
            right = torch.zeros((self.dim, _TORCH_COLUMNS), dtype=torch.int8)
            right[:, 0] = torch.from_numpy(coded)
            return torch._int_mm(torch.from_numpy(codes), right)[:, 0].numpy()
        return np.einsum("ij,j->i", codes, coded, dtype=np.int32, casting="unsafe")

    def _grow(self, needed: int) -> None:
        """Room for ``needed`` rows (with faiss: its index grown, the array a view of its codes)."""
        if needed <= len(self._stored):
            return
        capacity = max(needed, 2 * len(self._stored))
        if self.kernel != "faiss":
            grown = np.zeros((capacity, self.dim), np.int8)
            grown[: len(self._stored)] = self._stored
            self._stored = grown
            return
        # Zero vectors are coded 128 (the value 0): a slot not written yet scores 0 and the
        # scan's mask never allows it anyway.
        self._faiss.add(np.zeros((capacity - self._faiss.ntotal, self.dim), np.float32))
        raw = faiss.rev_swig_ptr(self._faiss.codes.data(), self._faiss.codes.size())
        self._stored = raw.reshape(capacity, self.dim)

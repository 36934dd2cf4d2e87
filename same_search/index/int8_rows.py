"""Rows of int8 codes in RAM and the two ways they are read: the best rows of a scan of all of
them (index/flat.py) and the products of a few thousand given rows (index/screen.py).

The two reads want different kernels (the 2-core Xeon with AVX-512 VNNI and AMX, 2026-12-07, an
idle machine, medians):

- **A scan of every row** (100k rows of 256 codes, the best 3,200 kept): faiss's scalar-quantizer
  scan (``QT_8bit_direct_signed``, SIMD, the allowed rows as an ``IDSelectorBitmap``, the best
  kept in its own heap) 3.0 ms; torch's ``_int_mm`` then ``argpartition`` 3.4; a float32 BLAS
  product of float32 copies 2.6 but four times the memory. So the scan's rows live in a faiss
  ``IndexScalarQuantizer`` where faiss imports (the codes stored as ``code + 128``, written
  through a view of its memory), else torch's product, else numpy's.
- **The products of given rows** (3,200 of 100k rows of 1280 codes): a gather of those rows and
  torch's ``_int_mm`` (VNNI/AMX int8 products into int32) 1.6 ms; faiss with the rows as an
  ``IDSelectorBatch`` 2.6 (it walks all 100k rows asking the selector); numpy's gather and int32
  ``einsum`` 2.5. So :data:`PRODUCTS_KERNEL` is torch's, numpy's without it, and numpy's on a
  CPU without VNNI or AMX, where ``_int_mm`` is a scalar loop: on the AMD EPYC (avx2 fma) 3,200
  rows of 256 codes took 12 to 14 ms with it, 0.32 ms with numpy's ``einsum`` (same_search/cpu.py).

faiss runs on one thread: the index thread searches one query at a time, and OpenMP's default of
every core made each scan wait for the other core's share (26 ms instead of 4 at 30k items, load
5 to 7); its OpenMP thread count is set in the calling thread only (an OpenMP setting per thread),
so nothing else in the process changes. torch's products use the process's torch threads (the
embedder's plan: one on two cores).
"""

from __future__ import annotations

import numpy as np

from same_search.cpu import INT8_MATMUL
from same_search.index.code_table import CodeTable

try:
    import faiss
except ImportError:  # pragma: no cover - the project's environment has it
    faiss = None

try:
    import torch
except ImportError:  # pragma: no cover - a dependency of the daemon
    torch = None

#: Whether torch's int8 product is fast here (VNNI or AMX: same_search/cpu.py).
_TORCH_INT8 = torch is not None and INT8_MATMUL
#: The kernel of a scan of every row (the fastest that imports, module docstring).
KERNEL = "faiss" if faiss is not None else "torch" if _TORCH_INT8 else "numpy"
#: The kernel of the products of given rows (module docstring).
PRODUCTS_KERNEL = "torch" if _TORCH_INT8 else "numpy"
#: torch's ``_int_mm`` wants more than 16 rows, and column counts that are multiples of 8.
_TORCH_MIN_ROWS = 17
_TORCH_COLUMNS = 8


class Int8Rows(CodeTable):
    """``capacity`` rows (growing) of ``dim`` int8 codes."""

    def __init__(self, capacity: int, dim: int, kernel: str = KERNEL) -> None:
        self.dim = dim
        self.kernel = kernel
        self._offset = 128 if kernel == "faiss" else 0
        index = None
        if kernel == "faiss":
            quantiser = faiss.ScalarQuantizer.QT_8bit_direct_signed
            index = faiss.IndexScalarQuantizer(dim, quantiser, faiss.METRIC_INNER_PRODUCT)
            index.train(np.zeros((1, dim), np.float32))  # direct codes: nothing to learn
        # faiss keeps code + 128 (an empty slot: 128, the code 0).
        super().__init__(capacity, dim, np.int8, index, "codes", fill=self._offset)

    def set(self, rows: np.ndarray, codes: np.ndarray) -> None:
        """Store ``codes`` (n x dim int8) at ``rows``, growing when needed."""
        if not len(rows):
            return
        rows = self._writable(rows)
        codes = np.ascontiguousarray(codes, np.int8)
        # faiss keeps code + 128: flipping an int8 code's top bit gives that byte.
        self._stored[rows] = codes.view(np.uint8) ^ 0x80 if self._offset else codes

    def codes(self, rows: np.ndarray) -> np.ndarray:
        """The int8 codes of ``rows`` (a copy)."""
        return self._as_codes(self._stored[np.asarray(rows, np.int64)])

    def first_codes(self, used: int) -> np.ndarray:
        """A copy of the int8 codes of the first ``used`` rows, in one pass (a snapshot's)."""
        return self._as_codes(self._stored[:used].copy() if not self._offset else self._stored[:used])

    def _as_codes(self, stored: np.ndarray) -> np.ndarray:
        """Stored bytes as int8 codes: a new array where the storage is offset, else ``stored``."""
        return (stored ^ 0x80).view(np.int8) if self._offset else stored

    def best(self, coded: np.ndarray, allowed: np.ndarray, count: int) -> np.ndarray:
        """The (at most) ``count`` rows whose ``allowed`` (a bool mask over the first rows) is
        set with the highest products with the int8 query ``coded``, in any order."""
        allowed = np.asarray(allowed, bool)
        if int(allowed.sum()) <= count:
            return np.flatnonzero(allowed)
        if self.kernel == "faiss":
            return self._faiss_best(np.asarray(coded, np.float32), allowed, count)
        scores = self._all_products(coded, len(allowed)).astype(np.float32)
        scores[~allowed] = -np.inf
        return np.argpartition(-scores, count - 1)[:count].astype(np.int64)

    def products(self, coded: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """The int32 products of ``rows`` with the int8 query ``coded``, in their order: the rows
        gathered, then one product (module docstring)."""
        gathered = np.take(self._stored, np.asarray(rows, np.int64), axis=0)
        if self._offset:  # faiss's codes are code + 128: flipping the top bit gives the int8 code
            gathered ^= 0x80
        return self._product(gathered.view(np.int8), coded)

    def _all_products(self, coded: np.ndarray, used: int) -> np.ndarray:
        """int32 products of the first ``used`` rows with the coded query (torch or numpy)."""
        return self._product(self._stored[:used], coded)

    def _product(self, codes: np.ndarray, coded: np.ndarray) -> np.ndarray:
        """int32 products of the int8 matrix ``codes`` with the int8 query ``coded``: torch's
        ``_int_mm`` where it can (:data:`PRODUCTS_KERNEL`, its shape rules), else numpy's."""
        if (
            self.kernel != "numpy"
            and PRODUCTS_KERNEL == "torch"
            and len(codes) >= _TORCH_MIN_ROWS
            and self.dim % _TORCH_COLUMNS == 0
        ):
            right = torch.zeros((self.dim, _TORCH_COLUMNS), dtype=torch.int8)
            right[:, 0] = torch.from_numpy(np.asarray(coded, np.int8))
            return torch._int_mm(torch.from_numpy(np.ascontiguousarray(codes)), right)[:, 0].numpy()
        return np.einsum("ij,j->i", codes, coded, dtype=np.int32, casting="unsafe")

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
vectors (100 MB) 15 to 20 ms. So faiss when it imports, else torch (with VNNI or AMX), else numpy
(index/int8_rows.py, :data:`KERNEL`). Codes are coordinates times 127:
a reduced vector's coordinates lie within [-1, 1]. ``dim`` bytes an item (256 at the shipped ``reduce_dim``).
"""

from __future__ import annotations

import numpy as np

from same_search.index.int8_rows import KERNEL, Int8Rows

__all__ = ["KERNEL", "FlatScan", "quantise", "query_codes"]


def quantise(values: np.ndarray) -> np.ndarray:
    """Reduced coordinates (within [-1, 1]) as int8 codes."""
    return np.clip(np.rint(np.asarray(values, np.float32) * 127.0), -127, 127).astype(np.int8)


def query_codes(query: np.ndarray) -> np.ndarray:
    """The query scaled to use int8's whole range (the ranking does not depend on its scale)."""
    query = np.asarray(query, np.float32)
    peak = float(np.abs(query).max())
    return np.rint(query * (127.0 / peak)).astype(np.int8) if peak > 0 else np.zeros(len(query), np.int8)


class FlatScan(Int8Rows):
    """Every row's reduced vector as int8 (:func:`quantise`), and the best rows of a scan."""

    def best(self, query: np.ndarray, allowed: np.ndarray, count: int) -> np.ndarray:  # type: ignore[override]
        """The (at most) ``count`` rows whose ``allowed`` is set that score highest against the
        reduced ``query`` (float32), in any order; ``allowed`` is a bool mask over the first rows."""
        return super().best(query_codes(query), allowed, count)

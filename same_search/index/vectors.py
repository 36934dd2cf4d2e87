"""What a storable vector is: ``dim`` finite float32 values of unit L2 norm.

Every vector the daemon keeps came out of the embedder, which normalises in fp32, so its norm is
1 to within about 1e-6. The tolerance below is a thousand times that, and still small enough that
a vector passing it cannot move a score by more than 0.1%: anything outside it was not made by
an embedder (a tampered export, a damaged row) and would rank wrongly for every query (a 1e30 row
comes first for all of them, a NaN row poisons distances). Writes refuse such vectors, imports
refuse such files, and loading a library that holds one sets the library aside instead.
"""

from __future__ import annotations

import numpy as np

#: Largest accepted | ||v|| - 1 |.
NORM_TOLERANCE = 1e-3


def row_problems(matrix: np.ndarray, dim: int) -> list[tuple[int, str]]:
    """``(row, problem)`` for every row of ``matrix`` that is not a finite unit vector of ``dim``."""
    if matrix.ndim != 2:
        return [(0, f"vectors must form a matrix, got {matrix.ndim} dimensions")]
    if matrix.shape[1] != dim:
        return [(row, f"{matrix.shape[1]} values, expected {dim}") for row in range(matrix.shape[0])]
    wide = matrix.astype(np.float64)  # float32 values squared stay finite in float64
    finite = np.isfinite(wide).all(axis=1)
    safe = np.where(finite[:, None], wide, 0.0)
    norms = np.sqrt(np.einsum("ij,ij->i", safe, safe))
    problems = []
    for row in np.flatnonzero(~finite | (np.abs(norms - 1.0) > NORM_TOLERANCE)).tolist():
        if not finite[row]:
            problems.append((row, "vector holds NaN or infinite values"))
        else:
            problems.append((row, f"vector norm is {norms[row]:.6g}, not 1 (vectors are L2-normalised)"))
    return problems


def vector_problem(vector: np.ndarray, dim: int) -> str | None:
    """Why one vector cannot be stored, or None."""
    if vector.ndim != 1:
        return f"a vector must be one row, got shape {vector.shape}"
    found = row_problems(vector.reshape(1, -1), dim)
    return found[0][1] if found else None

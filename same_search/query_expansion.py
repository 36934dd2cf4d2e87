"""Average query expansion (QE) for search: rank by the query averaged with its best hits.

A photo's descriptor sees one view of its object; averaging it with the ``n`` best hits' stored
vectors (themselves photos of the same thing, usually) gives a query that finds the other photos
of that kind of object better (docs/quality.md: +1.3 points of P@10, +5 of mAP@100 with n = 2 on
the harder category protocol).

What a hit's ``score`` means does not change: it stays the cosine similarity to the query as sent,
so ``min_score``, the near-duplicate floor and clients' thresholds keep their meaning. Only the
order comes from the expanded query, with one exception: hits whose own score reaches the
library's near-duplicate floor (the exact copy, an edited copy) come first, best score first, as
they would without expansion. Below that prefix the scores of a page need not descend.

This module holds the pure parts (the expanded vector, the merged order); the search path in
:mod:`same_search.libraries` does the I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from same_search.errors import shown

#: The most hits one query may be averaged with (config and per-request override alike).
MAX_EXPANSION = 10
#: The expanded search is asked this many times deeper at most when ``min_score`` drops hits.
MAX_DEEPENING = 8
#: Hits scoring at least this are the query itself (a stored copy, or the item searched by its
#: contsign): averaging them in would only weigh the query twice, so they never expand it.
IDENTICAL = 0.9999


def expanding_keys(found: Sequence[tuple[int, float]], n: int) -> list[int]:
    """The ``n`` best hits that expand the query, copies of the query itself left out."""
    return [key for key, score in found if score < IDENTICAL][:n]


def expanded_query(query: np.ndarray, neighbours: Sequence[np.ndarray]) -> np.ndarray:
    """The query plus its neighbours' vectors (equal weights), unit length again."""
    total = np.asarray(query, dtype=np.float32).ravel().copy()
    for vector in neighbours:
        total += np.asarray(vector, dtype=np.float32).ravel()
    norm = float(np.linalg.norm(total))
    return total / norm if norm > 0 else total


def near_duplicate_prefix(found: Sequence[tuple[int, float]], floor: float) -> list[tuple[int, float]]:
    """The leading hits of a plain (best-score-first) ranking that score at least ``floor``."""
    prefix = []
    for key, score in found:
        if score < floor:
            break
        prefix.append((key, score))
    return prefix


def merged_ranking(
    near_duplicates: Sequence[tuple[int, float]],
    expanded_keys: Iterable[int],
    original: dict[int, float],
    min_score: float | None = None,
) -> list[tuple[int, float]]:
    """The order a page is cut from: the near-duplicates first, then the expanded ranking
    without them; every hit carries its score against the original query (``original``), and
    those under ``min_score`` are left out."""
    seen = {key for key, _ in near_duplicates}
    ranking = list(near_duplicates)
    for key in expanded_keys:
        if key in seen or key not in original:
            continue
        seen.add(key)
        ranking.append((key, original[key]))
    if min_score is not None:
        ranking = [(key, score) for key, score in ranking if score >= min_score]
    return ranking


def with_unreached(
    ranking: list[tuple[int, float]], plain: Sequence[tuple[int, float]], min_score: float | None
) -> list[tuple[int, float]]:
    """``ranking`` followed by the plain search's hits (at or above ``min_score``) it lacks.

    The expanded search pulls towards the expanding hits' side; a hit scoring above
    ``min_score`` on the other side can lie deeper in it than the search may go, and would
    otherwise be missing from every page although a plain search returns it.
    """
    seen = {key for key, _ in ranking}
    rest = [hit for hit in plain if hit[0] not in seen and (min_score is None or hit[1] >= min_score)]
    return ranking + rest


def check_expansion(value: object, field: str = "query_expansion") -> int:
    """A valid expansion count (0 = off .. MAX_EXPANSION); ValueError naming the problem."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_EXPANSION:
        raise ValueError(f"{field} must be an integer from 0 (off) to {MAX_EXPANSION}, got {shown(value)}")
    return value

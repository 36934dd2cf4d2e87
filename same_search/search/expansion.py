"""Average query expansion (QE): rank by the query averaged with its best hits.

A photo's descriptor sees one view of its object; averaging it with the ``n`` best hits' stored
vectors (themselves photos of the same thing, usually) gives a query that finds the other photos
of that kind of object better (docs/quality.md, "Category protocol with distractors").

What a hit's ``score`` means does not change: it stays the cosine similarity to the query as sent,
so ``min_score``, the near-duplicate floor and clients' thresholds keep their meaning. Only the
order comes from the expanded query, with one exception: hits that are the query's picture by
their score alone (:func:`same_search.verify.decision.is_same_picture` without evidence, under
the library's floors: the exact copy, a lightly edited copy) come first, best score first, as
they would without expansion. Below that prefix the scores of a page need not descend.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from same_search.records import ItemRow, Library, TagFilter
from same_search.search.reads import LibraryReads, Ranked, at_least
from same_search.verify import decision

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


def same_picture_prefix(found: Sequence[tuple[int, float]], floors: decision.Floors) -> Ranked:
    """The leading hits of a plain (best-score-first) ranking that are the query's picture by
    their score alone."""
    prefix = []
    for key, score in found:
        if not decision.is_same_picture(score, None, floors):
            break
        prefix.append((key, score))
    return prefix


def merged_ranking(
    leading: Sequence[tuple[int, float]], expanded_keys: Iterable[int], original: dict[int, float]
) -> Ranked:
    """The order a page is cut from: ``leading`` first, then the expanded ranking without them;
    every hit carries its score against the original query (``original``)."""
    seen = {key for key, _ in leading}
    ranking = list(leading)
    for key in expanded_keys:
        if key in seen or key not in original:
            continue
        seen.add(key)
        ranking.append((key, original[key]))
    return ranking


def with_unreached(ranking: Ranked, plain: Ranked) -> Ranked:
    """``ranking`` followed by the plain search's hits it lacks, by score.

    The expanded search pulls towards the expanding hits' side; a hit scoring above
    ``min_score`` on the other side can lie deeper in it than the search may go, and would
    otherwise be missing from every page although a plain search returns it.
    """
    seen = {key for key, _ in ranking}
    return ranking + [hit for hit in plain if hit[0] not in seen]


async def expanded_ranking(
    reads: LibraryReads,
    lib: Library,
    vector: np.ndarray,
    plain: Ranked,
    n: int,
    want: int,
    tag_filter: TagFilter | None,
    min_score: float | None,
    floors: decision.Floors,
) -> tuple[Ranked, dict[int, ItemRow]]:
    """At least ``want`` hits (when there are) in query-expansion order, scored against the
    original query, and the rows the expanded searches read on the way.

    ``plain`` is the plain search's ranking (at least ``want`` deep, before ``min_score``): its
    best ``n`` hits, copies of the query aside, expand the query; its same-picture prefix leads;
    its scores are reused. Hits it did not reach have their score computed from their stored
    vector. When ``min_score`` leaves too few, the expanded search is asked deeper (at most
    ``MAX_DEEPENING`` times the page); the plain hits that even the deepest expanded search did
    not reach follow, by score.
    """
    leading = same_picture_prefix(plain, floors)
    if len(leading) >= want or len(plain) <= 1:  # expansion cannot change this page
        return at_least(plain, min_score), {}
    neighbours = await reads.vectors(lib, expanding_keys(plain, n))
    expanded = expanded_query(vector, list(neighbours.values()))
    query = np.asarray(vector, dtype=np.float32).ravel()
    original = dict(plain)
    rows: dict[int, ItemRow] = {}
    depth = want
    while True:
        second = await reads.nearest(lib, expanded, depth, tag_filter)
        rows.update(second.rows)
        unscored = [key for key, _ in second.found if key not in original]
        for key, stored in (await reads.vectors(lib, unscored)).items():
            original[key] = float(np.dot(query, stored))
        found = at_least(merged_ranking(leading, (key for key, _ in second.found), original), min_score)
        if len(found) >= want or len(second.found) < depth:
            return found, rows
        if depth >= want * MAX_DEEPENING:
            return with_unreached(found, at_least(plain, min_score)), rows
        depth *= 2

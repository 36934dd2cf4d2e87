"""One ranking per query, whatever the page: approximate searches that concatenate at any depth.

A graph walk finds a page's hits among candidates, and a deeper walk finds a different set: if each
page ranked candidates sized by its own depth, a client reading 50 at a time would see items twice,
or never, where pages meet. So candidate depths come in fixed tiers: the first walks ``first``
candidates and serves every page that ends within half of them (what such a page cost before); each
next tier exposes twice as many hits as the one before and walks four times that (the tail of a
walk is where it misses most); the last reads every item that can match (an exact scan), and reads
them at once when they are at most twice ``first``. A tier keeps the hits the tiers before it
exposed as they were and only appends its own candidates that sort after the last of them. A
candidate found only by a deeper walk that would sort into that prefix is left out: it is what the
shallower walk missed, and listing it later would make a score rise (a client reading until a
threshold stops there). Every depth therefore reads a prefix of one ranking, so successive pages
equal one long page, scores never rise and ``has_more`` is exact.

Cost and recall (the reduced index of tests/test_reduced_index.py's ``build``: 4,000 64-d
vectors, 300 re-ranked candidates): a page ending within ``first / 2`` costs one walk, as
before; one ending at 300 walks 300 + 1,200 candidates where it used to walk 600, and its
recall@300 is 0.992 (0.991 before). Tiers that exposed half of their walk cost recall there
(0.982): the head of a deep page comes from the shallow walk.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from same_search.index.exact import top_k


@dataclass(frozen=True)
class SearchDepth:
    """How deep one index searches: its graph's ef and its first tier of candidates.

    A full-dimension graph's first tier is its ef (the walk returns exact scores); a reduced
    graph re-ranks ``candidates`` of an ef-``ef`` walk natively. Both start from ``[index]`` and
    are then tuned per library until its measured recall holds (index/recall.py). ``flat``: a
    reduced index takes its candidates from a scan of every row instead of the graph
    (index/flat.py); ``ef`` is then not used. ``scan``: a reduced index also joins this many
    candidates from a scan of every row's sign bits to the walk's (index/signs.py: searches of new
    vectors); 0 for none.
    """

    ef: int
    candidates: int
    flat: bool = False
    scan: int = 0

    def for_new_vectors(self, factor: int, scan: int = 0) -> SearchDepth:
        """The depth for a vector that is not a stored item's: ``factor`` times deeper, ef up to
        :data:`NEW_VECTOR_EF` and candidates up to :data:`NEW_VECTOR_CANDIDATES` (never below this
        depth), joined by ``scan`` candidates of a sign-bit scan; a flat scan's unchanged (its
        candidates come from every row, not a walk).

        The tuning measures stored items, and a stored item is a node of the graph: its walk
        reaches its neighbourhood easily. A new photo lands between nodes, and at 1M the tuned
        depth found 0.950 of a held-out photo's true ten where stored items measured 0.997; four
        times deeper, 0.985 (docs/benchmarks.md, "The daemon end to end over HTTP: 1,000,000
        items").
        """
        if self.flat:
            return self
        if factor <= 1:
            return SearchDepth(self.ef, self.candidates, scan=scan)
        return SearchDepth(
            min(self.ef * factor, max(self.ef, NEW_VECTOR_EF)),
            min(self.candidates * factor, max(self.candidates, NEW_VECTOR_CANDIDATES)),
            scan=scan,
        )


#: The deepest walk and candidate count :meth:`SearchDepth.for_new_vectors` goes to by itself
#: (4 x the shipped reduced depth of 768 / 400 at 1M: 0.985 of held-out photos' true ten, 2 ms of
#: walk on one core; deeper rungs cost more than the forward pass they follow).
NEW_VECTOR_EF = 4096
NEW_VECTOR_CANDIDATES = 1600


#: depth -> (labels, native scores, complete): up to ``depth`` candidates in any order;
#: ``complete`` says they are every item that can match (an exact scan, or a short graph).
Tier = Callable[[int], tuple[np.ndarray, np.ndarray, bool]]


def stable_top(k: int, first: int, total: int, tier: Tier) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` first (labels, scores) of the query's one ranking (module docstring).

    Args:
        k: how deep the caller reads.
        first: the first tier's candidate depth (a page ending within ``first // 2`` costs one walk).
        total: how many items can match (the last tier reads them all).
        tier: the candidates of one depth.
    """
    labels = np.empty(0, np.uint64)
    scores = np.empty(0, np.float32)
    # Few enough to read all at once: exact, so nothing a walk could miss is left out.
    depth = total if total <= 2 * first else max(first, 2)
    exposed = depth // 2
    while True:
        depth = min(depth, total)
        found, found_scores, complete = tier(depth)
        complete = complete or depth >= total
        found = np.asarray(found, np.uint64)
        found_scores = np.asarray(found_scores, np.float32)
        keep = ~np.isin(found, labels)
        if len(labels):  # only what sorts after the prefix (ties by label, as top_k)
            last, last_label = scores[-1], labels[-1]
            keep &= (found_scores < last) | ((found_scores == last) & (found > last_label))
        room = (len(found) if complete else exposed) - len(labels)
        more, more_scores = top_k(found[keep], found_scores[keep], max(room, 0))
        labels = np.concatenate([labels, more])
        scores = np.concatenate([scores, more_scores])
        if len(labels) >= k or complete:
            return labels[:k], scores[:k]
        exposed *= 2
        depth = 4 * exposed

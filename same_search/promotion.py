"""Promote verified copies to the top of a search's ranking (opt-in, ``promote_same_picture``).

A global descriptor ranks a heavily edited copy (a photo of a screen, a sticker over a third, a
strong blur) below a look-alike now and then; the same-picture check (:mod:`same_search.verify`)
over the best few candidates tells the copy apart. Moving the confirmed candidates ahead of the
others lifts near-duplicate recall@1 on the strong edits from 0.927 to 0.978 on the development
protocol (docs/quality.md), at the cost of a local-feature extraction of the query and the
verification of :data:`decision.DEPTH` candidates per search.

Only the first :data:`decision.DEPTH` positions of a ranking can change, so pages that start past
them are the ranking's own and need no verification; scores are never changed.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from same_search.verify import decision

#: Ranking positions the check looks at (and the only ones promotion can reorder).
DEPTH = decision.DEPTH


def promoted(found: Sequence[tuple[int, float]], confirmed: Iterable[int]) -> list[tuple[int, float]]:
    """``found`` with its confirmed keys among the first :data:`DEPTH` moved to the front, best
    score first; every other position keeps its order."""
    chosen = set(confirmed)
    head = list(found[:DEPTH])
    first = sorted((hit for hit in head if hit[0] in chosen), key=lambda hit: -hit[1])
    return first + [hit for hit in head if hit[0] not in chosen] + list(found[DEPTH:])

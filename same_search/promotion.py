"""Promote verified copies to the top of a search's ranking (``promote_same_picture``).

A global descriptor ranks a heavily edited copy (a photo of a screen, a sticker over a third, a
strong blur) below a look-alike now and then; the same-picture check (:mod:`same_search.verify`)
over the best few candidates tells the copy apart. Moving the confirmed candidates ahead of the
others lifts near-duplicate recall@1 on the strong edits from 0.927 to 0.978 on the development
protocol (docs/quality.md), at the cost of a local-feature extraction of the query and the
verification of :data:`DEPTH` candidates per search.

When none of them is confirmed, the candidates down to :data:`DEEP_DEPTH` are screened
cheaply and the survivors checked under a stricter rule (:func:`decision.is_same_picture_deep`):
a 30% sticker or a photo of a screen can push the original below ten look-alikes.

The candidates are the **plain** ranking's best (by descending score), whatever order the page
is cut from: query expansion pulls the ranking towards the query's neighbourhood and can push a
heavily edited copy out of its first few (measured: recall@1 0.978 -> 0.959 when the expanded
ranking's head was checked instead). Scores are never changed.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from same_search.verify import decision

#: Candidates (of the plain ranking) the check looks at first.
DEPTH = decision.DEPTH
#: How deep it looks when none of those is the query's picture (screened, strict rule).
DEEP_DEPTH = decision.DEEP_DEPTH


def promoted(
    found: Sequence[tuple[int, float]], confirmed: Iterable[tuple[int, float]]
) -> list[tuple[int, float]]:
    """``confirmed`` hits first (best score first), then ``found`` without them, in its order.

    Every page of one search is cut from this same list, so pages concatenate without repeats
    or gaps whichever of them a confirmed hit would have landed on.
    """
    first = sorted(dict(confirmed).items(), key=lambda hit: -hit[1])
    chosen = {key for key, _ in first}
    return first + [hit for hit in found if hit[0] not in chosen]

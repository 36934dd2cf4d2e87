"""Promote confirmed copies to the top of a search's ranking (``promote_same_picture``).

A global descriptor ranks a heavily edited copy (a photo of a screen, a sticker over a third, a
strong blur) below a look-alike now and then; the same-picture decision
(:mod:`same_search.verify.decision`) over the best few candidates tells the copy apart. Moving the
confirmed candidates ahead of the others lifts near-duplicate recall@1 on strong edits
(docs/quality.md, "Near-duplicate recall@1 on strong edits"), at the cost of the query's local
features and the check of :data:`decision.DEPTH` candidates. When none of those is confirmed, the
candidates down to :data:`decision.DEEP_DEPTH` are screened and only strong geometry confirms
them (:data:`decision.DEEP`): a 30% sticker or a photo of a screen can push the original below
ten look-alikes.

The candidates are the **plain** ranking's best (by descending score), whatever order the page is
cut from: query expansion pulls the ranking towards the query's neighbourhood and can push a
heavily edited copy out of its first few. Scores are never changed.

The check is paid for only when it can change the answer: not when the best candidate is an
exact copy of the query (it leads already), not when no candidate scores within reach of any
floor of the decision (:attr:`decision.Floors.lowest`); the query's local features are
extracted only past those two tests.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass

from same_search.records import Library
from same_search.search.expansion import IDENTICAL
from same_search.search.reads import LibraryReads, Ranked
from same_search.verify import decision
from same_search.verify.service import QueryFeatures, SamePictureService, Verdict

#: The query's local features, extracted on first use (None: it has none).
FeaturesOnDemand = Callable[[], Awaitable[QueryFeatures | None]]
#: How a promotion ended (counted on /metrics): the best candidate was the query's exact copy, no
#: candidate was within reach of the decision, or the candidates were checked.
EXACT_COPY, OUT_OF_REACH, CHECKED = "exact_copy", "out_of_reach", "checked"


@dataclass(frozen=True)
class Promotion:
    """The candidates confirmed as the query's picture, and how that was found out."""

    copies: list[Verdict]
    outcome: str


def in_reach(head: Ranked, floors: decision.Floors = decision.SEARCH) -> bool:
    """Whether any candidate of a best-first ``head`` scores where ``floors`` can confirm it."""
    return bool(head) and head[0][1] >= floors.lowest


def exact_copies(head: Ranked) -> list[Verdict]:
    """The candidates that are the query's very picture by score (a stored copy of the query,
    or the item searched by its contsign): the same picture without a check."""
    return [Verdict(key, score, True, None) for key, score in head if score >= IDENTICAL]


async def confirmed(
    reads: LibraryReads,
    verifier: SamePictureService,
    lib: Library,
    head: Ranked,
    features: FeaturesOnDemand,
    floors: tuple[decision.Floors, decision.Floors] = (decision.SEARCH, decision.DEEP),
) -> Promotion:
    """The candidates of ``head`` (the plain ranking's best, ``min_score`` applied) that are the
    query's picture: the first :data:`decision.DEPTH` checked, the rest screened under the
    :data:`decision.DEEP` floors only when none of those is (``floors``: those two, refitted for
    a library's learned space)."""
    copies = exact_copies(head)
    if copies:
        return Promotion(copies, EXACT_COPY)
    if not in_reach(head, floors[0]):
        return Promotion([], OUT_OF_REACH)
    query = await features()
    verdicts = await judged(reads, verifier, lib, query, head, decision.DEPTH, floors)
    return Promotion([v for v in verdicts if v.same], CHECKED)


async def judged(
    reads: LibraryReads,
    verifier: SamePictureService,
    lib: Library,
    query: QueryFeatures | None,
    head: Ranked,
    depth: int,
    floors: tuple[decision.Floors, decision.Floors] = (decision.SEARCH, decision.DEEP),
) -> list[Verdict]:
    """Verdicts on a best-first ``head``: its first ``depth`` candidates checked under the search
    floors and, only when none of those is confirmed, the rest screened under the deep floors.

    Search's ``same_picture`` and promotion both look this way, so a copy that a 30% sticker
    pushed below look-alikes is found by either. The deeper slice is looked at only when the
    first one holds no copy (mostly searches with no copy at all: what they pay for it is the
    screen, :func:`same_search.verify.matching.screen_many`), and only strong geometry confirms
    there (:data:`decision.DEEP`): that far down a copy scores like a look-alike.
    """
    search_floors, deep_floors = floors
    first, deeper = head[:depth], head[depth:]
    stored = await reads.local_features(lib, [key for key, _ in first])
    verdicts = await verifier.judge(query, first, stored, search_floors)
    if deeper and query is not None and not any(v.same for v in verdicts) and in_reach(deeper, deep_floors):
        stored = await reads.local_features(lib, [key for key, _ in deeper])
        return verdicts + await verifier.judge(query, deeper, stored, deep_floors)
    return verdicts


def promoted(found: Sequence[tuple[int, float]], copies: Iterable[Verdict]) -> Ranked:
    """The ``copies`` first (best score first), then ``found`` without them, in its order.

    Every page of one search is cut from this same list, so pages concatenate without repeats
    or gaps whichever of them a confirmed hit would have landed on.
    """
    first = sorted({v.key: v.score for v in copies}.items(), key=lambda hit: -hit[1])
    chosen = {key for key, _ in first}
    return first + [hit for hit in found if hit[0] not in chosen]

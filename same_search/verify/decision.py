"""The same-picture decision: is a stored item the query's picture, possibly edited, or merely alike?

This module is the only place that answers that question. Search's ``same_picture``, promotion of
confirmed copies, the near-duplicate policy on add, the duplicates scan and query expansion's
leading near-duplicates all call :func:`is_same_picture` with the :class:`Floors` of their use;
nothing else compares a score or a geometry with a threshold of its own.

The geometric rule. A pair is the same picture when the agreeing keypoints (inliers of one
similarity transform: rotation, scale, shift, mirror) span at least :data:`MIN_COVERAGE` of the
area the two pictures share - so that a cluster in one small patch (a repeated texture) never
suffices - and

- at least :data:`STRONG_INLIERS` keypoints agree: strong geometric evidence, whatever else; or
- at least :data:`WEAK_INLIERS` agree, backed by one of two things:

  - a close global match: descriptor score at least :data:`WEAK_SCORE`; or
  - a clean geometry: at least :data:`MIN_INLIER_RATIO` of the tentative matches (those passing
    the ratio test) are inliers, spread over at least :data:`CLEAN_COVERAGE` of the shared area.

And whatever the tier, the agreement must reach beyond a small region both pictures share
(:func:`shares_more_than_a_region`): two different products of one catalogue that share a
woven label, a logo, a print repeat or a studio's props agree on one transform as firmly as an
edited copy does, but only there, while the rest of what both pictures show where they overlap
does not match. So the inliers must fall in at least :data:`MIN_SPREAD` of the cells of a 4 x 4
grid over the overlap that hold keypoints, and either span at least :data:`WHOLE_CONTENT` of the
content both pictures share (the inliers' convex hull over the hull of every keypoint in the
overlap) or be at least :data:`MIN_OVERLAP_SHARE` of the keypoints in the overlap; or else the
geometry must be clean (at least :data:`CLEAN_INLIER_RATIO` of the tentative matches inliers) with
at least :data:`CLEAN_OVERLAP_SHARE` of the overlap's keypoints agreeing over
:data:`CLEAN_CONTENT` of its content: a small, blurred copy keeps few keypoints, nearly all
matched, packed where its own content is (a shared label's matches come with stray ones that
disagree). The spread and
the hull ratio are the smaller of the two pictures', the share the larger (a blurred or small
copy keeps few keypoints of its own, most of them matched; ``Evidence``).

The coarse look. Where the working keypoints do not confirm a candidate, the two pictures'
coarse keypoints (found at 64 pixels, :data:`same_search.verify.local_features.COARSE_SIDE`) are
matched the same way: a strongly blurred copy keeps few of its sharp original's keypoints, but
at that size the blur is gone. Evidence found there (``Evidence.coarse``) passes the same rule
and besides needs at least :data:`STRONG_INLIERS` inliers that are at least
:data:`COARSE_INLIER_RATIO` of its tentative matches: at 64 pixels many look-alikes agree
somewhat, and only a near-complete agreement is a copy.

The one exception to the coverage floor: at least :data:`COMPLETE_SHARE` of every keypoint
either picture has are inliers (at least :data:`WEAK_INLIERS`) and the score is at least
:data:`WEAK_SCORE`. A small logo or product on a plain background keeps all its keypoints in one
corner; without this its exact copy was "not the same picture". A different picture sharing that
logo has keypoints elsewhere that do not agree.

The floors (one table, :data:`SEARCH`, :data:`DEEP`, :data:`ADD`, :func:`operator_floors`):

============================  =====================  ====================  ====================
use                           a pair the check       a pair the check      candidates asked
                              looks at needs         cannot look at*
============================  =====================  ====================  ====================
search (``same_picture``,     the rule, any score    score >= 0.95         the 10 best by score
promotion)                    from REACH (0.27) up                         (``same_picture``: as
                                                                           deep as its page)
either, past those, when      >= 40 inliers, or      never                 on to rank 50,
none of them is confirmed     >= 15 and 85% of the                         screened
                              matches, and coverage
                              and region only
add policy, duplicates scan   the rule, score        score >= 0.95         32 nearest (add),
(built-in floors)             >= 0.60                                      16 nearest or all
add policy, duplicates scan   the rule, score >= f   score >= f            pairs (scan)
(the operator's floor f)
query expansion's leading     -                      score >= the          the plain ranking's
near-duplicates                                      library's unchecked   head
                                                     floor
============================  =====================  ====================  ====================

(*) no local features on one side (stored before they existed, imported as bare vectors, a
backend that keeps none) or fewer than :data:`WEAK_INLIERS` keypoints (a flat gradient, a plain
logo, a tiny thumbnail: not even its exact copy could pass the rule). There the descriptor score
alone decides, so its floor is set for precision.

The thresholds of the rule were fitted on the development protocol of
``bench/eval_same_picture.py`` with its originals split in two by a hash of their name, the new
tier's settings chosen on one half and reported on the other (docs/quality.md, "Same picture",
has both halves, every variant tried and the cost). Stricter rather than best: a point of recall
on the development photos is not worth a looser rule on look-alikes they do not show.
"""

from __future__ import annotations

from dataclasses import dataclass

from same_search.verify.matching import Evidence

#: Candidates (best first by descriptor score) that a same-picture search verifies.
DEPTH = 10
#: The most candidates one search verifies (a page reaching further is cut there).
MAX_DEPTH = 50
#: When none of the first DEPTH is the query's picture, search's ``same_picture`` and promotion
#: look this deep for it (a screen first, :func:`same_search.verify.matching.screen`), under the
#: :data:`DEEP` floors: a copy that far down scores like a look-alike, so only strong geometry
#: may say otherwise.
DEEP_DEPTH = 50
#: A candidate past :data:`DEPTH` needs this many inliers, or :data:`STRONG_INLIERS` that are at
#: least :data:`CLEAN_INLIER_RATIO` of its tentative matches (besides the coverage and the
#: region veto): the copies a sticker or a photo of a screen pushed down that far kept 42 or
#: more, or nearly all their matches, on the development protocol; the catalogue studios and
#: print repeats found there 15-27 among many stray matches (fitted on half of its originals:
#: docs/quality.md, "Looking deeper, and a coarse look").
DEEP_INLIERS = 40
STRONG_INLIERS = 15
WEAK_INLIERS = 8
WEAK_SCORE = 0.80
MIN_INLIER_RATIO = 0.6
CLEAN_COVERAGE = 0.05
MIN_COVERAGE = 0.02
#: The coverage floor is waived when at least this share of every keypoint of both pictures
#: agrees (and the score is close): a small logo on a plain background has all its keypoints in
#: a corner, and its exact copy would otherwise never be the same picture.
COMPLETE_SHARE = 0.75
#: The inliers of the same picture fall in at least this share of the grid cells over the
#: overlap that hold keypoints (docs/quality.md, "Catalogue look-alikes": a shared label sits in
#: one cell, a studio's hanger and floor in a few at the edges) ...
MIN_SPREAD = 0.40
#: ... and span at least this much of the content both pictures share (hull over hull) ...
WHOLE_CONTENT = 0.40
#: ... or are at least this share of the keypoints in the overlap.
MIN_OVERLAP_SHARE = 0.10
#: Or nearly every tentative match is an inlier ...
CLEAN_INLIER_RATIO = 0.85
#: ... and they are this share of the overlap's keypoints ...
CLEAN_OVERLAP_SHARE = 0.20
#: ... over this much of its content.
CLEAN_CONTENT = 0.10
#: Coarse evidence needs at least :data:`STRONG_INLIERS` inliers that are at least this share
#: of its tentative matches (fitted on half of the development protocol's originals:
#: docs/quality.md, "Looking deeper, and a coarse look").
COARSE_INLIER_RATIO = 0.8
#: A pair the check cannot look at is the same picture by its score alone only from here.
FALLBACK_SCORE = 0.95
#: The built-in floor of the add policy and the duplicates scan for a pair the check looks at:
#: with the check behind it, 0.6 kept precision at 0.996 and caught 83% of strong edits, where
#: 0.95 caught 1% (docs/quality.md, "Near-duplicate floor on add").
VERIFIED_MIN_SCORE = 0.60
#: Search looks at candidates from this score up: the lowest-scoring edited copy the decision
#: confirmed on the development protocol scored 0.291 against its original, and searches in a
#: library of unrelated photos best-score below 0.27 about four times in ten
#: (``bench/eval_reach.py``); such a search needs no local features at all.
REACH = 0.27
#: The near-duplicate floor of add policies and scans, shown when the built-in floors apply.
DEFAULT_MIN_SCORE = FALLBACK_SCORE
#: The geometric rule in one line (reports, logs).
RULE = (
    f"(inliers >= {WEAK_INLIERS} and inliers >= {COMPLETE_SHARE} x keypoints and score >= "
    f"{WEAK_SCORE}) or (coverage >= {MIN_COVERAGE} and (inliers >= {STRONG_INLIERS} or "
    f"(inliers >= {WEAK_INLIERS} and (score >= {WEAK_SCORE} or (inliers >= {MIN_INLIER_RATIO} "
    f"x matches and coverage >= {CLEAN_COVERAGE}))))), all but the first tier with (spread >= "
    f"{MIN_SPREAD} and (content >= {WHOLE_CONTENT} or overlap share >= {MIN_OVERLAP_SHARE})) or "
    f"(inliers >= {CLEAN_INLIER_RATIO} x matches and overlap share >= {CLEAN_OVERLAP_SHARE} and "
    f"content >= {CLEAN_CONTENT})"
)


@dataclass(frozen=True)
class Floors:
    """The scores a pair needs besides its geometry: one row of the table in the module doc."""

    #: A pair the check looks at is judged only from this score up (below it: not the same).
    checked: float
    #: A pair the check cannot look at is the same picture when its score reaches this
    #: (None: never).
    unchecked: float | None
    #: Only strong geometry confirms (no score-backed tier, no exception): candidates deep in a
    #: ranking, where a copy scores like a look-alike.
    strong_only: bool = False
    #: The score that backs a weak geometry (the rule's score tier): WEAK_SCORE for native
    #: cosines; a library ranking in a learned space has its own (index/space.py).
    weak_score: float = WEAK_SCORE

    @property
    def lowest(self) -> float:
        """The lowest score at which any pair can be the same picture under these floors."""
        return self.checked if self.unchecked is None else min(self.checked, self.unchecked)


#: Search's ``same_picture`` and promotion's first :data:`DEPTH` candidates.
SEARCH = Floors(checked=REACH, unchecked=FALLBACK_SCORE)
#: The candidates past :data:`DEPTH` of ``same_picture`` and promotion (screened first).
DEEP = Floors(checked=REACH, unchecked=None, strong_only=True)
#: The add policy and the duplicates scan when neither the library nor the request sets a floor.
ADD = Floors(checked=VERIFIED_MIN_SCORE, unchecked=FALLBACK_SCORE)


def operator_floors(floor: float) -> Floors:
    """The floors when an operator or a request sets one (``dup_min_score``, a scan's
    ``min_score``): it applies to every pair, checked or not."""
    return Floors(checked=floor, unchecked=floor)


def verifiable(keypoints: int) -> bool:
    """Whether a picture with this many keypoints can pass the rule at all (see the table's *)."""
    return keypoints >= WEAK_INLIERS


def is_same_picture(score: float, evidence: Evidence | None, floors: Floors = SEARCH) -> bool:
    """Whether a pair scoring ``score`` with this geometric ``evidence`` is the same picture.

    ``evidence`` None means the check could not look at the pair (the table's *): its score
    alone decides, against ``floors.unchecked``.
    """
    if evidence is None:
        return floors.unchecked is not None and score >= floors.unchecked
    if score < floors.checked:
        return False
    if evidence.coarse and (
        evidence.inliers < STRONG_INLIERS or evidence.inliers < COARSE_INLIER_RATIO * evidence.matches
    ):
        return False
    if floors.strong_only:
        return (
            evidence.coverage >= MIN_COVERAGE
            and shares_more_than_a_region(evidence)
            and (
                evidence.inliers >= DEEP_INLIERS
                or (
                    evidence.inliers >= STRONG_INLIERS
                    and evidence.inliers >= CLEAN_INLIER_RATIO * evidence.matches
                )
            )
        )
    if _complete(score, evidence, floors.weak_score):
        return True
    if evidence.coverage < MIN_COVERAGE or not shares_more_than_a_region(evidence):
        return False
    if evidence.inliers >= STRONG_INLIERS:
        return True
    if evidence.inliers < WEAK_INLIERS:
        return False
    return score >= floors.weak_score or _clean(evidence)


def shares_more_than_a_region(evidence: Evidence) -> bool:
    """Whether the agreeing keypoints reach beyond a small region both pictures share.

    An edited copy matches much of what it shares with its original: its inliers are spread
    wherever either picture has content, and span most of that content or are a fair share of
    the keypoints there. Two products sharing a label, a logo, a print repeat or a studio's
    props match that region only, among the many keypoints of the rest of both pictures that do
    not agree.
    """
    if evidence.spread >= MIN_SPREAD and (
        evidence.content_coverage >= WHOLE_CONTENT or evidence.overlap_share >= MIN_OVERLAP_SHARE
    ):
        return True
    return (
        evidence.inliers >= CLEAN_INLIER_RATIO * evidence.matches
        and evidence.overlap_share >= CLEAN_OVERLAP_SHARE
        and evidence.content_coverage >= CLEAN_CONTENT
    )


def _complete(score: float, evidence: Evidence, weak_score: float = WEAK_SCORE) -> bool:
    """Nearly every keypoint either picture has agrees, backed by a close score: the same
    picture however small the area its keypoints span (a different picture sharing the logo
    has keypoints elsewhere that do not agree)."""
    return (
        evidence.inliers >= WEAK_INLIERS
        and evidence.keypoints > 0
        and evidence.inliers >= COMPLETE_SHARE * evidence.keypoints
        and score >= weak_score
    )


def _clean(evidence: Evidence) -> bool:
    """Nearly all tentative matches agree, over a fair part of the shared area."""
    return evidence.inliers >= MIN_INLIER_RATIO * evidence.matches and evidence.coverage >= CLEAN_COVERAGE

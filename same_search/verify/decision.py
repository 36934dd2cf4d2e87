"""The same-picture decision: one small rule over the geometric evidence and the descriptor score.

A hit is the same picture as the query (possibly edited) when the agreeing keypoints (inliers of
one similarity transform: rotation, scale, shift, mirror) span at least :data:`MIN_COVERAGE` of
the area the two pictures share - so that a cluster in one small patch (a repeated texture)
never suffices - and

- at least :data:`STRONG_INLIERS` keypoints agree: strong geometric evidence, whatever else; or
- at least :data:`WEAK_INLIERS` agree, backed by one of two things:

  - a close global match: descriptor score at least :data:`WEAK_SCORE`; or
  - a clean geometry: at least :data:`MIN_INLIER_RATIO` of the tentative matches (those passing
    the ratio test) are inliers, spread over at least :data:`CLEAN_COVERAGE` of the shared area.

The one exception to the coverage floor: at least :data:`COMPLETE_SHARE` of every keypoint
either picture has are inliers (at least :data:`WEAK_INLIERS`) and the score is at least
:data:`WEAK_SCORE`. A small logo or product on a plain background keeps all its keypoints in one
corner; without this its exact copy was "not the same picture". A different picture sharing that
logo has keypoints elsewhere that do not agree.

Why the clean-geometry tier: a blurred or small copy keeps few keypoints, so few matches, but
nearly all of them agree (inlier ratio 0.7-1.0 on the development protocol); a different photo
of a similar thing may collect as many inliers by chance, but only among many more matches that
disagree (ratio mostly below 0.5), or packed into a corner. The inlier ratio is what tells the
two apart where the count cannot; the descriptor score cannot (a blurred copy scores like a
look-alike).

The thresholds were fitted on the development protocol of ``bench/eval_same_picture.py`` with
its originals split in two by a hash of their name: over a grid of 40 settings of that tier
(inliers 5-10, ratio 0.5-0.8, coverage 0.05 or 0.1), among those with no more false positives
than the rule without it on one half, the strictest whose recall there is within half a point of
the best; then reported on the other half (2026-11-26: recall 0.935 -> 0.968 on the held-out
half at the same 4 false positives). ``docs/quality.md`` ("Same picture") has both halves, every
variant tried and the cost. Stricter rather than best: a point of recall on the development
photos is not worth a looser rule on look-alikes they do not show.

Items without local features (stored before they existed, imported as bare vectors), and
pictures with too few keypoints to pass the rule (:func:`verifiable`), cannot be verified: for
them only a descriptor score of :data:`FALLBACK_SCORE` says "same picture".
"""

from __future__ import annotations

from same_search.verify.matching import Evidence

#: Candidates (best first by descriptor score) that a same-picture search verifies.
DEPTH = 10
#: The most candidates one search verifies (a page reaching further is cut there).
MAX_DEPTH = 50
#: When none of the first DEPTH is the query's picture, promotion looks this deep for it
#: (a screen first, :func:`same_search.verify.matching.screen`), and there only
#: :func:`is_same_picture_deep`'s stricter rule confirms: a copy that far down scores like a
#: look-alike, so only strong geometry may say otherwise.
DEEP_DEPTH = 30
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
#: Without local features on either side, only a score this high says "same picture".
FALLBACK_SCORE = 0.95
RULE = (
    f"(inliers >= {WEAK_INLIERS} and inliers >= {COMPLETE_SHARE} x keypoints and score >= "
    f"{WEAK_SCORE}) or (coverage >= {MIN_COVERAGE} and (inliers >= {STRONG_INLIERS} or "
    f"(inliers >= {WEAK_INLIERS} and (score >= {WEAK_SCORE} or (inliers >= {MIN_INLIER_RATIO} "
    f"x matches and coverage >= {CLEAN_COVERAGE})))))"
)


def verifiable(keypoints: int) -> bool:
    """Whether a picture with this many keypoints can pass the rule at all.

    One with fewer than :data:`WEAK_INLIERS` (a flat gradient, a plain logo, a tiny thumbnail)
    can never collect enough inliers, even against its own exact copy: the check cannot look at
    it, and it is judged like an item without local features, by the strict score fallback.
    """
    return keypoints >= WEAK_INLIERS


def is_same_picture(score: float, evidence: Evidence | None) -> bool:
    """Whether a hit scoring ``score`` with this geometric ``evidence`` is the query's picture.

    ``evidence`` None means no local features on one side: the strict score fallback decides.
    """
    if evidence is None:
        return score >= FALLBACK_SCORE
    if _complete(score, evidence):
        return True
    if evidence.coverage < MIN_COVERAGE:
        return False
    if evidence.inliers >= STRONG_INLIERS:
        return True
    if evidence.inliers < WEAK_INLIERS:
        return False
    return score >= WEAK_SCORE or _clean(evidence)


def _complete(score: float, evidence: Evidence) -> bool:
    """Nearly every keypoint either picture has agrees, backed by a close score: the same
    picture however small the area its keypoints span (a different picture sharing the logo
    has keypoints elsewhere that do not agree)."""
    return (
        evidence.inliers >= WEAK_INLIERS
        and evidence.keypoints > 0
        and evidence.inliers >= COMPLETE_SHARE * evidence.keypoints
        and score >= WEAK_SCORE
    )


def _clean(evidence: Evidence) -> bool:
    """Nearly all tentative matches agree, over a fair part of the shared area."""
    return evidence.inliers >= MIN_INLIER_RATIO * evidence.matches and evidence.coverage >= CLEAN_COVERAGE


def is_same_picture_deep(evidence: Evidence | None) -> bool:
    """The rule for candidates past :data:`DEPTH`: strong geometry alone (no score tier, no
    fallback). Checked on the development protocol: 30% stickers found 0.880 -> 0.937, photos
    of a screen 0.977 -> 1.000, no look-alike more confirmed (docs/quality.md)."""
    return evidence is not None and evidence.coverage >= MIN_COVERAGE and evidence.inliers >= STRONG_INLIERS

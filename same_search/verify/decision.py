"""The same-picture decision: one small rule over the geometric evidence and the descriptor score.

A hit is the same picture as the query (possibly edited) when

- at least :data:`STRONG_INLIERS` keypoints agree on one similarity transform (rotation, scale,
  shift, mirror) - strong geometric evidence, whatever the descriptor score; or
- at least :data:`WEAK_INLIERS` agree and the descriptor score is at least :data:`WEAK_SCORE` -
  weaker geometry (a heavy blur, a small copy) backed by a close global match;

and, either way, the agreeing keypoints span at least :data:`MIN_COVERAGE` of the area the two
pictures share, so that a cluster in one small patch (a repeated texture) never suffices.

The thresholds were picked on the harder development protocol of ``bench/eval_same_picture.py``
(2026-11-26, half sample: 696 edited copies of Caltech-101, ImageNet and product-on-white
pictures under eight strong edits; 386 look-alike negatives: other photos of the same Caltech
class, product shots of the same class, other ImageNet photos; near-copies inside Caltech classes
checked by eye and listed in ``bench/caltech_near_copies.txt``). There "inliers >= 12" alone gave
precision 0.994 / recall 0.961 and this rule 0.997 / 0.953; the rule was kept for the margin it
leaves on unseen look-alike products. docs/quality.md has the full-sample table and the cost.

Items without local features (stored before they existed, imported as bare vectors) cannot be
verified: for them only a descriptor score of :data:`FALLBACK_SCORE` says "same picture".
"""

from __future__ import annotations

from same_search.verify.matching import Evidence

#: Candidates (best first by descriptor score) that a same-picture search verifies.
DEPTH = 10
#: The most candidates one search verifies (a page reaching further is cut there).
MAX_DEPTH = 50
STRONG_INLIERS = 15
WEAK_INLIERS = 8
WEAK_SCORE = 0.80
MIN_COVERAGE = 0.02
#: Without local features on either side, only a score this high says "same picture".
FALLBACK_SCORE = 0.95
RULE = (
    f"coverage >= {MIN_COVERAGE} and (inliers >= {STRONG_INLIERS} or "
    f"(inliers >= {WEAK_INLIERS} and score >= {WEAK_SCORE}))"
)


def is_same_picture(score: float, evidence: Evidence | None) -> bool:
    """Whether a hit scoring ``score`` with this geometric ``evidence`` is the query's picture.

    ``evidence`` None means no local features on one side: the strict score fallback decides.
    """
    if evidence is None:
        return score >= FALLBACK_SCORE
    if evidence.coverage < MIN_COVERAGE:
        return False
    if evidence.inliers >= STRONG_INLIERS:
        return True
    return evidence.inliers >= WEAK_INLIERS and score >= WEAK_SCORE

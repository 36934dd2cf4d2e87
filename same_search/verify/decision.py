"""The same-picture decision: one rule over the descriptor score and the geometric evidence."""

from __future__ import annotations

from same_search.verify.matching import Evidence

#: Candidates (best first by descriptor score) that a same-picture search verifies.
DEPTH = 10
#: The most candidates one search verifies (a page reaching further is cut there).
MAX_DEPTH = 50
#: Without local features on either side, only a score this high says "same picture".
FALLBACK_SCORE = 0.95
MIN_INLIERS = 12
MIN_COVERAGE = 0.1
RULE = f"inliers >= {MIN_INLIERS} and coverage >= {MIN_COVERAGE}"


def is_same_picture(score: float, evidence: Evidence | None) -> bool:
    """Whether a hit is the same picture as the query (possibly edited)."""
    if evidence is None:
        return score >= FALLBACK_SCORE
    return evidence.inliers >= MIN_INLIERS and evidence.coverage >= MIN_COVERAGE

"""The near-duplicate policy on add: what counts as "already stored, edited", and what to do then.

The spec's err_no 101 fires only for the very same bytes. This optional policy (per library, or
per request) extends it to near-duplicates: ``off`` (the spec's behaviour), ``warn`` (store, and
report the close items) or ``reject`` (101 with the close items, store nothing).

Whether a stored item is a near-duplicate is decided with the same-picture check
(:mod:`same_search.verify`, in ``LibraryService._near_duplicates``) over the best-scoring
candidates: a look-alike is not a near-duplicate, whatever its score. The score floors say which
candidates are worth checking and what the score alone may decide: by default 0.6 for a candidate
the check confirms and 0.95 for one it cannot look at (no local features on either side), because
a global descriptor scores different photos of look-alike things nearly as high as edited copies
(the measurements are in docs/quality.md). A floor set by the library or the request applies to
every candidate. :func:`is_near_duplicate` is the score-alone decision.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from same_search.errors import bad_request, shown

POLICIES = ("off", "warn", "reject")
#: The built-in floor for pairs the same-picture check cannot look at (an item or a query
#: without local features): the score alone must decide, so it is set for precision.
DEFAULT_MIN_SCORE = 0.95
#: The built-in floor for pairs the same-picture check confirms: with the check behind it, 0.6
#: kept precision at 0.996 and caught 83% of strong edits, where 0.95 caught 1% (docs/quality.md).
VERIFIED_MIN_SCORE = 0.6
#: At most this many close items are reported in ``data_items`` (best first).
MAX_REPORTED = 10


@dataclass(frozen=True)
class DupPolicy:
    """What ``add`` does with an image whose near-duplicates are already stored."""

    mode: str = "off"
    min_score: float = DEFAULT_MIN_SCORE
    #: The lower floor for candidates the same-picture check confirms; None: ``min_score`` for
    #: them too (a floor set by the operator or the request applies to every candidate).
    verified_min_score: float | None = VERIFIED_MIN_SCORE

    @property
    def candidate_floor(self) -> float:
        """The lowest score a candidate worth checking may have."""
        return min(self.min_score, self.verified_min_score or self.min_score)

    @property
    def active(self) -> bool:
        return self.mode != "off"

    @property
    def rejects(self) -> bool:
        return self.mode == "reject"


OFF = DupPolicy()


@dataclass(frozen=True)
class Query:
    """The image being added, as far as the decision may need it."""

    vector: np.ndarray
    #: The raw image bytes when known (a verifier would look at pixels); None for stored vectors.
    image: bytes | None = None


@dataclass(frozen=True)
class Candidate:
    """A stored item close to the query: its storage key and its cosine similarity."""

    key: int
    score: float


def check_mode(value: object, field: str = "dup_policy") -> str:
    """``off``, ``warn`` or ``reject``; anything else is err_no 1 naming ``field``."""
    if value not in POLICIES:
        raise bad_request(f"{field} must be one of {', '.join(POLICIES)}, got {shown(value)}")
    return str(value)


def check_min_score(value: object, field: str = "dup_min_score") -> float:
    """A score floor from 0 to 1; anything else is err_no 1 naming ``field``."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
        raise bad_request(f"{field} must be a number from 0 to 1, got {shown(value)}")
    return float(value)


def resolve(
    default_mode: str,
    default_min_score: float | None,
    mode: str | None = None,
    min_score: float | None = None,
) -> DupPolicy:
    """The policy in force: the request's (or job's) fields over the library's default over the
    built-in floor; each of the two fields falls back on its own."""
    floor = min_score if min_score is not None else default_min_score
    if floor is None:  # the built-in floors: strict for the score alone, lower where verified
        return DupPolicy(mode or default_mode)
    return DupPolicy(mode or default_mode, floor, verified_min_score=None)


def is_near_duplicate(query: Query, candidate: Candidate, policy: DupPolicy) -> bool:
    """The decision by score alone, for candidates the same-picture check cannot look at."""
    del query  # a verifier will compare the pictures; the score floor does not need them
    return candidate.score >= policy.min_score


def select(query: Query, candidates: list[tuple[int, float]], policy: DupPolicy) -> list[Candidate]:
    """The candidates (``(key, score)``, best first) judged near-duplicates, at most MAX_REPORTED."""
    chosen = []
    for key, score in candidates:
        candidate = Candidate(key, float(score))
        if is_near_duplicate(query, candidate, policy):
            chosen.append(candidate)
            if len(chosen) == MAX_REPORTED:
                break
    return chosen

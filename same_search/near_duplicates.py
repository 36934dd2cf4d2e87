"""The near-duplicate policy on add: what to do when an edited copy of the image is stored already.

The spec's err_no 101 fires only for the very same bytes. This optional policy (per library, or
per request) extends it to near-duplicates: ``off`` (the spec's behaviour), ``warn`` (store, and
report the close items) or ``reject`` (101 with the close items, store nothing).

Whether a stored item is a near-duplicate is the same-picture decision
(:func:`same_search.verify.decision.is_same_picture`) under the policy's floors: the built-in
ones (:data:`decision.ADD`: 0.6 for a pair the check confirms, 0.95 for one it cannot look at),
or the operator's floor for every pair when the library or the request sets ``dup_min_score``.
This module only says which policy is in force.
"""

from __future__ import annotations

from dataclasses import dataclass

from same_search.errors import bad_request, shown
from same_search.verify import decision

POLICIES = ("off", "warn", "reject")
#: At most this many close items are reported in ``data_items`` (best first).
MAX_REPORTED = 10


@dataclass(frozen=True)
class DupPolicy:
    """What ``add`` does with an image whose near-duplicates are already stored."""

    mode: str = "off"
    floors: decision.Floors = decision.ADD

    @property
    def active(self) -> bool:
        return self.mode != "off"

    @property
    def rejects(self) -> bool:
        return self.mode == "reject"


OFF = DupPolicy()


def floors_for(min_score: float | None, built_in: decision.Floors = decision.ADD) -> decision.Floors:
    """The floors of a near-duplicate floor as configured (None: the built-in floors, those of
    the library's space when it ranks in a learned one)."""
    return built_in if min_score is None else decision.operator_floors(min_score)


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
    built-in floors; each of the two fields falls back on its own."""
    floor = min_score if min_score is not None else default_min_score
    return DupPolicy(mode or default_mode, floors_for(floor))

"""The ranking a search answers in: the spec's order, or a library's chosen re-ranking.

A library stores its choice (:class:`same_search.records.LibrarySettings`, set through the
management API); ``[search]`` in config.toml gives new libraries theirs, shipped as the spec's
order. A request's own ``query_expansion`` / ``promote_same_picture`` fields override the
library's for that search. Searches by a stored item's contsign keep the spec's order unless
``[search] rerank_contsign_searches`` is set or the request asks.
"""

from __future__ import annotations

from dataclasses import dataclass

from same_search.errors import shown

#: The most hits one query may be averaged with (library setting and request field alike).
MAX_EXPANSION = 10


@dataclass(frozen=True)
class Ranking:
    """How one search orders its hits."""

    #: Average query expansion: the query averaged with its this many best hits (0 = off).
    query_expansion: int = 0
    #: Confirmed copies of the query move to the top.
    promote_same_picture: bool = False

    @property
    def reranked(self) -> bool:
        """Whether the answer may leave descending score order."""
        return self.query_expansion > 0 or self.promote_same_picture

    @property
    def name(self) -> str:
        """``score`` (the spec's order: descending score) or ``reranked``."""
        return "reranked" if self.reranked else "score"

    def to_json(self) -> dict[str, object]:
        return {
            "order": self.name,
            "query_expansion": self.query_expansion,
            "promote_same_picture": self.promote_same_picture,
        }


#: The spec's order.
SPEC_ORDER = Ranking()


def check_expansion(value: object, field: str = "query_expansion") -> int:
    """A valid expansion count (0 = off .. MAX_EXPANSION); ValueError naming the problem."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_EXPANSION:
        raise ValueError(f"{field} must be an integer from 0 (off) to {MAX_EXPANSION}, got {shown(value)}")
    return value

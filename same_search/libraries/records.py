"""What the library service hands to the layers above: stored items, hits, pages, reports.

Neutral records (no storage, no HTTP): routes turn them into the wire's JSON, the console into
cards, the search pipeline builds them from stored rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from same_search.contsign import ContSign
from same_search.records import ItemRow, Tags
from same_search.search.ranking import SPEC_ORDER, Ranking
from same_search.verify.regions import MatchedRegion


@dataclass(frozen=True)
class Item:
    """A stored image as clients see it."""

    contsign: ContSign
    brief: bytes
    tags: Tags | None
    #: sha256 of its kept original, if one is kept.
    original: str | None = None
    created_at: float = 0.0
    updated_at: float = 0.0


def item_of(row: ItemRow) -> Item:
    """The client's view of a stored row."""
    return Item(ContSign.from_key(row.key), row.brief, row.tags, row.original, row.created_at, row.updated_at)


@dataclass(frozen=True)
class Hit:
    """One search result."""

    item: Item
    score: float
    #: The same-picture decision confirmed it (``same_picture`` searches, promotion): in a
    #: re-ranked answer, why a lower score may lead.
    confirmed: bool = False
    #: Where the copy lies in the stored picture and in the query, for a hit its geometry
    #: confirmed (None otherwise, and for an item stored without its original's size).
    region: MatchedRegion | None = None


@dataclass(frozen=True)
class SearchPage:
    """One page of results, whether more exist beyond it, and the ranking that ordered it."""

    hits: list[Hit]
    has_more: bool
    ranking: Ranking = SPEC_ORDER


@dataclass(frozen=True)
class AddResult:
    """A stored image's contsign, and the near-duplicates found under the ``warn`` policy."""

    contsign: ContSign
    near_duplicates: list[Hit]


@dataclass(frozen=True)
class RepairReport:
    """What a repair dropped, and whether it brought a set-aside library back."""

    appid: str
    dropped: list[tuple[ContSign, str]]
    restored: bool


@dataclass(frozen=True)
class LibraryCensus:
    """What /metrics reports per library."""

    appid: str
    items: int
    last_index_save: float | None
    #: The library's recall as its stats show it (``same_search.index.recall``; None: the
    #: backend does not measure it).
    recall: dict[str, Any] | None = None

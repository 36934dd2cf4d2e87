"""What a search asks for, parsed: the query, the page, the filters and any ranking override.

Each port parses its own wire form into a :class:`SearchRequest` (the retrieval port's JSON
fields, the console's query string); from there on every search is the same.
"""

from __future__ import annotations

from dataclasses import dataclass

from same_search.config import SearchConfig
from same_search.contsign import ContSign
from same_search.embed.images import Region
from same_search.records import LibraryRow, TagFilter
from same_search.search.ranking import SPEC_ORDER, Ranking


@dataclass(frozen=True)
class SearchRequest:
    """One search: by ``image`` (only its ``region`` when given) or by a stored ``contsign``."""

    image: bytes | None = None
    contsign: ContSign | None = None
    region: Region | None = None
    pn: int = 0
    rn: int = 10
    tag_filter: TagFilter | None = None
    #: Only hits scoring at least this (cosine to the query as sent).
    min_score: float | None = None
    #: Only hits the same-picture decision confirms (possibly edited copies of the query).
    same_picture: bool = False
    #: The request's own ranking fields; None: the library's choice.
    query_expansion: int | None = None
    promote_same_picture: bool | None = None

    def __post_init__(self) -> None:
        if (self.image is None) == (self.contsign is None):
            raise ValueError("a search has exactly one of image and contsign")
        if self.region is not None and self.image is None:
            raise ValueError("a region is cut from an image")

    @property
    def by_image(self) -> bool:
        return self.image is not None

    def ranking(self, library: LibraryRow, config: SearchConfig) -> Ranking:
        """The ranking in force: the request's fields over the library's choice, which applies
        to searches by image (and by contsign when ``rerank_contsign_searches`` is set)."""
        chosen = SPEC_ORDER
        if self.by_image or config.rerank_contsign_searches:
            chosen = Ranking(library.query_expansion, library.promote_same_picture)
        return Ranking(
            chosen.query_expansion if self.query_expansion is None else self.query_expansion,
            chosen.promote_same_picture if self.promote_same_picture is None else self.promote_same_picture,
        )

"""The search pipeline: one parsed request in, one page out, every step in one place.

Steps, in order (each skipped when the request and the ranking do not need it):

1. the query's vector: the library's own model embeds the image (its region), or the stored
   vector of the item named by contsign is reused;
2. the candidates: nearest neighbours by descending score, the tag filter applied by the
   backend, as deep as the page (and promotion) need, ``min_score`` applied;
3. ``same_picture``: only the candidates the same-picture decision confirms, by score; or
4. query expansion, when the ranking has it (:mod:`.expansion`);
5. promotion of confirmed copies, when the ranking has it (:mod:`.promotion`);
6. the page (:mod:`.pages`).

The query's local features (steps 3 and 5) are extracted only when a candidate is within reach
of the decision, never alongside the forward pass: a search whose answer the check cannot change
pays nothing for it.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from same_search.config import SearchConfig
from same_search.embed.images import Region
from same_search.libraries.records import Hit, SearchPage, item_of
from same_search.near_duplicates import floors_for
from same_search.records import Library, SearchResult
from same_search.search import expansion, pages, promotion
from same_search.search.ranking import SPEC_ORDER, Ranking
from same_search.search.reads import LibraryReads, Ranked, at_least
from same_search.search.request import SearchRequest
from same_search.verify import decision
from same_search.verify.regions import MatchedRegion
from same_search.verify.service import QueryFeatures, SamePictureService, Verdict


class QueryModels(Protocol):
    """Where a query's vector comes from: the library's own model (the library registry)."""

    async def on_one_model(self, lib: Library, query: Callable[[], Awaitable[SearchPage]]) -> SearchPage:
        """Run ``query`` again when the library switched models while it ran."""

    async def embed_query(self, lib: Library, image: bytes, region: Region | None = None) -> np.ndarray:
        """The image's vector by the library's model."""


@dataclass
class _Ranked:
    """A search's ranking before paging, with what it learnt on the way."""

    found: Ranked
    rows: dict
    #: The hits the decision confirmed, with where the copy lies (None: unknown).
    confirmed: dict[int, MatchedRegion | None]


class Searcher:
    """Runs searches for every port."""

    def __init__(
        self, reads: LibraryReads, models: QueryModels, verifier: SamePictureService, config: SearchConfig
    ) -> None:
        self.reads = reads
        self.models = models
        self.verifier = verifier
        self.config = config
        #: How promotions ended since the start (``promotion.EXACT_COPY``, ...): /metrics.
        self.promotions: Counter[str] = Counter()

    async def run(self, lib: Library, request: SearchRequest) -> SearchPage:
        """The page ``request`` asks for, in the ranking in force for ``lib``."""
        ranking = request.ranking(lib.row, self.config)
        features = _Once(
            lambda: self.reads.query_features(lib, request.image, request.contsign, request.region)
        )

        async def once() -> SearchPage:
            if request.same_picture:
                ranked = await self._same_pictures(lib, request, features)
            else:
                ranked = await self._ranked(lib, request, ranking, features)
            page = await pages.cut(self.reads, lib, ranked.found, ranked.rows, request.pn, request.rn)
            hits = [
                Hit(item_of(page.rows[key]), score, key in ranked.confirmed, ranked.confirmed.get(key))
                for key, score in page.hits
            ]
            return SearchPage(hits, page.has_more, SPEC_ORDER if request.same_picture else ranking)

        # Embedded and searched again if a re-embed switches the library in between.
        return await self.models.on_one_model(lib, once)

    async def _candidates(
        self, lib: Library, request: SearchRequest, depth: int
    ) -> tuple[np.ndarray, SearchResult]:
        """Steps 1 and 2: the query's vector and its ``depth`` nearest items (by a stored item:
        read and searched in one backend call where the backend can)."""
        if request.image is not None:
            vector = await self.models.embed_query(lib, request.image, request.region)
            return vector, await self.reads.nearest(lib, vector, depth, request.tag_filter)
        assert request.contsign is not None
        return await self.reads.nearest_to_item(lib, request.contsign, depth, request.tag_filter)

    async def _ranked(
        self, lib: Library, request: SearchRequest, ranking: Ranking, features: _Once
    ) -> _Ranked:
        """Steps 2, 4 and 5: the plain candidates, expanded and promoted as the ranking says."""
        depth = request.pn + request.rn + 1
        if ranking.promote_same_picture:
            # Hits from as deep as DEEP_DEPTH may move to the front: that many more are read.
            depth += decision.DEEP_DEPTH
        if ranking.query_expansion:
            depth = max(depth, ranking.query_expansion + 1)
        vector, plain = await self._candidates(lib, request, depth)
        found, rows = at_least(plain.found, request.min_score), dict(plain.rows)
        if ranking.query_expansion:
            floors = floors_for(lib.row.dup_min_score, self.reads.floors(lib)[2])
            found, more = await expansion.expanded_ranking(
                self.reads,
                lib,
                vector,
                plain.found,
                ranking.query_expansion,
                request.pn + request.rn + 1 + (decision.DEEP_DEPTH if ranking.promote_same_picture else 0),
                request.tag_filter,
                request.min_score,
                floors,
            )
            rows.update(more)
        copies: list[Verdict] = []
        if ranking.promote_same_picture:
            head = at_least(plain.found, request.min_score)[: decision.DEEP_DEPTH]
            search_floors, deep_floors, _ = self.reads.floors(lib)
            promoted = await promotion.confirmed(
                self.reads, self.verifier, lib, head, features, (search_floors, deep_floors)
            )
            self.promotions[promoted.outcome] += 1
            copies = promoted.copies
            found = promotion.promoted(found, copies)
        return _Ranked(found, _before_the_check(rows, copies), _regions(copies))

    async def _same_pictures(self, lib: Library, request: SearchRequest, features: _Once) -> _Ranked:
        """Step 3: the candidates judged the same picture, by descending score.

        Verifies the :data:`decision.DEPTH` best candidates, more when the page reaches further
        (at most :data:`decision.MAX_DEPTH`); when none of those is the query's picture, the
        candidates down to :data:`decision.DEEP_DEPTH` are screened under the deep floors
        (:func:`promotion.judged`, as promotion does).
        """
        depth = min(max(decision.DEPTH, request.pn + request.rn + 1), decision.MAX_DEPTH)
        _, result = await self._candidates(lib, request, max(depth, decision.DEEP_DEPTH))
        found = at_least(result.found, request.min_score)
        search_floors, deep_floors, _ = self.reads.floors(lib)
        if not promotion.in_reach(found, search_floors):
            return _Ranked([], {}, {})
        verdicts = await promotion.judged(
            self.reads, self.verifier, lib, await features(), found, depth, (search_floors, deep_floors)
        )
        same = [v for v in verdicts if v.same]
        return _Ranked([(v.key, v.score) for v in same], _before_the_check(result.rows, same), _regions(same))


def _before_the_check(rows: dict, confirmed: list[Verdict]) -> dict:
    """The rows the candidates came with, less the confirmed copies': theirs are read again
    after the check (:func:`pages.cut`), so a copy removed while it ran is left out, on a backend
    whose search hands rows along (Milvus) as on one that reads them for the page."""
    again = {v.key for v in confirmed}
    return {key: row for key, row in rows.items() if key not in again}


def _regions(confirmed: list[Verdict]) -> dict[int, MatchedRegion | None]:
    """The confirmed hits by key, with where each copy lies."""
    return {v.key: v.region for v in confirmed}


class _Once:
    """An extraction started on first use and shared by every later use within one search."""

    def __init__(self, extract: Callable[[], Awaitable[QueryFeatures | None]]) -> None:
        self._extract = extract
        self._task: asyncio.Future[QueryFeatures | None] | None = None

    async def __call__(self) -> QueryFeatures | None:
        if self._task is None:
            self._task = asyncio.ensure_future(self._extract())
        return await self._task

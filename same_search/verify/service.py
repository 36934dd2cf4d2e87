"""Local features for the daemon: extracted off the event loop, judged against stored ones.

:class:`SamePictureService` is what the library layer calls: :meth:`extract` when an item is
added (its bytes to store), :meth:`query` for a search image, and :meth:`judge` for a list of
candidates. It knows nothing of libraries or storage; callers hand it the stored bytes.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TypeVar

from same_search.embed.admission import DecodeAdmission
from same_search.embed.errors import EmbedderBusy, ImageRefused, RegionRefused
from same_search.embed.images import ImageLimits, Region, decode, decode_cost, frame
from same_search.priority import PICTURE_NICENESS, nicer_by
from same_search.verify import decision, local_features, matching
from same_search.verify.local_features import LocalFeatures
from same_search.verify.regions import Box, MatchedRegion, matched_region

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass
class QueryFeatures:
    """A query's local features, and their mirror image's once needed."""

    direct: LocalFeatures
    #: The part of the query's original the features were extracted from, in its pixels (the
    #: whole picture, or the search's region); None when unknown (a stored item's features kept
    #: without their original's size). Where a confirmed copy lies is told in these pixels.
    frame: Box | None = None
    #: The query's whole original (width, height), of which ``frame`` is a part.
    size: tuple[int, int] | None = None
    _mirror: LocalFeatures | None = field(default=None, repr=False)

    def mirror(self) -> LocalFeatures:
        """The mirrored picture's features (a permutation, computed on first use)."""
        if self._mirror is None:
            self._mirror = self.direct.mirrored()
        return self._mirror


@dataclass(frozen=True)
class Verdict:
    """One candidate judged: the same picture or not, and the evidence behind it (None: no features)."""

    key: int
    score: float
    same: bool
    evidence: matching.Evidence | None
    #: Where the copy lies in either picture, for a pair confirmed by its geometry (None: judged
    #: without evidence, not the same, or an original's size unknown).
    region: MatchedRegion | None = None


class SamePictureService:
    """Extraction and verification in their own small thread pool."""

    def __init__(
        self, limits: ImageLimits, threads: int = 2, admission: DecodeAdmission | None = None
    ) -> None:
        """``admission``: the embedders' decode budget (their decode and this one of a picture are
        one admission), or none (every decode here runs in this pool)."""
        self.limits = limits
        self._pool = ThreadPoolExecutor(
            threads, thread_name_prefix="verify", initializer=nicer_by(PICTURE_NICENESS)
        )
        self.admission = admission

    def close(self) -> None:
        """Stop the threads (pending work finishes first)."""
        self._pool.shutdown(wait=True)

    async def extract(self, data: bytes) -> bytes | None:
        """The stored form of an image's local features; None when they cannot be had.

        Never fails an add for the picture's sake: a picture the embedder accepts but this cannot
        describe is stored without local features, and judged by the strict score fallback. A
        large picture past the decode budget is err_no 99 for the whole add, like the embedder's.
        """
        return await self._off_loop(self._stored, data)

    async def query(self, data: bytes, region: Region | None = None) -> QueryFeatures | None:
        """Decode ``data`` (only ``region`` of it when given: what the search looks for) and
        extract its local features as a query (None if it cannot be decoded):
        :func:`local_features.extract_query`, which admits fainter keypoints than the stored form
        so that blurred and small copies still find their original's."""
        return await self._off_loop(lambda raw: self._query(raw, region), data, region)

    async def _off_loop(
        self, extraction: Callable[[bytes], T], data: bytes, region: Region | None = None
    ) -> T | None:
        """Run ``extraction(data)`` in the pool (a heavy picture in the admission's, within its
        budget: :class:`EmbedderBusy` past it); None when the picture cannot be described."""
        loop = asyncio.get_running_loop()
        try:
            if self.admission is None:
                return await loop.run_in_executor(self._pool, extraction, data)
            cost = decode_cost(data, self.limits, local_features.WORKING_SIDE, region)
            async with self.admission.admit(data, cost) as heavy:
                return await loop.run_in_executor(heavy or self._pool, extraction, data)
        except (ImageRefused, RegionRefused):  # the embedder reports either to the client
            return None
        except EmbedderBusy:
            raise
        except Exception:
            log.exception("local feature extraction failed")
            return None

    def _stored(self, data: bytes) -> bytes:
        picture = decode(data, self.limits, local_features.WORKING_SIDE)
        size, _ = frame(data, self.limits)
        return dataclasses.replace(local_features.extract_stored(picture), original=size).to_bytes()

    def _query(self, data: bytes, region: Region | None) -> QueryFeatures:
        picture = decode(data, self.limits, local_features.WORKING_SIDE, region)
        size, box = frame(data, self.limits, region)
        return QueryFeatures(local_features.extract_query(picture), box, size)

    @staticmethod
    def stored_query(data: bytes | None) -> QueryFeatures | None:
        """A stored item as the query (search by contsign)."""
        if data is None:
            return None
        try:
            features = LocalFeatures.from_bytes(data)
        except ValueError as exc:  # unreadable: judged like an item without features
            log.warning("stored local features unreadable (%s); falling back to the score", exc)
            return None
        if features.original is None:
            return QueryFeatures(features)
        return QueryFeatures(features, (0, 0, *features.original), features.original)

    async def judge(
        self,
        query: QueryFeatures | None,
        candidates: Sequence[tuple[int, float]],
        stored: dict[int, bytes],
        floors: decision.Floors = decision.SEARCH,
    ) -> list[Verdict]:
        """Judge ``(key, score)`` candidates against their stored features, in order
        (:func:`judge`), in the pool."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, judge, query, candidates, stored, floors)


def judge(
    query: QueryFeatures | None,
    candidates: Sequence[tuple[int, float]],
    stored: dict[int, bytes],
    floors: decision.Floors = decision.SEARCH,
) -> list[Verdict]:
    """Verdicts of :func:`decision.is_same_picture` for ``candidates`` under ``floors``, in order.

    A pair below every floor is not looked at; a pair with too few keypoints on a side, or
    without local features, is judged without evidence. The others are matched in one product
    (the query and its mirror image alike, :func:`matching.tentative_matches_of`), the mirror's
    geometry looked at only for the candidates the direct one does not confirm. Under floors
    that only strong geometry passes (candidates deep in a ranking) each candidate is screened
    first (:func:`matching.screen_many`) and the survivors are checked both ways round.
    """
    verdicts: dict[int, Verdict] = {}
    checked: list[tuple[int, float, LocalFeatures]] = []
    for position, (key, score) in enumerate(candidates):
        candidate = _parse(stored.get(key), key)
        if score < floors.lowest:
            verdicts[position] = Verdict(key, score, False, None)  # no floor in reach: nothing to look at
        elif (
            query is None
            or candidate is None
            or not decision.verifiable(len(query.direct))
            or not decision.verifiable(len(candidate))
        ):
            verdicts[position] = Verdict(key, score, decision.is_same_picture(score, None, floors), None)
        else:
            checked.append((position, score, candidate))
    if checked:
        assert query is not None
        for (position, score, candidate), evidence in zip(
            checked, _evidence(query, checked, floors), strict=True
        ):
            key = candidates[position][0]
            same = evidence is not None and decision.is_same_picture(score, evidence, floors)
            region = None
            if same and evidence is not None:
                region = matched_region(query, candidate, evidence)
            verdicts[position] = Verdict(key, score, same, evidence, region)
    return [verdicts[position] for position in range(len(candidates))]


def _evidence(
    query: QueryFeatures, checked: list[tuple[int, float, LocalFeatures]], floors: decision.Floors
) -> list[matching.Evidence | None]:
    """The evidence reported for each checked candidate (None: screened out).

    The query and its mirror image are matched against the candidates in one product
    (:func:`matching.tentative_matches_of`); the mirror's geometry is estimated only where the
    direct matches do not confirm a candidate (or, deep in a ranking, for every survivor of the
    screen)."""
    pictures = [candidate for _, _, candidate in checked]
    found: list[matching.Evidence | None] = [None] * len(pictures)
    if floors.strong_only:
        passed = [i for i, ok in enumerate(matching.screen_many(query.direct, pictures)) if ok]
        direct, mirror = _both_ways(query, [pictures[i] for i in passed])
        for n, i in enumerate(passed):
            flipped = mirror(n)
            found[i] = flipped if flipped.inliers > direct[n].inliers else direct[n]
        return found
    direct, mirror = _both_ways(query, pictures)
    found[:] = direct
    for i in _unconfirmed(checked, found, floors):
        flipped = mirror(i)
        # The mirror's evidence when it passes (fewer inliers may be a cleaner geometry), or
        # when neither passes and it is the stronger (reported with the verdict).
        if decision.is_same_picture(checked[i][1], flipped, floors) or flipped.inliers > direct[i].inliers:
            found[i] = flipped
    _coarse_look(query, checked, found, floors)
    return found


def _both_ways(
    query: QueryFeatures, pictures: list[LocalFeatures]
) -> tuple[list[matching.Evidence], Callable[[int], matching.Evidence]]:
    """The direct query's evidence against each of ``pictures``, and the mirror image's for any
    one of them on demand: both matched in one product, the mirror's geometry (RANSAC, most of
    its cost) estimated only when asked for."""
    if not pictures:
        return [], lambda i: matching.Evidence.none()
    direct_pairs, mirror_pairs = matching.tentative_matches_of([query.direct, query.mirror()], pictures)
    direct = [
        matching.geometry(query.direct, picture, pairs)
        for picture, pairs in zip(pictures, direct_pairs, strict=True)
    ]

    def mirror(i: int) -> matching.Evidence:
        return matching.geometry(query.mirror(), pictures[i], mirror_pairs[i], mirrored=True)

    return direct, mirror


def _unconfirmed(
    checked: list[tuple[int, float, LocalFeatures]],
    evidence: list[matching.Evidence | None],
    floors: decision.Floors,
) -> list[int]:
    """Indexes of the checked candidates whose evidence does not confirm them."""
    scores = [score for _, score, _ in checked]
    return [i for i, score in enumerate(scores) if not decision.is_same_picture(score, evidence[i], floors)]


def _coarse_look(
    query: QueryFeatures,
    checked: list[tuple[int, float, LocalFeatures]],
    evidence: list[matching.Evidence | None],
    floors: decision.Floors,
) -> None:
    """Match the coarse keypoints of the candidates that the working ones did not confirm, and
    keep the coarse evidence of those it confirms (in ``evidence``, in place).

    A strongly blurred copy shares few keypoints with its sharp original at working resolution;
    at :data:`local_features.COARSE_SIDE` pixels the blur is gone and they match as a sharp copy
    does. Only where both sides have coarse keypoints (rows stored before them have none).
    """
    coarse = query.direct.coarse
    retry = [
        i
        for i in _unconfirmed(checked, evidence, floors)
        if coarse is not None and _coarse_of(checked[i][2]) is not None
    ]
    if coarse is None or not decision.verifiable(len(coarse)) or not retry:
        return
    pictures = [_coarse_of(checked[i][2]) for i in retry]
    for i, found in zip(retry, matching.verify_many(coarse, pictures), strict=True):
        scaled = matching.in_working_pixels(found, query.direct, checked[i][2])
        if decision.is_same_picture(checked[i][1], scaled, floors):
            evidence[i] = scaled


def _coarse_of(candidate: LocalFeatures) -> LocalFeatures | None:
    """A candidate's coarse keypoints when there are enough to pass the rule at all."""
    coarse = candidate.coarse
    return coarse if coarse is not None and decision.verifiable(len(coarse)) else None


def _parse(data: bytes | None, key: int) -> LocalFeatures | None:
    """Stored features, or None when absent or unreadable (judged like an item without them)."""
    if data is None:
        return None
    try:
        return LocalFeatures.from_bytes(data)
    except ValueError as exc:
        log.warning("stored local features of key %d are unreadable (%s); judged by score only", key, exc)
        return None

"""Match two pictures' local features and check that the matches agree on one geometry.

An edited copy (cropped, scaled, rotated, re-encoded, partly covered) shares many keypoints with
its original *at positions related by one similarity transform*; another photo of a similar
thing shares descriptors here and there, but scattered. So: nearest neighbours with Lowe's ratio
test, one match per stored keypoint, then RANSAC for a similarity transform (rotation, uniform
scale, translation; a mirrored copy is handled by matching the mirrored query's features). What
comes out is :class:`Evidence`, the raw numbers the decision in
:mod:`same_search.verify.decision` weighs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import cv2
import numpy as np
import torch

from same_search import cpu
from same_search.verify.local_features import LocalFeatures

#: Lowe's ratio: a match counts only if its nearest neighbour is clearly closer than the second.
RATIO = 0.8
#: RANSAC inlier distance, in working-resolution pixels of the stored picture.
REPROJECTION_PX = 5.0
#: Below this many tentative matches no transform is estimated: the decision needs at least 8
#: inliers (same_search/verify/decision.py), so fewer matches can never pass and RANSAC is skipped.
MIN_MATCHES = 8
#: A transform that scales by more than this (or less than its inverse) is not an edit we accept.
MAX_SCALE = 8.0
#: A screen matches this many of the query's keypoints (its first ones: a sample, not a choice)...
SCREEN_KEYPOINTS = 64
#: ... and passes a candidate to the full check when this many survive the ratio test.
SCREEN_MATCHES = 5


@dataclass(frozen=True)
class Evidence:
    """How well a query's keypoints agree with a stored picture's under one similarity transform."""

    matches: int  # tentative matches after the ratio test, one per stored keypoint
    inliers: int  # of those, consistent with the estimated transform
    coverage: float  # area of the inliers' convex hull / area of the smaller picture's overlap
    scale: float  # query -> stored scale factor of the transform (0 when none)
    mirrored: bool = False
    keypoints: int = 0  # the larger of the two pictures' keypoint counts (0: not recorded)
    #: The transform itself, query -> stored working pixels, as the 2 x 3 matrix's rows (a
    #: mirrored query's: of its mirror image's points); None when none was estimated. Where the
    #: copy lies in either picture follows from it (:mod:`same_search.verify.regions`).
    transform: tuple[float, ...] | None = None
    #: Of the keypoints that lie where the two pictures overlap (each picture's own, the other's
    #: frame mapped onto it), the share that are inliers: the smaller of the two pictures'. A copy
    #: matches much of what it shares with its original; two products sharing a label match
    #: only the label's keypoints among all those of the garments. 1.0 when not measured.
    overlap_share: float = 1.0
    #: The inliers' convex hull over the hull of every keypoint in the overlap (the smaller of
    #: the two pictures'): how much of the shared *content* agrees, where :attr:`coverage` is
    #: over the shared *area* (a product on white has content in a part of it). 1.0 when not
    #: measured.
    content_coverage: float = 1.0
    #: Of the cells of a 4 x 4 grid over the overlap that hold keypoints, the share that hold an
    #: inlier (the smaller of the two pictures'): an edit's agreement is spread wherever there is
    #: content; a shared label's sits in one cell, a shared studio's props (hanger, floor) in a
    #: few at the edges while the product between them agrees nowhere. 1.0 when not measured.
    spread: float = 1.0

    #: Found between the two pictures' coarse keypoints (:func:`in_working_pixels`), where the
    #: working ones did not agree: the decision asks more of it.
    coarse: bool = False

    @staticmethod
    def none(matches: int = 0) -> Evidence:
        return Evidence(matches, 0, 0.0, 0.0)


def tentative_matches(query: LocalFeatures, stored: LocalFeatures, ratio: float = RATIO) -> np.ndarray:
    """(k, 2) index pairs (query, stored) passing the ratio test, at most one per stored keypoint."""
    return tentative_matches_many(query, [stored], ratio)[0]


def tentative_matches_many(
    query: LocalFeatures, candidates: Sequence[LocalFeatures], ratio: float = RATIO
) -> list[np.ndarray]:
    """:func:`tentative_matches` of ``query`` against each candidate, in one matrix product."""
    return tentative_matches_of([query], candidates, ratio)[0]


def tentative_matches_of(
    queries: Sequence[LocalFeatures], candidates: Sequence[LocalFeatures], ratio: float = RATIO
) -> list[list[np.ndarray]]:
    """:func:`tentative_matches` of each of ``queries`` (a picture and its mirror image, say)
    against each candidate: ``[query][candidate]``.

    Every query's descriptors meet every candidate's at once (:func:`nearest_two`): the same
    numbers as one product per pair, at a fraction of the cost, since a search checks ten
    candidates or more, both ways round.
    """
    found = [[np.zeros((0, 2), np.int64) for _ in candidates] for _ in queries]
    usable = [i for i, c in enumerate(candidates) if len(c) >= 2]
    asking = [n for n, q in enumerate(queries) if len(q) >= 2]
    if not usable or not asking:
        return found
    firsts, seconds, nearests = nearest_two(
        np.concatenate([queries[n].descriptors for n in asking]), [candidates[i].descriptors for i in usable]
    )
    start = 0
    for n in asking:
        rows = slice(start, start + len(queries[n]))
        start = rows.stop
        for slot, i in enumerate(usable):
            found[n][i] = _ratio_test(firsts[rows, slot], seconds[rows, slot], nearests[rows, slot], ratio)
    return found


def _ratio_test(first: np.ndarray, second: np.ndarray, nearest: np.ndarray, ratio: float) -> np.ndarray:
    """(k, 2) pairs (query, stored) of the query keypoints whose nearest stored one (``nearest``,
    at squared distance ``first``) is clearly closer than the second (``second``), at most one
    per stored keypoint: the closest query keypoint claiming it."""
    passed = np.flatnonzero(first < ratio * ratio * second)
    order = passed[np.argsort(first[passed], kind="stable")]
    _, keep = np.unique(nearest[order], return_index=True)
    chosen = order[keep]
    return np.stack([chosen, nearest[chosen]], axis=1).astype(np.int64)


#: torch's int8 product wants more than 16 rows and column counts that are multiples of 8.
_INT_MM_ROWS = 17
_INT_MM_COLUMNS = 8
#: What a padding column scores: beyond any two descriptors' squared distance (128 * 255**2 at
#: most), far from int32's end.
_FAR = 1 << 30


def nearest_two(query: np.ndarray, stored: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each of the ``query`` descriptors (uint8, (q, 128)) and each set of ``stored`` ones
    (uint8, two or more each): the squared distances to its nearest and second-nearest stored
    descriptor and the nearest's index, each (q, len(stored)).

    Exact integer arithmetic on one core's int8 units. A distance does not change when both sides
    move by the same amount, so every descriptor is shifted by 128 into int8 (``u ^ 0x80`` read as
    int8 is ``u - 128``) and ``|q - s|**2 = |q'|**2 + |s'|**2 - 2 q'.s'``, the products of the query
    against every set at once in one product (torch's int8 ``_int_mm`` on VNNI / AMX, float32 BLAS
    without them: :func:`_products`). The nearest two are the two smallest of ``|s'|**2 - 2 q'.s'``
    along each set (an argmin, then a min with it set aside: a fraction of what ``topk`` costs),
    ``|q'|**2`` added to those alone. Sets are padded to one width with columns that are never
    nearest. On the 2-core Xeon (avx512_vnni, amx) the check of ten candidates took 30% less CPU
    than with float32 ``addmm`` and ``topk`` (docs/quality.md, "Cost"), with the same matches (both
    exact: every sum fits float32's integers).
    """
    count = len(stored)
    width = -(-max(len(d) for d in stored) // _INT_MM_COLUMNS) * _INT_MM_COLUMNS
    raw = np.full((count, width, 128), 0x80, np.uint8)  # 0x80: a padding row shifts to zeros
    lengths = np.array([len(d) for d in stored])
    for slot, descriptors in enumerate(stored):
        raw[slot, : len(descriptors)] = descriptors
    columns = _shifted(raw.reshape(-1, 128))
    column_terms = _squares(columns)
    column_terms[(np.arange(width)[None, :] >= lengths[:, None]).ravel()] = _FAR
    rows = len(query)
    left = np.zeros((max(rows, _INT_MM_ROWS), 128), np.int8)
    left[:rows] = _shifted(query)
    products = _products(left, columns)[:rows]
    products *= -2
    products += column_terms  # |s'|**2 - 2 q'.s', in place
    partial = products.reshape(rows * count, width)
    nearest = partial.argmin(axis=1)
    every = np.arange(len(partial))
    first = partial[every, nearest]
    partial[every, nearest] = _FAR
    second = partial.min(axis=1)
    row_terms = _squares(left[:rows])[:, None]
    return (
        first.reshape(rows, count) + row_terms,
        second.reshape(rows, count) + row_terms,
        nearest.reshape(rows, count),
    )


def _products(left: np.ndarray, columns: np.ndarray) -> np.ndarray:
    """``left @ columns.T`` of int8 matrices, int32: torch's int8 product where the CPU has VNNI
    or AMX, else float32 BLAS, exact as well (every sum of 128 products of int8 values is an
    integer below 2**21, and float32 holds every integer below 2**24). Without those units
    ``_int_mm`` is a scalar loop: 605 ms against 26 for the check of ten candidates on the AMD
    EPYC with avx2 fma (same_search/cpu.py)."""
    if cpu.INT8_MATMUL:
        return torch._int_mm(torch.from_numpy(left), torch.from_numpy(columns).T).numpy()
    return (left.astype(np.float32) @ columns.astype(np.float32).T).astype(np.int32)


def _shifted(descriptors: np.ndarray) -> np.ndarray:
    """uint8 descriptors moved by -128 into int8."""
    return (descriptors ^ 0x80).view(np.int8)


def _squares(shifted: np.ndarray) -> np.ndarray:
    """Each int8 row's squared length, int32."""
    return np.einsum("ij,ij->i", shifted, shifted, dtype=np.int32)


def verify(query: LocalFeatures, stored: LocalFeatures, mirrored: bool = False) -> Evidence:
    """Match ``query`` against ``stored`` and estimate one similarity transform between them."""
    return geometry(query, stored, tentative_matches(query, stored), mirrored)


def verify_many(
    query: LocalFeatures, candidates: Sequence[LocalFeatures], mirrored: bool = False
) -> list[Evidence]:
    """:func:`verify` against each candidate, their matching done in one product."""
    matched = tentative_matches_many(query, candidates)
    return [geometry(query, c, pairs, mirrored) for c, pairs in zip(candidates, matched, strict=True)]


def geometry(
    query: LocalFeatures, stored: LocalFeatures, pairs: np.ndarray, mirrored: bool = False
) -> Evidence:
    """The similarity transform that the tentative ``pairs`` agree on, as :class:`Evidence`."""
    if len(pairs) < MIN_MATCHES:
        return Evidence.none(len(pairs))
    src = query.points[pairs[:, 0]]
    dst = stored.points[pairs[:, 1]]
    transform, mask = cv2.estimateAffinePartial2D(
        src, dst, method=cv2.RANSAC, ransacReprojThreshold=REPROJECTION_PX, maxIters=1000, confidence=0.995
    )
    if transform is None or mask is None:
        return Evidence.none(len(pairs))
    scale = float(np.sqrt(abs(np.linalg.det(transform[:, :2]))))
    if not 1.0 / MAX_SCALE <= scale <= MAX_SCALE:
        return Evidence.none(len(pairs))
    inlier = mask.ravel().astype(bool)
    share, content, spread = _overlap(transform, src[inlier], dst[inlier], query, stored)
    return Evidence(
        len(pairs),
        int(inlier.sum()),
        _coverage(src[inlier], dst[inlier], query, stored, scale),
        scale,
        mirrored,
        max(len(query), len(stored)),
        tuple(float(v) for v in transform.ravel()),
        share,
        content,
        spread,
    )


def _overlap(
    transform: np.ndarray, src: np.ndarray, dst: np.ndarray, query: LocalFeatures, stored: LocalFeatures
) -> tuple[float, float, float]:
    """(:attr:`Evidence.overlap_share`, :attr:`Evidence.content_coverage`,
    :attr:`Evidence.spread`) of the inliers
    ``src`` (query points) and ``dst`` (stored points) under ``transform`` (query -> stored).

    Each picture's keypoints that the other's frame covers once mapped are the ones a copy
    could match; the smaller picture's share of them and the smaller hull ratio are kept, so
    that neither side's unmatched content can hide behind the other's.
    """
    inliers = len(src)
    if inliers < MIN_MATCHES:  # fewer never pass the decision (it needs 8 inliers): not measured
        return 0.0, 0.0, 0.0
    backward = cv2.invertAffineTransform(transform)
    in_stored = _inside(query.points @ transform[:, :2].T + transform[:, 2], stored.width, stored.height)
    in_query = _inside(stored.points @ backward[:, :2].T + backward[:, 2], query.width, query.height)
    shared = min(int(in_stored.sum()), int(in_query.sum()))
    share = min(1.0, inliers / max(shared, inliers, 1))
    content = min(
        _hull_area(dst) / max(_hull_area(stored.points[in_query]), 1.0),
        _hull_area(src) / max(_hull_area(query.points[in_stored]), 1.0),
    )
    spread = min(_cells(dst, stored.points[in_query]), _cells(src, query.points[in_stored]))
    return share, min(1.0, content), spread


#: The grid :attr:`Evidence.spread` counts cells of (per side, over the overlap's keypoints).
SPREAD_GRID = 4


def _cells(inliers: np.ndarray, keypoints: np.ndarray) -> float:
    """Share of the grid cells over ``keypoints``' bounding box that hold a keypoint and an inlier."""
    if len(keypoints) == 0:
        return 0.0
    low, high = keypoints.min(axis=0), keypoints.max(axis=0)
    size = np.maximum(high - low, 1e-3) / SPREAD_GRID

    def cells(points: np.ndarray) -> np.ndarray:
        index = np.clip(((points - low) / size).astype(np.intp), 0, SPREAD_GRID - 1)
        return np.bincount(index[:, 1] * SPREAD_GRID + index[:, 0], minlength=SPREAD_GRID**2) > 0

    occupied = cells(keypoints)
    return float((cells(inliers) & occupied).sum() / occupied.sum())


def _inside(points: np.ndarray, width: int, height: int) -> np.ndarray:
    """Which ``points`` lie within a ``width`` x ``height`` picture."""
    return (points[:, 0] >= 0) & (points[:, 0] < width) & (points[:, 1] >= 0) & (points[:, 1] < height)


def _hull_area(points: np.ndarray) -> float:
    """Area of the convex hull of ``points`` (0 for fewer than three)."""
    if len(points) < 3:
        return 0.0
    return float(cv2.contourArea(cv2.convexHull(points.reshape(-1, 1, 2).astype(np.float32))))


def _coverage(
    src: np.ndarray, dst: np.ndarray, query: LocalFeatures, stored: LocalFeatures, scale: float
) -> float:
    """How much of the shared area the inliers span: hull area over the overlap's area.

    The overlap is bounded by the stored picture and by the query mapped into it, so a small
    crop whose keypoints span all of it covers as much as a full copy does. Repetitive texture
    that fools the matcher tends to agree only within a small patch, which this exposes.
    """
    if len(dst) < 3:
        return 0.0
    hull = cv2.convexHull(dst.reshape(-1, 1, 2).astype(np.float32))
    area = float(cv2.contourArea(hull))
    overlap = min(stored.width * stored.height, query.width * query.height * scale * scale)
    return min(1.0, area / max(overlap, 1.0))


def in_working_pixels(evidence: Evidence, query: LocalFeatures, stored: LocalFeatures) -> Evidence:
    """``evidence`` found between the coarse keypoints of ``query`` and ``stored``, marked coarse,
    with its transform and scale in the two pictures' working pixels (where the copy lies is
    told from those, :mod:`same_search.verify.regions`)."""
    if query.coarse is None or stored.coarse is None:
        raise ValueError("coarse evidence of pictures without coarse keypoints")
    query_unit = query.width / max(query.coarse.width, 1)
    stored_unit = stored.width / max(stored.coarse.width, 1)
    transform = None
    if evidence.transform is not None:
        matrix = np.array(evidence.transform, dtype=np.float64).reshape(2, 3)
        matrix[:, :2] *= stored_unit / query_unit
        matrix[:, 2] *= stored_unit
        transform = tuple(float(v) for v in matrix.ravel())
    return replace(
        evidence, scale=evidence.scale * stored_unit / query_unit, transform=transform, coarse=True
    )


def screen(query: LocalFeatures, stored: LocalFeatures) -> bool:
    """Whether ``stored`` is worth a full check (:func:`screen_many` for one candidate)."""
    return screen_many(query, [stored])[0]


def screen_many(query: LocalFeatures, candidates: Sequence[LocalFeatures]) -> list[bool]:
    """Whether each candidate is worth a full check: a sample of the query's keypoints finds at
    least :data:`SCREEN_MATCHES` ratio-test matches in it.

    About a fifth of a full check's arithmetic; a look-alike rarely passes, an edited copy nearly
    always does. The mirror image is not screened (it would double the cost of every search with
    no copy among its first candidates): a mirrored copy ranks near the top by score
    (docs/quality.md), where the full check handles it.
    """
    n = SCREEN_KEYPOINTS
    sample = LocalFeatures(query.width, query.height, query.points[:n], query.descriptors[:n])
    return [len(pairs) >= SCREEN_MATCHES for pairs in tentative_matches_many(sample, candidates)]


def best_evidence(query: LocalFeatures, stored: LocalFeatures) -> Evidence:
    """The stronger of the query's and its mirror image's evidence."""
    direct = verify(query, stored)
    mirror = verify(query.mirrored(), stored, mirrored=True)
    return mirror if mirror.inliers > direct.inliers else direct

"""Where a confirmed copy lies: the matched region of the stored picture and of the query, in
pixels of the original pictures.

The same-picture check estimates one similarity transform from the query's keypoints to the
stored picture's (:attr:`matching.Evidence.transform`). The region of the stored picture is the
query's frame mapped through it, clipped to the stored picture; the region of the query is the
stored picture's frame mapped back, clipped to the query. So a crop of a stored photo gets the box
it was cut from (and all of the query); a photo with a sticker, both pictures whole; a photo of a
screen showing a stored picture, where the screen is in the query. The boxes are where the two
pictures lie over each other, not where their pixels agree: a border or a sticker added to a copy
is inside them, as the check cannot see pixels, only keypoints. Boxes are axis-aligned (a
rotated copy gets the box around its rotated frame) and come from keypoints at working
resolution (the longer side :data:`local_features.WORKING_SIDE` px), so they are right to a
pixel or two of that resolution, scaled to the original.

Keypoints live at working resolution; the original's size comes with the stored features
(version 2 of their stored form) and with the query's decode (:attr:`QueryFeatures.frame`). An
item stored before the size was recorded gets no region.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import cv2
import numpy as np

from same_search.verify.local_features import LocalFeatures
from same_search.verify.matching import Evidence

if TYPE_CHECKING:  # the service builds regions from its query's features
    from same_search.verify.service import QueryFeatures

#: (left, top, right, bottom) in pixels.
Box = tuple[int, int, int, int]


@dataclass(frozen=True)
class MatchedRegion:
    """The part of each picture that the other one is."""

    stored: Box  # in the stored item's original
    query: Box  # in the query as sent (its region's offset included)
    #: (width, height) of the two originals: what the boxes are in (a console draws them on
    #: thumbnails as fractions of these).
    stored_size: tuple[int, int]
    query_size: tuple[int, int]

    def to_json(self) -> dict[str, list[int]]:
        """The answers' ``region`` extension field (docs/api.md)."""
        return {
            "stored": list(self.stored),
            "query": list(self.query),
            "stored_size": list(self.stored_size),
            "query_size": list(self.query_size),
        }

    def swapped(self) -> MatchedRegion:
        """The same match seen from the other side (the stored item as the query)."""
        return MatchedRegion(self.query, self.stored, self.query_size, self.stored_size)


def matched_region(
    features: QueryFeatures, stored: LocalFeatures, evidence: Evidence
) -> MatchedRegion | None:
    """Where the query (extracted from ``features.frame`` of its original) and ``stored`` match
    under ``evidence``'s transform; None when the transform or either original's size is
    unknown, or the pictures do not overlap."""
    query, frame, size = features.direct, features.frame, features.size
    if evidence.transform is None or frame is None or size is None or stored.original is None:
        return None
    forward = np.array(evidence.transform, np.float64).reshape(2, 3)
    backward = cv2.invertAffineTransform(forward)
    in_stored = _mapped(_corners(query.width, query.height), forward)
    in_query = _mapped(_corners(stored.width, stored.height), backward)
    if evidence.mirrored:  # the transform is of the mirror image's points (LocalFeatures.mirrored)
        in_query[:, 0] = query.width - 0.5 - in_query[:, 0]
    stored_box = _clipped(in_stored, stored.width, stored.height)
    query_box = _clipped(in_query, query.width, query.height)
    if stored_box is None or query_box is None:
        return None
    return MatchedRegion(
        _scaled(stored_box, stored, (0, 0, *stored.original)),
        _scaled(query_box, query, frame),
        stored.original,
        size,
    )


def _corners(width: int, height: int) -> np.ndarray:
    return np.array([[0, 0], [width, 0], [width, height], [0, height]], np.float64)


def _mapped(points: np.ndarray, transform: np.ndarray) -> np.ndarray:
    return points @ transform[:, :2].T + transform[:, 2]


def _clipped(points: np.ndarray, width: int, height: int) -> tuple[float, float, float, float] | None:
    """The bounding box of ``points`` within a ``width`` x ``height`` picture (None: outside)."""
    left, top = max(0.0, points[:, 0].min()), max(0.0, points[:, 1].min())
    right, bottom = min(float(width), points[:, 0].max()), min(float(height), points[:, 1].max())
    return (left, top, right, bottom) if right > left and bottom > top else None


def _scaled(box: tuple[float, float, float, float], features: LocalFeatures, frame: Box) -> Box:
    """A working-resolution box in pixels of the original ``frame`` it was scaled from."""
    x0, y0, x1, y1 = frame
    sx, sy = (x1 - x0) / features.width, (y1 - y0) / features.height
    left, top, right, bottom = box
    return (
        x0 + max(0, round(left * sx)),
        y0 + max(0, round(top * sy)),
        x0 + min(x1 - x0, round(right * sx)),
        y0 + min(y1 - y0, round(bottom * sy)),
    )

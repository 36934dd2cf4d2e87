"""Local features of a picture: RootSIFT keypoints at a fixed working resolution, compact bytes.

Computed once per stored item at add time and once per query, so that a search can check its
top candidates geometrically (:mod:`same_search.verify.matching`). The working resolution is
fixed (the longer side scaled to :data:`WORKING_SIDE`, up or down) so that a copy shrunk to a
quarter and its full-size original are described at comparable scales.

Bytes layout (little-endian), version 1::

    u8 version | u16 width | u16 height | u16 count | count x (f16 x, f16 y) | count x 128 u8

and version 2, the same with the size of the picture the working one was scaled from (its
original, as a viewer sees it) after the count, so that a match can be shown in the original's
pixels (:mod:`same_search.verify.regions`); rows stored as version 1 keep parsing, without it::

    u8 version | u16 width | u16 height | u16 count | u32 original width | u32 original height | ...

and version 3, version 2 followed by the *coarse* keypoints (the picture at a longer side of
:data:`COARSE_SIDE`, laid out as version 1 without its version byte; an original size of 0 x 0
means unknown)::

    ... version 2 ... | u16 width | u16 height | u16 count | count x (f16 x, f16 y) | count x 128 u8

A strongly blurred copy keeps few of its sharp original's keypoints at working resolution, but
at :data:`COARSE_SIDE` pixels the blur is below a pixel and both look alike
(:mod:`same_search.verify.service` matches the coarse keypoints when the working ones fail).

x, y are keypoint positions in working-resolution pixels; the descriptors are RootSIFT (the
square root of the L1-normalised SIFT vector, so their Euclidean distance is Hellinger's) scaled
by :data:`QUANT_SCALE` and clipped to a byte.
"""

from __future__ import annotations

import dataclasses
import struct
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image, ImageOps

#: Longer side of the picture the keypoints are found in (pixels).
WORKING_SIDE = 320
#: At most this many keypoints (the strongest) are kept per picture.
MAX_KEYPOINTS = 300
#: SIFT's contrast threshold for a query's keypoints (stored items keep OpenCV's 0.04). Only a
#: picture with fewer than :data:`MAX_KEYPOINTS` keypoints above 0.04 changes - the strongest
#: are kept either way - and those are the blurred and small copies, whose faint extrema are
#: what still matches the stored original (docs/quality.md, "Same picture").
QUERY_CONTRAST = 0.02
#: RootSIFT components are at most 1 and mostly below 0.4; x512 keeps 2 bits more than x255.
QUANT_SCALE = 512.0
#: The stored form without the original's size (what :meth:`LocalFeatures.to_bytes` writes when
#: it is unknown, and what every row stored before version 2 holds).
FORMAT_VERSION = 1
#: The stored form with the original's size.
SIZED_FORMAT_VERSION = 2
#: The stored form with the original's size and the coarse keypoints.
COARSE_FORMAT_VERSION = 3
#: Longer side of the picture the coarse keypoints are found in (pixels): a blur of radius 4 on
#: a picture of 300-500 pixels is below a pixel there (docs/quality.md, "Looking deeper, and a
#: coarse look").
COARSE_SIDE = 64
#: At most this many coarse keypoints (the strongest): a 64-pixel picture has 37 at the median,
#: 64 or fewer nine times in ten; and the largest stored form stays within what a Milvus
#: VARCHAR holds in base64 (:data:`MAX_STORED_BYTES`).
COARSE_KEYPOINTS = 64
#: SIFT's contrast threshold for coarse keypoints, stored and asked alike.
COARSE_CONTRAST = 0.02
_HEADER = struct.Struct("<BHHH")
_ORIGINAL = struct.Struct("<II")
_COARSE = struct.Struct("<HHH")
#: The largest stored form (:data:`MAX_KEYPOINTS` keypoints, with the original's size and
#: :data:`COARSE_KEYPOINTS` coarse ones): 48,069 bytes, 64,092 in base64.
MAX_STORED_BYTES = (
    _HEADER.size + _ORIGINAL.size + MAX_KEYPOINTS * (4 + 128) + _COARSE.size + COARSE_KEYPOINTS * (4 + 128)
)


def _mirror_permutation() -> np.ndarray:
    """Index map from a SIFT descriptor to its mirror image's (see :meth:`LocalFeatures.mirrored`)."""
    permutation = np.zeros(128, dtype=np.intp)
    for row in range(4):
        for col in range(4):
            for orientation in range(8):
                target = ((3 - row) * 4 + col) * 8 + (8 - orientation) % 8
                permutation[target] = (row * 4 + col) * 8 + orientation
    return permutation


_MIRROR = _mirror_permutation()

cv2.setNumThreads(1)  # callers run several extractions in threads; OpenCV must not oversubscribe


@dataclass(frozen=True)
class LocalFeatures:
    """Keypoints of one picture at working resolution."""

    width: int
    height: int
    points: np.ndarray  # (n, 2) float32 x, y
    descriptors: np.ndarray  # (n, 128) uint8 quantised RootSIFT
    #: (width, height) of the picture the working one was scaled from, in its own pixels (None:
    #: not recorded, a row stored before version 2).
    original: tuple[int, int] | None = None
    #: The keypoints of the same picture at :data:`COARSE_SIDE` (None: not recorded, a row
    #: stored before version 3); positions in its own pixels.
    coarse: LocalFeatures | None = None

    def __len__(self) -> int:
        return len(self.points)

    def mirrored(self) -> LocalFeatures:
        """The features of the mirror image, without extracting again.

        SIFT finds the same keypoints in a mirrored picture (x -> width - 1/2 - x in OpenCV's
        keypoint coordinates, which its initial upscaling offsets by half a pixel), and each
        descriptor is a permutation of the original's: its 4 x 4 cells swap rows and its 8
        orientation bins run backwards (bin o -> (8 - o) mod 8). Checked against a fresh
        extraction in tests/test_same_picture.py: most descriptors come out identical, a few
        differ where SIFT's orientation assignment was a near tie.
        """
        points = self.points.copy()
        points[:, 0] = self.width - 0.5 - points[:, 0]
        return LocalFeatures(self.width, self.height, points, self.descriptors[:, _MIRROR], self.original)

    def to_bytes(self) -> bytes:
        """The compact stored form (see the module docstring): version 3 with coarse keypoints,
        else version 2 when the original's size is known, else version 1."""
        if self.coarse is not None:
            header = _HEADER.pack(COARSE_FORMAT_VERSION, self.width, self.height, len(self))
            header += _ORIGINAL.pack(*(self.original or (0, 0)))
            coarse = self.coarse
            tail = _COARSE.pack(coarse.width, coarse.height, len(coarse)) + _keypoint_bytes(coarse)
            return header + _keypoint_bytes(self) + tail
        if self.original is None:
            header = _HEADER.pack(FORMAT_VERSION, self.width, self.height, len(self))
        else:
            header = _HEADER.pack(SIZED_FORMAT_VERSION, self.width, self.height, len(self))
            header += _ORIGINAL.pack(*self.original)
        return header + _keypoint_bytes(self)

    @classmethod
    def from_bytes(cls, data: bytes) -> LocalFeatures:
        """Inverse of :meth:`to_bytes`; ValueError for anything else."""
        if len(data) < _HEADER.size:
            raise ValueError("local features: truncated header")
        version, width, height, count = _HEADER.unpack_from(data)
        if version not in (FORMAT_VERSION, SIZED_FORMAT_VERSION, COARSE_FORMAT_VERSION):
            raise ValueError(f"local features: unknown format version {version}")
        start, original = _HEADER.size, None
        if version != FORMAT_VERSION:
            if len(data) < start + _ORIGINAL.size:
                raise ValueError("local features: truncated header")
            original = _ORIGINAL.unpack_from(data, start)
            start += _ORIGINAL.size
        if version != COARSE_FORMAT_VERSION:
            if len(data) != start + count * (4 + 128):
                raise ValueError("local features: length does not match the keypoint count")
            return cls(width, height, *_keypoints(data, start, count), original)
        end = start + count * (4 + 128)
        if len(data) < end + _COARSE.size:
            raise ValueError("local features: truncated coarse header")
        coarse_width, coarse_height, coarse_count = _COARSE.unpack_from(data, end)
        if len(data) != end + _COARSE.size + coarse_count * (4 + 128):
            raise ValueError("local features: length does not match the coarse keypoint count")
        coarse = cls(coarse_width, coarse_height, *_keypoints(data, end + _COARSE.size, coarse_count))
        original = None if original == (0, 0) else original
        return cls(width, height, *_keypoints(data, start, count), original, coarse)


def _keypoint_bytes(features: LocalFeatures) -> bytes:
    """Positions (float16) then descriptors (bytes) of ``features``, as stored."""
    points = features.points.astype("<f2").tobytes()
    return points + np.ascontiguousarray(features.descriptors, dtype=np.uint8).tobytes()


def _keypoints(data: bytes, start: int, count: int) -> tuple[np.ndarray, np.ndarray]:
    """(points, descriptors) of ``count`` keypoints stored from ``start`` on."""
    points = np.frombuffer(data, "<f2", count * 2, start).reshape(count, 2).astype(np.float32)
    descriptors = np.frombuffer(data, np.uint8, count * 128, start + count * 4).reshape(count, 128)
    return points, descriptors


def working_picture(image: Image.Image, side: int = WORKING_SIDE) -> np.ndarray:
    """Greyscale uint8 array with its longer side scaled to ``side`` (up or down)."""
    grey = image.convert("L")
    scale = side / max(grey.size)
    size = (max(1, round(grey.width * scale)), max(1, round(grey.height * scale)))
    if size != grey.size:
        grey = grey.resize(size, Image.Resampling.BILINEAR, reducing_gap=3.0 if scale < 1 else None)
    return np.asarray(grey, dtype=np.uint8)


_detectors: dict[tuple[int, float | None], cv2.SIFT] = {}


def _sift(max_keypoints: int, contrast: float | None = None) -> cv2.SIFT:
    # cv2.SIFT objects are reentrant for detectAndCompute; one per setting is enough.
    if (max_keypoints, contrast) not in _detectors:
        extra = {} if contrast is None else {"contrastThreshold": contrast}
        _detectors[max_keypoints, contrast] = cv2.SIFT_create(nfeatures=max_keypoints, **extra)
    return _detectors[max_keypoints, contrast]


def extract(
    image: Image.Image, *, mirror: bool = False, side: int = WORKING_SIDE, max_keypoints: int = MAX_KEYPOINTS
) -> LocalFeatures:
    """RootSIFT keypoints of ``image`` (or of its mirror image) at working resolution."""
    if mirror:
        image = ImageOps.mirror(image)
    return extract_pixels(working_picture(image, side), max_keypoints)


def extract_stored(image: Image.Image) -> LocalFeatures:
    """What an added picture stores: :func:`extract`'s keypoints and its coarse ones."""
    return dataclasses.replace(extract(image), coarse=extract_coarse(image))


def extract_coarse(image: Image.Image) -> LocalFeatures:
    """The keypoints of ``image`` at :data:`COARSE_SIDE`, stored and asked alike."""
    return extract_pixels(working_picture(image, COARSE_SIDE), COARSE_KEYPOINTS, COARSE_CONTRAST)


def extract_query(image: Image.Image) -> LocalFeatures:
    """A search image's keypoints: as :func:`extract` stores them, with fainter ones admitted,
    and its coarse ones.

    The stored keypoints' extraction never changes (stored libraries keep working); only the
    query side looks harder. A blurred or small copy has few extrema above SIFT's usual contrast
    threshold, and the faint ones it has sit where the sharp original's strong ones are.
    """
    found = extract_pixels(working_picture(image), MAX_KEYPOINTS, QUERY_CONTRAST)
    return dataclasses.replace(found, coarse=extract_coarse(image))


def extract_pixels(
    pixels: np.ndarray, max_keypoints: int = MAX_KEYPOINTS, contrast: float | None = None
) -> LocalFeatures:
    """RootSIFT keypoints of a greyscale picture already at working resolution (``contrast``:
    SIFT's contrast threshold, None for OpenCV's default that stored features use)."""
    keypoints, descriptors = _sift(max_keypoints, contrast).detectAndCompute(
        np.ascontiguousarray(pixels), None
    )
    height, width = pixels.shape
    if descriptors is None or not keypoints:
        return LocalFeatures(width, height, np.zeros((0, 2), np.float32), np.zeros((0, 128), np.uint8))
    if len(keypoints) > max_keypoints:  # SIFT may keep ties beyond nfeatures
        keypoints, descriptors = keypoints[:max_keypoints], descriptors[:max_keypoints]
    points = np.array([kp.pt for kp in keypoints], dtype=np.float32)
    return LocalFeatures(width, height, points, quantise(root_sift(descriptors)))


def root_sift(descriptors: np.ndarray) -> np.ndarray:
    """Hellinger-kernel SIFT: L1-normalise, then square root (Arandjelovic & Zisserman, 2012)."""
    d = descriptors.astype(np.float32)
    d /= np.maximum(d.sum(axis=1, keepdims=True), 1e-7)
    return np.sqrt(d)


def quantise(descriptors: np.ndarray) -> np.ndarray:
    """Unit-length float descriptors -> uint8 (x :data:`QUANT_SCALE`, clipped)."""
    return np.clip(np.rint(descriptors * QUANT_SCALE), 0, 255).astype(np.uint8)

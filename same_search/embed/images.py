"""Decode untrusted image bytes into a normalised RGB picture, or say precisely why not.

Runs in worker threads (never on the event loop). The spec's err_no 100 sub-codes come from
here: 216200 empty, 216201 undecodable or unsupported, 216202 size out of range. Size is
checked from the header *before* pixels are decoded, so a decompression bomb costs nothing.
:func:`decode_cost` reads only the header too (cheap enough for the event loop): the megapixels
:func:`decode` would produce, which admission weighs before any pixel is decoded.
"""

from __future__ import annotations

import io
import math
import warnings
from dataclasses import dataclass

from PIL import Image, ImageFile, ImageOps

from same_search.embed.errors import ImageProblem, ImageRefused, RegionRefused

# We enforce our own pixel limit from the header; Pillow's own check would raise a different
# exception type (or only warn) and is redundant.
Image.MAX_IMAGE_PIXELS = None
ImageFile.LOAD_TRUNCATED_IMAGES = False

#: Formats we accept; anything else Pillow might open (EPS via Ghostscript, ...) is refused.
SUPPORTED_FORMATS = frozenset({"JPEG", "PNG", "GIF", "BMP", "WEBP", "TIFF", "MPO", "ICO", "PPM"})


@dataclass(frozen=True)
class ImageLimits:
    """Accepted geometry: shortest side, longest side and total pixels."""

    min_side: int = 32
    max_side: int = 8192
    max_pixels: int = 8192 * 8192


#: EXIF orientations that turn the picture a quarter turn, so width and height swap.
_QUARTER_TURNS = frozenset({5, 6, 7, 8})
_EXIF_ORIENTATION = 0x0112
#: Fractions may overshoot 1 by float rounding (0.1 + 0.9), not by more.
_FRACTION_SLACK = 1e-9


@dataclass(frozen=True)
class Region:
    """A box on the picture as the viewer sees it (after EXIF rotation): pixels, or fractions."""

    x: float
    y: float
    w: float
    h: float
    fraction: bool = False

    def box(self, size: tuple[int, int], min_side: int) -> tuple[int, int, int, int]:
        """(left, top, right, bottom) in pixels of a picture of ``size``; a :class:`RegionRefused` saying
        what is wrong for a box that is empty, reaches outside the picture or is smaller than ``min_side``."""
        width, height = size
        if self.w <= 0 or self.h <= 0:
            raise RegionRefused(f"region is empty: w and h must be positive, got w={self.w:g}, h={self.h:g}")
        if self.x < 0 or self.y < 0:
            raise RegionRefused(
                f"region lies outside the picture: x and y must be >= 0, got {self.x:g}, {self.y:g}"
            )
        if self.fraction:
            if self.x + self.w > 1 + _FRACTION_SLACK or self.y + self.h > 1 + _FRACTION_SLACK:
                raise RegionRefused(
                    "region lies outside the picture: with unit fraction, x + w and y + h must be at most 1"
                )
            left, top = round(self.x * width), round(self.y * height)
            right = min(width, round((self.x + self.w) * width))
            bottom = min(height, round((self.y + self.h) * height))
        else:
            left, top, right, bottom = (round(v) for v in (self.x, self.y, self.x + self.w, self.y + self.h))
            if right > width or bottom > height:
                raise RegionRefused(
                    f"region lies outside the picture: it reaches ({right}, {bottom}) on a "
                    f"{width}x{height} picture (after EXIF rotation)"
                )
        if min(right - left, bottom - top) < min_side:
            raise RegionRefused(
                f"region is {right - left}x{bottom - top} px on the {width}x{height} picture; "
                f"its shortest side must be at least {min_side} px"
            )
        return left, top, right, bottom


def decode(data: bytes, limits: ImageLimits, target_side: int, region: Region | None = None) -> Image.Image:
    """Open, validate, orient and convert ``data`` to an RGB image; only ``region`` of it when given.

    ``target_side`` lets large JPEGs decode at a reduced scale (``Image.draft``): the decoder
    skips DCT coefficients, which is several times faster and uses a fraction of the memory,
    while the result (or the region of it) stays at least ``target_side`` on its shorter side.
    The region is checked against the picture's size from the header, before any pixel is decoded.
    """
    image = open_checked(data, limits)
    oriented = _oriented_size(image)
    box = None if region is None else region.box(oriented, limits.min_side)
    reduced = _reduced_size(image, box, target_side)
    if reduced is not None:
        image.draft("RGB", reduced)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            image.load()
            if _orientation(image) != 1:  # exif_transpose copies even an upright picture
                image = ImageOps.exif_transpose(image) or image
            image = _to_rgb(image)
    except Exception as exc:  # truncated data, bad Huffman tables, ... all look the same to clients
        raise ImageRefused(ImageProblem.UNDECODABLE, f"image cannot be decoded: {exc}") from exc
    return image if box is None else image.crop(_scaled(box, oriented, image.size))


def frame(
    data: bytes, limits: ImageLimits, region: Region | None = None
) -> tuple[tuple[int, int], tuple[int, int, int, int]]:
    """The picture's size as a viewer sees it (after EXIF rotation), and (left, top, right,
    bottom) of what :func:`decode` returns in its pixels: the whole picture, or ``region`` of
    it. From the header alone: a reduced decode does not change either."""
    image = open_checked(data, limits)
    size = _oriented_size(image)
    return size, (0, 0, *size) if region is None else region.box(size, limits.min_side)


def decode_cost(data: bytes, limits: ImageLimits, target_side: int, region: Region | None = None) -> float:
    """Megapixels :func:`decode` will produce for ``data``, from the header alone.

    A large JPEG decodes at a reduced scale (``Image.draft``: 1/2, 1/4 or 1/8), so an 8192 x 8192
    JPEG costs about one megapixel; every other format (PNG, WebP, GIF, TIFF, ...) has no reduced
    decode and costs all its pixels: an 8192 x 8192 PNG of 215 KB is 67 megapixels (200 MB of
    RGB, about 1 CPU-second). Refuses what :func:`decode` would refuse, for the same reasons.
    """
    image = open_checked(data, limits)
    box = None if region is None else region.box(_oriented_size(image), limits.min_side)
    width, height = image.size
    reduced = _reduced_size(image, box, target_side)
    if reduced is not None:
        # Pillow's JPEG draft: the largest of 8, 4, 2 that still gives at least the size asked.
        scale = next(s for s in (8, 4, 2, 1) if min(width // reduced[0], height // reduced[1]) >= s)
        width, height = -(-width // scale), -(-height // scale)
    return width * height / 1e6


def _reduced_size(
    image: Image.Image, box: tuple[int, int, int, int] | None, target_side: int
) -> tuple[int, int] | None:
    """The size to ask a JPEG's reduced decode for (so the picture, or ``box`` of it, keeps at
    least ``target_side`` on its shorter side); None when the picture decodes at full size."""
    shorter = min(image.size) if box is None else min(box[2] - box[0], box[3] - box[1])
    if image.format != "JPEG" or shorter <= 2 * target_side:
        return None
    wanted = math.ceil(target_side * min(image.size) / shorter)
    return _draft_size(image.size, wanted)


def _oriented_size(image: Image.Image) -> tuple[int, int]:
    """The picture's size as a viewer shows it: EXIF quarter turns swap width and height."""
    width, height = image.size
    return (height, width) if _orientation(image) in _QUARTER_TURNS else (width, height)


def _orientation(image: Image.Image) -> int:
    """The EXIF orientation (1: upright, as stored)."""
    try:
        return int(image.getexif().get(_EXIF_ORIENTATION, 1))
    except Exception:  # a broken EXIF block: exif_transpose will ignore it too
        return 1


def _scaled(
    box: tuple[int, int, int, int], full: tuple[int, int], actual: tuple[int, int]
) -> tuple[int, ...]:
    """A box on the full-size picture moved onto the (draft-reduced) decoded one."""
    sx, sy = actual[0] / full[0], actual[1] / full[1]
    left, top, right, bottom = box
    return (
        round(left * sx),
        round(top * sy),
        max(round(left * sx) + 1, round(right * sx)),
        max(round(top * sy) + 1, round(bottom * sy)),
    )


def open_checked(data: bytes, limits: ImageLimits) -> Image.Image:
    """``data`` opened (header only, no pixels decoded) with its format and size checked."""
    if not data:
        raise ImageRefused(ImageProblem.EMPTY, "image is empty")
    image = _open(data)
    _check_size(image.size, limits)
    return image


def _open(data: bytes) -> Image.Image:
    """Identify the format from the header; refuse what we do not serve."""
    try:
        image = Image.open(io.BytesIO(data))
    except Exception as exc:
        raise ImageRefused(ImageProblem.UNDECODABLE, "image format not recognised") from exc
    if image.format not in SUPPORTED_FORMATS:
        raise ImageRefused(ImageProblem.UNDECODABLE, f"unsupported image format {image.format}")
    return image


def _check_size(size: tuple[int, int], limits: ImageLimits) -> None:
    width, height = size
    if min(width, height) < limits.min_side:
        raise ImageRefused(
            ImageProblem.SIZE_OUT_OF_RANGE,
            f"image is {width}x{height}; the shortest side must be at least {limits.min_side} px",
        )
    if max(width, height) > limits.max_side or width * height > limits.max_pixels:
        raise ImageRefused(
            ImageProblem.SIZE_OUT_OF_RANGE,
            f"image is {width}x{height}; the longest side may be at most {limits.max_side} px "
            f"and the area at most {limits.max_pixels} px",
        )


def _draft_size(size: tuple[int, int], target_side: int) -> tuple[int, int]:
    """The smallest (w, h) whose shorter side is still ``target_side`` (Pillow rounds up)."""
    width, height = size
    scale = target_side / min(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def _to_rgb(image: Image.Image) -> Image.Image:
    """RGB with transparent areas composited on white, so a logo on alpha looks like a logo."""
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit greyscale: scale to 8 bits instead of clipping everything to white.
        image = image.point(lambda v: v / 256).convert("L")
    if image.mode == "RGB":  # convert() would copy it: twice the memory of a large picture
        return image
    return image.convert("RGB")


def make_thumbnail(image: Image.Image, side: int, quality: int = 75) -> bytes:
    """A small JPEG of a decoded picture (longest side ``side``), a few KB, for showing results."""
    thumb = image.copy()
    thumb.thumbnail((side, side), Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    thumb.save(buffer, format="JPEG", quality=quality, optimize=True)
    return buffer.getvalue()

"""Decode untrusted image bytes into a normalised RGB picture, or say precisely why not.

Runs in worker threads (never on the event loop). The spec's err_no 100 sub-codes come from
here: 216200 empty, 216201 undecodable or unsupported, 216202 size out of range. Size is
checked from the header *before* pixels are decoded, so a decompression bomb costs nothing.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

from PIL import Image, ImageFile, ImageOps

from same_search.errors import ImageSubCode, bad_image

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


def decode(data: bytes, limits: ImageLimits, target_side: int) -> Image.Image:
    """Open, validate, orient and convert ``data`` to an RGB image.

    ``target_side`` lets large JPEGs decode at a reduced scale (``Image.draft``): the decoder
    skips DCT coefficients, which is several times faster and uses a fraction of the memory,
    while the result stays at least ``target_side`` on its shorter side.
    """
    image = open_checked(data, limits)
    if image.format == "JPEG" and min(image.size) > 2 * target_side:
        image.draft("RGB", _draft_size(image.size, target_side))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            image.load()
            image = ImageOps.exif_transpose(image) or image
            return _to_rgb(image)
    except Exception as exc:  # truncated data, bad Huffman tables, ... all look the same to clients
        raise bad_image(ImageSubCode.UNDECODABLE, f"image cannot be decoded: {exc}") from exc


def open_checked(data: bytes, limits: ImageLimits) -> Image.Image:
    """``data`` opened (header only, no pixels decoded) with its format and size checked."""
    if not data:
        raise bad_image(ImageSubCode.EMPTY, "image is empty")
    image = _open(data)
    _check_size(image.size, limits)
    return image


def _open(data: bytes) -> Image.Image:
    """Identify the format from the header; refuse what we do not serve."""
    try:
        image = Image.open(io.BytesIO(data))
    except Exception as exc:
        raise bad_image(ImageSubCode.UNDECODABLE, "image format not recognised") from exc
    if image.format not in SUPPORTED_FORMATS:
        raise bad_image(ImageSubCode.UNDECODABLE, f"unsupported image format {image.format}")
    return image


def _check_size(size: tuple[int, int], limits: ImageLimits) -> None:
    width, height = size
    if min(width, height) < limits.min_side:
        raise bad_image(
            ImageSubCode.SIZE_OUT_OF_RANGE,
            f"image is {width}x{height}; the shortest side must be at least {limits.min_side} px",
        )
    if max(width, height) > limits.max_side or width * height > limits.max_pixels:
        raise bad_image(
            ImageSubCode.SIZE_OUT_OF_RANGE,
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
    return image.convert("RGB")


def make_thumbnail(image: Image.Image, side: int, quality: int = 75) -> bytes:
    """A small JPEG of a decoded picture (longest side ``side``), a few KB, for showing results."""
    thumb = image.copy()
    thumb.thumbnail((side, side), Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    thumb.save(buffer, format="JPEG", quality=quality, optimize=True)
    return buffer.getvalue()

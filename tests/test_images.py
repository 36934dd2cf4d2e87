"""Image decoding: formats, orientation, transparency, bombs, and the err_no 100 sub-codes."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from images import encode, picture
from PIL import Image

from same_search.embed.errors import ImageRefused
from same_search.embed.images import ImageLimits, decode
from same_search.error_mapping import api_error

LIMITS = ImageLimits()


def sub_code(data: bytes) -> str:
    with pytest.raises(ImageRefused) as info:
        decode(data, LIMITS, 224)
    error = api_error(info.value)  # mapped to the spec's numbers in one place, same_search.errors
    assert error.err_no == 100
    return error.err_msg.split(":")[0]


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims a size without carrying the pixels (a decompression bomb's header)."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return (
            struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 16))
        + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "BMP", "TIFF", "WEBP", "GIF"])
def test_common_formats_decode_to_rgb(fmt):
    image = decode(encode(picture(1), fmt), LIMITS, 224)
    assert image.mode == "RGB" and image.size == (320, 240)


def test_error_sub_codes():
    assert sub_code(b"") == "216200"
    assert sub_code(b"hello, not a picture") == "216201"
    assert sub_code(encode(picture(1))[:300]) == "216201"
    assert sub_code(b"%!PS-Adobe-3.0 EPSF-3.0\n") == "216201"
    assert sub_code(encode(picture(1, (31, 100)))) == "216202"
    assert sub_code(png_header_only(20000, 20000)) == "216202"
    assert sub_code(png_header_only(8193, 100)) == "216202"


def test_bomb_limit_is_configurable():
    with pytest.raises(ImageRefused):
        decode(encode(picture(1, (400, 400))), ImageLimits(max_pixels=100_000), 224)


def test_exif_orientation_is_applied():
    base = picture(2, (320, 240))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW on display
    rotated = decode(encode(base, exif=exif.tobytes()), LIMITS, 224)
    assert rotated.size == (240, 320)


def test_transparency_is_composited_on_white():
    rgba = Image.new("RGBA", (64, 64), (255, 0, 0, 0))
    image = decode(encode(rgba, "PNG"), LIMITS, 224)
    assert image.getpixel((10, 10)) == (255, 255, 255)
    palette = picture(3, (64, 64)).convert("P")
    palette.info["transparency"] = 0
    assert decode(encode(palette, "PNG", transparency=0), LIMITS, 224).mode == "RGB"


def test_sixteen_bit_and_cmyk():
    grey16 = Image.fromarray(np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 16)
    image = decode(encode(grey16, "PNG"), LIMITS, 224)
    assert image.mode == "RGB" and 0 < np.asarray(image).mean() < 255
    cmyk = picture(4).convert("CMYK")
    assert decode(encode(cmyk, "JPEG"), LIMITS, 224).mode == "RGB"


def test_animated_gif_uses_first_frame():
    frames = [Image.new("RGB", (64, 64), colour) for colour in ((255, 0, 0), (0, 0, 255))]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:])
    image = decode(buffer.getvalue(), LIMITS, 224)
    assert image.getpixel((5, 5))[0] > 200


def test_large_jpeg_decodes_reduced_but_not_below_target():
    image = decode(encode(picture(5, (2400, 1800))), LIMITS, 224)
    assert min(image.size) >= 224 and image.size[0] < 2400

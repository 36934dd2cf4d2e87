"""Deterministic test pictures made with Pillow, so tests need no photo files.

Each seed gives a different composition of gradients, shapes and stripes: distinct enough that
a CNN tells them apart, structured enough that an edited copy still looks like its original.
"""

from __future__ import annotations

import io
import random

import numpy as np
from PIL import Image, ImageDraw, ImageFilter


def picture(seed: int, size: tuple[int, int] = (320, 240)) -> Image.Image:
    """An RGB picture unique to ``seed``."""
    rng = random.Random(seed)
    width, height = size
    top = tuple(rng.randrange(256) for _ in range(3))
    bottom = tuple(rng.randrange(256) for _ in range(3))
    image = Image.new("RGB", size)
    draw = ImageDraw.Draw(image)
    for y in range(height):
        t = y / max(height - 1, 1)
        draw.line(
            [(0, y), (width, y)], fill=tuple(int(a + (b - a) * t) for a, b in zip(top, bottom, strict=True))
        )
    for _ in range(rng.randrange(6, 14)):
        x0, y0 = rng.randrange(width), rng.randrange(height)
        x1 = x0 + rng.randrange(max(2, width // 16), max(3, width // 2))
        y1 = y0 + rng.randrange(max(2, height // 16), max(3, height // 2))
        colour = tuple(rng.randrange(256) for _ in range(3))
        shape = rng.choice(("rect", "ellipse", "line", "poly"))
        if shape == "rect":
            draw.rectangle([x0, y0, x1, y1], fill=colour)
        elif shape == "ellipse":
            draw.ellipse([x0, y0, x1, y1], fill=colour)
        elif shape == "line":
            draw.line([x0, y0, x1, y1], fill=colour, width=rng.randrange(3, 12))
        else:
            points = [(rng.randrange(width), rng.randrange(height)) for _ in range(rng.randrange(3, 7))]
            draw.polygon(points, fill=colour)
    return image.filter(ImageFilter.SMOOTH)


def encode(image: Image.Image, fmt: str = "JPEG", **params) -> bytes:
    """Image -> file bytes."""
    buffer = io.BytesIO()
    if fmt == "JPEG" and image.mode not in ("RGB", "L", "CMYK"):
        image = image.convert("RGB")
    image.save(buffer, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}) | params)
    return buffer.getvalue()


def jpeg(seed: int, size: tuple[int, int] = (320, 240)) -> bytes:
    """A JPEG file of ``picture(seed)``."""
    return encode(picture(seed, size))


def near_duplicate(data: bytes) -> bytes:
    """Crop ~10% off the edges, shrink to 70% and re-encode at JPEG quality 40."""
    image = Image.open(io.BytesIO(data)).convert("RGB")
    w, h = image.size
    cropped = image.crop((w // 10, h // 10, w - w // 10, h - h // 10))
    small = cropped.resize((int(cropped.width * 0.7), int(cropped.height * 0.7)), Image.Resampling.BILINEAR)
    return encode(small, quality=40)


def photo_like(seed: int, size: tuple[int, int] = (480, 360)) -> Image.Image:
    """A picture with detail at every scale, as photos have: large soft regions, mid-sized
    objects, small marks and a grain, so local features find keypoints at coarse scales (which
    survive blur and shrinking) as well as fine ones."""
    rng = random.Random(seed)
    width, height = size
    image = picture(seed, size)
    draw = ImageDraw.Draw(image)
    for count, (low, high) in ((25, (20, 70)), (80, (5, 20))):
        for _ in range(count):
            x0, y0 = rng.randrange(width), rng.randrange(height)
            side = rng.randrange(low, high)
            colour = tuple(rng.randrange(256) for _ in range(3))
            if rng.random() < 0.5:
                draw.ellipse([x0, y0, x0 + side, y0 + side * rng.uniform(0.5, 1.5)], fill=colour)
            else:
                draw.rectangle([x0, y0, x0 + side * rng.uniform(0.5, 1.5), y0 + side], fill=colour)
    return Image.blend(image, _grain(seed, size, 24), 0.08).filter(ImageFilter.GaussianBlur(0.7))


def stripes(fabric: int, shot: int = 0, size: tuple[int, int] = (480, 360)) -> Image.Image:
    """Photo ``shot`` of a striped fabric: bands of a few colours at one period (all set by
    ``fabric``), with the shot's own waviness, framing and grain. Two shots of one fabric are
    alike to any descriptor, and never the same picture."""
    cloth, photo = np.random.default_rng(fabric), np.random.default_rng([fabric, shot, 1])
    width, height = size
    period = cloth.uniform(14, 30)
    colours = cloth.integers(0, 256, (3, 3))
    edges = np.cumsum(cloth.uniform(0.5, 2, 3))
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    wave = photo.uniform(2, 8) * np.sin(
        yy / photo.uniform(150, 400) * 2 * np.pi + photo.uniform(0, 2 * np.pi)
    )
    position = (xx + wave + photo.uniform(0, period)) / period
    band = np.searchsorted(edges / edges[-1], position % 1.0, side="right").clip(0, 2)
    image = Image.fromarray(colours[band].astype(np.uint8))
    return Image.blend(image, _grain([fabric, shot], size, 20), 0.06).filter(ImageFilter.GaussianBlur(0.6))


def _grain(seed, size: tuple[int, int], sigma: float) -> Image.Image:
    """Grey sensor noise around mid-grey, the same for the same seed."""
    noise = np.random.default_rng(seed).normal(128, sigma, (size[1], size[0]))
    return Image.fromarray(np.clip(noise, 0, 255).astype(np.uint8)).convert("RGB")

"""The harder development protocol's pictures: strong edits and product shots on white.

Used by eval_same_picture.py. Everything is deterministic (a generator seeded per picture).

- **Strong edits** (the same-picture protocol): a 50% crop shrunk to half its side (a quarter of
  its area) at JPEG 30; Gaussian blur radius 3; rotation by 20 degrees; a simulated phone photo of a screen
  (perspective, bezel, moire, noise); an opaque sticker over 30% of the picture; a mirrored 70%
  crop; plus the earlier protocol's logo and screenshot edits. The unseen photos of that work showed
  the plain check missing "the smallest and blurriest edits", so the protocol also holds a 70%
  crop at half size and JPEG 35, a small copy (a 40% crop at a quarter of its side, never below
  64 px) and blur radius 2 and 4 besides 3.
- **Repetitive textures** (negatives, :func:`texture`): striped and checked fabric and catalogue
  grids of one photo. Two shots of one fabric (another fold, light and framing) are different
  pictures whose keypoints nevertheless agree on a shift along the stripes: the case that fooled
  a plain SIFT check on the unseen photos.
- **Product shots**: the object of a development photo cut out with GrabCut and placed on a
  plain white square, the way shops show products. Shots made from different photos of the same
  class are the look-alikes a same-picture decision must refuse.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont, ImageOps

#: Bump when an edit or the product shots change (evaluation caches are keyed by it).
VERSION = 3


def crop_fraction(image: Image.Image, area: float, rng: random.Random | None) -> Image.Image:
    """Keep ``area`` of the picture (same aspect), centred or at a random position."""
    width, height = image.size
    side = area**0.5
    cw, ch = max(1, round(width * side)), max(1, round(height * side))
    if rng is None:
        left, top = (width - cw) // 2, (height - ch) // 2
    else:
        left, top = rng.randint(0, width - cw), rng.randint(0, height - ch)
    return image.crop((left, top, left + cw, top + ch))


def crop_shrink(image: Image.Image, rng: random.Random) -> Image.Image:
    """A random 50% crop shrunk to half its side (sent at JPEG 30)."""
    cropped = crop_fraction(image, 0.5, rng)
    return cropped.resize(
        (max(1, cropped.width // 2), max(1, cropped.height // 2)), Image.Resampling.BILINEAR
    )


def crop_shrink_to(area: float, factor: float, min_side: int = 64):
    """A random ``area`` crop shrunk by ``factor`` of its side, its short side kept >= ``min_side``."""

    def edit(image: Image.Image, rng: random.Random) -> Image.Image:
        cropped = crop_fraction(image, area, rng)
        shrink = min(1.0, max(factor, min_side / min(cropped.size)))
        size = (max(1, round(cropped.width * shrink)), max(1, round(cropped.height * shrink)))
        return cropped.resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0)

    return edit


def blur(radius: float):
    """Gaussian blur of ``radius`` pixels at the picture's own size."""
    return lambda image, _: image.filter(ImageFilter.GaussianBlur(radius))


def sticker(image: Image.Image, rng: random.Random) -> Image.Image:
    """An opaque coloured sticker with a word on it, covering 30% of the picture."""
    out = image.copy()
    width, height = out.size
    sw, sh = round(width * 0.3**0.5 * rng.uniform(0.8, 1.25)), 0
    sh = min(height, round(0.3 * width * height / max(sw, 1)))
    sw = min(width, sw)
    left, top = rng.randint(0, width - sw), rng.randint(0, height - sh)
    colour = tuple(rng.randint(0, 255) for _ in range(3))
    draw = ImageDraw.Draw(out)
    draw.rounded_rectangle((left, top, left + sw, top + sh), radius=max(1, min(sw, sh) // 8), fill=colour)
    font = ImageFont.load_default(size=max(8, sh // 4))
    ink = (255, 255, 255) if sum(colour) < 384 else (0, 0, 0)
    draw.text((left + sw // 10, top + sh // 3), "NEW!", fill=ink, font=font)
    return out


def screen_photo(image: Image.Image, rng: random.Random) -> Image.Image:
    """A phone photo of the picture on a monitor: bezel, perspective, moire, glare, noise."""
    width, height = image.size
    scale = 2
    big = np.asarray(image.resize((width * scale, height * scale), Image.Resampling.BILINEAR), np.float32)
    # Sub-pixel grid of the display beating against the camera's sensor: a tilted interference.
    yy, xx = np.mgrid[0 : big.shape[0], 0 : big.shape[1]].astype(np.float32)
    angle = rng.uniform(0.2, 0.6)
    period = rng.uniform(3.0, 5.0)
    wave = np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 2 * np.pi / period)
    big *= (0.85 + 0.15 * wave)[..., None]
    big = np.clip(big * rng.uniform(0.85, 1.05) + rng.uniform(0, 20), 0, 255)
    bezel = round(0.06 * big.shape[1])
    screen = cv2.copyMakeBorder(
        big.astype(np.uint8), bezel, bezel, bezel, bezel, cv2.BORDER_CONSTANT, value=(20, 20, 20)
    )
    h, w = screen.shape[:2]
    jitter = 0.07
    src = np.float32([[0, 0], [w, 0], [w, h], [0, h]])
    dst = np.float32(
        [[x + rng.uniform(-jitter, jitter) * w, y + rng.uniform(-jitter, jitter) * h] for x, y in src]
    )
    dst -= dst.min(axis=0)
    out_w, out_h = int(dst[:, 0].max()) + 1, int(dst[:, 1].max()) + 1
    warped = cv2.warpPerspective(
        screen, cv2.getPerspectiveTransform(src, dst), (out_w, out_h), borderValue=(70, 60, 55)
    )
    noisy = warped.astype(np.float32) + np.random.default_rng(rng.randint(0, 1 << 30)).normal(
        0, 6, warped.shape
    )
    photo = Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))
    photo = photo.filter(ImageFilter.GaussianBlur(1.0))
    return photo.resize((max(1, out_w // scale), max(1, out_h // scale)), Image.Resampling.BILINEAR)


def logo(image: Image.Image, rng: random.Random) -> Image.Image:
    """A large semi-opaque logo (disc + wordmark) over a random quarter of the picture."""
    out = image.convert("RGBA")
    width, height = out.size
    side = min(width, height) // 2
    layer = Image.new("RGBA", out.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    left, top = rng.randint(0, width - side), rng.randint(0, height - side)
    colour = tuple(rng.randint(0, 255) for _ in range(3))
    draw.ellipse((left, top, left + side, top + side), fill=(*colour, 200))
    font = ImageFont.load_default(size=max(10, side // 4))
    draw.text((left + side // 8, top + side // 3), "LOGO", fill=(255, 255, 255, 230), font=font)
    return Image.alpha_composite(out, layer).convert("RGB")


def screenshot(image: Image.Image, _: random.Random) -> Image.Image:
    """The picture shown inside a mock app screen: white page, grey title bar, text lines below."""
    width, height = image.size
    canvas = Image.new("RGB", (round(width * 1.25), round(height * 1.6)), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    bar = round(height * 0.12)
    draw.rectangle((0, 0, canvas.width, bar), fill=(60, 64, 72))
    canvas.paste(image, ((canvas.width - width) // 2, bar + round(height * 0.05)))
    for row in range(4):
        y = bar + round(height * 1.1) + row * max(4, height // 20)
        draw.rectangle(
            (width // 10, y, width // 10 + (width * (9 - row)) // 10, y + max(2, height // 60)), fill=150
        )
    return canvas


#: name -> (function(image, rng) -> edited image, JPEG quality it is sent with).
STRONG_EDITS: dict[str, tuple[Callable[[Image.Image, random.Random], Image.Image], int]] = {
    "crop50-half-q30": (crop_shrink, 30),
    "blur3": (blur(3), 90),
    "rot20": (lambda im, _: im.rotate(20, Image.Resampling.BILINEAR, expand=False), 90),
    "screen-moire": (screen_photo, 70),
    "sticker30": (sticker, 90),
    "mirror-crop70": (lambda im, rng: ImageOps.mirror(crop_fraction(im, 0.7, rng)), 75),
    "logo": (logo, 90),
    "screenshot": (screenshot, 90),
    # Added for the smallest and blurriest copies (appended, so the edits above keep their seeds).
    "crop70-half-q35": (crop_shrink_to(0.7, 0.5), 35),
    "crop40-quarter-q50": (crop_shrink_to(0.4, 0.25), 50),
    "blur2": (blur(2), 90),
    "blur4": (blur(4), 90),
}


def product_shot(image: Image.Image, side: int = 480, seed: int = 0) -> Image.Image:
    """The picture's main object, cut out with GrabCut, centred on a plain white square.

    GrabCut starts from a rectangle 6% inside the border (Caltech objects fill the frame); where
    it finds too little foreground the whole rectangle is kept, which still gives a white shot.
    """
    rgb = np.asarray(image.convert("RGB"))
    h, w = rgb.shape[:2]
    mx, my = max(1, round(w * 0.06)), max(1, round(h * 0.06))
    mask = np.zeros((h, w), np.uint8)
    bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    cv2.setRNGSeed(seed)
    cv2.grabCut(
        rgb[:, :, ::-1].copy(), mask, (mx, my, w - 2 * mx, h - 2 * my), bgd, fgd, 3, cv2.GC_INIT_WITH_RECT
    )
    fg = (mask == cv2.GC_FGD) | (mask == cv2.GC_PR_FGD)
    if fg.mean() < 0.05:
        fg = np.zeros_like(fg)
        fg[my : h - my, mx : w - mx] = True
    ys, xs = np.nonzero(fg)
    top, bottom, left, right = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    alpha = Image.fromarray((fg * 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(1))
    cut = Image.composite(image.convert("RGB"), Image.new("RGB", image.size, (255, 255, 255)), alpha)
    cut = cut.crop((left, top, right, bottom))
    scale = 0.8 * side / max(cut.size)
    cut = cut.resize(
        (max(1, round(cut.width * scale)), max(1, round(cut.height * scale))), Image.Resampling.BICUBIC
    )
    canvas = Image.new("RGB", (side, side), (255, 255, 255))
    canvas.paste(cut, ((side - cut.width) // 2, (side - cut.height) // 2))
    return canvas


# --------------------------------------------------------------------------------------------
# Repetitive textures: negatives that share a period, not a picture
# --------------------------------------------------------------------------------------------

#: Texture kinds of :func:`texture`.
TEXTURES = ("stripes", "checks")


def _fabric_coordinates(
    shot: np.random.Generator, size: tuple[int, int], weave_angle: float
) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates of one photo of a fabric: its own framing (shift, rotation, scale) and folds."""
    width, height = size
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    angle = np.deg2rad(weave_angle + shot.uniform(-12, 12))
    scale = shot.uniform(0.8, 1.25)
    x0, y0 = shot.uniform(0, 500, 2)
    u = (xx * np.cos(angle) + yy * np.sin(angle)) * scale + x0
    v = (-xx * np.sin(angle) + yy * np.cos(angle)) * scale + y0
    for _ in range(3):  # folds: smooth displacements of a few pixels, different in every shot
        wavelength, amplitude, phase = shot.uniform(120, 400), shot.uniform(2, 9), shot.uniform(0, 2 * np.pi)
        direction = shot.uniform(0, 2 * np.pi)
        fold = amplitude * np.sin(
            (xx * np.cos(direction) + yy * np.sin(direction)) * 2 * np.pi / wavelength + phase
        )
        u += fold
        v += 0.5 * fold
    return u, v


def _bands(coordinate: np.ndarray, period: float, widths: np.ndarray) -> np.ndarray:
    """Band index of each coordinate, for bands of relative ``widths`` repeating every ``period``."""
    edges = np.cumsum(widths) / widths.sum()
    return np.searchsorted(edges, (coordinate / period) % 1.0, side="right").clip(0, len(widths) - 1)


def texture(kind: str, family: int, shot: int, size: tuple[int, int] = (480, 360)) -> Image.Image:
    """Photo ``shot`` of fabric ``family``: stripes or checks (gingham).

    The family fixes the fabric (colours, period, band widths); the shot fixes the photo: framing,
    rotation, folds, light and the weave's irregularities. Two shots of one family are two
    different pictures of the same kind of thing, which is what a same-picture decision must refuse.
    """
    fabric = np.random.default_rng([TEXTURES.index(kind), family])
    photo = np.random.default_rng([TEXTURES.index(kind), family, shot, 1])
    width, height = size
    u, v = _fabric_coordinates(photo, size, float(fabric.choice([0, 30, 45, 90])))
    period = fabric.uniform(10, 34)
    colours = fabric.integers(0, 256, (4, 3)).astype(np.float32)
    widths = fabric.uniform(0.5, 2.0, 4)
    if kind == "stripes":
        rgb = colours[_bands(u, period, widths)]
    else:
        light = _bands(u, period, widths[:2]) + _bands(v, period * fabric.uniform(0.8, 1.25), widths[2:])
        rgb = colours[0] * (1 - light[..., None] / 3) + colours[1] * (light[..., None] / 3)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    lighting = 0.8 + 0.2 * np.cos(
        xx / width * photo.uniform(1, 3) + yy / height * photo.uniform(1, 3) + photo.uniform(0, 6)
    )
    weave = cv2.GaussianBlur(photo.normal(0, 10, (height, width)).astype(np.float32), (0, 0), 0.8)
    out = rgb * lighting[..., None] + weave[..., None]
    return Image.fromarray(np.clip(out, 0, 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(0.6))


def catalogue_grid(image: Image.Image, seed: int, size: tuple[int, int] = (480, 360)) -> Image.Image:
    """A catalogue page: one photo repeated in a grid of thumbnails on an off-white page.

    Two grids of two photos of one class look alike to a global descriptor, and each repeats its
    own keypoints many times over.
    """
    rng = random.Random(seed)
    columns, rows = rng.randint(3, 5), rng.randint(2, 4)
    gap = rng.randint(4, 14)
    page = Image.new("RGB", size, tuple(rng.randint(235, 255) for _ in range(3)))
    cell_w, cell_h = (size[0] - gap) // columns - gap, (size[1] - gap) // rows - gap
    thumb = ImageOps.fit(image.convert("RGB"), (cell_w, cell_h), Image.Resampling.BILINEAR)
    for row in range(rows):
        for column in range(columns):
            page.paste(thumb, (gap + column * (cell_w + gap), gap + row * (cell_h + gap)))
    return page

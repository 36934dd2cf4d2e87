"""Catalogue look-alikes: different products that share a small identical region, made with Pillow.

The false matches left on real catalogues are all of one kind: two different products of one
brand, on one white background, sharing a woven label, a logo or a printed fabric. Each is
built here from development photos (``imagenet-samples`` the rest of the protocol does not use)
and synthetic drawing, as a *family*: pictures that share the region, some stored in the
library, the others asked as negatives (none of them is an edit of a stored picture).

- ``label``: garments of one brand (a photo's texture cut to a garment silhouette on white)
  each carrying the brand's woven label, 3-15% of the picture, at its own size and position.
- ``print``: two garments cut from one printed fabric (a drawn floral repeat), with different
  silhouettes, different parts of the print and different drape warps, on white.
- ``logo``: one logo pasted on different photos (3-15% of the picture, its own place in each).
- ``studio``: catalogue shots in one studio pose: the same backdrop, floor shadow, hanger and
  silhouette framing, a different garment (a different photo's texture) in each.

Stored members of every family are also edited (``hard_edits.STRONG_EDITS``) into positives, so
a rule that refused every product on white would lose recall where this protocol measures it.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

#: Bump when a picture below changes (the protocol's cached sets are keyed by it).
VERSION = 3
KINDS = ("label", "print", "logo", "studio")
#: Catalogue shots are portrait, as product pages show them.
CANVAS = (480, 600)
WHITE = (255, 255, 255)
_FONTS = (
    "/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf",
    "/usr/share/fonts/truetype/dejavu/DejaVuSerif-Bold.ttf",
    "/usr/share/fonts/truetype/dejavu/DejaVuSansMono-Bold.ttf",
)
_SYLLABLES = ("ka", "lo", "mi", "ra", "to", "ve", "zu", "no", "sa", "fi", "el", "or", "an", "ix")


def font(size: int, rng: random.Random) -> ImageFont.ImageFont:
    """A bold TrueType font when the system has one (Pillow's own otherwise)."""
    for path in rng.sample(_FONTS, len(_FONTS)):
        if Path(path).exists():
            return ImageFont.truetype(path, size)
    return ImageFont.load_default(size=size)


def brand_name(rng: random.Random) -> str:
    """A made-up brand word."""
    return "".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(2, 3))).upper()


# --------------------------------------------------------------------------------------------
# Silhouettes and products on white
# --------------------------------------------------------------------------------------------

SHAPES = ("tee", "skirt", "dress", "bag", "hoodie")


def silhouette(shape: str, size: tuple[int, int], rng: random.Random, jitter: float = 0.04) -> Image.Image:
    """A garment's mask ("L", 255 inside), centred in ``size`` with a catalogue's margins."""
    w, h = size

    def p(x: float, y: float) -> tuple[float, float]:
        return (
            w * (x + rng.uniform(-jitter, jitter) * 0.5),
            h * (y + rng.uniform(-jitter, jitter) * 0.5),
        )

    outlines = {
        "tee": [
            (0.35, 0.1),
            (0.45, 0.14),
            (0.55, 0.14),
            (0.65, 0.1),
            (0.9, 0.25),
            (0.8, 0.38),
            (0.72, 0.32),
            (0.72, 0.9),
            (0.28, 0.9),
            (0.28, 0.32),
            (0.2, 0.38),
            (0.1, 0.25),
        ],
        "skirt": [(0.32, 0.15), (0.68, 0.15), (0.7, 0.22), (0.88, 0.88), (0.12, 0.88), (0.3, 0.22)],
        "dress": [
            (0.38, 0.06),
            (0.46, 0.12),
            (0.54, 0.12),
            (0.62, 0.06),
            (0.66, 0.3),
            (0.6, 0.42),
            (0.85, 0.94),
            (0.15, 0.94),
            (0.4, 0.42),
            (0.34, 0.3),
        ],
        "bag": [(0.18, 0.3), (0.82, 0.3), (0.86, 0.85), (0.14, 0.85)],
        "hoodie": [
            (0.38, 0.06),
            (0.62, 0.06),
            (0.68, 0.16),
            (0.92, 0.5),
            (0.86, 0.86),
            (0.74, 0.55),
            (0.74, 0.92),
            (0.26, 0.92),
            (0.26, 0.55),
            (0.14, 0.86),
            (0.08, 0.5),
            (0.32, 0.16),
        ],
    }
    mask = Image.new("L", size, 0)
    draw = ImageDraw.Draw(mask)
    draw.polygon([p(x, y) for x, y in outlines[shape]], fill=255)
    if shape == "bag":  # a handle
        draw.arc((w * 0.32, h * 0.1, w * 0.68, h * 0.5), 180, 360, fill=255, width=max(4, w // 40))
    return mask


def fill(texture: Image.Image, size: tuple[int, int]) -> Image.Image:
    """``texture`` scaled to cover ``size`` and centre-cropped to it."""
    scale = max(size[0] / texture.width, size[1] / texture.height)
    big = texture.convert("RGB").resize(
        (math.ceil(texture.width * scale), math.ceil(texture.height * scale)), Image.Resampling.BICUBIC
    )
    left, top = (big.width - size[0]) // 2, (big.height - size[1]) // 2
    return big.crop((left, top, left + size[0], top + size[1]))


def on_white(cloth: Image.Image, mask: Image.Image, background: Image.Image | None = None) -> Image.Image:
    """``cloth`` inside ``mask`` over a white studio background (or ``background``), soft edge."""
    base = background.copy() if background is not None else Image.new("RGB", mask.size, WHITE)
    shadow = mask.filter(ImageFilter.GaussianBlur(6)).point(lambda v: v * 0.25)
    grey = Image.new("RGB", mask.size, (150, 150, 150))
    base.paste(grey, (5, 7), shadow)
    base.paste(cloth, (0, 0), mask.filter(ImageFilter.GaussianBlur(0.8)))
    return base


# --------------------------------------------------------------------------------------------
# Labels, logos, prints
# --------------------------------------------------------------------------------------------


def woven_label(rng: random.Random) -> Image.Image:
    """A brand's woven label: a coloured tag with a border, the brand word and a small emblem."""
    name = brand_name(rng)
    width, height = 360, rng.choice((140, 170, 200))
    back = tuple(rng.randint(0, 90) for _ in range(3)) if rng.random() < 0.6 else (235, 230, 215)
    ink = (240, 235, 220) if sum(back) < 400 else (30, 30, 40)
    label = Image.new("RGB", (width, height), back)
    draw = ImageDraw.Draw(label)
    draw.rectangle((6, 6, width - 7, height - 7), outline=ink, width=4)
    big = font(height // 3, rng)
    small = font(max(10, height // 8), rng)
    draw.text(
        (width * 0.3, height * 0.62),
        rng.choice(("EST. 19", "PARIS ", "MILANO ")) + str(rng.randint(10, 99)),
        fill=ink,
        font=small,
    )
    emblem(draw, (18, height * 0.2, 18 + height * 0.6, height * 0.8), ink, rng)
    # The weave: a fine grid that a woven label shows up close.
    for x in range(0, width, 3):
        draw.line((x, 0, x, height), fill=tuple(max(0, c - 12) for c in back) if x % 6 else back, width=1)
    draw.text((width * 0.3, height * 0.18), name, fill=ink, font=big)
    return label


def emblem(
    draw: ImageDraw.ImageDraw, box: tuple[float, float, float, float], ink, rng: random.Random
) -> None:
    """A small geometric mark: a star, a crest or rings."""
    x0, y0, x1, y1 = box
    cx, cy, r = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2
    kind = rng.randrange(3)
    if kind == 0:
        points = [
            (
                cx + (r if i % 2 == 0 else r * 0.45) * math.cos(math.pi * i / 5 - math.pi / 2),
                cy + (r if i % 2 == 0 else r * 0.45) * math.sin(math.pi * i / 5 - math.pi / 2),
            )
            for i in range(10)
        ]
        draw.polygon(points, fill=ink)
    elif kind == 1:
        draw.polygon([(x0, y0), (x1, y0), (x1, cy), (cx, y1), (x0, cy)], outline=ink, width=3)
        draw.line((x0, y0, x1, cy), fill=ink, width=3)
    else:
        for k in range(3):
            draw.ellipse(
                (x0 + k * r * 0.3, y0 + k * r * 0.3, x1 - k * r * 0.3, y1 - k * r * 0.3), outline=ink, width=2
            )


def brand_logo(rng: random.Random) -> Image.Image:
    """An opaque logo: a coloured disc or badge with a wordmark."""
    side = 320
    colour = tuple(rng.randint(0, 200) for _ in range(3))
    logo = Image.new("RGB", (side, side), WHITE)
    draw = ImageDraw.Draw(logo)
    if rng.random() < 0.5:
        draw.ellipse((4, 4, side - 4, side - 4), fill=colour)
    else:
        draw.rounded_rectangle((4, 40, side - 4, side - 40), radius=30, fill=colour)
    emblem(draw, (side * 0.35, side * 0.12, side * 0.65, side * 0.42), WHITE, rng)
    name = brand_name(rng)
    draw.text((side * 0.12, side * 0.5), name, fill=WHITE, font=font(side // 6, rng))
    return logo


def floral_print(seed: int, size: tuple[int, int] = (1400, 1400)) -> Image.Image:
    """A printed fabric: a drawn motif (flowers, leaves, dots) repeated as a half-drop repeat."""
    rng = random.Random(seed)
    period = rng.randint(150, 240)
    ground = (
        tuple(rng.randint(180, 255) for _ in range(3))
        if rng.random() < 0.6
        else tuple(rng.randint(10, 80) for _ in range(3))
    )
    tile = Image.new("RGB", (period, period), ground)
    draw = ImageDraw.Draw(tile)
    palette = [tuple(rng.randint(0, 255) for _ in range(3)) for _ in range(4)]
    for _ in range(rng.randint(4, 7)):
        cx, cy, r = rng.uniform(0, period), rng.uniform(0, period), rng.uniform(10, 30)
        petals, colour = rng.randint(4, 7), rng.choice(palette)
        for dx in (-period, 0, period):  # wrap so the repeat is seamless
            for dy in (-period, 0, period):
                x, y = cx + dx, cy + dy
                for k in range(petals):
                    a = 2 * math.pi * k / petals + rng.random() * 0.01
                    px, py = x + r * 0.8 * math.cos(a), y + r * 0.8 * math.sin(a)
                    draw.ellipse((px - r * 0.5, py - r * 0.5, px + r * 0.5, py + r * 0.5), fill=colour)
                draw.ellipse((x - r * 0.3, y - r * 0.3, x + r * 0.3, y + r * 0.3), fill=palette[0])
    for _ in range(rng.randint(6, 12)):  # leaves and dots
        x, y, r = rng.uniform(0, period), rng.uniform(0, period), rng.uniform(3, 9)
        draw.ellipse((x - r, y - r * 0.5, x + r, y + r * 0.5), fill=rng.choice(palette))
    fabric = Image.new("RGB", size, ground)
    for row, y in enumerate(range(-period, size[1] + period, period)):
        for x in range(-period, size[0] + period, period):
            fabric.paste(tile, (x + (period // 2 if row % 2 else 0), y))
    return fabric


def drape(image: Image.Image, rng: random.Random, amplitude: float) -> Image.Image:
    """A fabric's drape: a smooth sinusoidal displacement and a small rotation and scale."""
    rotated = image.rotate(rng.uniform(-12, 12), Image.Resampling.BICUBIC, expand=False)
    arr = np.asarray(rotated)
    h, w = arr.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    fx, fy = rng.uniform(1.0, 2.5) * 2 * math.pi / w, rng.uniform(1.0, 2.5) * 2 * math.pi / h
    px, py = rng.uniform(0, 6.3), rng.uniform(0, 6.3)
    mx = xx + amplitude * np.sin(yy * fy + px)
    my = yy + amplitude * np.sin(xx * fx + py)
    import cv2  # the bench's own dependency (hard_edits uses it too)

    warped = cv2.remap(arr, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    return Image.fromarray(warped)


def paste_patch(
    image: Image.Image, patch: Image.Image, area: float, rng: random.Random, mask: Image.Image | None = None
) -> Image.Image:
    """``patch`` scaled to ``area`` of the picture, pasted at a random place (inside ``mask``'s
    box when given, as a label sits on the garment)."""
    out = image.copy()
    scale = math.sqrt(area * out.width * out.height / (patch.width * patch.height))
    size = (max(8, round(patch.width * scale)), max(8, round(patch.height * scale)))
    small = patch.resize(size, Image.Resampling.LANCZOS)
    box = mask.getbbox() if mask is not None else (0, 0, out.width, out.height)
    x0, y0, x1, y1 = box or (0, 0, out.width, out.height)
    left = rng.randint(x0, max(x0, x1 - size[0]))
    top = rng.randint(y0, max(y0, y1 - size[1]))
    out.paste(small, (min(left, out.width - size[0]), min(top, out.height - size[1])))
    return out


# --------------------------------------------------------------------------------------------
# Families
# --------------------------------------------------------------------------------------------


@dataclass
class Family:
    """Pictures sharing one region: ``stored`` go to the library, ``asked`` are negatives."""

    kind: str
    number: int
    stored: list[Image.Image]
    asked: list[Image.Image]


def _photos(paths: list[Path]) -> list[Image.Image]:
    return [Image.open(p).convert("RGB") for p in paths]


def label_family(number: int, photos: list[Path]) -> Family:
    """Garments of one brand (different photos' textures, different silhouettes), one label."""
    rng = random.Random(1000 + number)
    label = woven_label(rng)
    pictures = []
    for photo in _photos(photos):
        shape = rng.choice(SHAPES)
        mask = silhouette(shape, CANVAS, rng)
        product = on_white(fill(photo, CANVAS), mask)
        pictures.append(paste_patch(product, label, rng.uniform(0.03, 0.15), rng, mask))
    return Family("label", number, pictures[:3], pictures[3:])


def print_family(number: int, _: list[Path]) -> Family:
    """A skirt and a top (and more) cut from one printed fabric: other parts, other drapes."""
    rng = random.Random(2000 + number)
    fabric = floral_print(number)
    pictures = []
    for shape in rng.sample(SHAPES, 3):
        left, top = rng.randint(0, fabric.width - CANVAS[0]), rng.randint(0, fabric.height - CANVAS[1])
        piece = fabric.crop((left, top, left + CANVAS[0], top + CANVAS[1]))
        cloth = drape(piece, rng, rng.uniform(6, 14))
        pictures.append(on_white(cloth, silhouette(shape, CANVAS, rng)))
    return Family("print", number, pictures[:1], pictures[1:])


def logo_family(number: int, photos: list[Path]) -> Family:
    """One logo pasted on different photos, its own size and place in each."""
    rng = random.Random(3000 + number)
    logo = brand_logo(rng)
    pictures = [paste_patch(p, logo, rng.uniform(0.03, 0.15), rng) for p in _photos(photos)]
    return Family("logo", number, pictures[:2], pictures[2:])


def studio_family(number: int, photos: list[Path]) -> Family:
    """Catalogue shots in one studio pose: one backdrop, floor, hanger and framing, one kind of
    garment; each shot a different garment (a different photo's texture, its own outline)."""
    rng = random.Random(4000 + number)
    backdrop = Image.new("RGB", CANVAS, (250, 250, 248))
    draw = ImageDraw.Draw(backdrop)
    for y in range(CANVAS[1] * 3 // 4, CANVAS[1]):  # the studio floor's soft gradient
        shade = round(250 - 30 * (y - CANVAS[1] * 3 / 4) / (CANVAS[1] / 4))
        draw.line((0, y, CANVAS[0], y), fill=(shade, shade, shade - 2))
    hook = CANVAS[0] // 2
    draw.arc((hook - 14, 4, hook + 14, 40), 180, 90, fill=(90, 90, 95), width=4)
    draw.line((hook - 90, 62, hook, 30, hook + 90, 62), fill=(120, 100, 80), width=6)
    shape = rng.choice(SHAPES)
    pictures = []
    for photo in _photos(photos):
        mask = silhouette(shape, CANVAS, rng, jitter=0.04)
        pictures.append(on_white(fill(photo, CANVAS), mask, backdrop))
    return Family("studio", number, pictures[:4], pictures[4:])


#: kind -> (builder, photos each family takes).
BUILDERS = {"label": (label_family, 5), "print": (print_family, 0), "logo": (logo_family, 4),
            "studio": (studio_family, 7)}  # fmt: skip


def families(photos: list[Path], per_kind: int) -> Iterator[Family]:
    """``per_kind`` families of every kind, each with photos of its own from ``photos`` (no
    photo in two families: a photo shared across families would make their pictures the same
    picture under another label or logo, not look-alikes). Stops early when photos run out."""
    used = 0
    for kind in KINDS:
        builder, needs = BUILDERS[kind]
        for number in range(per_kind):
            if used + needs > len(photos):
                break
            yield builder(number, photos[used : used + needs])
            used += needs


if __name__ == "__main__":  # a contact sheet, to look at what the protocol asks
    import sys

    source = sorted((Path(sys.argv[1]) / "imagenet-samples").glob("*.JPEG"))[600:]
    out = Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    for fam in families(source, 2):
        for i, picture in enumerate(fam.stored + fam.asked):
            role = "stored" if i < len(fam.stored) else "asked"
            picture.save(out / f"{fam.kind}{fam.number}-{i}-{role}.jpg", quality=90)

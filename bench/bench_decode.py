"""What ``Image.draft`` buys: decoding large JPEGs at a reduced scale before the resize to 224 px.

For each picture size, the daemon's decode + preprocess (:func:`same_search.embed.images.decode`
with the model's input side, so JPEG draft mode applies above twice that side) against the same
code with draft mode out of reach (a target side larger than the picture), timed alternately in
one thread, median of ``--repeats``. Also the cosine between the descriptors of both paths, to show
the shortcut does not change what the network sees in any way that matters.

Pictures: ImageNet samples from ``../shared/data`` upscaled to each size (photographic content),
or generated pictures without it. Prints a markdown table.

    nice -n 10 .venv/bin/python bench/bench_decode.py
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import time

import common  # first: puts the repository and tests/ on sys.path
import numpy as np
from images import picture
from PIL import Image

from same_search.config import ModelConfig
from same_search.embed.embedder import Embedder
from same_search.embed.images import ImageLimits, decode

SIZES = ((640, 480), (1600, 1200), (3000, 2000), (4032, 3024), (6000, 4000))


def source_pictures(count: int) -> list[Image.Image]:
    """Photographic sources when shared/data is present, else generated pictures."""
    paths = sorted(common.PHOTOS.glob("*.JPEG"))[:count]
    if paths:
        return [Image.open(p).convert("RGB") for p in paths]
    return [picture(i) for i in range(count)]


def jpeg_bytes(image: Image.Image, size: tuple[int, int]) -> bytes:
    """``image`` resized to ``size`` and saved as a quality-90 JPEG, like a camera upload."""
    buffer = io.BytesIO()
    image.resize(size, Image.Resampling.BICUBIC).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def main(argv: list[str] | None = None) -> int:
    """Time both paths per size; print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pictures", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    embedder = Embedder(ModelConfig(name="efficientnet_lite0", device="cpu", workers=1, threads=1))
    side = embedder.cfg.image_size
    limits = ImageLimits()
    sources = source_pictures(args.pictures)
    print(
        "| picture | JPEG KiB | decode+preprocess ms, draft | without draft | speed-up | cos(draft, full) |"
    )
    print("|---|--:|--:|--:|--:|--:|")
    for size in SIZES:
        blobs = [jpeg_bytes(image, size) for image in sources]
        with_draft, without = [], []
        for _ in range(args.repeats):
            for data in blobs:
                started = time.perf_counter()
                embedder.preprocess(decode(data, limits, side))
                with_draft.append(time.perf_counter() - started)
                started = time.perf_counter()
                embedder.preprocess(decode(data, limits, 1 << 20))
                without.append(time.perf_counter() - started)
        pairs = [
            (embedder.preprocess(decode(d, limits, side)), embedder.preprocess(decode(d, limits, 1 << 20)))
            for d in blobs
        ]
        vectors = embedder.embed(np.stack([p for pair in pairs for p in pair]))
        cosines = (vectors[0::2] * vectors[1::2]).sum(axis=1)
        fast_ms, full_ms = statistics.median(with_draft) * 1000, statistics.median(without) * 1000
        kib = statistics.mean(len(b) for b in blobs) / 1024
        print(
            f"| {size[0]}x{size[1]} | {kib:,.0f} | {fast_ms:.1f} | {full_ms:.1f} | {full_ms / fast_ms:.1f}x "
            f"| {cosines.min():.4f} |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Retrieval quality of the embedder under different pooling / input size / preprocessing choices.

Two tasks on the reference photos in ``shared/data`` (see its README):

1. **Category retrieval** on ``caltech101-dev``: every image is indexed and used as a query;
   precision@10 and mAP@100 with the query itself excluded (exact cosine search).
2. **Near-duplicate retrieval**: the library is the first N ``imagenet-samples`` originals plus all
   of Caltech as distractors; the queries are edited copies of those N originals. Recall@1 per
   edit, and the margin (score of the true original minus the best wrong score).

Every configuration uses the real decoding (:func:`same_search.embed.images.decode`) and the real
network and pooling of :class:`same_search.embed.embedder.Embedder`. The network is loaded once.
Configurations that differ only in pooling share one forward pass (pooling is applied to the
same feature map); a start-up check proves this gives the same vectors as ``Embedder.embed``.
"Squash" is ``Embedder.preprocess``; "crop" (shorter side to S, then centre S x S) lives here.

Usage::

    nice -n 10 .venv/bin/python bench/eval_quality.py            # full run, writes quality_results.md
    .venv/bin/python bench/eval_quality.py --limit 10 --out ''   # quick smoke run, no file
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import os
import platform
import random
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import common  # first: puts the repository and bench/ on sys.path
import numpy as np
import quality_variants as variants
import torch
from hard_edits import crop_fraction as _crop_fraction
from hard_edits import logo as _logo
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageFont, ImageOps

from same_search.config import ModelConfig
from same_search.embed.embedder import Embedder
from same_search.embed.images import ImageLimits, decode
from same_search.embed.models import LoadedModel, load_model

MODEL_NAME = "efficientnet_lite0"
PREPROCESSING = ("squash", "crop", "flip")
#: What `make eval` compares: poolings and geometry at 224 px, the halves of the flip-averaged
#: and multi-scale descriptors. The daemon's default is avg/224/squash.
DEFAULT_CONFIGS = [
    "avg/224/squash",
    "gem/224/squash",
    "avg/224/crop",
    "gem/224/crop",
    "avg/224/flip",
    "avg/160/squash",
    "avg/288/squash",
]
#: The daemon's default descriptor and the issue's baseline (plain average pool, centre crop).
DEFAULT = "avg/224/squash"
BASELINE = "avg/224/crop"
BATCH = 16
LIMITS = ImageLimits()
#: Decoding the originals that edits start from: large enough that JPEG draft never kicks in.
FULL_RES = 1 << 20
#: Edited copies other than the JPEG-quality edit travel as high-quality JPEG, like real uploads.
EDIT_JPEG_QUALITY = 95


# --------------------------------------------------------------------------------------------
# Configurations and preprocessing
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, order=True)
class EvalConfig:
    """One point of the grid: how pixels become a vector."""

    size: int
    preprocessing: str  # "squash" | "crop" | "flip" (mirrored, squashed)
    pooling: str  # "avg" | "gem"
    gem_p: float = 3.0

    @property
    def label(self) -> str:
        """Short row label for the tables, e.g. ``gem3 / 224 / squash``."""
        pool = f"gem{self.gem_p:g}" if self.pooling == "gem" else "avg"
        return f"{pool} / {self.size} / {self.preprocessing}"

    def model_config(self) -> ModelConfig:
        """The daemon configuration this grid point corresponds to."""
        return ModelConfig(name=MODEL_NAME, pooling=self.pooling, gem_p=self.gem_p, image_size=self.size)


def centre_crop(image: Image.Image, size: int) -> np.ndarray:
    """RGB picture -> (3, S, S) uint8: shorter side resized to S, then the centre S x S kept.

    Same resampling as ``Embedder.preprocess`` so that only the geometry differs.
    """
    width, height = image.size
    scale = size / min(width, height)
    new_w, new_h = max(size, round(width * scale)), max(size, round(height * scale))
    resized = image.resize((new_w, new_h), Image.Resampling.BILINEAR, reducing_gap=3.0)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    cropped = resized.crop((left, top, left + size, top + size))
    return np.asarray(cropped, dtype=np.uint8).transpose(2, 0, 1)


def preprocessor(embedder: Embedder, mode: str) -> Callable[[Image.Image], np.ndarray]:
    """The preprocessing function for ``mode``: the daemon's own squash, or centre crop."""
    if mode == "squash":
        return embedder.preprocess
    if mode == "crop":
        return lambda image: centre_crop(image, embedder.cfg.image_size)
    if mode == "flip":  # the mirror image, squashed: half of a flip-averaged descriptor
        return lambda image: embedder.preprocess(ImageOps.mirror(image))
    raise ValueError(f"unknown preprocessing {mode!r}")


# --------------------------------------------------------------------------------------------
# Embedding with a per-run cache
# --------------------------------------------------------------------------------------------


@torch.inference_mode()
def embed_pooled(embedders: Sequence[Embedder], batch: np.ndarray) -> list[np.ndarray]:
    """One forward pass, pooled once per embedder (they must share the network and size).

    Mirrors ``Embedder.embed`` step by step; :func:`check_shared_forward` verifies that.
    """
    base = embedders[0]
    x = torch.from_numpy(batch).to(base.device).float().div_(255.0)
    x = ((x - base._mean) / base._std).contiguous(memory_format=torch.channels_last)
    features = base.network(x).float()
    return [
        torch.nn.functional.normalize(e._pool(features), dim=1).cpu().numpy().astype(np.float32)
        for e in embedders
    ]


def check_shared_forward(embedders: Sequence[Embedder], batch: np.ndarray) -> None:
    """Fail loudly if the shared forward pass does not reproduce ``Embedder.embed`` exactly."""
    for embedder, vectors in zip(embedders, embed_pooled(embedders, batch), strict=True):
        reference = embedder.embed(batch)
        diff = float(np.abs(reference - vectors).max())
        if diff > 1e-5:
            pooling = embedder.cfg.pooling
            raise AssertionError(f"shared forward differs from Embedder.embed by {diff} ({pooling})")


class VectorCache:
    """Embeds images on demand, once per (configuration, image) for the whole run."""

    def __init__(self, loaded: LoadedModel, progress: bool = True) -> None:
        self.loaded = loaded
        self.progress = progress
        self._embedders: dict[EvalConfig, Embedder] = {}
        self._vectors: dict[tuple[EvalConfig, str], np.ndarray] = {}
        self._checked: set[tuple[int, str]] = set()

    def embedder(self, config: EvalConfig) -> Embedder:
        """The (cheap) Embedder of one configuration; all share the single loaded network."""
        if config not in self._embedders:
            self._embedders[config] = Embedder(config.model_config(), loaded=self.loaded)
        return self._embedders[config]

    def matrix(self, config: EvalConfig, keys: Sequence[str]) -> np.ndarray:
        """(len(keys), dim) vectors of ``keys`` under ``config`` (they must have been embedded)."""
        return np.stack([self._vectors[(config, key)] for key in keys])

    def ensure(self, configs: Iterable[EvalConfig], images: dict[str, bytes], what: str = "") -> None:
        """Embed every image of ``images`` under every configuration that lacks it.

        Each picture is decoded once per input size; each (size, preprocessing) pair costs one
        forward pass, shared by the poolings of that pair.
        """
        groups: dict[tuple[int, str], list[EvalConfig]] = {}
        for config in sorted(set(configs)):
            groups.setdefault((config.size, config.preprocessing), []).append(config)
        for size in sorted({size for size, _ in groups}):
            modes = {mode: cfgs for (s, mode), cfgs in groups.items() if s == size}
            wanted = [c for cfgs in modes.values() for c in cfgs]
            missing = [k for k in images if any((c, k) not in self._vectors for c in wanted)]
            started = time.perf_counter()
            for start in range(0, len(missing), BATCH):
                chunk = missing[start : start + BATCH]
                pictures = [decode(images[key], LIMITS, size) for key in chunk]
                for mode, cfgs in modes.items():
                    embedders = [self.embedder(c) for c in cfgs]
                    prep = preprocessor(embedders[0], mode)
                    batch = np.stack([prep(p) for p in pictures])
                    if (size, mode) not in self._checked:
                        check_shared_forward(embedders, batch)
                        self._checked.add((size, mode))
                    for config, vectors in zip(cfgs, embed_pooled(embedders, batch), strict=True):
                        for key, vector in zip(chunk, vectors, strict=True):
                            self._vectors[(config, key)] = vector
                done = start + len(chunk)
                if self.progress and (done % (BATCH * 20) == 0 or done == len(missing)):
                    rate = done / (time.perf_counter() - started)
                    log(
                        f"  {what} size {size}: {done}/{len(missing)} images "
                        f"({rate:.1f} img/s over {len(modes)} preprocessing modes)"
                    )


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------


def load_caltech(root: Path, per_class: int | None) -> tuple[dict[str, bytes], list[str]]:
    """Caltech images as ``{key: jpeg bytes}`` plus the class of each key, in key order."""
    images: dict[str, bytes] = {}
    labels: list[str] = []
    for class_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        for path in sorted(class_dir.glob("*.jpg"))[:per_class]:
            images[f"caltech/{class_dir.name}/{path.name}"] = path.read_bytes()
            labels.append(class_dir.name)
    return images, labels


def load_imagenet(root: Path, count: int, offset: int = 0) -> dict[str, bytes]:
    """``count`` ImageNet samples (sorted by file name) from ``offset`` as ``{key: jpeg bytes}``."""
    paths = sorted(root.glob("*.JPEG"))[offset : offset + count]
    return {f"imagenet/{p.name}": p.read_bytes() for p in paths}


# --------------------------------------------------------------------------------------------
# Edits for the near-duplicate task
# --------------------------------------------------------------------------------------------


def _text_band(image: Image.Image, rng: random.Random) -> Image.Image:
    """An opaque coloured band with text over the bottom quarter (caption / watermark bar)."""
    out = image.copy()
    width, height = out.size
    band_top = height - height // 4
    colour = tuple(rng.randint(0, 255) for _ in range(3))
    draw = ImageDraw.Draw(out)
    draw.rectangle((0, band_top, width, height), fill=colour)
    font = ImageFont.load_default(size=max(10, (height - band_top) // 3))
    ink = (255, 255, 255) if sum(colour) < 384 else (0, 0, 0)
    origin = (width // 20, band_top + (height - band_top) // 3)
    draw.text(origin, "SALE -50% www.example.com", fill=ink, font=font)
    return out


def _letterbox(image: Image.Image) -> Image.Image:
    """Pad with black bars to a 16:9 canvas, picture centred (screenshot / video frame look)."""
    width, height = image.size
    canvas_w, canvas_h = max(width, round(height * 16 / 9)), max(height, round(width * 9 / 16))
    canvas = Image.new("RGB", (canvas_w, canvas_h))
    canvas.paste(image, ((canvas_w - width) // 2, (canvas_h - height) // 2))
    return canvas


def _screenshot(image: Image.Image) -> Image.Image:
    """The picture shown inside a mock app screen: white page, grey title bar, text lines below."""
    width, height = image.size
    canvas = Image.new("RGB", (round(width * 1.25), round(height * 1.6)), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    bar = round(height * 0.12)
    draw.rectangle((0, 0, canvas.width, bar), fill=(60, 64, 72))
    canvas.paste(image, ((canvas.width - width) // 2, bar + round(height * 0.05)))
    line_top = bar + round(height * 1.1)
    for row in range(4):
        y = line_top + row * max(4, height // 20)
        right = width // 10 + (width * (9 - row)) // 10
        draw.rectangle((width // 10, y, right, y + max(2, height // 60)), fill=(150, 150, 150))
    return canvas


def _down_up(image: Image.Image, short_side: int = 80) -> Image.Image:
    """Downscale to ``short_side`` px on the shorter side and back to the original size."""
    width, height = image.size
    scale = short_side / min(width, height)
    small_size = (max(1, round(width * scale)), max(1, round(height * scale)))
    small = image.resize(small_size, Image.Resampling.BILINEAR)
    return small.resize((width, height), Image.Resampling.BICUBIC)


#: name -> (group, function(image, rng) -> edited image, JPEG quality it is sent with).
EDITS: dict[str, tuple[str, Callable[[Image.Image, random.Random], Image.Image], int]] = {
    "jpeg30": ("mild", lambda im, _: im, 30),
    "jpeg60": ("mild", lambda im, _: im, 60),
    "half": ("mild", lambda im, _: im.resize((im.width // 2, im.height // 2), Image.Resampling.BILINEAR), 95),
    "flip": ("mild", lambda im, _: ImageOps.mirror(im), 95),
    "gray": ("mild", lambda im, _: im.convert("L"), 95),
    "bright1.3": ("mild", lambda im, _: ImageEnhance.Brightness(im).enhance(1.3), 95),
    "contrast0.6": ("mild", lambda im, _: ImageEnhance.Contrast(im).enhance(0.6), 95),
    "blur2": ("mild", lambda im, _: im.filter(ImageFilter.GaussianBlur(2)), 95),
    "crop50c": ("hard", lambda im, _: _crop_fraction(im, 0.5, None), 95),
    "crop30r": ("hard", lambda im, rng: _crop_fraction(im, 0.3, rng), 95),
    "rot10": ("hard", lambda im, _: im.rotate(10, Image.Resampling.BILINEAR, expand=False), 95),
    "rot15": ("hard", lambda im, _: im.rotate(-15, Image.Resampling.BILINEAR, expand=False), 95),
    "band25": ("hard", _text_band, 95),
    "logo": ("hard", _logo, 95),
    "letterbox": ("hard", lambda im, _: _letterbox(im), 95),
    "screenshot": ("hard", lambda im, _: _screenshot(im), 95),
    "down80": ("hard", lambda im, _: _down_up(im), 95),
}


def accepted(size: tuple[int, int]) -> bool:
    """Whether the daemon's default limits accept a picture of this size (else err 216202)."""
    width, height = size
    return (
        min(width, height) >= LIMITS.min_side
        and max(width, height) <= LIMITS.max_side
        and width * height <= LIMITS.max_pixels
    )


def make_queries(
    originals: dict[str, bytes], seed: int = 0
) -> tuple[dict[str, bytes], list[str], list[str], int]:
    """Edited copies of every original, as JPEG bytes; plus each query's edit and original key.

    Deterministic: the random crop and band colour come from a generator seeded per image.
    Copies the daemon would refuse (e.g. a tiny original halved below 32 px) are left out and
    counted in the last element of the result.
    """
    queries: dict[str, bytes] = {}
    edit_of: list[str] = []
    source_of: list[str] = []
    refused = 0
    for index, (key, data) in enumerate(originals.items()):
        picture = decode(data, LIMITS, FULL_RES)
        for edit_index, (edit, (_, function, quality)) in enumerate(EDITS.items()):
            rng = random.Random(seed * 1_000_003 + index * 101 + edit_index)
            edited = function(picture, rng)
            if not accepted(edited.size):
                refused += 1
                continue
            buffer = io.BytesIO()
            edited.save(buffer, "JPEG", quality=quality)
            queries[f"{key}#{edit}"] = buffer.getvalue()
            edit_of.append(edit)
            source_of.append(key)
    return queries, edit_of, source_of, refused


# --------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------


def category_metrics(
    vectors: np.ndarray, labels: Sequence[str], k_precision: int = 10, k_map: int = 100
) -> dict[str, float]:
    """Precision@k and mAP@k over all-vs-all queries, the query itself excluded.

    AP@k = sum over ranks r <= k of P@r * rel(r), divided by min(k, number of relevant items).
    """
    label_ids = np.unique(np.asarray(labels), return_inverse=True)[1]
    scores = vectors @ vectors.T
    np.fill_diagonal(scores, -np.inf)
    k = min(k_map, len(labels) - 1)
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.take_along_axis(top, np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1), axis=1)
    relevant = label_ids[order] == label_ids[:, None]
    n_relevant = np.bincount(label_ids)[label_ids] - 1
    precision_at_r = np.cumsum(relevant, axis=1) / np.arange(1, k + 1)
    ap = (precision_at_r * relevant).sum(axis=1) / np.maximum(np.minimum(n_relevant, k), 1)
    return {
        f"P@{k_precision}": float(relevant[:, :k_precision].mean()),
        f"mAP@{k_map}": float(ap.mean()),
    }


def near_duplicate_metrics(
    queries: np.ndarray, library: np.ndarray, truth: np.ndarray, edit_of: Sequence[str]
) -> dict[str, dict[str, float]]:
    """Recall@1 and margin (true score - best wrong score) per edit, plus group means."""
    scores = queries @ library.T
    rows = np.arange(len(queries))
    true_score = scores[rows, truth]
    scores[rows, truth] = -np.inf
    margin = true_score - scores.max(axis=1)
    hit = margin > 0
    edits = np.asarray(edit_of)
    result: dict[str, dict[str, float]] = {}
    for name in EDITS:
        mask = edits == name
        if mask.any():
            result[name] = {"R@1": float(hit[mask].mean()), "margin": float(margin[mask].mean())}
    for group in ("mild", "hard"):
        mask = np.isin(edits, [n for n, (g, _, _) in EDITS.items() if g == group])
        result[f"{group} mean"] = {"R@1": float(hit[mask].mean()), "margin": float(margin[mask].mean())}
    result["all"] = {"R@1": float(hit.mean()), "margin": float(margin.mean())}
    return result


# --------------------------------------------------------------------------------------------
# Reporting
# --------------------------------------------------------------------------------------------


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub-flavoured markdown table, first column left-aligned, the rest right-aligned."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join([":---"] + ["---:"] * (len(header) - 1)) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def log(message: str) -> None:
    """Progress goes to stderr so stdout holds only the tables."""
    print(message, file=sys.stderr, flush=True)


def machine_description() -> str:
    """Cores, accelerator, CPU model and library versions, in one line."""
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (
        f"{os.cpu_count()} CPU cores ({cpu}), {gpu}, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), Python {platform.python_version()}"
    )


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def build_grid(
    poolings: Sequence[str], sizes: Sequence[int], preps: Sequence[str], gem_p: float
) -> list[EvalConfig]:
    """All combinations, in a stable order (size, preprocessing, pooling)."""
    return sorted(EvalConfig(s, m, p, gem_p) for s in sizes for m in preps for p in poolings)


def parse_config(text: str, gem_p: float) -> EvalConfig:
    """``pooling/size/preprocessing``, e.g. ``gem/288/squash``, as an :class:`EvalConfig`."""
    try:
        pooling, size, mode = text.split("/")
        config = EvalConfig(int(size), mode, pooling, gem_p)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected pooling/size/preprocessing, got {text!r}") from exc
    if pooling not in ("avg", "gem") or mode not in PREPROCESSING:
        raise argparse.ArgumentTypeError(f"unknown pooling or preprocessing in {text!r}")
    return config


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=common.SHARED_DATA,
        help="folder holding caltech101-dev/ and imagenet-samples/ (default: ../shared/data)",
    )
    parser.add_argument(
        "--limit",
        type=int,
        default=None,
        help="quick run: at most N Caltech images per class and N ImageNet originals",
    )
    parser.add_argument(
        "--originals",
        type=int,
        default=300,
        help="ImageNet originals in the near-duplicate task (default 300)",
    )
    parser.add_argument("--pooling", nargs="+", default=["avg", "gem"], choices=["avg", "gem"])
    parser.add_argument("--gem-p", type=float, default=3.0)
    parser.add_argument(
        "--configs",
        nargs="+",
        default=DEFAULT_CONFIGS,
        metavar="POOL/SIZE/PREP",
        help="grid points (e.g. gem/288/squash); 'grid' for the full product of "
        "--pooling x --sizes x --preprocessing (default: the configurations docs/quality.md compares)",
    )
    parser.add_argument("--sizes", nargs="+", type=int, default=[224, 288])
    parser.add_argument("--preprocessing", nargs="+", default=["squash", "crop"], choices=PREPROCESSING)
    parser.add_argument(
        "--budget-min",
        type=float,
        default=25.0,
        help="skip larger input sizes whose estimated time would exceed this many minutes",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the random edits")
    parser.add_argument(
        "--out",
        default=str(Path(__file__).with_name("quality_results.md")),
        help="markdown file for the results ('' to skip writing)",
    )
    args = parser.parse_args(argv)
    if args.configs == ["grid"]:
        args.configs = None
    if args.configs:
        try:
            args.configs = sorted({parse_config(text, args.gem_p) for text in args.configs})
        except argparse.ArgumentTypeError as exc:
            parser.error(str(exc))
    return args


@dataclass
class Results:
    """Everything the report needs."""

    grid: list[EvalConfig]
    category: dict[EvalConfig, dict[str, float]]
    duplicates: dict[EvalConfig, dict[str, dict[str, float]]]
    n_caltech: int
    n_classes: int
    n_originals: int
    n_queries: int
    n_refused: int
    weights_sha256: str
    data_dir: Path
    elapsed_s: float
    #: Configurations dropped because the time budget would have run out.
    skipped: list[EvalConfig] = field(default_factory=list)
    #: Derived descriptors (label -> (category metrics, near-duplicate metrics)), incl. pHash.
    variants: dict[str, tuple[dict[str, float], dict[str, dict[str, float]]]] = field(default_factory=dict)
    #: Same-picture threshold sweep of the default descriptor and of pHash (label -> rows).
    thresholds: dict[str, list[dict[str, float]]] = field(default_factory=dict)
    #: Recall@1 per edit of the default descriptor counting only hits above the recommended threshold.
    recall_at_threshold: dict[str, float] = field(default_factory=dict)
    n_absent: int = 0


def run(args: argparse.Namespace, data_dir: Path, on_partial: Callable[[Results], None]) -> Results:
    """Load data and model, embed what each configuration needs, compute both tasks.

    Works one input size at a time and hands the configurations finished so far to
    ``on_partial`` after each, so a run cut short still leaves complete rows behind.
    """
    started = time.perf_counter()
    grid = args.configs or build_grid(args.pooling, args.sizes, args.preprocessing, args.gem_p)
    n_originals = min(args.originals, args.limit) if args.limit else args.originals
    caltech, labels = load_caltech(data_dir / "caltech101-dev", args.limit)
    originals = load_imagenet(data_dir / "imagenet-samples", n_originals)
    queries, edit_of, source_of, refused = make_queries(originals, args.seed)
    absent = load_imagenet(data_dir / "imagenet-samples", n_originals, offset=n_originals)
    #: Photos used by neither task: what a fixed, shipped projection could be learned from.
    held_out = load_imagenet(data_dir / "imagenet-samples", 400, offset=2 * n_originals)
    log(
        f"data: {len(caltech)} caltech, {len(originals)} originals, {len(queries)} edited queries "
        f"({refused} refused by the size limits); {len(grid)} configs; "
        f"edits ready in {time.perf_counter() - started:.0f}s"
    )

    loaded = load_model(ModelConfig(name=MODEL_NAME))
    cache = VectorCache(loaded)
    library_keys = list(originals) + list(caltech)
    truth = np.asarray([library_keys.index(source) for source in source_of])
    results = Results(
        grid=[],
        category={},
        duplicates={},
        n_caltech=len(caltech),
        n_classes=len(set(labels)),
        n_originals=len(originals),
        n_queries=len(queries),
        n_refused=refused,
        weights_sha256=loaded.weights_sha256,
        data_dir=data_dir,
        elapsed_s=0.0,
    )
    last_cost: float | None = None  # seconds per (pixel-scaled) forward pass of the last size
    for size in sorted({c.size for c in grid}):
        configs = [c for c in grid if c.size == size]
        passes = len({c.preprocessing for c in configs}) * (size / 224) ** 2
        elapsed = time.perf_counter() - started
        if last_cost is not None and elapsed + last_cost * passes > args.budget_min * 60:
            log(
                f"size {size}: skipped, about {last_cost * passes / 60:.0f} min more would exceed "
                f"--budget-min {args.budget_min:g}"
            )
            results.skipped += configs
            continue
        size_started = time.perf_counter()
        cache.ensure(configs, caltech, "caltech")
        cache.ensure(configs, originals, "originals")
        cache.ensure(configs, queries, "queries")
        for config in configs:
            results.category[config] = category_metrics(cache.matrix(config, list(caltech)), labels)
            results.duplicates[config] = near_duplicate_metrics(
                cache.matrix(config, list(queries)), cache.matrix(config, library_keys), truth, edit_of
            )
            results.grid.append(config)
            log(
                f"  {config.label}: {results.category[config]} "
                f"R@1(all)={results.duplicates[config]['all']['R@1']:.3f}"
            )
        results.elapsed_s = time.perf_counter() - started
        last_cost = (time.perf_counter() - size_started) / passes
        log(f"size {size} done in {time.perf_counter() - size_started:.0f}s")
        on_partial(results)
    by_label = {f"{c.pooling}/{c.size}/{c.preprocessing}": c for c in results.grid}
    if DEFAULT in by_label:
        cache.ensure([by_label[DEFAULT]], absent, "absent")
        cache.ensure([by_label[DEFAULT]], held_out, "held-out")
    sets = EvalSets(originals, caltech, labels, library_keys, queries, edit_of, truth, absent, list(held_out))
    add_variants(results, sets, lambda label, keys: cache.matrix(by_label[label], keys), set(by_label))
    results.n_absent = len(absent)
    results.elapsed_s = time.perf_counter() - started
    on_partial(results)
    return results


@dataclass
class EvalSets:
    """The images of both tasks, by key, with their ground truth."""

    originals: dict[str, bytes]
    caltech: dict[str, bytes]
    labels: list[str]
    library_keys: list[str]
    queries: dict[str, bytes]
    edit_of: list[str]
    truth: np.ndarray
    absent: dict[str, bytes]
    held_out: list[str]


def add_variants(
    results: Results,
    sets: EvalSets,
    matrix: Callable[[str, Sequence[str]], np.ndarray],
    have: set[str],
) -> None:
    """Derived descriptors, the pHash baseline and the same-picture threshold, into ``results``.

    ``matrix(label, keys)`` returns cached vectors of a grid configuration such as ``avg/224/squash``.
    """
    cal, lib, qry = list(sets.caltech), sets.library_keys, list(sets.queries)
    combos = {
        "flip-averaged (224 + mirror)": ["avg/224/squash", "avg/224/flip"],
        "multi-scale 160 + 224": ["avg/160/squash", "avg/224/squash"],
        "multi-scale 224 + 288": ["avg/224/squash", "avg/288/squash"],
        "multi-scale 160 + 224 + 288": ["avg/160/squash", "avg/224/squash", "avg/288/squash"],
    }
    derived: dict[str, Callable[[Sequence[str]], np.ndarray]] = {}
    for name, parts in combos.items():
        if set(parts) <= have:
            derived[name] = lambda keys, parts=parts: variants.combine(*(matrix(p, keys) for p in parts))
    for name, fn in derived.items():
        results.variants[name] = _score_variant(fn, fn, sets, cal, lib, qry)
        log(f"  {name}: {results.variants[name][0]}")
    if DEFAULT in have:
        base = lambda keys: matrix(DEFAULT, keys)  # noqa: E731
        for dim, power in ((512, 0.0), (256, 0.0), (128, 0.0), (256, 0.5), (512, 0.5), (256, 1.0)):
            kind = "PCA" if power == 0 else ("whitened" if power == 1 else "PCA-whitened^0.5")
            name = f"{kind} to {dim} (learned on the library)"
            results.variants[name] = _score_learned(base, dim, power, sets, cal, lib, qry)
            log(f"  {name}: {results.variants[name][0]}")
        if len(sets.held_out) > 256:
            for dim in (256, 128):
                fixed = variants.learn_pca(base(sets.held_out), dim, 0.0)
                name = f"PCA to {dim}, fixed (learned on {len(sets.held_out)} held-out ImageNet photos)"
                project = lambda keys, f=fixed: f(base(keys))  # noqa: E731
                results.variants[name] = _score_variant(project, project, sets, cal, lib, qry)
        present = variants.top1(base(qry), base(lib))
        absent_scores = variants.top1(base(list(sets.absent)), base(lib))[1]
        sweep = [round(t, 3) for t in np.arange(0.30, 0.96, 0.025)]
        results.thresholds[DEFAULT] = variants.threshold_table(present, sets.truth, absent_scores, sweep)
        chosen = variants.recommend(results.thresholds[DEFAULT])["threshold"]
        edits = np.asarray(sets.edit_of)
        hit = (present[0] == sets.truth) & (present[1] >= chosen)
        results.recall_at_threshold = {e: float(hit[edits == e].mean()) for e in EDITS if (edits == e).any()}
    try:
        import imagehash  # noqa: F401
    except ImportError:
        log("pHash baseline skipped: pip install imagehash (make eval does)")
        return
    images = {**sets.originals, **sets.caltech, **sets.queries, **sets.absent}
    log(f"  pHash of {len(images)} images...")
    hashes = dict(zip(images, variants.phash_vectors(images, list(images)), strict=True))
    phash = lambda keys: np.stack([hashes[k] for k in keys])  # noqa: E731
    results.variants["pHash (imagehash, 64 bits)"] = _score_variant(phash, phash, sets, cal, lib, qry)
    present = variants.top1(phash(qry), phash(lib))
    absent_scores = variants.top1(phash(list(sets.absent)), phash(lib))[1]
    sweep = [round(t, 3) for t in np.arange(0.0, 1.0, 0.0625)]  # 1 - 2 * hamming / 64, hamming 32..0
    results.thresholds["pHash"] = variants.threshold_table(present, sets.truth, absent_scores, sweep)


def _score_variant(
    for_category: Callable[[Sequence[str]], np.ndarray],
    for_duplicates: Callable[[Sequence[str]], np.ndarray],
    sets: EvalSets,
    cal: list[str],
    lib: list[str],
    qry: list[str],
) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """Both tasks' metrics for one descriptor function."""
    category = category_metrics(for_category(cal), sets.labels)
    duplicates = near_duplicate_metrics(for_duplicates(qry), for_duplicates(lib), sets.truth, sets.edit_of)
    return category, duplicates


def _score_learned(
    base: Callable[[Sequence[str]], np.ndarray],
    dim: int,
    power: float,
    sets: EvalSets,
    cal: list[str],
    lib: list[str],
    qry: list[str],
) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """Metrics of a PCA / whitening learned on each task's library (Caltech; originals + Caltech)."""
    on_caltech = variants.learn_pca(base(cal), dim, power)
    on_library = variants.learn_pca(base(lib), dim, power)
    return _score_variant(
        lambda keys: on_caltech(base(keys)), lambda keys: on_library(base(keys)), sets, cal, lib, qry
    )


def render(results: Results) -> str:
    """The markdown report: setup, category table, near-duplicate tables."""
    grid, category, dup = results.grid, results.category, results.duplicates
    cat_table = markdown_table(
        ["config", *category[grid[0]].keys()],
        [[c.label, *(f"{v:.4f}" for v in category[c].values())] for c in grid],
    )
    edit_names = [n for n in EDITS if n in dup[grid[0]]]
    columns = [*edit_names, "mild mean", "hard mean", "all"]
    dup_table = markdown_table(
        ["config", *columns, "margin (all)"],
        [
            [c.label, *(f"{dup[c][n]['R@1']:.3f}" for n in columns), f"{dup[c]['all']['margin']:+.4f}"]
            for c in grid
        ],
    )
    margin_table = markdown_table(
        ["config", *columns], [[c.label, *(f"{dup[c][n]['margin']:+.3f}" for n in columns)] for c in grid]
    )
    best_cat = max(grid, key=lambda c: (category[c]["mAP@100"], category[c]["P@10"]))
    best_dup = max(grid, key=lambda c: (dup[c]["all"]["R@1"], dup[c]["all"]["margin"]))
    return "\n".join(
        [
            "# Embedder quality: pooling, input size, preprocessing, derived descriptors, pHash",
            "",
            f"- date: {dt.datetime.now().astimezone().isoformat(timespec='seconds')}",
            f"- model: {MODEL_NAME} (weights sha256 {results.weights_sha256[:12]}...), batch {BATCH}",
            f"- machine: {machine_description()}",
            f"- data: {common.shown(results.data_dir)}; "
            f"{results.n_caltech} Caltech images in {results.n_classes} classes; "
            f"{results.n_originals} ImageNet originals x {len(EDITS)} edits = {results.n_queries} queries "
            f"({results.n_refused} edited copies left out: below the daemon's 32 px minimum side)",
            f"- each of the {results.n_caltech + results.n_originals + results.n_queries} images embedded "
            "once "
            f"per config (one forward pass per size x preprocessing, shared by both poolings); "
            f"run time {results.elapsed_s / 60:.1f} min",
            "",
            "## 1. Category retrieval (caltech101-dev, all-vs-all, query excluded)",
            "",
            "Exact cosine search. AP@100 is normalised by min(100, other images of the query's class).",
            "",
            cat_table,
            "",
            f"## 2. Near-duplicate retrieval ({results.n_originals} originals + {results.n_caltech} "
            "Caltech distractors)",
            "",
            "Recall@1 per edit; margin = score of the true original - best wrong score (mean over queries).",
            "Mild: jpeg30/jpeg60 (JPEG quality), half (50% resize), flip, gray, bright1.3, contrast0.6, "
            "blur2 (Gaussian radius 2). Hard: crop50c (centre 50% area), crop30r (random 30% area), "
            "rot10, rot15, band25 (text band over bottom 25%), logo (semi-opaque disc + wordmark over a "
            "quarter of the picture), letterbox (16:9 black bars), screenshot (inside a mock app page), "
            "down80 (80 px shorter side and back). Edited copies other than jpegNN are JPEG q95.",
            "",
            dup_table,
            "",
            "Mean margin per edit:",
            "",
            margin_table,
            "",
            f"Highest mAP@100: **{best_cat.label}**; "
            f"highest overall near-duplicate R@1: **{best_dup.label}**.",
            "",
            *(
                ["Not measured (time budget): " + ", ".join(c.label for c in results.skipped) + ".", ""]
                if results.skipped
                else []
            ),
            *render_summary(results),
            *render_thresholds(results),
        ]
    )


def summary_row(
    label: str, category: dict[str, float], dup: dict[str, dict[str, float]], base: float
) -> list[str]:
    """One line of the comparison table: both tasks in one row, P@10 relative to the baseline."""
    edits = [n for n in EDITS if n in dup]
    worst = min(dup[n]["R@1"] for n in edits)
    tied = [n for n in edits if dup[n]["R@1"] == worst]
    worst_names = ", ".join(tied) if len(tied) <= 3 else f"{len(tied)} edits"
    return [
        label,
        f"{category['P@10']:.3f}",
        f"{(category['P@10'] / base - 1) * 100:+.1f}%" if base else "",
        f"{category['mAP@100']:.3f}",
        f"{dup['mild mean']['R@1']:.3f}",
        f"{dup['hard mean']['R@1']:.3f}",
        f"{worst_names} {worst:.3f}",
        f"{dup['all']['margin']:+.3f}",
    ]


def render_summary(results: Results) -> list[str]:
    """Every grid point and derived descriptor on one table (the one docs/quality.md quotes)."""
    by_label = {f"{c.pooling}/{c.size}/{c.preprocessing}": c for c in results.grid}
    base = results.category[by_label[BASELINE]]["P@10"] if BASELINE in by_label else 0.0
    rows = [summary_row(c.label, results.category[c], results.duplicates[c], base) for c in results.grid]
    rows += [summary_row(name, cat, dup, base) for name, (cat, dup) in results.variants.items()]
    header = ["descriptor", "P@10", "vs baseline", "mAP@100", "mild R@1", "hard R@1", "worst edit", "margin"]
    return [
        "## 3. All descriptors side by side",
        "",
        f"Baseline for 'vs baseline': {BASELINE} (plain average pool, 224 px centre crop, the network's "
        "own input scaling). Derived rows reuse the cached vectors: flip-averaged and multi-scale sum "
        "unit descriptors; PCA / whitening is learned on each task's library (never on queries); "
        "pHash ranks by Hamming distance.",
        "",
        markdown_table(header, rows),
        "",
    ]


def render_thresholds(results: Results) -> list[str]:
    """The same-picture threshold sweep and the recall per edit at the recommended score."""
    if DEFAULT not in results.thresholds:
        return []
    lines = [
        "## 4. Same picture: a score threshold",
        "",
        f"A search 'says same picture' when its best hit scores >= t. Positives: the {results.n_queries} "
        f"edited copies (original in the library). Negatives: {results.n_absent} other ImageNet photos "
        "whose picture is not in the library, plus any positive whose best hit is the wrong image.",
        "",
    ]
    for label, rows in results.thresholds.items():
        chosen = variants.recommend(rows)
        columns = ("threshold", "precision", "recall", "false_positives")
        table = [[f"{r[k]:.4f}".rstrip("0").rstrip(".") for k in columns] for r in rows]
        lines += [
            f"### {label}",
            "",
            markdown_table(["t", "precision", "recall", "false positives"], table),
            "",
            f"Recommended (lowest t with precision >= 0.99): **{chosen['threshold']:.3f}**: precision "
            f"{chosen['precision']:.4f}, recall {chosen['recall']:.4f}.",
            "",
        ]
    if results.recall_at_threshold:
        edits = list(results.recall_at_threshold)
        lines += [
            f"Recall of {DEFAULT} per edit, counting only best hits at or above its recommended threshold:",
            "",
            markdown_table(edits, [[f"{results.recall_at_threshold[e]:.3f}" for e in edits]]),
            "",
        ]
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    """Run both tasks over the grid, print the tables and write them to ``--out``."""
    args = parse_args(argv)
    data_dir = args.data_dir.resolve()
    if not (data_dir / "caltech101-dev").is_dir() or not (data_dir / "imagenet-samples").is_dir():
        print(
            f"skipping: reference data not found under {data_dir} "
            "(needs caltech101-dev/ and imagenet-samples/)"
        )
        return 0

    def write(results: Results) -> None:
        """Rewrite the markdown file with the configurations finished so far."""
        if args.out:
            Path(args.out).write_text(render(results))
            log(f"wrote {args.out} ({len(results.grid)} configs so far)")

    results = run(args, data_dir, write)
    if results.skipped:
        write(results)  # the partial writes could not know yet what would be skipped
    print(render(results))
    log(f"total {results.elapsed_s / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())

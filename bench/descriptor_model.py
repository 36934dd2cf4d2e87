"""Synthetic descriptors that behave like the serving model's: fitted on real photos, checked by
their nearest-neighbour score histogram.

Benchmarks at a million items cannot embed a million photos on a 2-core box, and vectors drawn
from an arbitrary distribution decide nothing: they can be easier or harder for the index than
real descriptors. So this module

1. embeds the development photos (``../shared/data``: Caltech-101 dev slice and ImageNet
   samples) with the serving model, once, cached under ``bench/.cache``;
2. fits a model of them in square-root space: the mean, a PCA basis with its spectrum, a mixture
   of k clusters in that basis (per-cluster mean and per-component spread, shrunk towards the
   global spread where a cluster has few members) and the zero pattern of each photo;
3. samples from it deterministically (a seed): a cluster's Gaussian around a point between its
   mean and one member, that member's zero pattern, squared back and L2-normalised like the
   embedder (see :class:`DescriptorModel` for why each step);
4. calibrates one spread factor so that the **nearest-neighbour score histogram** of a sample
   matches that of the real vectors at the same set size (the statistic an index's difficulty
   follows), and prints both histograms so docs/benchmarks.md can show the match.

    .venv/bin/python bench/descriptor_model.py            # fit, calibrate, print the histograms
    .venv/bin/python bench/descriptor_model.py --emit 1000000 --out /tmp/distractors.npy
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run without an installed package
    sys.path.insert(0, str(REPO))

#: The development photos: ../shared/data beside the checkout, or SAME_SEARCH_DEV_DATA (a git
#: worktree lives one level deeper than the main checkout).
DATA = Path(os.environ.get("SAME_SEARCH_DEV_DATA", REPO.parent / "shared" / "data"))
CACHE = Path(__file__).resolve().parent / ".cache"
HIST_EDGES = np.round(np.arange(0.30, 1.0001, 0.05), 2)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ---- real descriptors ------------------------------------------------------------------------------


def photo_paths(data: Path = DATA) -> list[Path]:
    """Every development photo, in a fixed order."""
    return sorted((data / "caltech101-dev").glob("*/*.jpg")) + sorted(
        (data / "imagenet-samples").glob("*.JPEG")
    )


def embed_photos(paths: list[Path], batch: int = 16) -> tuple[np.ndarray, str]:
    """(n, dim) descriptors of ``paths`` with the daemon's model, and the model fingerprint.

    Cached on disk keyed by the fingerprint and the file list, so a rerun costs nothing.
    """
    from same_search.config import LimitsConfig, ModelConfig
    from same_search.embed.embedder import Embedder
    from same_search.embed.images import ImageLimits, decode

    embedder = Embedder(ModelConfig(name="efficientnet_lite0", workers=1))
    fingerprint = embedder.info.fingerprint
    key = hashlib.sha256(("\n".join(p.name for p in paths) + fingerprint).encode()).hexdigest()[:16]
    cached = CACHE / f"real-{key}.npy"
    if cached.exists():
        return np.load(cached), fingerprint
    lim = LimitsConfig()
    limits = ImageLimits(lim.min_side, lim.max_side, lim.max_pixels)
    side = embedder.cfg.image_size
    vectors = []
    started = time.perf_counter()
    for start in range(0, len(paths), batch):
        chunk = paths[start : start + batch]
        pixels = np.stack([embedder.preprocess(decode(p.read_bytes(), limits, side)) for p in chunk])
        vectors.append(embedder.embed(pixels))
        if (start // batch) % 20 == 0:
            done = start + len(chunk)
            log(f"embedded {done}/{len(paths)} ({done / (time.perf_counter() - started):.1f}/s)")
    matrix = np.concatenate(vectors).astype(np.float32)
    CACHE.mkdir(exist_ok=True)
    np.save(cached, matrix)
    return matrix, fingerprint


# ---- the model ---------------------------------------------------------------------------------------


@dataclass
class DescriptorModel:
    """A fitted mixture of clusters in a PCA basis of the square-rooted descriptors.

    Why these choices (each measured against the NN-score histogram, bench/README in
    docs/benchmarks.md): descriptors are averages of ReLU outputs, half their entries are ~0 and
    the rest heavy-tailed, so a Gaussian fitted to them directly puts positive noise everywhere and
    makes unrelated vectors far too similar (random-pair score 0.45 against 0.20 for real ones).
    Fitting in square-root space, reusing the zero pattern of a real member of the cluster, centring
    half-way between the cluster mean and that member, and a per-sample log-normal spread
    (clusters are not equally tight) brings both the NN histogram and the random-pair score close.
    """

    mean: np.ndarray  # (dim,) mean of sqrt(descriptors)
    basis: np.ndarray  # (rank, dim), rows orthonormal
    coords: np.ndarray  # (n, rank) the fitted vectors in the basis (anchors)
    support: np.ndarray  # (n, dim) bool: where each fitted vector is non-zero
    labels: np.ndarray  # (n,) cluster of each fitted vector
    centres: np.ndarray  # (k, rank) cluster means in the basis
    spreads: np.ndarray  # (k, rank) per-component standard deviations, shrunk
    scale: float = 1.0  # calibrated spread factor
    anchor_mix: float = 0.5  # how far a sample's centre moves from its cluster mean to its anchor
    spread_sigma: float = 0.4  # log-normal sigma of a per-sample spread multiplier

    @classmethod
    def fit(cls, vectors: np.ndarray, rank: int = 600, clusters: int = 32, seed: int = 0) -> DescriptorModel:
        """Mean, PCA spectrum, zero patterns and cluster structure of ``vectors``."""
        rng = np.random.default_rng(seed)
        roots = np.sqrt(np.maximum(vectors, 0.0))
        mean = roots.mean(axis=0)
        _, _, vt = np.linalg.svd(roots - mean, full_matrices=False)
        basis = vt[: min(rank, len(vectors) - 1)]
        coords = (roots - mean) @ basis.T
        labels = _kmeans(coords, clusters, rng)
        k = labels.max() + 1
        global_var = coords.var(axis=0)
        centres = np.zeros((k, basis.shape[0]))
        spreads = np.zeros_like(centres)
        shrink = 8.0  # a cluster of n members trusts its own variance n/(n+8)
        for c in range(k):
            members = coords[labels == c]
            n = len(members)
            centres[c] = members.mean(axis=0)
            own = members.var(axis=0) if n > 1 else global_var
            spreads[c] = np.sqrt((n * own + shrink * 0.5 * global_var) / (n + shrink))
        return cls(mean, basis, coords, vectors > 1e-4, labels, centres, spreads)

    def sample(self, n: int, seed: int, chunk: int = 20_000) -> np.ndarray:
        """``n`` unit vectors, deterministic for a seed, generated ``chunk`` rows at a time."""
        out = np.empty((n, self.mean.shape[0]), np.float32)
        start = 0
        for rows in self.sample_chunks(n, seed, chunk):
            out[start : start + len(rows)] = rows
            start += len(rows)
        return out

    def sample_chunks(self, n: int, seed: int, chunk: int = 20_000) -> Iterator[np.ndarray]:
        """The rows of :meth:`sample` (same seed, same chunk: the same vectors), ``chunk`` at a
        time, so a million of them can go to a file without all being in memory at once."""
        rng = np.random.default_rng(seed)
        for start in range(0, n, chunk):
            m = min(chunk, n - start)
            anchors = rng.integers(len(self.labels), size=m)  # cluster weights follow membership
            which = self.labels[anchors]
            centre = self.centres[which] * (1 - self.anchor_mix) + self.coords[anchors] * self.anchor_mix
            spread = (
                self.spreads[which] * self.scale * np.exp(rng.standard_normal((m, 1)) * self.spread_sigma)
            )
            roots = self.mean + (centre + rng.standard_normal(centre.shape) * spread) @ self.basis
            np.maximum(roots, 0.0, out=roots)
            rows = (roots * self.support[anchors]) ** 2
            rows /= np.linalg.norm(rows, axis=1, keepdims=True) + 1e-12
            yield rows.astype(np.float32)


def _kmeans(x: np.ndarray, k: int, rng: np.random.Generator, iterations: int = 25) -> np.ndarray:
    """Plain Lloyd's k-means with k-means++ seeding; returns labels (empty clusters dropped)."""
    centres = [x[rng.integers(len(x))]]
    for _ in range(1, k):
        d = np.min(((x[:, None, :] - np.array(centres)[None]) ** 2).sum(-1), axis=1)
        centres.append(x[rng.choice(len(x), p=d / d.sum())])
    c = np.array(centres)
    for _ in range(iterations):
        d = (x**2).sum(1)[:, None] - 2 * x @ c.T + (c**2).sum(1)[None]
        labels = d.argmin(1)
        c = np.array([x[labels == j].mean(0) if (labels == j).any() else c[j] for j in range(len(c))])
    _, labels = np.unique(labels, return_inverse=True)
    return labels


# ---- the statistic that decides ------------------------------------------------------------------------


def nn_scores(vectors: np.ndarray) -> np.ndarray:
    """Each vector's cosine similarity to its nearest other vector (exact, chunked)."""
    best = np.empty(len(vectors), np.float32)
    for start in range(0, len(vectors), 2048):
        block = vectors[start : start + 2048] @ vectors.T
        block[np.arange(len(block)), np.arange(start, start + len(block))] = -np.inf
        best[start : start + len(block)] = block.max(1)
    return best


def histogram(scores: np.ndarray) -> np.ndarray:
    """Share of scores per bin of HIST_EDGES (outside values land in the end bins)."""
    counts, _ = np.histogram(np.clip(scores, HIST_EDGES[0], HIST_EDGES[-1] - 1e-9), HIST_EDGES)
    return counts / len(scores)


def calibrate(model: DescriptorModel, real: np.ndarray, seed: int = 1) -> float:
    """Set ``model.scale`` so the sample's median NN score equals the real one (bisection)."""
    target = float(np.median(nn_scores(real)))
    lo, hi = 0.3, 3.0
    for _ in range(14):
        model.scale = (lo + hi) / 2
        got = float(np.median(nn_scores(model.sample(len(real), seed))))
        # a larger spread scatters the points: lower nearest-neighbour scores
        lo, hi = (model.scale, hi) if got > target else (lo, model.scale)
    model.scale = (lo + hi) / 2
    return model.scale


def compare(real: np.ndarray, synthetic: np.ndarray) -> str:
    """A markdown table of both NN histograms, quantiles and the total-variation distance."""
    a, b = nn_scores(real), nn_scores(synthetic)
    ha, hb = histogram(a), histogram(b)
    rows = ["| NN score | real | synthetic |", "|---|---|---|"]
    for lo, hi, x, y in zip(HIST_EDGES[:-1], HIST_EDGES[1:], ha, hb, strict=True):
        rows.append(f"| {lo:.2f}-{hi:.2f} | {x:.3f} | {y:.3f} |")
    for q in (5, 25, 50, 75, 95):
        rows.append(f"| p{q} | {np.percentile(a, q):.3f} | {np.percentile(b, q):.3f} |")
    rows.append(f"| total variation distance | | {0.5 * np.abs(ha - hb).sum():.3f} |")
    # How the NN score grows with the set size: the trend a benchmark at 1M extrapolates along.
    for part in (4, 2):
        n = len(real) // part
        rows.append(
            f"| median NN score at n={n} | {np.median(nn_scores(real[:n])):.3f} "
            f"| {np.median(nn_scores(synthetic[:n])):.3f} |"
        )
    pair_a = _random_pair_scores(real)
    pair_b = _random_pair_scores(synthetic)
    rows.append(f"| random-pair score, median | {np.median(pair_a):.3f} | {np.median(pair_b):.3f} |")
    return "\n".join(rows)


def _random_pair_scores(vectors: np.ndarray, pairs: int = 20_000) -> np.ndarray:
    rng = np.random.default_rng(7)
    i, j = rng.integers(len(vectors), size=(2, pairs))
    keep = i != j
    return np.einsum("ij,ij->i", vectors[i[keep]], vectors[j[keep]])


def fitted_model(seed: int = 0) -> tuple[DescriptorModel, np.ndarray]:
    """The calibrated model and the real vectors it was fitted on (needs ../shared/data)."""
    paths = photo_paths()
    if not paths:
        raise SystemExit(f"no development photos under {DATA}")
    real, _ = embed_photos(paths)
    # Fit on one half, calibrate and compare on the other: the check is not circular.
    order = np.random.default_rng(seed).permutation(len(real))
    fit_on, held = real[order[: len(real) // 2]], real[order[len(real) // 2 :]]
    model = DescriptorModel.fit(fit_on, seed=seed)
    calibrate(model, held, seed=seed + 1)
    return model, held


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--emit", type=int, default=0, help="write this many synthetic vectors")
    parser.add_argument("--out", type=Path, help="where --emit writes them (.npy)")
    args = parser.parse_args(argv)
    model, held = fitted_model(args.seed)
    clusters = model.labels.max() + 1
    log(f"fitted: rank {model.basis.shape[0]}, {clusters} clusters, scale {model.scale:.3f}")
    print(compare(held, model.sample(len(held), args.seed + 2)))
    if args.emit:
        if args.out is None:
            parser.error("--emit needs --out")
        np.save(args.out, model.sample(args.emit, args.seed + 3))
        log(f"wrote {args.emit} vectors to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

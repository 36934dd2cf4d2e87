"""Descriptor variants built from the evaluation's cached vectors, a pHash baseline, and the
"same picture" score threshold. Used by eval_quality.py; nothing here embeds images itself.

- **Whitening / reduction**: PCA learned on the *library* only (what the daemon could learn from a
  customer's library, never from queries), then optionally whitened: ``power`` 0 is plain PCA
  (a reduction), 1 full whitening, 0.5 the usual shrunk middle ground.
- **Combinations**: the sum of two unit descriptors (flip-averaged, multi-scale), renormalised.
- **pHash**: imagehash's 64-bit perceptual hash as a +-1/8 vector, so the inner product is
  ``1 - 2 * hamming / 64``: ranking by it is ranking by Hamming distance, and the same metric
  code serves both.
- **Threshold**: for a score t, a search "says same picture" when its best hit scores >= t.
  Positives are edited copies whose original is in the library; negatives are photos whose
  picture is not. Precision counts a wrong best hit above t as a false positive.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence

import numpy as np


def normalise(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero)."""
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


def combine(*matrices: np.ndarray) -> np.ndarray:
    """Sum of unit descriptors of the same images, renormalised (flip / multi-scale averaging)."""
    return normalise(np.sum(matrices, axis=0))


def learn_pca(library: np.ndarray, dim: int, power: float) -> Callable[[np.ndarray], np.ndarray]:
    """Projection to ``dim`` principal axes of ``library``, each scaled by eigenvalue^(-power/2).

    Learned without labels from the library vectors alone. Returns a function mapping unit
    descriptors to unit descriptors of the reduced space.
    """
    mean = library.mean(axis=0)
    _, singular, axes = np.linalg.svd(library - mean, full_matrices=False)
    dim = min(dim, len(singular))
    eigen = singular[:dim] ** 2 / max(1, len(library) - 1)
    projection = axes[:dim].T / (eigen + 1e-9) ** (power / 2)
    return lambda vectors: normalise((vectors - mean) @ projection).astype(np.float32)


def phash_vectors(images: dict[str, bytes], keys: Sequence[str]) -> np.ndarray:
    """(len(keys), 64) float32 +-1/8 vectors of imagehash's pHash of each picture."""
    import imagehash
    from PIL import Image

    rows = []
    for key in keys:
        with Image.open(io.BytesIO(images[key])) as picture:
            bits = imagehash.phash(picture.convert("RGB")).hash.reshape(-1)
        rows.append(np.where(bits, 1.0, -1.0) / 8.0)
    return np.asarray(rows, dtype=np.float32)


def top1(queries: np.ndarray, library: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index and score of each query's best library match."""
    scores = queries @ library.T
    best = scores.argmax(axis=1)
    return best, scores[np.arange(len(queries)), best]


def threshold_table(
    present: tuple[np.ndarray, np.ndarray],
    truth: np.ndarray,
    absent_scores: np.ndarray,
    thresholds: Sequence[float],
) -> list[dict[str, float]]:
    """Precision and recall of "best hit >= t means same picture" at each threshold.

    ``present`` is (best index, best score) of queries whose original is in the library at index
    ``truth``; ``absent_scores`` are best scores of queries whose picture is not in the library.
    """
    best, scores = present
    correct = best == truth
    rows = []
    for t in thresholds:
        said = scores >= t
        true_pos = int((said & correct).sum())
        false_pos = int((said & ~correct).sum() + (absent_scores >= t).sum())
        rows.append(
            {
                "threshold": float(t),
                "precision": true_pos / max(1, true_pos + false_pos),
                "recall": true_pos / max(1, len(scores)),
                "false_positives": float(false_pos),
            }
        )
    return rows


def recommend(rows: Sequence[dict[str, float]], min_precision: float = 0.99) -> dict[str, float]:
    """The lowest threshold whose precision reaches ``min_precision`` (most recall at that bar)."""
    good = [row for row in rows if row["precision"] >= min_precision]
    return min(good, key=lambda row: row["threshold"]) if good else max(rows, key=lambda r: r["precision"])

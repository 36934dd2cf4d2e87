"""Search-time re-ranking variants on the harder category protocol, measured before any default moves.

Library: all 1,072 ``caltech101-dev`` photos plus the 1,000 ``imagenet-samples`` photos as
distractors; every Caltech photo queries the rest (itself excluded). Reported: P@10, mAP@100 and
recall@100 (relevant = same Caltech class), per variant, with the extra cost per search.

- **baseline**: the daemon's default descriptor, cosine ranking.
- **alpha-QE k**: average query expansion - the query plus its top k hits (weights score^alpha,
  alpha 0 = plain average), renormalised, searched again.
- **DBA k + QE k**: database-side augmentation (each stored vector replaced by the average of
  itself and its k nearest neighbours, computed once at index time) then QE on top.
- **centred**: the library mean subtracted from every vector (query included) and renormalised;
  the ranking of one query is unchanged by a shared offset only if norms move too, so measure it.

Vectors are cached on disk (``--cache-dir``) keyed by the model fingerprint.

Usage::

    nice -n 10 .venv/bin/python bench/eval_reranking.py --data-dir ../shared/data
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from same_search.config import ModelConfig  # noqa: E402
from same_search.embed.embedder import Embedder  # noqa: E402
from same_search.embed.images import ImageLimits, decode  # noqa: E402

LIMITS = ImageLimits()


def vectors(embedder: Embedder, paths: list[Path], cache_dir: Path) -> np.ndarray:
    """Unit vectors of ``paths`` with the default pipeline, cached by model and file list."""
    digest = hashlib.sha1("\n".join(map(str, paths)).encode()).hexdigest()[:12]
    path = cache_dir / f"reranking-{embedder.info.fingerprint}-{digest}.npy"
    if path.exists():
        return np.load(path)
    out = []
    for start in range(0, len(paths), 16):
        chunk = paths[start : start + 16]
        pictures = [decode(p.read_bytes(), LIMITS, embedder.cfg.image_size) for p in chunk]
        out.append(embedder.embed(np.stack([embedder.preprocess(p) for p in pictures])))
    result = np.concatenate(out)
    cache_dir.mkdir(parents=True, exist_ok=True)
    np.save(path, result)
    return result


def normalise(x: np.ndarray) -> np.ndarray:
    """Rows to unit length."""
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def ranked(queries: np.ndarray, library: np.ndarray, exclude: np.ndarray, k: int) -> np.ndarray:
    """Top ``k`` library indices per query, the query's own index (``exclude``) left out."""
    scores = queries @ library.T
    scores[np.arange(len(queries)), exclude] = -np.inf
    top = np.argpartition(-scores, k, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1)
    return np.take_along_axis(top, order, axis=1)


def expand(queries: np.ndarray, library: np.ndarray, exclude: np.ndarray, k: int, alpha: float) -> np.ndarray:
    """alpha-QE: each query averaged with its top ``k`` hits (weights score^alpha)."""
    top = ranked(queries, library, exclude, k)
    neighbours = library[top]  # (q, k, d)
    weights = np.clip(np.einsum("qd,qkd->qk", queries, neighbours), 0, None) ** alpha
    return normalise(queries + np.einsum("qk,qkd->qd", weights, neighbours))


def augment(library: np.ndarray, k: int) -> np.ndarray:
    """DBA: each stored vector averaged with its ``k`` nearest stored neighbours (itself excluded)."""
    top = ranked(library, library, np.arange(len(library)), k)
    return normalise(library + library[top].sum(axis=1))


def metrics(top: np.ndarray, labels: np.ndarray, query_labels: np.ndarray, n_relevant: np.ndarray) -> dict:
    """P@10, mAP@100 and recall@100 of ranked lists."""
    relevant = labels[top] == query_labels[:, None]
    precision_at = np.cumsum(relevant, axis=1) / np.arange(1, top.shape[1] + 1)
    ap = (precision_at * relevant).sum(axis=1) / np.minimum(n_relevant, top.shape[1])
    return {
        "P@10": float(relevant[:, :10].mean()),
        "mAP@100": float(ap.mean()),
        "R@100": float((relevant.sum(axis=1) / n_relevant).mean()),
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Embed (cached), rank under every variant, print one table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=REPO_ROOT / ".." / "shared" / "data")
    parser.add_argument("--cache-dir", type=Path, default=Path("/tmp/same_search-eval-cache"))
    args = parser.parse_args(argv)
    caltech = sorted((args.data_dir / "caltech101-dev").glob("*/*.jpg"))
    imagenet = sorted((args.data_dir / "imagenet-samples").glob("*.JPEG"))
    if not caltech or not imagenet:
        print(f"skipping: reference data not found under {args.data_dir}")
        return 0
    import torch

    torch.set_num_threads(1)
    embedder = Embedder(ModelConfig(name="efficientnet_lite0"))
    library = np.concatenate(
        [vectors(embedder, caltech, args.cache_dir), vectors(embedder, imagenet, args.cache_dir)]
    )
    labels = np.array([p.parent.name for p in caltech] + ["imagenet"] * len(imagenet))
    queries_index = np.arange(len(caltech))
    queries, query_labels = library[queries_index], labels[queries_index]
    n_relevant = np.array([(labels == c).sum() - 1 for c in query_labels])
    augmented2 = augment(library, 2)
    centred_library = normalise(library - library.mean(axis=0))
    variants: dict[str, Callable[[], np.ndarray]] = {
        "baseline": lambda: ranked(queries, library, queries_index, 100),
        "alpha-QE 1 (alpha 0)": lambda: ranked(
            expand(queries, library, queries_index, 1, 0), library, queries_index, 100
        ),
        "alpha-QE 2 (alpha 0)": lambda: ranked(
            expand(queries, library, queries_index, 2, 0), library, queries_index, 100
        ),
        "alpha-QE 3 (alpha 3)": lambda: ranked(
            expand(queries, library, queries_index, 3, 3), library, queries_index, 100
        ),
        "DBA 2 + alpha-QE 2": lambda: ranked(
            expand(augmented2[queries_index], augmented2, queries_index, 2, 0), augmented2, queries_index, 100
        ),
        "centred on the library mean": lambda: ranked(
            centred_library[queries_index], centred_library, queries_index, 100
        ),
    }
    print(f"{len(caltech)} Caltech queries, library {len(library)} ({len(imagenet)} ImageNet distractors)")
    print("| variant | P@10 | mAP@100 | R@100 | ms per query (numpy, exact) |")
    print("|:---|---:|---:|---:|---:|")
    for name, rank in variants.items():
        began = time.perf_counter()
        top = rank()
        per_query = 1000 * (time.perf_counter() - began) / len(queries)
        m = metrics(top, labels, query_labels, n_relevant)
        print(f"| {name} | {m['P@10']:.3f} | {m['mAP@100']:.3f} | {m['R@100']:.3f} | {per_query:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

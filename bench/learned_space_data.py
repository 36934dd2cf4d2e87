"""The learned-space evaluation's vectors: the category library and edited copies, cached on disk.

Library: every ``caltech101-dev`` photo (the categories) plus every ``imagenet-samples`` photo
(distractors, and the originals of the near-duplicate queries). Near-duplicate queries: the 17
edits of ``bench/eval_quality.py`` applied to the first ``originals`` ImageNet photos, which are
in the library. Every picture goes through the daemon's own decoding, preprocessing, network and
pooling (:class:`same_search.embed.embedder.Embedder`, the default configuration).
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import common
import numpy as np

from same_search.config import ModelConfig
from same_search.embed.embedder import Embedder
from same_search.embed.images import ImageLimits, decode

LIMITS = ImageLimits()


@dataclass
class Protocol:
    """Unit vectors and ground truth of the category and near-duplicate tasks."""

    library: np.ndarray  # (n, 1280): Caltech photos first, then ImageNet
    labels: np.ndarray  # class per library item ("imagenet" for the distractors)
    n_caltech: int
    queries: np.ndarray  # edited copies
    truth: np.ndarray  # library index of each copy's original
    edits: np.ndarray  # edit name per copy
    fingerprint: str


def embed_bytes(embedder: Embedder, blobs: list[bytes], what: str) -> np.ndarray:
    """The daemon's vectors of encoded pictures, 16 at a time."""
    out, began = [], time.perf_counter()
    for start in range(0, len(blobs), 16):
        chunk = blobs[start : start + 16]
        pictures = [decode(b, LIMITS, embedder.cfg.image_size) for b in chunk]
        out.append(embedder.embed(np.stack([embedder.preprocess(p) for p in pictures])))
        done = start + len(chunk)
        if done % 320 == 0 or done == len(blobs):
            print(f"  {what}: {done}/{len(blobs)} ({done / (time.perf_counter() - began):.1f}/s)", flush=True)
    return np.concatenate(out).astype(np.float32)


def cached(path: Path, compute) -> np.ndarray:
    """``compute()`` once, kept as a .npy file."""
    if path.exists():
        return np.load(path, allow_pickle=False)
    result = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, result)
    return result


def load(data_dir: Path, cache_dir: Path, originals: int = 300) -> Protocol:
    """Both tasks' vectors (embedding what the cache lacks)."""
    import eval_quality

    embedder = Embedder(ModelConfig(name="efficientnet_lite0"))
    fingerprint = embedder.info.fingerprint
    caltech = sorted((data_dir / "caltech101-dev").glob("*/*.jpg"))
    imagenet = sorted((data_dir / "imagenet-samples").glob("*.JPEG"))
    paths = caltech + imagenet
    digest = hashlib.sha1("\n".join(p.name for p in paths).encode()).hexdigest()[:12]
    library = cached(
        cache_dir / f"learned-library-{fingerprint}-{digest}.npy",
        lambda: embed_bytes(embedder, [p.read_bytes() for p in paths], "library"),
    )
    copies = cache_dir / f"learned-copies-{fingerprint}-{digest}-{originals}.npy"
    truth_path = copies.with_suffix(".json")
    if copies.exists() and truth_path.exists():  # the edits take minutes to make again
        edits, sources = json.loads(truth_path.read_text())
        queries = np.load(copies, allow_pickle=False)
    else:
        keys = {f"imagenet/{p.name}": p.read_bytes() for p in imagenet[:originals]}
        blobs, edits, sources, _ = eval_quality.make_queries(keys)
        queries = cached(copies, lambda: embed_bytes(embedder, list(blobs.values()), "edited copies"))
        truth_path.write_text(json.dumps([edits, sources]))
    index = {f"imagenet/{p.name}": len(caltech) + i for i, p in enumerate(imagenet)}
    labels = np.array([p.parent.name for p in caltech] + ["imagenet"] * len(imagenet))
    return Protocol(
        library,
        labels,
        len(caltech),
        queries,
        np.array([index[s] for s in sources]),
        np.array(edits),
        fingerprint,
    )


if __name__ == "__main__":
    import torch

    torch.set_num_threads(1)
    protocol = load(
        common.SHARED_DATA, Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/same_search-eval-cache")
    )
    print(protocol.library.shape, protocol.queries.shape)

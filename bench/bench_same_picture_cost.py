"""CPU cost of the same-picture check as it was when the look-alike work began, and now.

Taken in turn on the same queries (so that load hits both alike), from the caches of
``bench/eval_same_picture.py`` (run that first): per query, ``service.judge`` over the first
``decision.DEPTH`` candidates and, where none of them is confirmed, the deep screen.

- **before**: the stored form without the coarse keypoints, the deep screen over candidates
  11-30, and the float32 nearest-neighbour kernel (torch ``addmm`` and ``topk``, kept here as
  :func:`float_nearest_two`);
- **now**: the coarse look, the deep screen over candidates 11-50, and the int8 kernel
  (``matching.nearest_two``).

Prints a table of medians and p95 in ms of CPU of one thread, then the extraction on add and on
search (decode included, as the daemon does it) with and without the coarse keypoints, and the
stored form's bytes per item.

Usage::

    .venv/bin/python bench/bench_same_picture_cost.py --cache-dir /tmp/same_search-eval-cache
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import sys
import time
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
for _path in (REPO_ROOT, REPO_ROOT / "bench"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import common  # noqa: E402
import eval_same_picture as protocol  # noqa: E402

from same_search.config import LimitsConfig, ModelConfig  # noqa: E402
from same_search.embed.embedder import Embedder  # noqa: E402
from same_search.embed.images import ImageLimits, decode  # noqa: E402
from same_search.verify import decision, local_features, matching, service  # noqa: E402
from same_search.verify.local_features import LocalFeatures  # noqa: E402

#: The deep screen's end before this change.
PREVIOUS_DEEP_DEPTH = 30


def without_coarse(data: bytes) -> bytes:
    """A stored form as it was before the coarse keypoints."""
    features = LocalFeatures.from_bytes(data)
    return dataclasses.replace(features, coarse=None).to_bytes()


def float_nearest_two(query: np.ndarray, stored: list[np.ndarray]) -> tuple[np.ndarray, ...]:
    """``matching.nearest_two`` as it was computed before: float32 squared distances by one
    ``addmm`` over every set padded to the longest, then ``topk``."""
    import torch

    width = max(len(d) for d in stored)
    stacked = np.zeros((len(stored), width, 128), np.uint8)
    for slot, descriptors in enumerate(stored):
        stacked[slot, : len(descriptors)] = descriptors
    q = torch.from_numpy(query.astype(np.float32))
    s = torch.from_numpy(stacked.reshape(-1, 128)).float()
    lengths = torch.tensor([len(d) for d in stored])
    padding = torch.arange(width)[None, :] >= lengths[:, None]
    own = (s * s).sum(dim=1).reshape(len(stored), width).masked_fill(padding, float("inf"))
    partial = torch.addmm(own.reshape(1, -1), q, s.T, alpha=-2.0).reshape(len(q), len(stored), width)
    two, nearest_two = torch.topk(partial, 2, dim=2, largest=False)
    norms = (q * q).sum(dim=1)[:, None]
    return (two[..., 0] + norms).numpy(), (two[..., 1] + norms).numpy(), nearest_two[..., 0].numpy()


def timed(*call, kernel=matching.nearest_two) -> tuple[float, list]:
    """CPU milliseconds on this thread of ``service.judge(*call)`` with the nearest-neighbour
    ``kernel``, and its verdicts."""
    kept, matching.nearest_two = matching.nearest_two, kernel
    try:
        began = time.thread_time()
        verdicts = service.judge(*call)
        return 1000 * (time.thread_time() - began), verdicts
    finally:
        matching.nearest_two = kept


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache-dir", type=Path, default=Path("/tmp/same_search-eval-cache"))
    parser.add_argument("--queries", type=int, default=200)
    args = parser.parse_args(argv)
    eval_args = protocol.parse_args(["--cache-dir", str(args.cache_dir)])
    if not (eval_args.data_dir / "caltech101-dev").is_dir():
        print(f"skipping: reference data not found under {eval_args.data_dir}")
        return 0
    import torch

    torch.set_num_threads(1)
    sets = protocol.cached_sets(eval_args.data_dir.resolve(), eval_args)
    cache = protocol.FeatureCache(Embedder(ModelConfig(name="efficientnet_lite0")), args.cache_dir)
    queries = protocol.QueryCache(protocol.DAEMON_QUERY, cache, args.cache_dir)
    rankings = protocol.plain_rankings(sets, cache, decision.DEEP_DEPTH)
    keys = random.Random(5).sample(sorted(sets.queries), min(args.queries, len(sets.queries)))
    rows: dict[str, list[float]] = {k: [] for k in ("coarse", "plain", "deep50", "deep30")}
    for key in keys:
        query = service.QueryFeatures(queries.get(sets.queries[key]))
        bare = service.QueryFeatures(dataclasses.replace(query.direct, coarse=None))
        ranking = rankings[key]
        stored = {k: cache.stored(sets.library[k]) for k, _ in ranking}
        old = {k: without_coarse(v) for k, v in stored.items()}
        first = ranking[: decision.DEPTH]
        spent, verdicts = timed(query, first, stored)
        rows["coarse"].append(spent)
        rows["plain"].append(timed(bare, first, old, kernel=float_nearest_two)[0])
        if not any(v.same for v in verdicts):
            rows["deep50"].append(timed(query, ranking[decision.DEPTH :], stored, decision.DEEP)[0])
            short = ranking[decision.DEPTH : PREVIOUS_DEEP_DEPTH]
            rows["deep30"].append(timed(bare, short, old, decision.DEEP, kernel=float_nearest_two)[0])
    names = {
        "plain": f"before: check of the first {decision.DEPTH}, working keypoints, float32 kernel",
        "coarse": f"now: check of the first {decision.DEPTH} with the coarse look, int8 kernel",
        "deep30": f"before: deep screen of candidates 11-{PREVIOUS_DEEP_DEPTH}, where it runs",
        "deep50": f"now: deep screen of candidates 11-{decision.DEEP_DEPTH}, where it runs",
    }
    print(f"- machine: {common.machine()}")
    print(f"- {len(keys)} queries, each part taken in turn on the same query; ms of CPU of one thread\n")
    print("| part | runs | median | p95 |")
    print("|:---|---:|---:|---:|")
    for name, label in names.items():
        values = rows[name]
        print(f"| {label} | {len(values)} | {np.median(values):.1f} | {np.percentile(values, 95):.1f} |")
    extraction_table(sets, args.queries)
    return 0


def cpu_ms(call, *args) -> tuple[float, object]:
    """CPU milliseconds on this thread of ``call(*args)``, and what it returned."""
    began = time.thread_time()
    result = call(*args)
    return 1000 * (time.thread_time() - began), result


def extraction_table(sets: protocol.Sets, count: int) -> None:
    """Decode and extraction per add and per search, before (working keypoints only) and now
    (with the coarse ones), taken in turn on the same pictures; bytes of the stored form."""
    lim = LimitsConfig()
    limits = ImageLimits(lim.min_side, lim.max_side, lim.max_pixels)
    side = local_features.WORKING_SIDE

    def add_before(data: bytes) -> LocalFeatures:
        return local_features.extract(decode(data, limits, side))

    def add_now(data: bytes) -> LocalFeatures:
        return local_features.extract_stored(decode(data, limits, side))

    def search_before(data: bytes) -> LocalFeatures:
        picture = local_features.working_picture(decode(data, limits, side))
        contrast = local_features.QUERY_CONTRAST
        return local_features.extract_pixels(picture, local_features.MAX_KEYPOINTS, contrast)

    def search_now(data: bytes) -> LocalFeatures:
        return local_features.extract_query(decode(data, limits, side))

    rows: dict[str, list[float]] = {name: [] for name in ("add0", "add1", "search0", "search1")}
    sizes: dict[str, list[int]] = {"before": [], "now": []}
    library = random.Random(7).sample(sorted(sets.library), min(count, len(sets.library)))
    for key in library:
        spent, before = cpu_ms(add_before, sets.library[key])
        rows["add0"].append(spent)
        spent, now = cpu_ms(add_now, sets.library[key])
        rows["add1"].append(spent)
        sizes["before"].append(len(before.to_bytes()))
        sizes["now"].append(len(now.to_bytes()))
    for key in random.Random(8).sample(sorted(sets.queries), min(count, len(sets.queries))):
        rows["search0"].append(cpu_ms(search_before, sets.queries[key])[0])
        rows["search1"].append(cpu_ms(search_now, sets.queries[key])[0])
    labels = {
        "add0": "before: decode + local features on add (working keypoints)",
        "add1": "now: decode + local features on add (working and coarse keypoints)",
        "search0": "before: decode + local features of a search image (working keypoints)",
        "search1": "now: decode + local features of a search image (working and coarse keypoints)",
    }
    print(
        f"\n| extraction, ms of CPU of one thread ({len(library)} library pictures, as many queries) "
        "| runs | median | p95 |"
    )
    print("|:---|---:|---:|---:|")
    for name, label in labels.items():
        values = rows[name]
        print(f"| {label} | {len(values)} | {np.median(values):.1f} | {np.percentile(values, 95):.1f} |")
    print("\n| stored form, bytes per item | mean | max |\n|:---|---:|---:|")
    for name, values in sizes.items():
        print(f"| {name} | {np.mean(values):,.0f} | {max(values):,} |")


if __name__ == "__main__":
    sys.exit(main())

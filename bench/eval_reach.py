"""Where the same-picture decision can say yes, and what a floor under it would cost and save.

Search checks candidates only from :data:`same_search.verify.decision.REACH` up, and a
re-ranked search whose candidates all score lower pays for no local features at all. This reads
the protocol of ``bench/eval_same_picture.py`` (its cached sets, vectors and the daemon's query
features: run that first) and reports:

- per edit, the lowest and low percentiles of the score between each edited copy and its
  original;
- for each candidate floor, the edited copies the decision confirms (the daemon's check of the
  10 best candidates, floors lowered to 0 to see every one) that score below it: what the floor
  would lose;
- for each floor, the share of searches whose best candidate scores below it, on two mixes that
  the throughput benchmark (``bench/bench_ranking_cost.py``) also uses: 180 ImageNet photos
  searched in a library of 20 others (every photo another kind of thing), and the protocol's
  look-alike negatives in its library (every query has look-alikes): what the floor would save.

    .venv/bin/python bench/eval_reach.py
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import pickle
import sys
from collections import defaultdict
from pathlib import Path

import common  # noqa: F401  (puts the worktree's package first on sys.path)
import eval_same_picture as same_picture
import numpy as np
from common import SHARED_DATA

from same_search.verify import decision, local_features, service

FLOORS = (0.20, 0.25, 0.27, 0.28, 0.30, 0.35)


def cache_files(cache_dir: Path) -> tuple[Path | None, Path | None]:
    """The feature cache (vectors, stored features) and the daemon query side's cache."""
    stored = [p for p in cache_dir.glob("same_picture-*-lf*.pkl") if "-query-" not in p.name]
    queries = list(cache_dir.glob("same_picture-query-*-daemon-*.pkl"))
    return (stored[0] if stored else None), (queries[0] if queries else None)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=SHARED_DATA)
    parser.add_argument("--cache-dir", type=Path, default=Path("/tmp/same_search-eval-cache"))
    args = parser.parse_args()
    options = same_picture.parse_args(["--data-dir", str(args.data_dir), "--cache-dir", str(args.cache_dir)])
    stored_path, query_path = cache_files(args.cache_dir)
    if stored_path is None or query_path is None:
        print("run bench/eval_same_picture.py first (its vectors and features are read from its cache)")
        return 1
    sets = same_picture.cached_sets(args.data_dir, options)
    cache = pickle.loads(stored_path.read_bytes())
    query_side = pickle.loads(query_path.read_bytes())

    def entry(data: bytes) -> tuple | None:
        return cache.get(hashlib.sha1(data).hexdigest())

    keys = [k for k in sets.library if entry(sets.library[k]) is not None]
    matrix = np.stack([np.asarray(entry(sets.library[k])[0], np.float32) for k in keys])
    index = {k: i for i, k in enumerate(keys)}
    anything = dataclasses.replace(decision.SEARCH, checked=0.0)
    copy_scores: dict[str, list[float]] = defaultdict(list)
    confirmed_scores: list[float] = []
    negatives_best: list[float] = []
    for query, data in sets.queries.items():
        found = entry(data)
        if found is None:
            continue
        scores = matrix @ np.asarray(found[0], np.float32)
        truth = sets.truth.get(query, frozenset())
        if not truth:
            negatives_best.append(float(scores.max()))
            continue
        for original in truth & index.keys():
            copy_scores[sets.kind[query]].append(float(scores[index[original]]))
        features = query_side.get(hashlib.sha1(data).hexdigest())
        if features is None:
            continue
        top = np.argsort(-scores)[: decision.DEPTH]
        candidates = [(int(i), float(scores[i])) for i in top]
        stored = {int(i): entry(sets.library[keys[i]])[1] for i in top}
        query_features = service.QueryFeatures(local_features.LocalFeatures.from_bytes(features[0]))
        for verdict in service.judge(query_features, candidates, stored, anything):
            if verdict.same and keys[verdict.key] in truth:
                confirmed_scores.append(verdict.score)

    print(f"library {len(keys)}, edited copies {sum(map(len, copy_scores.values()))}\n")
    print("| edit | copies | lowest score to its original | 1st percentile | 5th percentile |")
    print("|:---|---:|---:|---:|---:|")
    for edit, values in sorted(copy_scores.items()):
        v = np.array(values)
        print(
            f"| {edit} | {len(v)} | {v.min():.3f} | {np.percentile(v, 1):.3f} | {np.percentile(v, 5):.3f} |"
        )

    imagenet = [k for k in keys if k.startswith("imagenet/")][:20]
    small = np.stack([matrix[index[k]] for k in imagenet])
    others = [q for q, kind in sets.kind.items() if kind == "neg: other ImageNet" and entry(sets.queries[q])]
    unrelated = [float((small @ np.asarray(entry(sets.queries[q])[0], np.float32)).max()) for q in others]
    confirmed = np.array(confirmed_scores)
    print(
        f"\nEdited copies confirmed among their 10 best candidates: {len(confirmed)}; their lowest scores: "
        + ", ".join(f"{v:.3f}" for v in np.sort(confirmed)[:5])
    )
    print("\n| floor | confirmed copies below it (lost) | ImageNet mix: skipped | look-alikes: skipped |")
    print("|---:|---:|---:|---:|")
    for floor in FLOORS:
        print(
            f"| {floor:.2f}{' (REACH)' if floor == decision.REACH else ''} | "
            f"{int((confirmed < floor).sum())} | "
            f"{np.mean(np.array(unrelated) < floor):.0%} | "
            f"{np.mean(np.array(negatives_best) < floor):.0%} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

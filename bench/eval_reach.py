"""Where the same-picture decision can say yes: the scores of edited copies against their originals.

Search checks candidates only from :data:`same_search.verify.decision.REACH` up, and a
re-ranked search whose best candidates all score lower pays for no local features at all. This
reads the protocol of ``bench/eval_same_picture.py`` (its cached sets and vectors: run that
first) and reports, per edit, the lowest and low percentiles of the score between each edited
copy and its original (a copy below REACH could never be confirmed), and for the look-alike
negatives and the copies, how often the best candidate scores below REACH (the searches that
skip the check).

    .venv/bin/python bench/eval_reach.py
"""

from __future__ import annotations

import argparse
import hashlib
import pickle
import sys
from collections import defaultdict
from pathlib import Path

import common  # noqa: F401  (puts the worktree's package first on sys.path)
import eval_same_picture as same_picture
import numpy as np
from common import SHARED_DATA

from same_search.verify import decision


def vectors_of(cache: dict, pictures: dict[str, bytes]) -> dict[str, np.ndarray]:
    """The cached vector of each picture (by content), for those the cache holds."""
    found = {}
    for key, data in pictures.items():
        entry = cache.get(hashlib.sha1(data).hexdigest())
        if entry is not None:
            found[key] = np.asarray(entry[0], np.float32)
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=SHARED_DATA)
    parser.add_argument("--cache-dir", type=Path, default=Path("/tmp/same_search-eval-cache"))
    args = parser.parse_args()
    options = same_picture.parse_args(["--data-dir", str(args.data_dir), "--cache-dir", str(args.cache_dir)])
    sets = same_picture.cached_sets(args.data_dir, options)
    caches = sorted(p for p in args.cache_dir.glob("same_picture-*-lf*.pkl") if "-query-" not in p.name)
    if not caches:
        print("run bench/eval_same_picture.py first (its vectors are read from its cache)")
        return 1
    cache = pickle.loads(caches[-1].read_bytes())
    library = vectors_of(cache, sets.library)
    queries = vectors_of(cache, sets.queries)
    keys = list(library)
    matrix = np.stack([library[k] for k in keys])
    index = {k: i for i, k in enumerate(keys)}
    copy_scores: dict[str, list[float]] = defaultdict(list)
    best: dict[str, list[float]] = defaultdict(list)
    for query, vector in queries.items():
        scores = matrix @ vector
        truth = sets.truth.get(query, frozenset())
        group = "edited copies" if truth else "look-alikes (not stored)"
        best[group].append(float(scores.max()))
        for original in truth:
            if original in index:
                copy_scores[sets.kind[query]].append(float(scores[index[original]]))
    reach = decision.REACH
    print(f"REACH = {reach}; library {len(keys)}, queries {len(queries)}\n")
    print("| edit | copies | lowest score to the original | 1st percentile | 5th percentile | below REACH |")
    print("|:---|---:|---:|---:|---:|---:|")
    everything = []
    for edit, values in sorted(copy_scores.items()):
        v = np.array(values)
        everything += values
        print(
            f"| {edit} | {len(v)} | {v.min():.3f} | {np.percentile(v, 1):.3f} | {np.percentile(v, 5):.3f} | "
            f"{int((v < reach).sum())} |"
        )
    v = np.array(everything)
    print(
        f"| **all** | {len(v)} | {v.min():.3f} | {np.percentile(v, 1):.3f} | {np.percentile(v, 5):.3f} | "
        f"{int((v < reach).sum())} |"
    )
    print("\n| queries | best candidate below REACH (the check is skipped) | median best score |")
    print("|:---|---:|---:|")
    for group, values in best.items():
        b = np.array(values)
        print(f"| {group} | {(b < reach).mean():.1%} | {np.median(b):.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

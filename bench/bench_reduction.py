"""Reduced graph + exact re-ranking: recall@10 and latency against exact native search.

The design question of the millions-per-library work: search a graph of PCA-reduced vectors,
then re-rank the best ``depth`` candidates with the native (1280-d, here float16 on disk)
vectors. This measures, on descriptor-like synthetic data (bench/descriptor_model.py) and with
real photos as queries:

- recall@10 against exact search over the native vectors, per (dimension, ef, depth);
- single-query latency p50/p99 (graph search + re-rank, one thread), build time, bytes per item.

    .venv/bin/python bench/bench_reduction.py --items 200000            # about 10 minutes
    nice .venv/bin/python bench/bench_reduction.py --items 1000000 --dims 256
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import hnswlib
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from descriptor_model import fitted_model, log


def learn_pca(sample: np.ndarray, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """(mean, components (native_dim, dim)) of a mean-centred PCA."""
    mean = sample.mean(axis=0)
    _, _, vt = np.linalg.svd(sample - mean, full_matrices=False)
    return mean.astype(np.float32), vt[:dim].T.astype(np.float32).copy()


def reduce(vectors: np.ndarray, mean: np.ndarray, components: np.ndarray) -> np.ndarray:
    out = (vectors - mean) @ components
    out /= np.linalg.norm(out, axis=1, keepdims=True) + 1e-12
    return out.astype(np.float32)


def exact_top(native: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Exact top-k labels by inner product, chunked over the library."""
    best_s = np.full((len(queries), k), -np.inf, np.float32)
    best_i = np.zeros((len(queries), k), np.int64)
    for start in range(0, len(native), 100_000):
        scores = queries @ native[start : start + 100_000].T
        idx = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        s = np.take_along_axis(scores, idx, 1)
        all_s = np.concatenate([best_s, s], 1)
        all_i = np.concatenate([best_i, idx + start], 1)
        order = np.argsort(-all_s, 1)[:, :k]
        best_s, best_i = np.take_along_axis(all_s, order, 1), np.take_along_axis(all_i, order, 1)
    return best_i


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=200_000)
    parser.add_argument("--dims", default="128,256")
    parser.add_argument("--efs", default="64,128,256")
    parser.add_argument("--depths", default="40,100,200")
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    model, held = fitted_model(args.seed)
    log(f"sampling {args.items:,} descriptor-like vectors")
    native = model.sample(args.items, args.seed + 10)
    # Queries: real photos not in the fit (half) and fresh synthetic ones (half).
    rng = np.random.default_rng(args.seed)
    real_q = held[rng.choice(len(held), min(args.queries // 2, len(held)), replace=False)]
    queries = np.concatenate([real_q, model.sample(args.queries - len(real_q), args.seed + 11)])
    log("exact ground truth")
    truth = exact_top(native, queries, 10)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "native.f16"
        native.astype(np.float16).tofile(path)
        on_disk = np.memmap(path, np.float16, "r", shape=native.shape)
        what = f"{len(queries)} queries ({len(real_q)} real photos)"
        print(f"\n{args.items:,} items, {what}, recall@10 against exact search\n")
        print("| dim | build s | ef | depth | recall@10 | p50 ms | p99 ms | graph B/item |")
        print("|---|---|---|---|---|---|---|---|")
        for dim in (int(d) for d in args.dims.split(",")):
            sample = native[rng.choice(len(native), min(50_000, len(native)), replace=False)]
            mean, components = learn_pca(sample, dim)
            reduced = reduce(native, mean, components)
            graph = hnswlib.Index(space="ip", dim=dim)
            graph.init_index(max_elements=len(reduced), M=16, ef_construction=200)
            started = time.perf_counter()
            graph.add_items(reduced, np.arange(len(reduced)), num_threads=2)
            build = time.perf_counter() - started
            graph_path = Path(tmp) / "g.bin"
            graph.save_index(str(graph_path))
            per_item = graph_path.stat().st_size / len(reduced)
            graph_path.unlink()
            q_reduced = reduce(queries, mean, components)
            for ef in (int(e) for e in args.efs.split(",")):
                for depth in (int(d) for d in args.depths.split(",")):
                    graph.set_ef(max(ef, depth))
                    hits, times = 0, []
                    for qi in range(len(queries)):
                        t0 = time.perf_counter()
                        labels, _ = graph.knn_query(q_reduced[qi : qi + 1], k=depth, num_threads=1)
                        cand = np.sort(labels[0])
                        scores = on_disk[cand].astype(np.float32) @ queries[qi]
                        top = cand[np.argsort(-scores)[:10]]
                        times.append((time.perf_counter() - t0) * 1000)
                        hits += len(set(top.tolist()) & set(truth[qi].tolist()))
                    recall = hits / (10 * len(queries))
                    print(
                        f"| {dim} | {build:.0f} | {ef} | {depth} | {recall:.3f} | "
                        f"{percentile(times, 50):.2f} | {percentile(times, 99):.2f} | {per_item:.0f} |",
                        flush=True,
                    )
            del graph
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

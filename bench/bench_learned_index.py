"""The index of a library that ranks in its learned space: bytes per item and recall against exact.

A library in its learned space (same_search/index/space.py) keeps a graph of its *joined*
vectors (native and learned side by side, so the score is the blend); a space of the learned
cosine alone would keep only the reduced vectors. For each space: an hnswlib graph with the
daemon's settings (M 16, ef_construction 200, ef_search 512) of ``--n`` descriptor-like vectors
(bench/descriptor_model.py), recall@10 against exact search *in that space* for ~200 queries
(half held-out real photos, half fresh samples), the graph file's bytes per item, build time and
single-query latency.

    .venv/bin/python bench/bench_learned_index.py --n 50000
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import tempfile
import time
from pathlib import Path

import common
import hnswlib
import numpy as np
from descriptor_model import fitted_model, log

from same_search.config import IndexConfig
from same_search.index.projection import SAMPLE_MAX
from same_search.index.space import DIM, LearnedSpace

K = 10


def exact_top(queries: np.ndarray, vectors: np.ndarray) -> list[set[int]]:
    """The true top K of each query by inner product, in chunks."""
    out = []
    for q in queries:
        scores = vectors @ q
        out.append(set(np.argpartition(-scores, K)[:K].tolist()))
    return out


def build(vectors: np.ndarray, cfg: IndexConfig) -> tuple[hnswlib.Index, float]:
    """An hnswlib graph with the daemon's settings, and its build time in seconds."""
    n, dim = vectors.shape
    graph = hnswlib.Index(space="ip", dim=dim)
    graph.init_index(max_elements=n, M=cfg.m, ef_construction=cfg.ef_construction)
    began = time.perf_counter()
    for start in range(0, n, 4096):
        graph.add_items(vectors[start : start + 4096], np.arange(start, min(n, start + 4096)))
    return graph, time.perf_counter() - began


def graph_bytes(graph: hnswlib.Index, n: int) -> float:
    """The graph file's size per item (vectors and links: what the index holds in RAM)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "g.bin"
        graph.save_index(str(path))
        return path.stat().st_size / n


def reranked(
    graph: hnswlib.Index, reduced_queries: np.ndarray, joined: np.ndarray, joined_queries: np.ndarray, c: int
) -> tuple[float, list[float]]:
    """Recall@10 of the joined space when a graph of the learned part alone gives ``c``
    candidates, re-scored exactly with the joined vectors (what a reduced index does)."""
    graph.set_ef(max(512, c))
    truth = exact_top(joined_queries, joined)
    hits, took = 0, []
    for q, jq, true in zip(reduced_queries, joined_queries, truth, strict=True):
        t = time.perf_counter()
        labels, _ = graph.knn_query(q, k=c)
        candidates = labels[0]
        best = candidates[np.argsort(-(joined[candidates] @ jq))[:K]]
        took.append(time.perf_counter() - t)
        hits += len(true & set(best.tolist()))
    return hits / (K * len(truth)), took


def measure(name: str, vectors: np.ndarray, queries: np.ndarray, cfg: IndexConfig) -> list[str]:
    """Build, search, compare: one table row."""
    n, dim = vectors.shape
    graph, build_s = build(vectors, cfg)
    graph.set_ef(cfg.ef_search)
    truth = exact_top(queries, vectors)
    took, hits = [], 0
    for q, true in zip(queries, truth, strict=True):
        t = time.perf_counter()
        labels, _ = graph.knn_query(q, k=K)
        took.append(time.perf_counter() - t)
        hits += len(true & set(labels[0].tolist()))
    per_item = graph_bytes(graph, n)
    return [
        name,
        str(dim),
        f"{per_item:,.0f}",
        f"{hits / (K * len(queries)):.3f}",
        f"{1000 * float(np.median(took)):.2f}",
        f"{1000 * float(np.percentile(took, 99)):.2f}",
        f"{build_s:.0f}",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=50_000)
    parser.add_argument("--out", default="")
    args = parser.parse_args(argv)
    if not (common.SHARED_DATA / "caltech101-dev").is_dir():
        print(f"skipping: reference data not found under {common.SHARED_DATA}")
        return 0
    model, held = fitted_model()
    vectors = model.sample(args.n, seed=11)
    queries = np.concatenate([held[:100], model.sample(100, seed=12)])
    sample = vectors[:: max(1, args.n // SAMPLE_MAX)]
    cfg = IndexConfig()
    default = LearnedSpace.fit(sample, args.n, "bench")
    alone = LearnedSpace(default.projection, 1.0, args.n, default.fitted_at)
    spaces = {
        "native cosine": None,
        f"learned (default): {1 - default.weight:g} native + {default.weight:g} PCA {DIM}, joined": default,
        f"PCA {DIM} alone": alone,
        "PCA 256 alone": LearnedSpace.fit(sample, args.n, "bench", 256, 1.0),
    }
    rows = []
    for name, space in spaces.items():
        mapped = vectors if space is None else space.apply(vectors)
        q = queries if space is None else space.apply(queries)
        log(f"{name}: building {args.n} x {mapped.shape[1]}")
        rows.append(measure(name, np.ascontiguousarray(mapped), q, cfg))
        print(" | ".join(rows[-1]), flush=True)
    # The default space served from a graph of its learned part, re-ranked with the joined vectors.
    reduced = alone.apply(vectors)
    graph, build_s = build(reduced, cfg)
    joined, joined_q = default.apply(vectors), default.apply(queries)
    for c in (100, 300):
        recall, took = reranked(graph, alone.apply(queries), joined, joined_q, c)
        rows.append(
            [
                f"learned (default) from the PCA {DIM} graph, {c} candidates re-ranked joined",
                f"{DIM} (+{vectors.shape[1]} on disk)",
                f"{graph_bytes(graph, args.n):,.0f} + {vectors.shape[1] * 4:,} on disk",
                f"{recall:.3f}",
                f"{1000 * float(np.median(took)):.2f}",
                f"{1000 * float(np.percentile(took, 99)):.2f}",
                f"{build_s:.0f}",
            ]
        )
        print(" | ".join(rows[-1]), flush=True)
    lines = [
        f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, {args.n:,} descriptor-like items, {len(queries)} "
        f"queries, load average {os.getloadavg()[0]:.1f}",
        "",
        "| space | dim | graph bytes per item | recall@10 vs exact (in the space) | p50 ms | p99 ms "
        "| build s |",
        "|:---|---:|---:|---:|---:|---:|---:|",
        *["| " + " | ".join(r) + " |" for r in rows],
    ]
    print("\n".join(lines))
    if args.out:
        Path(args.out).write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The index engine at a million items: the daemon's reduced index against bare hnswlib.

The benchmark of the index engine for millions of items per library, in one process, on
descriptor-like data (bench/descriptor_model.py, deterministic seed) of the serving dimension:

- **reduced**: the daemon's own :class:`ReducedIndex` (PCA learned on 50k of the items, a graph
  of the reduced vectors, every search re-ranked with the native vectors read from the on-disk
  file), built with ``add_now`` in chunks of 4096 as the start-up replay does;
- **reduced, no re-rank**: the same graph searched for the top 10 directly (what the reduction
  alone gives);
- **full-dim hnswlib**: a bare hnswlib graph of the native vectors (the daemon's small-library
  kind); skipped above ``--full-max`` items (43 minutes to build at 1M, docs/benchmarks.md).

All at the same ef. Recall@10 against exact search over the native float32 vectors, for ~200
queries (half held-out real photos, half fresh samples); single-query latency p50/p99; tag
filters matching 50%, 1% and 0.01% of the items; build time; RSS growth per item while the
reduced index is built; the time to load it back from its snapshot. ``--rerank 200,300``
measures several candidate counts on the same graph.

The benchmark keeps its own copy of the vectors in a file beside the index and reads it a chunk
at a time (ground truth, build), dropping its pages from the cache afterwards: at 1M the copy is
4.8 GiB, and held in RAM it pushed the index's native file out of the page cache.

    .venv/bin/python bench/bench_million.py --n 200000      # development size (~10 min on 2 cores)
    nice .venv/bin/python bench/bench_million.py             # 1M (make bench-million)
"""

from __future__ import annotations

import argparse
import ctypes
import dataclasses
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import hnswlib
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import percentile_ms, rss_mib
from descriptor_model import fitted_model, log

from same_search.config import IndexConfig
from same_search.index import graph_files, native_file
from same_search.index.projection import SAMPLE_MAX, Projection
from same_search.index.reduced import ReducedIndex

K = 10
CHUNK = 4096
#: (name, tags, share of the items carrying them)
FILTERS = (("50%", (1, 0), 0.5), ("1%", (2, 0), 0.01), ("0.01%", (3, 0), 0.0001))


def make_tags(n: int) -> np.ndarray:
    """tag1 = 1 on every other item; tag2 = 2 on 1%, 3 on 0.01% (so each filter is one tag)."""
    rows = np.arange(n)
    tag1 = np.where(rows % 2 == 0, 1, 0)
    tag2 = np.where(rows % 100 == 1, 2, np.where(rows % 10_000 == 7, 3, 0))
    return np.stack([tag1, tag2], axis=1).astype(np.uint32)


def matches(tags: np.ndarray, wanted: tuple[int, int]) -> np.ndarray:
    t = wanted[0]
    return (tags[:, 0] == t) | (tags[:, 1] == t)


class VectorFile:
    """The benchmark's own copy of the native vectors, in a raw float32 file read a chunk at a
    time (``np.fromfile``, not a memory map: mapped pages would count in this process's RSS).

    At 1M x 1280 the vectors are 4.8 GiB; held in RAM beside the index they pushed the index's
    native file out of the page cache and measured the disk instead of the re-rank.
    """

    def __init__(self, path: Path, dim: int) -> None:
        self.path, self.dim = path, dim
        self.n = 0

    def append(self, rows: np.ndarray) -> None:
        with self.path.open("ab") as out:
            out.write(np.ascontiguousarray(rows, "<f4").tobytes())
        self.n += len(rows)

    def read(self, start: int, stop: int) -> np.ndarray:
        count = (min(stop, self.n) - start) * self.dim
        data = np.fromfile(self.path, "<f4", count=count, offset=start * self.dim * 4)
        return data.reshape(-1, self.dim)

    def rows(self, wanted: np.ndarray) -> np.ndarray:
        """Scattered rows (a projection's sample), read one chunk at a time."""
        out = np.empty((len(wanted), self.dim), np.float32)
        for start in range(0, self.n, 100_000):
            inside = (wanted >= start) & (wanted < start + 100_000)
            if inside.any():
                out[inside] = self.read(start, start + 100_000)[wanted[inside] - start]
        return out

    def chunks(self, size: int):
        for start in range(0, self.n, size):
            yield start, self.read(start, start + size)

    def forget(self) -> None:
        """Drop this file's pages from the page cache (they would compete with the index's)."""
        fd = os.open(self.path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def exact_tops(
    vectors: VectorFile, queries: np.ndarray, k: int, masks: list[np.ndarray | None]
) -> list[np.ndarray]:
    """Exact top-k rows by inner product for each mask (None: every row), one pass over the file."""
    best_s = [np.full((len(queries), k), -np.inf, np.float32) for _ in masks]
    best_i = [np.zeros((len(queries), k), np.int64) for _ in masks]
    for start, chunk in vectors.chunks(100_000):
        all_scores = queries @ chunk.T
        for m, allowed in enumerate(masks):
            scores = all_scores.copy() if allowed is not None else all_scores
            if allowed is not None:
                scores[:, ~allowed[start : start + len(chunk)]] = -np.inf
            take = min(k, scores.shape[1])
            idx = np.argpartition(-scores, take - 1, axis=1)[:, :take]
            cand_s = np.concatenate([best_s[m], np.take_along_axis(scores, idx, 1)], 1)
            cand_i = np.concatenate([best_i[m], idx + start], 1)
            order = np.argsort(-cand_s, 1)[:, :k]
            best_s[m] = np.take_along_axis(cand_s, order, 1)
            best_i[m] = np.take_along_axis(cand_i, order, 1)
    return best_i


def recall(found: list[np.ndarray], truth: list[np.ndarray]) -> float:
    """Mean share of each query's true neighbours found (a filter with fewer than K matches: of
    those matches)."""
    hits = [len(set(f.tolist()) & set(t.tolist())) / len(t) for f, t in zip(found, truth, strict=True)]
    return float(np.mean(hits))


def timed(search, queries: np.ndarray) -> tuple[list[np.ndarray], list[float]]:
    found, took = [], []
    for query in queries:
        started = time.perf_counter()
        found.append(np.asarray(search(query)))
        took.append(time.perf_counter() - started)
    return found, took


def row(name: str, build_s: float | str, found, took, truth) -> str:
    build = f"{build_s:.0f}" if isinstance(build_s, float) else build_s
    return (
        f"| {name} | {build} | {recall(found, truth):.3f} | {percentile_ms(took, 0.5):.2f} | "
        f"{percentile_ms(took, 0.99):.2f} |"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="items (presets: 200000 to develop)")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument(
        "--ef",
        default=str(IndexConfig.reduced_ef_search),
        help="reduced_ef_search; a comma list measures each (unfiltered)",
    )
    parser.add_argument("--dim", type=int, default=256, help="reduced dimension")
    parser.add_argument(
        "--rerank",
        default=str(IndexConfig.rerank_candidates),
        help="re-ranked candidates; a comma list (200,300) measures each on the same graph",
    )
    parser.add_argument("--full-max", type=int, default=200_000, help="largest n with a full-dim graph")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    reranks = [int(r) for r in args.rerank.split(",")]
    efs = [int(e) for e in args.ef.split(",")]

    model, held = fitted_model(args.seed)
    half = args.queries // 2
    fresh = model.sample(args.queries - half, args.seed + 20)
    queries = np.concatenate([held[:half], fresh]).astype(np.float32)
    keys = np.arange(args.n, dtype=np.int64) * 7919 + 13  # any keys: results are mapped back to rows
    tags = make_tags(args.n)
    cfg = IndexConfig(reduced_ef_search=efs[0], rerank_candidates=reranks[0], reduce_dim=args.dim)
    lines: list[str] = []

    def emit(line: str) -> None:
        """Print a table line at once (a long run shows its figures as they come), and keep it."""
        lines.append(line)
        print(line, flush=True)

    def emit_all(new: list[str]) -> None:
        for line in new:
            emit(line)

    with tempfile.TemporaryDirectory(prefix="bench-million-") as tmp, ThreadPoolExecutor(1) as pool:
        directory = Path(tmp)
        log(f"sampling {args.n:,} descriptors to a file")
        native = VectorFile(directory / "bench-vectors.f32", queries.shape[1])
        for rows in model.sample_chunks(args.n, args.seed + 10):
            native.append(rows)
        log("exact ground truth (one pass over the file)")
        masks: list[np.ndarray | None] = [None] + [matches(tags, wanted) for _, wanted, _ in FILTERS]
        tops = exact_tops(native, queries, K, masks)
        truth = tops[0]
        filter_truth = {
            name: [t[allowed[t]] for t in top]
            for (name, _, _), allowed, top in zip(FILTERS, masks[1:], tops[1:], strict=True)
        }
        native.forget()
        emit_all(
            [
                f"n = {args.n:,}, dim {native.dim} -> {args.dim}, ef {args.ef}, re-rank {args.rerank}, "
                f"{len(queries)} queries, M {cfg.m}, ef_construction {cfg.ef_construction}, "
                f"load average {os.getloadavg()[0]:.1f}",
                "",
                "| index | build s | recall@10 | p50 ms | p99 ms |",
                "|---|---|---|---|---|",
            ]
        )
        rss_before = rss_mib(os.getpid())
        started = time.perf_counter()
        sample = native.rows(np.linspace(0, args.n - 1, min(SAMPLE_MAX, args.n)).astype(np.int64))
        projection = Projection.learn(sample, args.dim, "bench")
        del sample  # the bench's copy, not the index's: it must not count as growth
        index = ReducedIndex.create(projection, native_file.new_path(directory, 1), cfg, pool, args.n)
        for start, chunk in native.chunks(CHUNK):
            stop = start + len(chunk)
            index.add_now(keys[start:stop], chunk, seq=stop, tags=tags[start:stop])
            if (start // CHUNK) % 50 == 0:
                log(f"reduced: {stop:,} / {args.n:,} ({time.perf_counter() - started:.0f}s)")
        build_s = time.perf_counter() - started
        native.forget()
        growth = (rss_mib(os.getpid()) - rss_before) * 2**20 / args.n
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # freed build temporaries the allocator kept
        trimmed = (rss_mib(os.getpid()) - rss_before) * 2**20 / args.n

        def to_rows(found: list[tuple[int, float]]) -> np.ndarray:
            return (np.array([k for k, _ in found], np.int64) - 13) // 7919

        for ef in efs:
            for rerank in reranks:
                index.cfg = dataclasses.replace(cfg, rerank_candidates=rerank, reduced_ef_search=ef)
                found, took = timed(lambda q: to_rows(index._search(q, K, None)), queries)
                name = f"daemon ReducedIndex (ef {ef}, {rerank} re-ranked)"
                emit(row(name, build_s, found, took, truth))
        index.cfg = cfg
        index.graph.set_ef(cfg.reduced_ef_search)
        reduced_queries = projection.apply(queries)
        found, took = timed(
            lambda q: index.graph.knn_query(q.reshape(1, -1), k=K, num_threads=1)[0][0].astype(np.int64),
            reduced_queries,
        )
        emit(row(f"bare hnswlib {args.dim}-d, no re-rank", "(same graph)", found, took, truth))
        if args.n <= args.full_max:
            started = time.perf_counter()
            full = hnswlib.Index(space="ip", dim=native.dim)
            full.init_index(max_elements=args.n, M=cfg.m, ef_construction=cfg.ef_construction)
            for start, chunk in native.chunks(CHUNK):
                full.add_items(chunk, np.arange(start, start + len(chunk)))
            full_s = time.perf_counter() - started
            full.set_ef(cfg.reduced_ef_search)
            found, took = timed(
                lambda q: full.knn_query(q.reshape(1, -1), k=K, num_threads=1)[0][0].astype(np.int64), queries
            )
            emit(row(f"bare hnswlib {native.dim}-d", full_s, found, took, truth))
            del full
        else:
            emit(f"| bare hnswlib {native.dim}-d | skipped above --full-max | | | |")

        header_row = "| filter (share) | candidates | recall@10 | p50 ms | p99 ms |"
        emit_all(["", header_row, "|---|---|---|---|---|"])
        for rerank in reranks:
            index.cfg = dataclasses.replace(cfg, rerank_candidates=rerank)
            for name, wanted, _ in FILTERS:
                found, took = timed(lambda q, w=wanted: to_rows(index._search(q, K, None, w, False)), queries)
                r = recall(found, filter_truth[name])
                p50, p99 = percentile_ms(took, 0.5), percentile_ms(took, 0.99)
                emit(f"| {name} | {rerank} | {r:.3f} | {p50:.2f} | {p99:.2f} |")
        index.cfg = cfg

        started = time.perf_counter()
        index.save_now(directory, 1, "bench")
        save_s = time.perf_counter() - started
        header = graph_files.read_header(directory, 1, "bench", native.dim)
        started = time.perf_counter()
        loaded = ReducedIndex.load(directory, 1, header, projection, cfg, pool)
        load_s = time.perf_counter() - started
        assert loaded.count() == args.n
        emit_all(
            [
                "",
                f"RSS growth while building: {growth:,.0f} bytes/item, {trimmed:,.0f} after malloc_trim "
                f"(graph file {Path(directory / '1.hnsw').stat().st_size / args.n:,.0f} bytes/item); "
                f"save {save_s:.1f}s, load from snapshot {load_s:.1f}s (checksums included); "
                f"native file {header.native_rows * native.dim * 4 / 2**30:.2f} GiB on disk",
            ]
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

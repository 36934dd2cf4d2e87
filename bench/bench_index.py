"""Vector index: hnswlib alone against our wrapper (``LibraryIndex`` over ``HnswIndex``).

Synthetic L2-normalised float32 vectors at the serving dimension, the ``[index]`` defaults of
same_search/config.py (M, ef_construction, ef_search, exact_threshold). Each (size, backend)
cell runs in a fresh process so its memory growth is its own. Per cell:

- build rate: vectors/s of a bulk build (hnswlib: one ``add_items`` over all cores; the
  wrapper: ``LibraryIndex.add_now`` in chunks of 4096, like the start-up replay from SQLite);
- single add: latency of adding one more vector at that size, the serving path of ``add``
  (the wrapper through ``LibraryIndex.add``, i.e. the index thread);
- search: latency p50/p99 of one k=10 query at a time (the wrapper through
  ``LibraryIndex.search``, as the daemon calls it), and recall@10 against exact numpy search;
- memory: RSS growth during the build per item, and its ratio to the raw vector bytes;
- snapshot: save and load time (the wrapper: ``save_now`` with fsync and checksum, and
  ``read_header`` + ``HnswIndex.load`` as at start-up) and the file size.

The default data is "lowrank": unit vectors near a random 64-dimensional subspace, which is
closer to real image descriptors than uniform noise (``--data uniform``), on which every graph
index has poor recall. Prints a markdown table.

    nice -n 10 .venv/bin/python bench/bench_index.py                      # 10k and 100k
    nice -n 10 .venv/bin/python bench/bench_index.py --sizes 1000000      # ~11 GiB RAM, 5 GiB disk
    nice -n 10 .venv/bin/python bench/bench_index.py --sizes 5000         # smoke run
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import hnswlib
import numpy as np
from common import Summary, percentile_ms

from same_search.config import IndexConfig
from same_search.index import graph_files
from same_search.index.hnsw import HnswIndex
from same_search.index.library_index import LibraryIndex

BACKENDS = ("hnswlib", "wrapper")
#: Chunk size of the daemon's start-up replay (Store.tagged_vectors_since).
REPLAY_CHUNK = 4096
BASIS_SEED = 7


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DataSpec:
    """How the synthetic vectors are made."""

    dim: int
    kind: str  # "lowrank" | "uniform"
    rank: int = 64
    noise: float = 0.25


def make_vectors(spec: DataSpec, count: int, seed: int, chunk: int = 65536) -> np.ndarray:
    """``count`` unit vectors; base and queries share the subspace, not the draws."""
    rng = np.random.default_rng(seed)
    basis = np.random.default_rng(BASIS_SEED).standard_normal((spec.rank, spec.dim), dtype=np.float32)
    basis /= np.sqrt(spec.rank)
    out = np.empty((count, spec.dim), np.float32)
    for start in range(0, count, chunk):
        rows = min(chunk, count - start)
        block = rng.standard_normal((rows, spec.dim), dtype=np.float32)
        if spec.kind == "lowrank":
            block *= spec.noise
            block += rng.standard_normal((rows, spec.rank), dtype=np.float32) @ basis
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        out[start : start + rows] = block
    return out


def exact_top_k(base: np.ndarray, queries: np.ndarray, k: int, chunk: int = 65536) -> np.ndarray:
    """Labels of the ``k`` largest inner products per query, by brute force in chunks."""
    best_scores = np.full((len(queries), 0), -np.inf, np.float32)
    best_labels = np.empty((len(queries), 0), np.int64)
    for start in range(0, len(base), chunk):
        scores = queries @ base[start : start + chunk].T
        top = np.argpartition(-scores, min(k, scores.shape[1]) - 1, axis=1)[:, :k]
        best_scores = np.hstack([best_scores, np.take_along_axis(scores, top, axis=1)])
        best_labels = np.hstack([best_labels, top + start])
        keep = np.argsort(-best_scores, axis=1)[:, :k]
        best_scores = np.take_along_axis(best_scores, keep, axis=1)
        best_labels = np.take_along_axis(best_labels, keep, axis=1)
    return best_labels


def recall_at_k(found: Sequence[np.ndarray], truth: np.ndarray, k: int) -> float:
    """Mean fraction of the true top-k that each query found."""
    hits = [
        len(set(np.asarray(f[:k]).tolist()) & set(t[:k].tolist())) for f, t in zip(found, truth, strict=True)
    ]
    return float(np.mean(hits)) / k


def rss_bytes() -> int:
    """Resident memory of this process, from /proc/self/status."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


# ---------------------------------------------------------------------------------------------
# Backends
# ---------------------------------------------------------------------------------------------


class RawHnswlib:
    """hnswlib used directly, as its README does."""

    name = "hnswlib"

    def __init__(self, dim: int, capacity: int, cfg: IndexConfig) -> None:
        self.dim, self.cfg = dim, cfg
        self.graph = hnswlib.Index(space="ip", dim=dim)
        self.graph.init_index(max_elements=capacity, M=cfg.m, ef_construction=cfg.ef_construction)
        self.graph.set_ef(cfg.ef_search)

    def add_bulk(self, labels: np.ndarray, vectors: np.ndarray) -> None:
        """All at once, every core."""
        self.graph.add_items(vectors, labels, num_threads=-1)

    def add_latencies(self, labels: np.ndarray, vectors: np.ndarray) -> list[float]:
        """One vector per call, one thread."""
        return [
            timed(self.graph.add_items, v[None], [int(x)], num_threads=1)
            for x, v in zip(labels, vectors, strict=True)
        ]

    def search(self, vector: np.ndarray, k: int) -> np.ndarray:
        """Top-k labels of one query."""
        return self.graph.knn_query(vector[None], k=k)[0][0]

    def search_latencies(self, queries: np.ndarray, k: int) -> tuple[list[float], list[float]]:
        """(latencies as served, direct-call latencies): the same thing here."""
        latencies = [timed(self.graph.knn_query, q[None], k=k) for q in queries]
        return latencies, latencies

    def save(self, directory: Path) -> Path:
        """``save_index``; returns the file."""
        path = directory / "raw.hnsw"
        self.graph.save_index(str(path))
        return path

    def load(self, directory: Path) -> None:
        """``load_index`` into a fresh object, which replaces the built one (freed first)."""
        del self.graph
        self.graph = hnswlib.Index(space="ip", dim=self.dim)
        self.graph.load_index(str(directory / "raw.hnsw"))
        self.graph.set_ef(self.cfg.ef_search)

    def close(self) -> None:
        """Nothing to stop."""


class Wrapper:
    """Our ``LibraryIndex`` (exact matrix while small, ``HnswIndex`` graph) as the daemon drives it."""

    name = "wrapper"
    fingerprint = "bench"

    def __init__(self, dim: int, capacity: int, cfg: IndexConfig) -> None:
        del capacity  # a library starts at initial_capacity and doubles, as in the daemon
        self.dim, self.cfg = dim, cfg
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="index")
        self.index = LibraryIndex.empty(dim, cfg, self.executor)
        self.seq = 0

    def add_bulk(self, labels: np.ndarray, vectors: np.ndarray) -> None:
        """``add_now`` in replay-sized chunks."""
        for start in range(0, len(labels), REPLAY_CHUNK):
            self.seq += 1
            end = start + REPLAY_CHUNK
            self.index.add_now(labels[start:end].astype(np.int64), vectors[start:end], self.seq)

    def add_latencies(self, labels: np.ndarray, vectors: np.ndarray) -> list[float]:
        """``await LibraryIndex.add`` one at a time (the index thread, like ``add``)."""

        async def go() -> list[float]:
            latencies = []
            for label, vector in zip(labels, vectors, strict=True):
                self.seq += 1
                began = time.perf_counter()
                await self.index.add(int(label), vector, self.seq)
                latencies.append(time.perf_counter() - began)
            return latencies

        return asyncio.run(go())

    def search(self, vector: np.ndarray, k: int) -> np.ndarray:
        """Top-k labels of one query (direct call of the index-thread function)."""
        return np.array([key for key, _ in self.index._search(vector, k, None)])

    def search_latencies(self, queries: np.ndarray, k: int) -> tuple[list[float], list[float]]:
        """(``await LibraryIndex.search`` as the daemon calls it, direct ``_search`` calls)."""

        async def go() -> list[float]:
            latencies = []
            for query in queries:
                began = time.perf_counter()
                await self.index.search(query, k)
                latencies.append(time.perf_counter() - began)
            return latencies

        served = asyncio.run(go())
        direct = [timed(self.index._search, q, k, None) for q in queries]
        return served, direct

    def save(self, directory: Path) -> Path:
        """``save_now``: graph to a temp file, fsync, checksum, header, renames."""
        self.index.save_now(directory, 1, self.fingerprint)
        return graph_files.paths(directory, 1)[0]

    def load(self, directory: Path) -> None:
        """What start-up does before replaying rows: verify the header, load the graph.

        The loaded index replaces the built one, which is freed first; the live label set
        (which the daemon reads from SQLite) is taken from it.
        """
        live = set(self.index.graph.live_labels())
        del self.index
        header = graph_files.read_header(directory, 1, self.fingerprint, self.dim)
        graph_path, _ = graph_files.paths(directory, 1)
        graph = HnswIndex.load(graph_path, self.dim, self.cfg.ef_search, live)
        self.index = LibraryIndex(graph, self.cfg, header.seq, self.executor)

    def close(self) -> None:
        """Stop the index thread."""
        self.executor.shutdown(wait=True)


def timed(call: Callable[..., object], *args: object, **kwargs: object) -> float:
    """Seconds one call takes."""
    began = time.perf_counter()
    call(*args, **kwargs)
    return time.perf_counter() - began


# ---------------------------------------------------------------------------------------------
# One cell, in its own process
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CellSpec:
    """What one process measures."""

    backend: str
    size: int
    data: DataSpec
    k: int
    queries: int
    latency_queries: int
    single_adds: int
    workdir: str


@dataclass
class CellResult:
    """What it measured (times in seconds, sizes in bytes)."""

    backend: str
    size: int
    build_rate: float
    add_latencies: list[float]
    search_latencies: list[float]
    direct_latencies: list[float]
    recall: float
    rss_growth: int
    save_s: float
    load_s: float
    file_bytes: int
    strategy: str


def run_cell(spec: CellSpec) -> CellResult:
    """Build one backend at one size and measure it (call in a fresh process)."""
    cfg = IndexConfig()
    base = make_vectors(spec.data, spec.size, seed=1)
    queries = make_vectors(spec.data, spec.queries, seed=2)
    labels = np.arange(spec.size, dtype=np.uint64)
    singles = min(spec.single_adds, spec.size // 10)
    bulk = spec.size - singles
    backend = (RawHnswlib if spec.backend == "hnswlib" else Wrapper)(spec.data.dim, spec.size, cfg)
    rss_before = rss_bytes()
    build_s = timed(backend.add_bulk, labels[:bulk], base[:bulk])
    adds = backend.add_latencies(labels[bulk:], base[bulk:])
    rss_growth = rss_bytes() - rss_before
    truth = exact_top_k(base, queries, spec.k)
    recall = recall_at_k([backend.search(q, spec.k) for q in queries], truth, spec.k)
    repeats = -(-spec.latency_queries // len(queries))
    served, direct = backend.search_latencies(np.tile(queries, (repeats, 1))[: spec.latency_queries], spec.k)
    del base  # lower the peak of the large sizes before the snapshot round trip
    strategy = "graph"
    if isinstance(backend, Wrapper) and backend.index.exact is not None:
        strategy = f"exact (<= {cfg.exact_threshold})"
    directory = Path(tempfile.mkdtemp(prefix=f"{spec.backend}-{spec.size}-", dir=spec.workdir))
    try:
        began = time.perf_counter()
        path = backend.save(directory)
        save_s = time.perf_counter() - began
        load_s = timed(backend.load, directory)
        file_bytes = path.stat().st_size
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    backend.close()
    return CellResult(
        spec.backend,
        spec.size,
        bulk / build_s,
        adds,
        served,
        direct,
        recall,
        rss_growth,
        save_s,
        load_s,
        file_bytes,
        strategy,
    )


def run_cell_isolated(spec: CellSpec) -> CellResult:
    """:func:`run_cell` in a fresh spawned process, so RSS and caches start clean."""
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(1, mp_context=context) as pool:
        return pool.submit(run_cell, spec).result()


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------


@dataclass
class Report:
    """Tables for the terminal and docs, and summary rows for run_all."""

    markdown: str
    summary: list[Summary]


def table(results: list[CellResult], dim: int) -> str:
    """One row per (size, backend)."""
    raw = 4 * dim
    lines = [
        "| N | backend | search path | build vec/s | add 1 p50 ms | search p50 ms | search p99 ms "
        "| recall@10 | RSS B/item | x raw | save s | load s | snapshot MiB |",
        "|--:|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for r in results:
        per_item = r.rss_growth / r.size
        lines.append(
            f"| {r.size:,} | {r.backend} | {r.strategy} | {r.build_rate:,.0f} "
            f"| {percentile_ms(r.add_latencies, 0.5):.3f} "
            f"| {percentile_ms(r.search_latencies, 0.5):.3f} | {percentile_ms(r.search_latencies, 0.99):.3f} "
            f"| {r.recall:.3f} | {per_item:,.0f} | {per_item / raw:.2f} | {r.save_s:.3f} | {r.load_s:.3f} "
            f"| {r.file_bytes / 2**20:,.1f} |"
        )
    return "\n".join(lines)


def summarise(results: list[CellResult]) -> list[Summary]:
    """Wrapper against hnswlib at each size, for the combined table of run_all."""
    by_key = {(r.size, r.backend): r for r in results}
    summary: list[Summary] = []
    for size in sorted({r.size for r in results}):
        ours, bare = by_key.get((size, "wrapper")), by_key.get((size, "hnswlib"))
        if ours is None or bare is None:
            continue
        case = f"index N={size:,}"
        summary += [
            (case, "build vectors/s", ours.build_rate, bare.build_rate),
            (
                case,
                "search p50 ms",
                percentile_ms(ours.search_latencies, 0.5),
                percentile_ms(bare.search_latencies, 0.5),
            ),
            (
                case,
                "search p99 ms",
                percentile_ms(ours.search_latencies, 0.99),
                percentile_ms(bare.search_latencies, 0.99),
            ),
            (case, "recall@10", ours.recall, bare.recall),
            (case, "RSS bytes/item", ours.rss_growth / size, bare.rss_growth / size),
            (case, "snapshot load s", ours.load_s, bare.load_s),
        ]
    return summary


def notes(results: list[CellResult], args: argparse.Namespace, load_before: float) -> list[str]:
    """What the reader needs to interpret the table."""
    cfg = IndexConfig()
    lines = [
        f"data: {args.data} (dim {args.dim}{', rank 64 + noise' if args.data == 'lowrank' else ''}), "
        f"{args.queries} queries for recall, {args.latency_queries} timed queries, k={args.k}; "
        f"M={cfg.m}, ef_construction={cfg.ef_construction}, ef_search={cfg.ef_search}, "
        f"exact_threshold={cfg.exact_threshold}",
        "wrapper search and add go through LibraryIndex.search/add (asyncio -> index thread); "
        "direct calls of the same work, p50: "
        + ", ".join(
            f"N={r.size:,} {percentile_ms(r.direct_latencies, 0.5):.3f} ms"
            for r in results
            if r.backend == "wrapper"
        ),
        "load times read a file the page cache still holds (just written); a cold disk is slower",
        f"load average (1 min) before / after: {load_before:.2f} / {os.getloadavg()[0]:.2f}"
        + (" -- WARNING: other processes were running" if load_before > 0.5 else ""),
    ]
    return lines


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


def int_list(text: str) -> list[int]:
    """``10000,100000`` -> [10000, 100000]."""
    return [int(x) for x in text.replace("_", "").split(",") if x]


def build_parser() -> argparse.ArgumentParser:
    """Flags of this benchmark (run_all passes its own through)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int_list, default=[10_000, 100_000], help="N, comma-separated")
    parser.add_argument("--dim", type=int, default=1280, help="vector dimension (default 1280, Lite0's)")
    parser.add_argument("--data", choices=("lowrank", "uniform"), default="lowrank")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--queries", type=int, default=200, help="queries for recall (default 200)")
    parser.add_argument("--latency-queries", type=int, default=1000, help="timed single queries")
    parser.add_argument("--single-adds", type=int, default=200, help="vectors added one at a time")
    parser.add_argument("--backends", default=",".join(BACKENDS), help="hnswlib,wrapper")
    parser.add_argument("--workdir", default=None, help="where snapshots are written (default: $TMPDIR)")
    return parser


def run(args: argparse.Namespace) -> Report:
    """Every cell, each in its own process, then the report."""
    data = DataSpec(args.dim, args.data)
    load_before = os.getloadavg()[0]
    results = []
    for size in args.sizes:
        for backend in args.backends.split(","):
            if backend not in BACKENDS:
                raise SystemExit(f"unknown backend {backend!r}; known: {', '.join(BACKENDS)}")
            spec = CellSpec(
                backend,
                size,
                data,
                args.k,
                args.queries,
                args.latency_queries,
                args.single_adds,
                args.workdir or tempfile.gettempdir(),
            )
            started = time.monotonic()
            results.append(run_cell_isolated(spec))
            print(f"  index {backend} N={size:,}: {time.monotonic() - started:.0f}s", file=sys.stderr)
    markdown = "\n\n".join(
        [
            "### Vector index: our wrapper vs hnswlib alone",
            table(results, args.dim),
            "\n".join(f"- {line}" for line in notes(results, args, load_before)),
        ]
    )
    return Report(markdown, summarise(results))


def main(argv: list[str] | None = None) -> int:
    """Parse flags, run, print the table."""
    print(run(build_parser().parse_args(argv)).markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The daemon with a library of a million items: rebuild, restart, adds, memory, and the index.

The issue's third benchmark, measured on the real daemon (``python -m same_search`` as a
subprocess, tests/daemon.py), plus the second benchmark's 1M row from the same data:

1. seed: the daemon creates the library (``signup`` over HTTP); then N synthetic unit vectors
   (bench_index.py's "lowrank" data, the serving dimension) are written straight into its SQLite
   file as item rows, as if N adds had been acknowledged and the index files lost;
2. **rebuild**: start the daemon; with no index files it rebuilds from SQLite; time to ready;
3. **restart**: SIGTERM (the daemon saves its snapshot), start again: time to ready from the
   snapshot, no rebuild; the daemon's RSS against the raw vector bytes (N x dim x 4);
4. **adds into 1M**: HTTP ``add`` at concurrency 8 for a while, into the 1M library and, in the
   same daemon, into an empty one: images/s and latency, and their ratio;
5. **index at 1M**: the daemon is stopped and its saved graph loaded in this process
   (``HnswIndex.load``, as at start-up): single-query latency p50/p99 at the configured
   ef_search and recall@10 against exact search.

    nice -n 10 .venv/bin/python bench/bench_daemon_million.py        # 1M: about an hour on 2 cores
    .venv/bin/python bench/bench_daemon_million.py --items 20000 --add-seconds 5  # smoke
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import shutil
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from bench_index import DataSpec, exact_top_k, make_vectors, recall_at_k
from common import rss_mib
from conftest import b64, brief
from daemon import Daemon
from images import jpeg

from same_search.config import IndexConfig
from same_search.index import graph_files
from same_search.index.hnsw import HnswIndex

CONFIG = '[model]\nname = "efficientnet_lite0"\n[storage]\nsnapshot_interval_s = 86400\n'
SEED_CHUNK = 20_000


def log(message: str) -> None:
    """Progress to stderr; the table goes to stdout."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def seed(daemon: Daemon, appid: str, spec: DataSpec, items: int) -> tuple[int, float]:
    """Write ``items`` rows into the library's SQLite table; returns (library id, seconds)."""
    started = time.perf_counter()
    db = sqlite3.connect(daemon.data_dir / "same_search.sqlite3")
    db.execute("PRAGMA synchronous=OFF")  # seeding only; the daemon itself always writes with FULL
    (lib_id,) = db.execute("SELECT id FROM libraries WHERE appid=?", (appid,)).fetchone()
    (seq,) = db.execute("SELECT coalesce(max(seq), 0) FROM items").fetchone()
    now = time.time()
    for start in range(0, items, SEED_CHUNK):
        vectors = make_vectors(spec, min(SEED_CHUNK, items - start), seed=start + 1)
        rows = [
            (
                lib_id,
                start + i + 1,
                f"item {start + i}".encode(),
                None,
                None,
                v.astype("<f4").tobytes(),
                seq + start + i + 1,
                now,
                now,
            )
            for i, v in enumerate(vectors)
        ]
        with db:
            db.executemany(
                "INSERT INTO items(lib_id, key, brief, tag1, tag2, vector, seq, created_at, updated_at) "
                "VALUES (?,?,?,?,?,?,?,?,?)",
                rows,
            )
        if (start // SEED_CHUNK) % 10 == 0:
            log(f"seeded {start + len(rows):,} rows")
    db.close()
    return lib_id, time.perf_counter() - started


def timed_start(daemon: Daemon, timeout: float) -> float:
    """Seconds from launching the process to /healthz answering."""
    started = time.perf_counter()
    daemon.start(timeout=timeout)
    return time.perf_counter() - started


def add_load(daemon: Daemon, appid: str, seconds: float, clients: int = 8) -> dict[str, float]:
    """HTTP adds of distinct generated JPEGs from ``clients`` threads for ``seconds``."""
    images = [jpeg(10_000 + i) for i in range(64)]
    latencies: list[float] = []
    errors = 0
    lock = threading.Lock()
    deadline = time.perf_counter() + seconds
    counter = iter(range(10**9))

    def client() -> None:
        nonlocal errors
        while time.perf_counter() < deadline:
            n = next(counter)
            # Distinct bytes per add (a comment in the JPEG), so no add is refused as a duplicate.
            body = images[n % len(images)] + f"{appid}-{n}".encode()
            started = time.perf_counter()
            answer = daemon.rts("add", appid=appid, image=b64(body), features=[brief(f"{appid} {n}")])
            with lock:
                latencies.append(time.perf_counter() - started)
                errors += answer["err_no"] != 0

    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        for future in [pool.submit(client) for _ in range(clients)]:
            future.result()
    elapsed = time.perf_counter() - started
    ordered = sorted(latencies)
    return {
        "rate": len(latencies) / elapsed,
        "p50": statistics.median(ordered) * 1000,
        "p99": ordered[int(0.99 * (len(ordered) - 1))] * 1000,
        "n": len(latencies),
        "errors": errors,
    }


def add_summary(result: dict[str, float]) -> str:
    """``rate img/s, p50, p99 (errors)`` of one add_load run."""
    return (
        f"{result['rate']:.1f} img/s, p50 {result['p50']:.0f} ms, p99 {result['p99']:.0f} ms "
        f"({result['errors']:.0f} errors)"
    )


def index_at_size(
    daemon: Daemon, lib_id: int, spec: DataSpec, items: int, queries: int
) -> tuple[float, int, list[dict[str, float]]]:
    """Load the daemon's saved graph here and measure single queries and recall@10."""
    cfg = IndexConfig()
    graph_path, _ = graph_files.paths(daemon.data_dir / "indexes", lib_id)
    started = time.perf_counter()
    graph = HnswIndex.load(graph_path, spec.dim, cfg.ef_search, set(range(1, items + 1)))
    load_s = time.perf_counter() - started
    log(f"graph loaded in {load_s:.1f}s")
    probes = make_vectors(spec, queries, seed=987_654_321)
    base = np.concatenate(
        [make_vectors(spec, min(SEED_CHUNK, items - s), seed=s + 1) for s in range(0, items, SEED_CHUNK)]
    )
    truth = exact_top_k(base, probes, 10) + 1  # labels are row + 1
    del base
    results = []
    for ef in sorted({cfg.ef_search, 512, 1024}):
        graph.ef_search = ef
        found, times = [], []
        for probe in probes:
            started = time.perf_counter()
            labels, _ = graph.search(probe, 10)
            times.append(time.perf_counter() - started)
            found.append(np.asarray(labels, dtype=np.int64))
        times.sort()
        results.append(
            {
                "p50": statistics.median(times) * 1000,
                "p99": times[int(0.99 * (len(times) - 1))] * 1000,
                "recall": recall_at_k(found, truth, 10),
                "ef_search": ef,
            }
        )
        log(f"ef {ef}: {results[-1]}")
    return load_s, cfg.m, results


def main(argv: list[str] | None = None) -> int:
    """Run the five steps; print a markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=1280, help="the serving model's dimension (Lite0: 1280)")
    parser.add_argument("--add-seconds", type=float, default=30.0)
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument(
        "--workdir", default=None, help="data dir parent (default: a temp dir, removed after)"
    )
    args = parser.parse_args(argv)
    spec = DataSpec(args.dim, "lowrank")
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="same_search_1m_"))
    try:
        daemon = Daemon(workdir, CONFIG)
        daemon.start()
        for appid in ("big", "small"):
            assert daemon.rts("signup", appid=appid)["err_no"] == 0
        assert daemon.proc is not None
        rss_empty = rss_mib(daemon.proc.pid)
        assert daemon.terminate() == 0
        lib_id, seed_s = seed(daemon, "big", spec, args.items)
        log(f"seeded {args.items:,} rows in {seed_s:.0f}s; starting (rebuild from SQLite)")
        rebuild_s = timed_start(daemon, timeout=4 * 3600)
        log(f"ready after rebuild in {rebuild_s:.0f}s; stopping (saves the snapshot)")
        started = time.perf_counter()
        assert daemon.terminate(timeout=1800) == 0
        stop_s = time.perf_counter() - started
        ready_s = timed_start(daemon, timeout=1800)
        assert daemon.proc is not None
        rss = rss_mib(daemon.proc.pid)
        raw = args.items * args.dim * 4 / 2**20
        log(f"ready from the snapshot in {ready_s:.1f}s, RSS {rss:,.0f} MiB; adds at concurrency 8")
        into_big = add_load(daemon, "big", args.add_seconds)
        into_small = add_load(daemon, "small", args.add_seconds)
        assert daemon.terminate(timeout=1800) == 0
        load_s, m, sweep = index_at_size(daemon, lib_id, spec, args.items, args.queries)
        db_gib = (daemon.data_dir / "same_search.sqlite3").stat().st_size / 2**30
        rows = [
            ("items (synthetic lowrank unit vectors)", f"{args.items:,} x {args.dim}"),
            ("seed SQLite rows (bench, synchronous=OFF)", f"{seed_s:.0f} s; database {db_gib:.1f} GiB"),
            (
                "start with no index files: rebuild from SQLite to ready",
                f"{rebuild_s:.0f} s ({args.items / rebuild_s:,.0f} items/s)",
            ),
            ("SIGTERM with snapshot save", f"{stop_s:.1f} s"),
            ("**start to ready from the snapshot (no rebuild)**", f"**{ready_s:.1f} s**"),
            (
                "daemon RSS after that start / raw vectors",
                f"{rss:,.0f} / {raw:,.0f} MiB = **{rss / raw:.2f}x**",
            ),
            (
                "the same without the empty daemon's RSS (model, torch, Python)",
                f"({rss:,.0f} - {rss_empty:,.0f}) / {raw:,.0f} MiB = {(rss - rss_empty) / raw:.2f}x",
            ),
            ("add over HTTP, concurrency 8, into the 1M library", add_summary(into_big)),
            ("add over HTTP, concurrency 8, into an empty library", add_summary(into_small)),
            ("add rate ratio 1M / empty", f"{into_big['rate'] / into_small['rate']:.2f}"),
            ("graph load (HnswIndex.load of the snapshot)", f"{load_s:.1f} s"),
            *(
                (
                    f"single query k=10, M={m}, ef_search={r['ef_search']:.0f}"
                    + (" (the default)" if r["ef_search"] == IndexConfig().ef_search else ""),
                    f"p50 {r['p50']:.2f} ms, p99 {r['p99']:.2f} ms, **recall@10 {r['recall']:.3f}**",
                )
                for r in sweep
            ),
        ]
        print(f"| {args.items:,} items | |\n|:---|:---|")
        print("\n".join(f"| {name} | {value} |" for name, value in rows))
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())

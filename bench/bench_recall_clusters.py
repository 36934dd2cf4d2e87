"""A catalogue of tight near-duplicate clusters over HTTP: the recall the library measures and
tunes for itself, checked from outside, and the search latency it costs.

A catalogue of variants: half of the library in tight clusters (``--per-cluster`` variants scattered
closely around each of ``--clusters`` descriptors, as catalogues of colour and size variants
are), the other half spread out; tag 1 on every other item. The vectors are synthetic
(bench_index.py's "lowrank" directions at the serving dimension, made non-negative like pooled
ReLU features), so no photo and no forward pass is needed.

1. the real daemon (``python -m same_search``, every default but ``[index] target_recall``)
   imports it as an export ZIP over HTTP (check_import_100k.py's writer and upload);
2. the library measures its recall and tunes its depth in the background (index/recall.py):
   the script waits for its stats to say ``measured`` and prints what it chose;
3. from outside: ``--queries`` stored items searched by contsign over HTTP (``rn`` 11), each
   query's own item left out of both sides, against exact search in numpy: recall@10 and p50 /
   p99 latency, unfiltered and with the 50% tag filter, one client at a time.

    make bench-recall-clusters                                    # 100k items
    nice .venv/bin/python bench/bench_recall_clusters.py --items 20000 --queries 200   # minutes
    nice .venv/bin/python bench/bench_recall_clusters.py --in-process-depths 768x300,6400x6400   # deeper
    nice .venv/bin/python bench/bench_recall_clusters.py --in-process-depths 4800x4800,flat3200,flat4800
    nice .venv/bin/python bench/bench_recall_clusters.py --in-process-depths 768x300 --m 32 --reduce-dim 384
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import common  # noqa: F401  (first: puts the repository, tests/ and bench/ on sys.path)
import numpy as np
from bench_index import DataSpec, make_vectors
from check_import_100k import APPID, HALF_TAG, keys_for, tag_features, upload, write_export
from common import machine, percentile_ms, print_run_header
from daemon import Daemon

from same_search.config import IndexConfig
from same_search.contsign import ContSign
from same_search.index import flat, native_file, recall
from same_search.index.paging import SearchDepth
from same_search.index.projection import SAMPLE_MAX, Projection
from same_search.index.reduced import ReducedIndex
from same_search.index.screen import kept


def catalogue(items: int, dim: int, clusters: int, per_cluster: int, spread: float, seed: int) -> np.ndarray:
    """``items`` unit vectors: up to half in ``clusters`` tight clusters, the rest spread out."""
    rng = np.random.default_rng(seed)
    clustered = min(items // 2, clusters * per_cluster)
    clusters = max(1, clustered // per_cluster)
    spec = DataSpec(dim, "lowrank")
    centres = np.abs(make_vectors(spec, clusters, seed=seed + 1))
    variants = centres[rng.integers(0, clusters, clustered)]
    variants = np.abs(variants + spread * rng.standard_normal(variants.shape, dtype=np.float32))
    spread_out = np.abs(make_vectors(spec, items - clustered, seed=seed + 2))
    vectors = np.concatenate([variants, spread_out])[rng.permutation(items)]
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


def wait_measured(daemon: Daemon, timeout: float) -> tuple[dict, float]:
    """The library's ``recall`` stats once measured, and the seconds waited."""
    started = time.perf_counter()
    while time.perf_counter() - started < timeout:
        shown = daemon.get("admin", f"/api/libraries/{APPID}")["library"]
        if shown.get("recall", {}).get("state") == "measured":
            return shown, time.perf_counter() - started
        time.sleep(1)
    raise TimeoutError(f"the library did not measure its recall within {timeout:.0f}s")


def own_item_left_out(
    daemon: Daemon, keys: np.ndarray, vectors: np.ndarray, rows: np.ndarray, allowed: np.ndarray | None
) -> tuple[float, float, float]:
    """(recall@10, p50 ms, p99 ms) of stored items searched by contsign over HTTP, each query's
    own item left out of the answer and of the exact truth.

    Every search is sent (one client, one at a time, each on a new connection as the spec's
    sample clients do) before any truth is computed: an exact ranking sweeps the bench's 512 MB
    copy of the vectors, and one between two timed searches evicted the daemon's codes from the
    caches of this 2-core machine and kept its other core busy (same daemon, same data: p50
    16.9 ms measured that way, 12.8 ms with every search sent first)."""
    filters = {} if allowed is None else {"features": tag_features(HALF_TAG, 0), "tag_logic": 1}
    answers, latencies = [], []
    for row in rows:
        body = {"contsign": ContSign.from_key(int(keys[row])).to_json(), "rn": 11, **filters}
        started = time.perf_counter()
        answer = daemon.rts("search", appid=APPID, **body)
        latencies.append(time.perf_counter() - started)
        assert answer["err_no"] == 0, answer
        answers.append([ContSign.from_json(hit["contsign"]).key for hit in answer["data_items"]])
    hits = total = 0
    for row, found in zip(rows, answers, strict=True):
        others = [key for key in found if key != int(keys[row])][:10]
        scores = vectors @ vectors[row]
        scores[row] = -np.inf
        if allowed is not None:
            scores[~allowed] = -np.inf
        truth = {int(keys[i]) for i in np.argpartition(-scores, 10)[:10] if np.isfinite(scores[i])}
        hits += len(truth & set(others))
        total += len(truth)
    return hits / total, percentile_ms(latencies, 0.5), percentile_ms(latencies, 0.99)


def parse_depth(text: str) -> SearchDepth:
    """``EFxCANDIDATES`` (the graph) or ``flatCANDIDATES`` (the flat scan, index/flat.py)."""
    if text.startswith("flat"):
        return SearchDepth(int(text[4:]), int(text[4:]), flat=True)
    return SearchDepth(*map(int, text.split("x")))


def depths_in_process(
    vectors: np.ndarray, depths: list[SearchDepth], queries: int, seed: int, cfg: IndexConfig
) -> None:
    """recall@10 (own item left out) and p50 / p99 ms per search of the daemon's reduced index
    at each of ``depths``, unfiltered and with the 50% tag, built in this process from the same
    catalogue with ``cfg`` (the shipped ``[index]`` unless told otherwise): what lies past the
    ladder the daemon tunes on. Depths of more than ``screen.SCREEN_FROM`` candidates screen them
    with the int8 copy; flat depths scan every row (index/flat.py, kernel ``flat.KERNEL``)."""
    n = len(vectors)
    projection = Projection.learn(vectors[:: max(1, n // SAMPLE_MAX)], cfg.reduce_dim, "bench")
    with tempfile.TemporaryDirectory(prefix="recall-depths-") as temp, ThreadPoolExecutor(1) as pool:
        index = ReducedIndex.create(projection, native_file.new_path(Path(temp), 1), cfg, pool, n)
        keys = np.arange(1, n + 1, dtype=np.int64)
        tags = np.zeros((n, 2), np.uint32)
        tags[::2, 0] = HALF_TAG
        started = time.perf_counter()
        for start in range(0, n, 8192):
            part = slice(start, start + 8192)
            index.add_now(keys[part], vectors[part], 1, tags[part])
        print(
            f"\nbuilt in {time.perf_counter() - started:.0f} s: {cfg.reduce_dim}-d, M {cfg.m}, "
            f"ef_construction {cfg.ef_construction}"
        )
        if any(recall.screens(depth) for depth in depths):
            index.fill_screen_now(index.begin_screen_now())
            index.screen_filled_now()
        rows = recall.sample_rows(index, queries, seed=seed)
        sample_keys, sample = index.rows.keys[rows], index.row_vectors(rows)
        neighbours = recall.Neighbours(sample_keys, sample)
        live = index.rows.live_rows()
        neighbours.add(index.rows.keys[live], index.row_vectors(live), tags[live, 0] == HALF_TAG)
        truths = {None: neighbours.of(False), (HALF_TAG, 0): neighbours.of(True)}
        print(f"flat scan kernel: {flat.KERNEL}")
        print(
            "\n| candidates from | candidates | screened | recall@10 | p50 / p99 ms "
            "| 50% tag: recall@10 | p50 / p99 ms |\n|--|--:|--|--:|--:|--:|--:|"
        )
        for depth in depths:
            cells = []
            for tag, truth in truths.items():
                timed = [
                    recall.timed_hits(index, int(k), q, t, tag, depth)
                    for k, q, t in zip(sample_keys, sample, truth, strict=True)
                ]
                found = sum(hit for hit, _ in timed) / sum(map(len, truth))
                seconds = [took for _, took in timed]
                p50, p99 = percentile_ms(seconds, 0.5), percentile_ms(seconds, 0.99)
                cells.append(f"{found:.4f} | {p50:.1f} / {p99:.1f}")
            source = "a flat scan" if depth.flat else f"the graph, ef {depth.ef}"
            screened = f"yes, {kept(depth.candidates)} re-ranked" if recall.screens(depth) else "no"
            print(f"| {source} | {depth.candidates} | {screened} | {' | '.join(cells)} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--clusters", type=int, default=600)
    parser.add_argument("--per-cluster", type=int, default=80)
    parser.add_argument("--spread", type=float, default=0.006, help="per-coordinate noise of a variant")
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--target", type=float, default=0.98, help="[index] target_recall")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, help="keep the data dir and ZIP here (default: a temp dir)")
    parser.add_argument(
        "--in-process-depths",
        help="instead of the daemon: recall and cost in this process at these depths, e.g. 768x300,2048x1600",
    )
    parser.add_argument("--reduce-dim", type=int, help="in-process: [index] reduce_dim")
    parser.add_argument("--m", type=int, help="in-process: the graph's M ([index] m)")
    parser.add_argument("--ef-construction", type=int, help="in-process: [index] ef_construction")
    args = parser.parse_args(argv)
    if args.in_process_depths:
        print_run_header("bench_recall_clusters.py", argv)
        depths = [parse_depth(d) for d in args.in_process_depths.split(",")]
        vectors = catalogue(args.items, 1280, args.clusters, args.per_cluster, args.spread, args.seed)
        chosen = {"reduce_dim": args.reduce_dim, "m": args.m, "ef_construction": args.ef_construction}
        cfg = dataclasses.replace(IndexConfig(), **{k: v for k, v in chosen.items() if v is not None})
        depths_in_process(vectors, depths, args.queries, args.seed, cfg)
        return 0

    with tempfile.TemporaryDirectory(prefix="recall-clusters-") as temp:
        work = Path(args.workdir or temp)
        work.mkdir(parents=True, exist_ok=True)
        print_run_header("bench_recall_clusters.py", argv)
        daemon = Daemon(work, f"[index]\ntarget_recall = {args.target}\n")
        daemon.start()
        try:
            model = daemon.get("admin", "/healthz")["model"]
            vectors = catalogue(
                args.items, model["dim"], args.clusters, args.per_cluster, args.spread, args.seed
            )
            keys = keys_for(args.items, args.seed)
            tags = np.zeros((args.items, 2), np.uint32)
            tags[::2, 0] = HALF_TAG
            export = work / "export.zip"
            write_export(export, keys, vectors, tags, model)
            started = time.perf_counter()
            answer = upload(daemon, export)
            imported = time.perf_counter() - started
            assert answer["err_no"] == 0, answer
            library, waited = wait_measured(daemon, timeout=3600)
            shown = library["recall"]
            rows = np.random.default_rng(args.seed + 7).choice(args.items, args.queries, replace=False)
            half = tags[:, 0] == HALF_TAG
            print(
                f"\n{args.items:,} items ({library['search']} index), imported in {imported:.1f} s; "
                f"recall measured and tuned {waited:.1f} s later: ef {shown['ef']}, "
                f"{shown['candidates']} candidates "
                f"(target {shown['target']}, below target: {shown['below_target']})\n"
            )
            print("| case | the library's own measurement | recall@10 over HTTP | p50 / p99 ms over HTTP |")
            print("|---|--:|--:|--:|")
            for name, allowed, measured in (
                ("unfiltered", None, shown["recall"]),
                ("tag filter, 50%", half, shown["recall_filtered"]),
            ):
                recall, p50, p99 = own_item_left_out(daemon, keys, vectors, rows, allowed)
                print(f"| {name} | {measured} | {recall:.4f} | {p50:.1f} / {p99:.1f} |")
            print(f"\n{len(rows)} stored items as queries, own item left out; {machine()}")
        finally:
            daemon.stop()  # nothing to keep: no clean shutdown needed
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

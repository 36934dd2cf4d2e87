"""Move a library from a local daemon to a Milvus-backed one by export/import; compare searches.

A local daemon is loaded with ``--items`` synthetic unit vectors (through its import endpoint),
exported with vectors (``GET /api/libraries/{appid}/export?vectors=1``, what
``python -m same_search export --vectors`` calls), and the ZIP is imported into a daemon with
``[storage] backend = "milvus"`` over a milvus-lite server. Then ``--queries`` searches by contsign
run on both daemons: the same items in the same order, and scores within 1e-5, is "identical".
Both sides search approximately above ``[index] exact_threshold`` items (hnswlib locally, Milvus's
HNSW), so differences can come from the two graphs rather than from the move: each side's
recall@rn against an exact search over the vectors tells which. The vectors are clustered (a
mixture of ``--clusters`` Gaussian blobs on the unit sphere): plain random 1,280-d vectors have no
nearest neighbours worth the name (every score near 0) and no approximate index agrees on them.

    python bench/bench_move.py --items 20000 --queries 100
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_milvus import LITE, REPO, export_zip, free_port, wait_until

from same_search.contsign import ContSign

SAME_SEARCH = [sys.executable, "-m", "same_search"]
MODEL = '[model]\nname = "efficientnet_lite0"\n[server]\nlog_level = "WARNING"\n'


class Daemon:
    """A daemon subprocess on free ports, talked to over HTTP."""

    def __init__(self, work: Path, config: str) -> None:
        work.mkdir(parents=True)
        (work / "config.toml").write_text(config)
        self.ports = {name: free_port() for name in ("feature", "search", "admin")}
        flags = [arg for name, port in self.ports.items() for arg in (f"--{name}-port", str(port))]
        self.proc = subprocess.Popen(
            [*SAME_SEARCH, "--config", str(work / "config.toml"), "--data-dir", str(work / "data"), *flags],
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )

    def call(self, port: str, method: str, path: str, body: bytes | None = None, kind: str = "json") -> bytes:
        conn = http.client.HTTPConnection("127.0.0.1", self.ports[port], timeout=3600)
        try:
            headers = {"Content-Type": f"application/{kind}"} if body is not None else {}
            conn.request(method, path, body=body, headers=headers)
            return conn.getresponse().read()
        finally:
            conn.close()

    def json(self, port: str, method: str, path: str, body: bytes | None = None, kind: str = "json") -> dict:
        return json.loads(self.call(port, method, path, body, kind))

    def search(self, key: int, rn: int) -> list[tuple[int, float]]:
        body = {"from": "bench", "appid": "moving", "contsign": ContSign.from_key(key).to_json(), "rn": rn}
        answer = self.json("search", "POST", "/RTSAsService/search", json.dumps(body).encode())
        return [(ContSign(**i["contsign"]).key, i["score"]) for i in answer["data_items"]]

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=20000)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--rn", type=int, default=10)
    parser.add_argument("--clusters", type=int, default=500)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-move-"))
    port = free_port()
    server = subprocess.Popen(
        [*LITE, "--data-dir", str(work / "milvus"), "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    local = Daemon(work / "local", MODEL)
    remote = Daemon(
        work / "remote",
        MODEL + f'[storage]\nbackend = "milvus"\nuri = "http://127.0.0.1:{port}"\ndb_name = "move"\n',
    )
    try:
        for daemon in (local, remote):
            wait_until(lambda d=daemon: d.json("admin", "GET", "/healthz")["err_no"] == 0, 300, "not ready")
        model = local.json("admin", "GET", "/healthz")["model"]
        rng = np.random.default_rng(11)
        centres = rng.standard_normal((args.clusters, model["dim"])).astype(np.float32)
        centres /= np.linalg.norm(centres, axis=1, keepdims=True)
        vectors = centres[rng.integers(0, args.clusters, size=args.items)]
        vectors = vectors + 0.04 * rng.standard_normal(vectors.shape).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        keys = [int(k) for k in rng.integers(-(2**63), 2**63 - 1, size=args.items)]
        seed = export_zip(vectors, keys, model["fingerprint"], model["dim"])

        t0 = time.monotonic()
        loaded = local.json("admin", "POST", "/api/libraries/moving/import", seed, "zip")
        assert loaded["err_no"] == 0, loaded
        t1 = time.monotonic()
        archive = local.call("admin", "GET", "/api/libraries/moving/export?vectors=1")
        t2 = time.monotonic()
        moved = remote.json("admin", "POST", "/api/libraries/moving/import", archive, "zip")
        t3 = time.monotonic()
        assert moved["err_no"] == 0 and moved["imported"] == args.items, moved

        picks = rng.integers(0, args.items, size=args.queries)
        exact = np.argsort(-(vectors[picks] @ vectors.T), axis=1)[:, : args.rn]
        same_order = close_scores = 0
        overlap, recall_local, recall_milvus = [], [], []
        for pick, truth in zip(picks, exact, strict=True):
            key = keys[pick]
            want, got = local.search(key, args.rn), remote.search(key, args.rn)
            true_keys = {keys[i] for i in truth}
            recall_local.append(len(true_keys & {k for k, _ in want}) / args.rn)
            recall_milvus.append(len(true_keys & {k for k, _ in got}) / args.rn)
            same_order += [k for k, _ in want] == [k for k, _ in got]
            close_scores += len(want) == len(got) and all(
                abs(a[1] - b[1]) <= 1e-5 for a, b in zip(want, got, strict=True)
            )
            overlap.append(len({k for k, _ in want} & {k for k, _ in got}) / max(1, len(want)))
        print(
            "| N | local import s | export s | ZIP MiB | Milvus import s | same items and order "
            "| scores within 1e-5 | overlap@rn | recall@rn local | recall@rn Milvus |"
        )
        print("|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
        print(
            f"| {args.items:,} | {t1 - t0:.1f} | {t2 - t1:.1f} | {len(archive) / 2**20:.0f} "
            f"| {t3 - t2:.1f} | {same_order}/{args.queries} | {close_scores}/{args.queries} "
            f"| {np.mean(overlap):.4f} | {np.mean(recall_local):.4f} | {np.mean(recall_milvus):.4f} |"
        )
        print(
            f"\n- {args.queries} searches by contsign, rn={args.rn}; "
            f"load average (1 min) {os.getloadavg()[0]:.2f}"
        )
    finally:
        local.stop()
        remote.stop()
        server.terminate()
        server.wait(60)


if __name__ == "__main__":
    main()

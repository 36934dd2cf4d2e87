"""Search latency through the daemon on the Milvus backend vs calling pymilvus directly.

One milvus-lite server process (``python -m milvus_lite server`` on a loopback port), one daemon
process with ``[storage] backend = "milvus"`` over it, and this process as the pymilvus client.
A library of ``--items`` synthetic unit vectors is loaded through the daemon's import endpoint
(an export ZIP carries vectors, nothing is embedded). Both sides then run the same search by
contsign, one at a time, alternating so that load changes hit both equally:

- daemon: ``POST /RTSAsService/search {contsign, rn}`` over a kept-alive HTTP connection; the
  daemon reads the item's vector from Milvus, searches, and answers JSON;
- direct: the same two Milvus calls from pymilvus (query the vector by primary key, search with
  the same output fields), no HTTP.

milvus-lite is a pure-Python reimplementation of Milvus: these figures say what the daemon adds
on top of Milvus calls, nothing about how fast a Milvus cluster is.

    python bench/bench_milvus.py                          # 2,000 and 20,000 items, 5 rounds
    python bench/bench_milvus.py --items 5000 --rounds 3
    python bench/bench_milvus.py --code /tmp/before   # another checkout's daemon (git worktree add)
"""

from __future__ import annotations

import argparse
import base64
import http.client
import io
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from same_search.backends.milvus import ITEM_FIELDS, collection_name  # noqa: E402
from same_search.contsign import ContSign  # noqa: E402

LITE = [sys.executable, "-m", "milvus_lite", "server"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(check, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise TimeoutError(what)


def export_zip(vectors: np.ndarray, keys: list[int], fingerprint: str, dim: int) -> bytes:
    """An export ZIP (format same_search-export-1) of synthetic items."""
    lines = [
        json.dumps(
            {"contsign": ContSign.from_key(k).to_json(), "brief": base64.b64encode(b"b%d" % i).decode()}
        )
        for i, k in enumerate(keys)
    ]
    meta = {"format": "same_search-export-1", "appid": "bench", "model_id": "x", "dim": dim}
    meta |= {"fingerprint": fingerprint, "count": len(keys), "vectors": True}
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("meta.json", json.dumps(meta))
        archive.writestr("items.jsonl", "\n".join(lines) + "\n")
        npy = io.BytesIO()
        np.save(npy, vectors.astype("<f4"))
        archive.writestr("vectors.npy", npy.getvalue())
    return buffer.getvalue()


def percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered), ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", default="2000,20000", help="library sizes, comma-separated")
    parser.add_argument("--queries", type=int, default=200, help="searches per path and round")
    parser.add_argument("--rounds", type=int, default=5, help="rounds per size (medians are reported)")
    parser.add_argument("--rn", type=int, default=10)
    parser.add_argument("--code", type=Path, default=REPO, help="checkout whose daemon runs (before/after)")
    args = parser.parse_args()
    sizes = [int(n) for n in args.items.split(",")]

    from pymilvus import MilvusClient

    work = Path(tempfile.mkdtemp(prefix="bench-milvus-"))
    milvus_port, ports = free_port(), {name: free_port() for name in ("feature", "search", "admin")}
    uri = f"http://127.0.0.1:{milvus_port}"
    server = subprocess.Popen(
        [*LITE, "--data-dir", str(work / "milvus"), "--host", "127.0.0.1", "--port", str(milvus_port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    (work / "config.toml").write_text(
        f'[model]\nname = "efficientnet_lite0"\n[server]\nlog_level = "WARNING"\n'
        f'[storage]\nbackend = "milvus"\nuri = "{uri}"\ndb_name = "bench"\n'
    )
    daemon = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "same_search",
            "--config",
            str(work / "config.toml"),
            "--data-dir",
            str(work / "d"),
        ]
        + [arg for name, port in ports.items() for arg in (f"--{name}-port", str(port))],
        cwd=args.code,
        stdout=(work / "daemon.log").open("wb"),
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:

        def admin_json(method: str, path: str, body: bytes | None = None) -> dict:
            admin = http.client.HTTPConnection("127.0.0.1", ports["admin"], timeout=600)
            try:
                headers = {"Content-Type": "application/zip"} if body is not None else {}
                admin.request(method, path, body=body, headers=headers)
                return json.loads(admin.getresponse().read())
            finally:
                admin.close()

        wait_until(lambda: admin_json("GET", "/healthz")["err_no"] == 0, 180, "daemon not ready")
        model = admin_json("GET", "/healthz")["model"]
        direct = MilvusClient(uri=uri, db_name="bench")
        commit = subprocess.run(
            ["git", "-C", str(args.code), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        ).stdout.strip()
        print(f"daemon code: {args.code} at {commit}")
        print(f"started {time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime())} UTC, load {os.getloadavg()}")
        print("\n| N | rn | path | search p50 ms | search p99 ms | daemon / pymilvus (p50) | same results |")
        print("|--:|--:|---|--:|--:|--:|--:|")
        for items in sizes:
            measure_size(args, items, model, admin_json, direct, ports["search"])
        print(f"\n- {args.rounds} rounds of {args.queries} searches by contsign per path, alternating;")
        print("  p50 and p99: medians over the rounds; the ratio: the median of the rounds' p50 ratios")
        print(f"- load average at the end: {os.getloadavg()} on {os.cpu_count()} CPUs")
    finally:
        daemon.terminate()
        daemon.wait(60)
        server.terminate()
        server.wait(60)


def measure_size(args, items: int, model: dict, admin_json, direct, search_port: int) -> None:
    """One library of ``items`` vectors imported through the daemon, then the rounds over a
    kept-alive connection opened after the import (the daemon closes one left idle for longer than
    its header timeout, 15 s, which a 20,000-item import takes on a busy machine)."""
    appid = f"bench{items}"
    rng = np.random.default_rng(items)
    vectors = rng.standard_normal((items, model["dim"])).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    keys = [int(k) for k in rng.integers(-(2**63), 2**63 - 1, size=items)]
    started = time.monotonic()
    archive = export_zip(vectors, keys, model["fingerprint"], model["dim"])
    loaded = admin_json("POST", f"/api/libraries/{appid}/import", archive)
    load_s = time.monotonic() - started
    assert loaded["err_no"] == 0 and loaded["imported"] == items, loaded
    collection = collection_name(appid)
    search_conn = http.client.HTTPConnection("127.0.0.1", search_port, timeout=60)

    def via_daemon(key: int) -> list[int]:
        body = {"from": "bench", "appid": appid, "contsign": ContSign.from_key(key).to_json(), "rn": args.rn}
        headers = {"Content-Type": "application/json"}
        search_conn.request("POST", "/RTSAsService/search", body=json.dumps(body), headers=headers)
        answer = json.loads(search_conn.getresponse().read())
        return [ContSign(**item["contsign"]).key for item in answer["data_items"]]

    def via_pymilvus(key: int) -> list[int]:
        vector = direct.query(collection, ids=[key], output_fields=["vector"])[0]["vector"]
        hits = direct.search(
            collection,
            data=[vector],
            limit=args.rn + 1,
            output_fields=ITEM_FIELDS,
            search_params={"metric_type": "IP", "params": {"ef": 512}},
        )[0]
        return [int(hit["key"]) for hit in hits[: args.rn]]

    for key in keys[:20]:  # warm both paths
        via_daemon(key), via_pymilvus(key)
    rounds: dict[str, list[tuple[float, float]]] = {"daemon": [], "pymilvus": []}
    ratios, agree, total = [], 0, 0
    for _ in range(args.rounds):
        timings: dict[str, list[float]] = {"daemon": [], "pymilvus": []}
        for key in [keys[i] for i in rng.integers(0, items, size=args.queries)]:
            t0 = time.perf_counter()
            ours = via_daemon(key)
            t1 = time.perf_counter()
            theirs = via_pymilvus(key)
            t2 = time.perf_counter()
            timings["daemon"].append((t1 - t0) * 1000)
            timings["pymilvus"].append((t2 - t1) * 1000)
            agree += ours == theirs
            total += 1
        for path in rounds:
            rounds[path].append(percentiles(timings[path]))
        ratios.append(rounds["daemon"][-1][0] / rounds["pymilvus"][-1][0])
    (p50, p99), (d50, d99) = (
        (statistics.median(r[0] for r in rounds[p]), statistics.median(r[1] for r in rounds[p]))
        for p in ("pymilvus", "daemon")
    )
    print(f"| {items:,} | {args.rn} | pymilvus direct | {p50:.2f} | {p99:.2f} | | |")
    print(
        f"| {items:,} | {args.rn} | daemon (HTTP) | {d50:.2f} | {d99:.2f} | "
        f"{statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f}) | {agree}/{total} |"
    )
    print(f"<!-- import of {items:,} vectors took {load_s:.1f} s; load {os.getloadavg()} -->")


if __name__ == "__main__":
    main()

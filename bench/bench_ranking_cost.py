"""What a re-ranked library costs against one in the spec's order: throughput over HTTP.

One daemon process (``python -m same_search``, every default, Lite0) holds two libraries with
the same ``--library`` photos: one in the spec's order (the default), one whose operator chose
``reranked`` (query expansion 2 and promotion of confirmed copies). ``--queries`` photos, the
library's among them, are searched by image at ``--concurrency`` clients, first in one library
then in the other (the order alternating run by run, ``--runs`` runs), and images per second are
compared: the ratio is what re-ranking costs on that mix. Two mixes: ImageNet photos (every photo
another kind of thing) and Caltech photos (ten of each class: every query has look-alikes in the
library), each from ``../shared/data`` when present, else synthetic test pictures.

The daemon's ``same_search_promotions`` counter says how each re-ranked search's promotion ended
(exact copy, out of reach, checked): where the check was paid.

    .venv/bin/python bench/bench_ranking_cost.py             # prints one table per mix
"""

from __future__ import annotations

import argparse
import base64
import os
import platform
import re
import statistics
import subprocess
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import common  # noqa: F401  (puts the worktree's package first on sys.path)
from common import SHARED_DATA
from daemon import Daemon
from images import jpeg

LIBRARIES = {"score": "plain", "reranked": "reranked"}


def imagenet(count: int) -> list[bytes] | None:
    paths = sorted((SHARED_DATA / "imagenet-samples").glob("*.JPEG"))
    return [p.read_bytes() for p in paths[:count]] if len(paths) >= count else None


def caltech(count: int) -> list[bytes] | None:
    """Ten photos of each class, classes interleaved (so the library's first photos span them)."""
    classes = sorted(p for p in (SHARED_DATA / "caltech101-dev").glob("*") if p.is_dir())
    if not classes:
        return None
    per_class = [sorted(c.glob("*.jpg"))[:10] for c in classes]
    rows = [photos[i] for i in range(10) for photos in per_class if i < len(photos)]
    return [p.read_bytes() for p in rows[:count]] if len(rows) >= count else None


def synthetic(count: int) -> list[bytes]:
    return [jpeg(seed) for seed in range(count)]


def fill(daemon: Daemon, appid: str, order: str, pictures: list[bytes]) -> None:
    assert daemon.rts("signup", appid=appid)["err_no"] == 0
    answer = daemon.post("admin", f"/api/libraries/{appid}/ranking", {"order": order})
    assert answer["err_no"] == 0, answer
    for i, data in enumerate(pictures):
        brief = {"fea_id": 1000, "fea_data": base64.b64encode(f"p{i}".encode()).decode()}
        body = daemon.rts("add", appid=appid, image=base64.b64encode(data).decode(), features=[brief])
        assert body["err_no"] in (0, 101), body


def throughput(daemon: Daemon, appid: str, queries: list[str], concurrency: int) -> float:
    """Images per second for every query searched once at ``concurrency`` clients."""

    def one(image: str) -> None:
        answer = daemon.rts("search", appid=appid, image=image, rn=10)
        assert answer["err_no"] == 0, answer

    began = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, queries))
    return len(queries) / (time.perf_counter() - began)


def promotions(daemon: Daemon) -> dict[str, float]:
    with urllib.request.urlopen(daemon.url("admin", "/metrics"), timeout=10) as response:
        text = response.read().decode()
    found = re.findall(r'same_search_promotions_total\{outcome="(\w+)"\} ([0-9.e+]+)', text)
    return {outcome: float(count) for outcome, count in found}


def machine() -> str:
    model = "unknown CPU"
    flags: list[str] = []
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        for line in lscpu.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
            if line.startswith("Flags:"):
                flags = [f for f in line.split()[1:] if re.match(r"(avx|amx)", f)]
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} cores, {platform.python_version()}, flags: {' '.join(flags)}"


def run_mix(name: str, pictures: list[bytes], args: argparse.Namespace) -> list[str]:
    library = pictures[: args.library]
    queries = [base64.b64encode(p).decode() for p in pictures[: args.queries]]
    with tempfile.TemporaryDirectory(prefix="bench-ranking-") as tmp:
        daemon = Daemon(Path(tmp))
        daemon.start()
        try:
            for order, appid in LIBRARIES.items():
                fill(daemon, appid, order, library)
            throughput(daemon, "plain", queries[:16], args.concurrency)  # warm both paths up
            throughput(daemon, "reranked", queries[:16], args.concurrency)
            before = promotions(daemon)
            rates: dict[str, list[float]] = {order: [] for order in LIBRARIES}
            load = []
            for run in range(args.runs):
                orders = list(LIBRARIES) if run % 2 == 0 else list(reversed(LIBRARIES))
                for order in orders:
                    rates[order].append(throughput(daemon, LIBRARIES[order], queries, args.concurrency))
                load.append(os.getloadavg()[0])
            after = promotions(daemon)
        finally:
            daemon.stop()
    ratios = [r / p for r, p in zip(rates["reranked"], rates["score"], strict=True)]
    counted = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    total = sum(counted.values()) or 1
    shares = ", ".join(f"{k} {v / total:.0%}" for k, v in sorted(counted.items()))
    plain, reranked = statistics.median(rates["score"]), statistics.median(rates["reranked"])
    return [
        f"### {name}: {len(queries)} photos searched by image in a library of {len(library)} of them, "
        f"{args.concurrency} clients, {args.runs} runs",
        "",
        "| ranking | images/s (median) | min - max |",
        "|:---|---:|---:|",
        f"| score (spec's order) | {plain:.1f} | {min(rates['score']):.1f} - {max(rates['score']):.1f} |",
        f"| reranked | {reranked:.1f} | {min(rates['reranked']):.1f} - {max(rates['reranked']):.1f} |",
        "",
        f"Re-ranked throughput / plain: **{reranked / plain:.2f}** (median of the ratios per run "
        f"{statistics.median(ratios):.2f}, min {min(ratios):.2f}, max {max(ratios):.2f}); promotion "
        f"outcomes: {shares}; load average during the runs {min(load):.1f}-{max(load):.1f}.",
        "",
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--library", type=int, default=20)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--mix", choices=("imagenet", "caltech", "both"), default="both")
    args = parser.parse_args()
    out = [f"## Re-ranking cost ({time.strftime('%Y-%m-%d %H:%M')}; {machine()})", ""]
    mixes = {"imagenet": imagenet, "caltech": caltech}
    for name, source in mixes.items():
        if args.mix not in (name, "both"):
            continue
        pictures = source(args.queries) or synthetic(args.queries)
        out += run_mix(name if source(1) else f"{name} (synthetic pictures)", pictures, args)
    print("\n".join(out), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

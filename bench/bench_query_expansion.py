"""What average query expansion costs per search on the real daemon.

One daemon process (``python -m same_search``, Lite0) holds ``--items`` ImageNet photos (or
synthetic test pictures when ``../shared/data`` is absent). Searches name a stored item by
contsign, so no forward pass hides the difference: what is left is the work QE adds (a second
index search, the neighbours' vectors, the vectors of hits the first search did not reach).
Each row alternates ``query_expansion`` 0 and 2 request by request, so load on the machine hits
both alike. Then the same with the exact search swapped for the HNSW graph (``exact_threshold``
below the library size, the daemon restarted on the same data). Finally a few searches by
image, the way clients search, to put the difference next to a whole request, and the cost of
``promote_same_picture`` on them.

    .venv/bin/python bench/bench_query_expansion.py --items 1000 --searches 200
"""

from __future__ import annotations

import argparse
import base64
import random
import statistics
import tempfile
import time
from pathlib import Path

import common  # noqa: F401  (puts the worktree's package first on sys.path)
from common import PHOTOS, percentile_ms
from daemon import Daemon
from images import jpeg

CONFIG = '[model]\nname = "efficientnet_lite0"\n[index]\nexact_threshold = {threshold}\n'


def photos(count: int) -> list[bytes]:
    """Library pictures: ImageNet samples where present, else synthetic ones."""
    paths = sorted(PHOTOS.glob("*.JPEG"))[:count]
    if len(paths) == count:
        return [p.read_bytes() for p in paths]
    return [jpeg(seed) for seed in range(count)]


def fill(daemon: Daemon, pictures: list[bytes]) -> list[dict]:
    assert daemon.rts("signup", appid="bench")["err_no"] == 0
    contsigns = []
    for i, data in enumerate(pictures):
        body = daemon.rts(
            "add",
            appid="bench",
            image=base64.b64encode(data).decode(),
            features=[{"fea_id": 1000, "fea_data": base64.b64encode(f"p{i}".encode()).decode()}],
        )
        if body["err_no"] == 0:
            contsigns.append(body["contsign"])
    return contsigns


def timed(daemon: Daemon, **body) -> float:
    began = time.perf_counter()
    answer = daemon.rts("search", appid="bench", **body)
    elapsed = time.perf_counter() - began
    assert answer["err_no"] == 0, answer
    return elapsed


def row(label: str, samples: dict[int, list[float]]) -> str:
    off, on = samples[min(samples)], samples[max(samples)]
    extra = statistics.median(on) - statistics.median(off)
    return (
        f"| {label} | {percentile_ms(off, 0.5):.1f} / {percentile_ms(off, 0.9):.1f} | "
        f"{percentile_ms(on, 0.5):.1f} / {percentile_ms(on, 0.9):.1f} | {1000 * extra:+.1f} |"
    )


def compare(daemon: Daemon, queries: list[dict], rn: int, **fixed) -> dict[int, list[float]]:
    samples: dict[int, list[float]] = {0: [], 2: []}
    for query in queries:
        for n in (0, 2):
            samples[n].append(timed(daemon, rn=rn, query_expansion=n, **fixed, **query))
    return samples


def compare_promotion(daemon: Daemon, queries: list[dict]) -> dict[int, list[float]]:
    """Searches by image with ``promote_same_picture`` 0 and 1 alternating (QE at its default)."""
    samples: dict[int, list[float]] = {0: [], 1: []}
    for query in queries:
        for flag in (0, 1):
            samples[flag].append(timed(daemon, rn=10, promote_same_picture=flag, **query))
    return samples


def compare_defaults(daemon: Daemon, queries: list[dict]) -> dict[int, list[float]]:
    """Searches by image as a spec client sends them (the configured re-ranking) against the
    plain ranking (``query_expansion: 0, promote_same_picture: 0``), alternating."""
    samples: dict[int, list[float]] = {0: [], 1: []}
    for query in queries:
        samples[0].append(timed(daemon, rn=10, query_expansion=0, promote_same_picture=0, **query))
        samples[1].append(timed(daemon, rn=10, **query))
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=1000)
    parser.add_argument("--searches", type=int, default=200)
    parser.add_argument("--image-searches", type=int, default=40)
    args = parser.parse_args()
    rng = random.Random(13)
    pictures = photos(args.items)
    with tempfile.TemporaryDirectory(prefix="bench-qe-") as tmp:
        daemon = Daemon(Path(tmp), CONFIG.format(threshold=5000))
        daemon.start()
        try:
            began = time.perf_counter()
            contsigns = fill(daemon, pictures)
            print(f"{len(contsigns)} items added in {time.perf_counter() - began:.0f} s")
            by_contsign = [{"contsign": rng.choice(contsigns)} for _ in range(args.searches)]
            for _ in range(10):  # warm
                timed(daemon, **by_contsign[0])
            print("| search (median / p90 ms) | QE off | QE 2 | extra (median) |")
            print("|:---|---:|---:|---:|")
            print(row("by contsign, rn 10, exact", compare(daemon, by_contsign, 10)))
            print(row("by contsign, rn 300, exact", compare(daemon, by_contsign, 300)))
            images = [
                {"image": base64.b64encode(rng.choice(pictures)).decode()} for _ in range(args.image_searches)
            ]
            print(
                row(
                    "by image, rn 10, exact, no promotion",
                    compare(daemon, images, 10, promote_same_picture=0),
                )
            )
            print("| search by image, rn 10 (median / p90 ms) | promote 0 | promote 1 | extra (median) |")
            print(row("QE 2, exact", compare_promotion(daemon, images)))
            print("| search by image, rn 10 (median / p90 ms) | plain | defaults | extra (median) |")
            print(row("QE 2 + promotion (defaults), exact", compare_defaults(daemon, images)))
        finally:
            daemon.stop()
        daemon.config.write_text(CONFIG.format(threshold=10))
        daemon.start()
        try:
            for _ in range(10):
                timed(daemon, **by_contsign[0])
            print(row("by contsign, rn 10, HNSW", compare(daemon, by_contsign, 10)))
            print(row("by contsign, rn 300, HNSW", compare(daemon, by_contsign, 300)))
        finally:
            daemon.stop()


if __name__ == "__main__":
    main()

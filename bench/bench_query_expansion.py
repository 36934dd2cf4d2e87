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

Every row is measured ``--repeats`` times, the rounds interleaved with the other rows, and
reported as the median of the rounds' medians with their range: two runs of the same settings on
a shared machine have differed by about 20%, so a single run's ratio says less than it seems.

    .venv/bin/python bench/bench_query_expansion.py --items 1000 --searches 200 --repeats 5
"""

from __future__ import annotations

import argparse
import base64
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import common  # noqa: F401  (puts the worktree's package first on sys.path)
from common import PHOTOS, machine, percentile_ms
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


#: One row's samples per repeat: (off, on) request times in seconds, alternated request by request.
Rounds = list[tuple[list[float], list[float]]]


def spread(values: list[float], fmt: str = ".1f") -> str:
    """``median [min, max]`` of per-repeat figures."""
    return f"{statistics.median(values):{fmt}} [{min(values):{fmt}}, {max(values):{fmt}}]"


def row(label: str, rounds: Rounds) -> str:
    """One table row: each repeat's medians, then the median over the repeats with their range,
    the pooled p90, and the extra and on/off ratio computed per repeat (so the range shows how far
    two runs of the same settings disagree)."""
    off = [1000 * statistics.median(a) for a, _ in rounds]
    on = [1000 * statistics.median(b) for _, b in rounds]
    pooled_off = [t for a, _ in rounds for t in a]
    pooled_on = [t for _, b in rounds for t in b]
    extra = [b - a for a, b in zip(off, on, strict=True)]
    ratio = [b / a for a, b in zip(off, on, strict=True)]
    return (
        f"| {label} | {spread(off)} / {percentile_ms(pooled_off, 0.9):.1f} | "
        f"{spread(on)} / {percentile_ms(pooled_on, 0.9):.1f} | {spread(extra, '+.1f')} | "
        f"{spread(ratio, '.2f')} |"
    )


HEADER = (
    "| search: median [min, max of the {repeats} repeats' medians] / pooled p90, ms | off | on | extra "
    "(on - off), per repeat | on / off, per repeat |\n|:---|---:|---:|---:|---:|"
)


def compare(daemon: Daemon, queries: list[dict], rn: int, **fixed) -> tuple[list[float], list[float]]:
    """``query_expansion`` 0 and 2 alternating request by request."""
    samples: dict[int, list[float]] = {0: [], 2: []}
    for query in queries:
        for n in (0, 2):
            samples[n].append(timed(daemon, rn=rn, query_expansion=n, **fixed, **query))
    return samples[0], samples[2]


def compare_promotion(daemon: Daemon, queries: list[dict]) -> tuple[list[float], list[float]]:
    """Searches by image with ``promote_same_picture`` 0 and 1 alternating (QE at its default)."""
    samples: dict[int, list[float]] = {0: [], 1: []}
    for query in queries:
        for flag in (0, 1):
            samples[flag].append(timed(daemon, rn=10, promote_same_picture=flag, **query))
    return samples[0], samples[1]


def compare_defaults(daemon: Daemon, queries: list[dict]) -> tuple[list[float], list[float]]:
    """Searches by image as a spec client sends them (the configured re-ranking) against the
    plain ranking (``query_expansion: 0, promote_same_picture: 0``), alternating."""
    samples: dict[int, list[float]] = {0: [], 1: []}
    for query in queries:
        samples[0].append(timed(daemon, rn=10, query_expansion=0, promote_same_picture=0, **query))
        samples[1].append(timed(daemon, rn=10, **query))
    return samples[0], samples[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=1000)
    parser.add_argument("--searches", type=int, default=200)
    parser.add_argument("--image-searches", type=int, default=40)
    parser.add_argument(
        "--repeats", type=int, default=5, help="rounds of every row, interleaved (the spread between them)"
    )
    args = parser.parse_args()
    rng = random.Random(13)
    pictures = photos(args.items)
    print(f"- date: {time.strftime('%Y-%m-%dT%H:%M:%S%z')}")
    print(f"- machine at the start: {machine()}")
    print(f"- command: `.venv/bin/python bench/bench_query_expansion.py {' '.join(sys.argv[1:])}`")
    real = len(sorted(PHOTOS.glob("*.JPEG"))[: args.items]) == args.items
    print(f"- library: {len(pictures)} {'ImageNet photos' if real else 'synthetic test pictures'}")
    rows: dict[str, Rounds] = {}
    with tempfile.TemporaryDirectory(prefix="bench-qe-") as tmp:
        daemon = Daemon(Path(tmp), CONFIG.format(threshold=5000))
        daemon.start()
        try:
            began = time.perf_counter()
            contsigns = fill(daemon, pictures)
            print(f"- {len(contsigns)} items added in {time.perf_counter() - began:.0f} s")
            by_contsign = [{"contsign": rng.choice(contsigns)} for _ in range(args.searches)]
            images = [
                {"image": base64.b64encode(rng.choice(pictures)).decode()} for _ in range(args.image_searches)
            ]
            for _ in range(10):  # warm
                timed(daemon, **by_contsign[0])
            exact = {
                "by contsign, rn 10, exact: QE 2": lambda: compare(daemon, by_contsign, 10),
                "by contsign, rn 300, exact: QE 2": lambda: compare(daemon, by_contsign, 300),
                "by image, rn 10, exact: QE 2 (promotion off)": lambda: compare(
                    daemon, images, 10, promote_same_picture=0
                ),
                "by image, rn 10, exact: promotion (QE 2 on)": lambda: compare_promotion(daemon, images),
                "**by image, rn 10, exact: the defaults against the plain ranking**": lambda: (
                    compare_defaults(daemon, images)
                ),
            }
            for repeat in range(args.repeats):
                for label, measure in exact.items():
                    rows.setdefault(label, []).append(measure())
                log(f"repeat {repeat + 1}/{args.repeats} (exact) done")
        finally:
            daemon.stop()
        daemon.config.write_text(CONFIG.format(threshold=10))
        daemon.start()
        try:
            for _ in range(10):
                timed(daemon, **by_contsign[0])
            graph = {
                "by contsign, rn 10, HNSW: QE 2": lambda: compare(daemon, by_contsign, 10),
                "by contsign, rn 300, HNSW: QE 2": lambda: compare(daemon, by_contsign, 300),
            }
            for repeat in range(args.repeats):
                for label, measure in graph.items():
                    rows.setdefault(label, []).append(measure())
                log(f"repeat {repeat + 1}/{args.repeats} (HNSW) done")
        finally:
            daemon.stop()
    print(f"- machine at the end: {machine()}")
    print(
        f"- {args.searches} searches by contsign and {args.image_searches} by image per row and repeat, "
        "off and on alternating request by request"
    )
    print()
    print(HEADER.format(repeats=args.repeats))
    for label, rounds in rows.items():
        print(row(label, rounds))


def log(message: str) -> None:
    """Progress on stderr."""
    print(message, file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()

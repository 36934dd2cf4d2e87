"""Soak: mixed add/search/remove from many clients, with a kill -9 and restart in the middle.

Not part of `make test`. Prints requests by err_no, latency percentiles per route, acknowledged
writes lost (must be 0) and the daemon's RSS at start and end.

    .venv/bin/python bench/soak.py --seconds 600 --clients 16
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import threading
import time
import urllib.error
from collections import Counter, defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from conftest import b64, brief
from daemon import Daemon
from images import jpeg

from same_search.contsign import ContSign


def rss_mib(pid: int) -> float:
    """Resident memory of a process, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Soak:
    """Shared bookkeeping of all client threads."""

    def __init__(self, daemon: Daemon, deadline: float) -> None:
        self.daemon = daemon
        self.deadline = deadline
        self.lock = threading.Lock()
        self.codes: Counter[str] = Counter()
        self.latency: dict[str, list[float]] = defaultdict(list)
        self.present: set[int] = set()  # acknowledged adds not acknowledged-removed since
        self.removed: set[int] = set()  # acknowledged removes not re-added since
        self.query_pool = [jpeg(seed, (160, 120)) for seed in range(20)]

    def record(self, route: str, outcome: str, seconds: float | None) -> None:
        with self.lock:
            self.codes[f"{route}:{outcome}"] += 1
            if seconds is not None:
                self.latency[route].append(seconds)

    def client(self, index: int) -> None:
        rng = random.Random(index)
        mine: list[bytes] = []
        serial = 0
        while time.monotonic() < self.deadline:
            roll = rng.random()
            if roll < 0.5:
                route, body, image = "search", {"image": b64(rng.choice(self.query_pool)), "rn": 10}, None
            elif roll < 0.8 or not mine:
                serial += 1
                image = jpeg(100_000 + index * 100_000 + serial, (160, 120))
                route, body = "add", {"image": b64(image), "features": [brief(f"c{index}-{serial}")]}
            else:
                image = mine.pop(rng.randrange(len(mine)))
                route, body = "remove", {"contsign": ContSign.of_image(image).to_json()}
            started = time.monotonic()
            try:
                answer = self.daemon.rts(route, appid="soak", **body)
            except (urllib.error.URLError, ConnectionError, OSError):
                self.record(route, "transport", None)
                if route == "remove":
                    mine.append(image)  # unknown outcome: keep it and try again later
                time.sleep(0.2)
                continue
            self.record(route, str(answer["err_no"]), time.monotonic() - started)
            if answer["err_no"] != 0:
                continue
            key = ContSign.of_image(image).key if image is not None else None
            with self.lock:
                if route == "add":
                    self.present.add(key)
                    self.removed.discard(key)
                    mine.append(image)
                elif route == "remove":
                    self.present.discard(key)
                    self.removed.add(key)

    def lost(self) -> tuple[int, int]:
        """(acknowledged adds missing, acknowledged removes still present) after the run."""
        missing = resurrected = 0
        for key in self.present:
            hit = self.daemon.rts("search", appid="soak", contsign=ContSign.from_key(key).to_json(), rn=1)
            missing += hit["err_no"] != 0
        for key in self.removed:
            hit = self.daemon.rts("search", appid="soak", contsign=ContSign.from_key(key).to_json(), rn=1)
            resurrected += hit["err_no"] == 0
        return missing, resurrected


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000 if ordered else float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=120)
    parser.add_argument("--clients", type=int, default=16)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as workdir:
        daemon = Daemon(Path(workdir), "[storage]\nsnapshot_interval_s = 10.0\n")
        daemon.start()
        daemon.rts("signup", appid="soak")
        rss_start = rss_mib(daemon.proc.pid)
        started = time.monotonic()
        soak = Soak(daemon, started + args.seconds)
        threads = [threading.Thread(target=soak.client, args=(i,), daemon=True) for i in range(args.clients)]
        for thread in threads:
            thread.start()
        time.sleep(args.seconds / 2)
        daemon.kill()
        kill_at = time.monotonic() - started
        daemon.start()
        restart_s = time.monotonic() - started - kill_at
        for thread in threads:
            thread.join()
        rss_end = rss_mib(daemon.proc.pid)
        missing, resurrected = soak.lost()
        size = daemon.rts("snapshot", appid="soak")["snapshot"]["index_size"]
        daemon.terminate()
    print(f"\nsoak: {args.seconds:.0f}s, {args.clients} clients, kill -9 at {kill_at:.0f}s, ", end="")
    print(f"back in {restart_s:.1f}s")
    print("\n| route:outcome | requests |\n|---|---|")
    for key, count in sorted(soak.codes.items()):
        print(f"| {key} | {count} |")
    print("\n| route | n | p50 ms | p90 ms | p99 ms | mean ms |\n|---|---|---|---|---|---|")
    for route, values in sorted(soak.latency.items()):
        print(
            f"| {route} | {len(values)} | {percentile(values, 0.5):.0f} | {percentile(values, 0.9):.0f} | "
            f"{percentile(values, 0.99):.0f} | {statistics.mean(values) * 1000:.0f} |"
        )
    print(f"\nitems at end: {size} (acknowledged present: {len(soak.present)})")
    print(f"acknowledged adds lost: {missing}; acknowledged removes undone: {resurrected}")
    print(f"daemon RSS: {rss_start:.0f} MiB after start, {rss_end:.0f} MiB at end (after the restart)")
    return 0 if missing == 0 and resurrected == 0 and size == len(soak.present) else 1


if __name__ == "__main__":
    raise SystemExit(main())

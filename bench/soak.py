"""Soak: mixed add/search/remove from many clients, with a kill -9 and restart in the middle.

Not part of `make test`. Prints requests by err_no, latency percentiles per route, acknowledged
writes lost (must be 0) and the daemon's RSS at start and end.

    .venv/bin/python bench/soak.py --seconds 600 --clients 16
"""

from __future__ import annotations

import argparse
import functools
import random
import statistics
import tempfile
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path

from common import percentile_ms, rss_mib
from daemon import Daemon
from images import jpeg

from same_search.client import Client, SameSearchError, TransportError
from same_search.contsign import ContSign


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
        api = self.daemon.client("soak")
        rng = random.Random(index)
        mine: list[bytes] = []
        serial = 0
        while time.monotonic() < self.deadline:
            roll = rng.random()
            if roll < 0.5:
                route, image = "search", None
                request = functools.partial(api.search, image=rng.choice(self.query_pool), rn=10)
            elif roll < 0.8 or not mine:
                serial += 1
                image = jpeg(100_000 + index * 100_000 + serial, (160, 120))
                route, request = "add", functools.partial(api.add, image, f"c{index}-{serial}")
            else:
                image = mine.pop(rng.randrange(len(mine)))
                route, request = "remove", functools.partial(api.remove, contsign=ContSign.of_image(image))
            started = time.monotonic()
            try:
                request()
                outcome = "0"
            except TransportError:
                self.record(route, "transport", None)
                if route == "remove":
                    mine.append(image)  # unknown outcome: keep it and try again later
                time.sleep(0.2)
                continue
            except SameSearchError as exc:
                outcome = str(exc.err_no)
            self.record(route, outcome, time.monotonic() - started)
            if outcome != "0":
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
        api = self.daemon.client("soak")
        missing = sum(not stored(api, key) for key in self.present)
        resurrected = sum(stored(api, key) for key in self.removed)
        return missing, resurrected


def stored(api: Client, key: int) -> bool:
    """Whether the item with storage key ``key`` answers a search by its own contsign."""
    try:
        api.search(contsign=ContSign.from_key(key), rn=1)
    except SameSearchError:
        return False
    return True


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=120)
    parser.add_argument("--clients", type=int, default=16)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as workdir:
        daemon = Daemon(Path(workdir), "[storage]\nsnapshot_interval_s = 10.0\n")
        daemon.start()
        daemon.client("soak").signup()
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
        size = daemon.client("soak").snapshot()["index_size"]
        daemon.terminate()
    print(f"\nsoak: {args.seconds:.0f}s, {args.clients} clients, kill -9 at {kill_at:.0f}s, ", end="")
    print(f"back in {restart_s:.1f}s")
    print("\n| route:outcome | requests |\n|---|---|")
    for key, count in sorted(soak.codes.items()):
        print(f"| {key} | {count} |")
    print("\n| route | n | p50 ms | p90 ms | p99 ms | mean ms |\n|---|---|---|---|---|---|")
    for route, values in sorted(soak.latency.items()):
        print(
            f"| {route} | {len(values)} | {percentile_ms(values, 0.5):.0f} "
            f"| {percentile_ms(values, 0.9):.0f} | {percentile_ms(values, 0.99):.0f} "
            f"| {statistics.mean(values) * 1000:.0f} |"
        )
    print(f"\nitems at end: {size} (acknowledged present: {len(soak.present)})")
    print(f"acknowledged adds lost: {missing}; acknowledged removes undone: {resurrected}")
    print(f"daemon RSS: {rss_start:.0f} MiB after start, {rss_end:.0f} MiB at end (after the restart)")
    return 0 if missing == 0 and resurrected == 0 and size == len(soak.present) else 1


if __name__ == "__main__":
    raise SystemExit(main())

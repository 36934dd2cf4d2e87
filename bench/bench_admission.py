"""A small search's latency while 20 clients send huge single-colour PNGs, against an idle daemon.

Not part of `make test` (`make bench-admission`). Starts the daemon (Lite0, default config: the
default ranking extracts the query's local features, so a search by image decodes its picture
twice), stores a few small pictures, then:

1. idle: ``--searches`` sequential small searches (a 640x480 JPEG), one every 0.1 s;
2. loaded: ``--clients`` threads each send searches with an 8192 x 8192 single-colour PNG (about
   215 KB, 64 megapixels to decode, no reduced decode for PNG) back to back for ``--seconds``,
   while the main thread goes on with the small searches. A client answered err_no 99 retries as
   same_search's own clients do (``imports.retry.backoff_s``: 0.2 s, doubling up to 5 s, from 0.2 s
   again after an answer), or every ``--retry-s`` seconds when given (a client that hammers).

Prints one table: the small search's p50/p99 in both phases and their ratio, the huge searches
answered, shed with err_no 99 and failed otherwise, and the daemon's resident memory (peak and
at the end). ``--code DIR`` runs another checkout's daemon (e.g. ``git worktree add /tmp/before
HEAD~3``), so a before/after pair runs on the same machine minutes apart.

    .venv/bin/python bench/bench_admission.py [--code DIR] [--clients 20] [--seconds 60]
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

from common import REPO, percentile_ms, rss_mib


def huge_png(side: int = 8192) -> bytes:
    """A single-colour RGB PNG: tiny on the wire, ``side`` x ``side`` pixels to decode."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (side, side), (200, 40, 40)).save(buffer, format="PNG", compress_level=9)
    return buffer.getvalue()


def search(daemon, body: bytes, timeout: float = 120.0) -> tuple[int, float]:
    """One search by image (``body``: the request, encoded once): (err_no, seconds); err_no -1 for
    a transport failure."""
    request = urllib.request.Request(
        daemon.url("search", "/RTSAsService/search"), data=body, headers={"Content-Type": "application/json"}
    )
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            answer = json.loads(response.read())
    except (OSError, urllib.error.URLError):
        return -1, time.perf_counter() - started
    return answer["err_no"], time.perf_counter() - started


def search_body(image: bytes) -> bytes:
    return json.dumps(
        {"from": "bench", "appid": "lib", "image": base64.b64encode(image).decode(), "rn": 5}
    ).encode()


def small_searches(
    daemon, image: bytes, count: int, gap_s: float, failed: Counter, until: float | None = None
) -> list[float]:
    """Sequential small searches (``count``, or as many as fit before ``until``); their seconds,
    answers other than err_no 0 counted in ``failed``."""
    seconds = []
    while len(seconds) < count and (until is None or time.monotonic() < until):
        err_no, took = search(daemon, image)
        if err_no != 0:
            failed[err_no] += 1
        seconds.append(took)
        time.sleep(gap_s)
    return seconds


class HugeClient(threading.Thread):
    """Huge-PNG searches back to back until ``stop``; counts the answers by err_no."""

    def __init__(
        self, daemon, image: bytes, stop: threading.Event, answers: Counter, retry_s: float | None
    ) -> None:
        super().__init__(daemon=True)
        self.target_daemon, self.image, self.stop_event, self.answers = daemon, image, stop, answers
        self.retry_s = retry_s

    def run(self) -> None:
        from same_search.imports.retry import backoff_s

        refused = 0
        while not self.stop_event.is_set():
            err_no, _ = search(self.target_daemon, self.image)
            self.answers[err_no] += 1
            refused = refused + 1 if err_no == 99 else 0
            if refused:
                self.stop_event.wait(self.retry_s if self.retry_s is not None else backoff_s(refused - 1))


class Memory(threading.Thread):
    """The daemon's resident memory, sampled every 0.2 s."""

    def __init__(self, pid: int, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.pid, self.stop_event, self.peak = pid, stop, 0.0

    def run(self) -> None:
        while not self.stop_event.is_set():
            self.peak = max(self.peak, rss_mib(self.pid))
            time.sleep(0.2)


def machine() -> str:
    """The CPU model, its arithmetic flags of interest, cores, load and date (docs/benchmarks.md)."""
    model, flags = platform.processor() or "unknown CPU", set()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
    named = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_int8")
    wanted = [f for f in named if f in flags]
    load = os.getloadavg()[0]
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    return f"{model} ({', '.join(wanted)}), {os.cpu_count()} CPUs, load {load:.2f} at the start, {when}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--code", type=Path, default=REPO, help="checkout whose daemon runs")
    parser.add_argument("--clients", type=int, default=20, help="threads sending huge PNGs")
    parser.add_argument("--seconds", type=float, default=60.0, help="length of the loaded phase")
    parser.add_argument("--searches", type=int, default=100, help="small searches in the idle phase")
    parser.add_argument("--config", default="", help="extra config.toml lines for the daemon")
    parser.add_argument("--retry-s", type=float, default=None, help="fixed pause after err_no 99")
    args = parser.parse_args()
    sys.path.insert(0, str(args.code.resolve() / "tests"))
    from daemon import Daemon
    from images import encode, picture

    daemon = Daemon(
        Path(tempfile.mkdtemp(prefix="admission-")),
        f'[model]\nname = "efficientnet_lite0"\n{args.config}\n',
    )
    daemon.start(timeout=180)
    commit = subprocess.run(
        ["git", "-C", str(args.code), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    try:
        assert daemon.rts("signup", appid="lib")["err_no"] == 0
        for seed in range(20):
            image = base64.b64encode(encode(picture(seed, (320, 240)))).decode()
            brief = [{"fea_id": 1000, "fea_data": base64.b64encode(f"p{seed}".encode()).decode()}]
            assert daemon.rts("add", appid="lib", image=image, features=brief)["err_no"] == 0
        small = search_body(encode(picture(3, (640, 480))))
        png = huge_png()
        huge = search_body(png)
        assert daemon.proc is not None
        pid = daemon.proc.pid
        small_failed: Counter = Counter()
        small_searches(daemon, small, 10, 0.05, small_failed)  # warm
        rss_idle = rss_mib(pid)
        idle = small_searches(daemon, small, args.searches, 0.1, small_failed)

        stop, answers = threading.Event(), Counter()
        memory = Memory(pid, stop)
        memory.start()
        clients = [HugeClient(daemon, huge, stop, answers, args.retry_s) for _ in range(args.clients)]
        for client in clients:
            client.start()
        time.sleep(1.0)  # let the huge requests pile up first
        until = time.monotonic() + args.seconds
        loaded = small_searches(daemon, small, 10**9, 0.1, small_failed, until)
        stop.set()
        for client in clients:
            client.join(180)
        memory.join(5)
        time.sleep(2.0)
        rss_after = rss_mib(pid)

        idle_p50, idle_p99 = percentile_ms(idle, 0.5), percentile_ms(idle, 0.99)
        load_p50, load_p99 = percentile_ms(loaded, 0.5), percentile_ms(loaded, 0.99)
        shed, ok = answers.pop(99, 0), answers.pop(0, 0)
        other = ", ".join(f"{n} x err_no {e}" for e, n in sorted(answers.items())) or "none"
        retry = "like same_search's clients" if args.retry_s is None else f"every {args.retry_s:g} s"
        print(
            f"Machine: {machine()}; code {args.code.name} at {commit}; {args.clients} huge clients for "
            f"{args.seconds:g} s (PNG {len(png) // 1024} KB, 8192 x 8192), retrying err_no 99 {retry}\n"
        )
        print("| small search, 640x480 JPEG | n | p50 ms | p99 ms |")
        print("|:---|---:|---:|---:|")
        print(f"| idle | {len(idle)} | {idle_p50:.1f} | {idle_p99:.1f} |")
        under = f"under {args.clients} concurrent huge-PNG searches"
        print(f"| {under} | {len(loaded)} | {load_p50:.1f} | {load_p99:.1f} |")
        print(f"| ratio loaded / idle | | {load_p50 / idle_p50:.2f}x | {load_p99 / idle_p99:.2f}x |\n")
        refused = ", ".join(f"{n} x err_no {e}" for e, n in sorted(small_failed.items())) or "none"
        print(f"Small searches not answered with err_no 0: {refused}.\n")
        print("| huge-PNG searches: answered | shed (err_no 99) | other | RSS MiB: idle / peak / after |")
        print("|---:|---:|:---|:---|")
        print(f"| {ok} | {shed} | {other} | {rss_idle:.0f} / {memory.peak:.0f} / {rss_after:.0f} |")
    finally:
        daemon.stop()


if __name__ == "__main__":
    main()

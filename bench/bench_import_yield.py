"""Search latency while a 20,000-image ZIP imports, against the same searches on an idle daemon.

Not part of `make test`. Starts the daemon (Lite0), stores one image, times sequential searches
for it, uploads a ZIP of 20,000 small distinct JPEGs as an import job, times the same searches
while the job runs, prints both summaries and the job's images/s, and cancels the job.
``--code DIR`` runs another checkout's daemon (e.g. an older commit unpacked with git archive),
so a before/after pair runs on the same machine minutes apart.

    .venv/bin/python bench/bench_import_yield.py [--code DIR] [--searches 40]
"""

from __future__ import annotations

import argparse
import base64
import json
import statistics
import sys
import tempfile
import time
import urllib.request
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def build_zip(path: Path, count: int) -> None:
    from images import encode, picture

    with zipfile.ZipFile(path, "w") as archive:
        for seed in range(count):
            archive.writestr(f"img/{seed:05d}.jpg", encode(picture(seed, (64, 64))))


def upload(daemon, path: str, data: bytes) -> dict:
    request = urllib.request.Request(daemon.url("admin", path), data=data)
    with urllib.request.urlopen(request, timeout=300) as response:
        return json.loads(response.read())


def time_searches(daemon, image: str, count: int, gap_s: float) -> list[float]:
    seconds = []
    for _ in range(count):
        started = time.perf_counter()
        assert daemon.rts("search", appid="lib", image=image, rn=5)["err_no"] == 0
        seconds.append(time.perf_counter() - started)
        time.sleep(gap_s)
    return seconds


def summary(seconds: list[float]) -> str:
    ranked = sorted(seconds)
    p90 = ranked[int(len(ranked) * 0.9)]
    return (
        f"p50 {statistics.median(ranked) * 1000:.0f} ms, p90 {p90 * 1000:.0f} ms, "
        f"max {ranked[-1] * 1000:.0f} ms (n={len(ranked)})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--code", type=Path, default=REPO, help="checkout whose daemon runs")
    parser.add_argument("--entries", type=int, default=20_000)
    parser.add_argument("--searches", type=int, default=40)
    parser.add_argument("--zip", type=Path, default=Path(tempfile.gettempdir()) / "same_search_20k.zip")
    args = parser.parse_args()
    sys.path.insert(0, str(args.code.resolve() / "tests"))
    from daemon import Daemon
    from images import jpeg

    if not args.zip.exists():
        build_zip(args.zip, args.entries)
    daemon = Daemon(Path(tempfile.mkdtemp(prefix="import-yield-")), '[model]\nname = "efficientnet_lite0"\n')
    daemon.start()
    try:
        image = base64.b64encode(jpeg(7)).decode()
        daemon.rts("signup", appid="lib")
        daemon.rts("add", appid="lib", image=image)
        idle = time_searches(daemon, image, args.searches // 2, 0.1)
        job = upload(daemon, "/api/jobs/upload?appid=lib", args.zip.read_bytes())["job"]
        while daemon.get("admin", f"/api/jobs/{job['id']}")["job"]["status"] != "running":
            time.sleep(0.1)
        started, position = time.monotonic(), daemon.get("admin", f"/api/jobs/{job['id']}")["job"]["position"]
        busy = time_searches(daemon, image, args.searches, 0.25)
        done = daemon.get("admin", f"/api/jobs/{job['id']}")["job"]["position"] - position
        rate = done / (time.monotonic() - started)
        print(f"{args.code.name}: idle {summary(idle)}; during the import {summary(busy)}")
        print(f"import {rate:.1f} images/s while searched")
        upload(daemon, f"/api/jobs/{job['id']}/cancel", b"")
    finally:
        daemon.stop()


if __name__ == "__main__":
    main()

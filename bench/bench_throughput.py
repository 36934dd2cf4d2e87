"""Embedding throughput: the bare model against the daemon end to end over HTTP, in one run.

Measured on the same machine, with the same model, ``max_batch`` and torch threads:

- **(a)** the bare network (``Embedder.embed``) on pre-decoded batches of ``max_batch`` images
  (and, for comparison, of one image);
- **(b)** the same including decode + preprocess of the JPEG bytes, one thread, sequentially
  (the decode + preprocess share is shown on its own row);
- **(aW)** ``workers`` threads each running (a) at once: the bare model with the daemon's own
  execution plan (same weights, batch and total threads), the fair 100% for the daemon's rate;
- **(bW)** the daemon's whole plan run bare: ``decode_threads`` threads decoding + preprocessing
  (and making the thumbnail an ``add`` stores), ``workers`` threads running forward passes of up
  to ``max_batch`` decoded images: everything the daemon does per image except HTTP, JSON,
  base64, SQLite and the index. The daemon's add/search rows at concurrency >= 8 and the import
  job row are judged against it (targets 0.85 and 0.95, set when every core was put to work);
- **(b1)** one image at a time: decode + preprocess + a batch-1 forward pass (the latency floor
  of a single request);
- **(c)** the real daemon (``python -m same_search`` as a subprocess, tests/daemon.py) answering
  ``add`` and ``search`` over HTTP at each client concurrency (asyncio + aiohttp client, request
  bodies prepared before the clock starts); "server p50" is the daemon's own latency from its
  access log, so the gap to the client's is HTTP and JSON;
- **(j)** an import job over the same pictures written to a folder (no HTTP per image), from
  ``POST /api/jobs`` to ``done``.

The bare cases run once before and once after the daemon cells and are pooled; a warning says
when the two passes disagree (a machine whose speed drifts makes every ratio unreliable). The
cells with a target (add/search at concurrency >= 8, the import job) are also judged against
(bW) measured right before and right after each of them, which a shared machine's drift
affects far less than the pooled rate.
Photos come from ``../shared/data/imagenet-samples`` when present (re-encoded variants when
``--images`` exceeds them), else generated 500x375 JPEGs from tests/images.py. Prints markdown
tables; every ratio is daemon / bare.

    nice -n 10 .venv/bin/python bench/bench_throughput.py
    nice -n 10 .venv/bin/python bench/bench_throughput.py --images 32 --concurrency 1,8 --seconds 10
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import dataclasses
import io
import json
import os
import re
import statistics
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import common  # first: puts the repository and tests/ on sys.path
import numpy as np
from common import Summary, percentile_ms, rss_mib
from daemon import Daemon
from images import jpeg
from PIL import Image, ImageOps
from run_all import cpu_description

from same_search.config import LimitsConfig, ModelConfig, StorageConfig
from same_search.embed.embedder import (
    Embedder,
    ExecutionPlan,
    available_cores,
    pick_device,
    plan_execution,
)
from same_search.embed.images import ImageLimits, decode, make_thumbnail

PHOTO_DIR = common.PHOTOS
GENERATED_SIZE = (500, 375)
LOG_LINE = re.compile(r"route=\S+ logid=(\S+) .*err_no=\S+ latency_ms=([\d.]+)")
PRECISION_LINE = re.compile(r"precision auto -> .*")
#: Cells judged against (bW), with the issue's targets.
TARGETS = {"add": 0.85, "search": 0.85, "import": 0.95}


# ---------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------


def variant(data: bytes, number: int) -> bytes:
    """A re-encoded copy of a photo (mirrored every other time) with its own bytes and contsign."""
    image = Image.open(io.BytesIO(data)).convert("RGB")
    if number % 2:
        image = ImageOps.mirror(image)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=max(50, 95 - number))
    return buffer.getvalue()


def load_images(count: int, photo_dir: Path) -> tuple[list[bytes], str]:
    """``count`` distinct JPEG files and a line saying where they came from."""
    files = sorted(p for p in photo_dir.glob("*") if p.suffix.lower() in (".jpg", ".jpeg"))
    if not files:
        images = [jpeg(seed, GENERATED_SIZE) for seed in range(count)]
        return images, f"{count} generated {GENERATED_SIZE[0]}x{GENERATED_SIZE[1]} JPEGs (tests/images.py)"
    originals = [path.read_bytes() for path in files[:count]]
    unique = dict.fromkeys(originals)
    number = 0
    while len(unique) < count:
        number += 1
        for data in originals:
            if len(unique) == count:
                break
            unique.setdefault(variant(data, number))
    mean_kib = statistics.mean(len(d) for d in unique) / 1024
    source = f"{len(originals)} photos from {common.shown(photo_dir)}"
    if len(unique) > len(originals):
        source += f" + {len(unique) - len(originals)} re-encoded variants"
    return list(unique), f"{source} (mean {mean_kib:.0f} KiB)"


# ---------------------------------------------------------------------------------------------
# Measurements
# ---------------------------------------------------------------------------------------------


@dataclass
class Row:
    """One measured case: how many images in how long, per-image latencies when meaningful."""

    case: str
    images: int
    seconds: float
    latencies: list[float] = field(default_factory=list)
    server_latencies: list[float] = field(default_factory=list)
    errors: int = 0

    @property
    def rate(self) -> float:
        """Images per second."""
        return self.images / self.seconds if self.seconds > 0 else float("nan")

    def p(self, q: float, server: bool = False) -> float:
        """Latency percentile ``q`` in milliseconds (NaN without samples)."""
        return percentile_ms(self.server_latencies if server else self.latencies, q)


class Bare:
    """The bare model in this process, with the daemon's decoding and preprocessing."""

    def __init__(self, cfg: ModelConfig) -> None:
        self.cfg = cfg
        self.embedder = Embedder(cfg)
        limits = LimitsConfig()
        self.limits = ImageLimits(limits.min_side, limits.max_side, limits.max_pixels)

    def prepare(self, data: bytes) -> np.ndarray:
        """JPEG bytes -> (3, S, S) uint8, exactly as the daemon's decode threads do it."""
        return self.embedder.preprocess(decode(data, self.limits, self.cfg.image_size))

    def warm_up(self, pixels: np.ndarray) -> None:
        """Run the batch sizes used below once, so first-call costs stay out of the numbers."""
        self.embedder.embed(pixels[: self.cfg.max_batch])
        self.embedder.embed(pixels[:1])

    def batched(self, pixels: np.ndarray, seconds: float, batch: int, label: str = "") -> Row:
        """Forward passes of ``batch`` pre-decoded images: (a) with ``max_batch``."""
        return self._timed_batches(
            f"bare model, pre-decoded, batch {batch}{label}",
            len(pixels),
            seconds,
            batch,
            lambda start: self.embedder.embed(pixels[start : start + batch]),
        )

    def parallel(self, pixels: np.ndarray, seconds: float, streams: int) -> Row:
        """(aW): ``streams`` threads each running batches of ``max_batch`` pre-decoded images,
        as the daemon's ``workers`` do: the same weights, batch and total threads as the daemon."""
        batch = self.cfg.max_batch
        deadline = time.perf_counter() + seconds

        def stream(offset: int) -> int:
            done = 0
            while time.perf_counter() < deadline:
                start = (offset * batch + done) % max(1, len(pixels) - batch)
                self.embedder.embed(pixels[start : start + batch])
                done += batch
            return done

        started = time.perf_counter()
        with ThreadPoolExecutor(streams) as pool:
            total = sum(pool.map(stream, range(streams)))
        case = f"bare model, pre-decoded, batch {batch}, {streams} parallel streams (aW)"
        return Row(case, total, time.perf_counter() - started)

    def pipeline(self, images: list[bytes], seconds: float, plan: ExecutionPlan) -> Row:
        """(bW): the daemon's plan without the daemon: ``plan.decode_threads`` threads decode,
        preprocess and thumbnail (as an ``add`` does), ``plan.workers`` threads take the decoded
        pictures in order, ``max_batch`` at a time, and run the forward passes."""
        batch, side = plan.max_batch, StorageConfig().thumbnail_side
        cursor, lock = [0], threading.Lock()

        def prepare(data: bytes) -> np.ndarray:
            image = decode(data, self.limits, self.cfg.image_size)
            make_thumbnail(image, side)
            return self.embedder.preprocess(image)

        with ThreadPoolExecutor(plan.decode_threads) as decoders, ThreadPoolExecutor(plan.workers) as workers:
            started = time.perf_counter()
            decoded = [decoders.submit(prepare, data) for data in images]

            def stream(_: int) -> int:
                done = 0
                while time.perf_counter() - started < seconds:
                    with lock:
                        start = cursor[0]
                        cursor[0] += batch
                    if start >= len(decoded):
                        break
                    pixels = np.stack([future.result() for future in decoded[start : start + batch]])
                    self.embedder.embed(pixels)
                    done += len(pixels)
                return done

            total = sum(workers.map(stream, range(plan.workers)))
            seconds_taken = time.perf_counter() - started
            for future in decoded:
                future.cancel()
        case = (
            f"bare plan: {plan.decode_threads} decode threads + {plan.workers} x batch {batch} "
            f"forward passes (bW)"
        )
        return Row(case, total, seconds_taken)

    def batched_with_decode(self, images: list[bytes], seconds: float) -> tuple[Row, Row]:
        """(b): decode + preprocess each batch's JPEGs in this thread, then its forward pass.

        Also returns the decode + preprocess share alone, as images/s of that step.
        """
        batch = self.cfg.max_batch
        decode_seconds = 0.0

        def step(start: int) -> None:
            nonlocal decode_seconds
            began = time.perf_counter()
            pixels = np.stack([self.prepare(data) for data in images[start : start + batch]])
            decode_seconds += time.perf_counter() - began
            self.embedder.embed(pixels)

        row = self._timed_batches(
            f"bare decode+preprocess (1 thread) + model, batch {batch} (b)", len(images), seconds, batch, step
        )
        decode_row = Row("bare decode+preprocess only (1 thread)", row.images, decode_seconds)
        return row, decode_row

    def one_by_one(self, images: list[bytes], seconds: float) -> Row:
        """(b1): decode + preprocess + a batch-1 forward pass per image, timed per image."""
        row = Row("bare decode+preprocess (1 thread) + model, batch 1 (b1)", 0, 0.0)
        started = time.perf_counter()
        for data in images:
            began = time.perf_counter()
            self.embedder.embed(self.prepare(data)[None])
            row.latencies.append(time.perf_counter() - began)
            row.images += 1
            if time.perf_counter() - started > seconds:
                break
        row.seconds = time.perf_counter() - started
        return row

    @staticmethod
    def _timed_batches(
        case: str, total: int, seconds: float, batch: int, step: Callable[[int], object]
    ) -> Row:
        """Call ``step(start)`` for consecutive batches until ``total`` images or ``seconds``."""
        done, started = 0, time.perf_counter()
        while done < total and time.perf_counter() - started < seconds:
            step(done)
            done = min(total, done + batch)
        return Row(case, done, time.perf_counter() - started)


# ---------------------------------------------------------------------------------------------
# The daemon over HTTP
# ---------------------------------------------------------------------------------------------


def b64(data: bytes) -> str:
    """Standard base64 text of ``data``."""
    return base64.b64encode(data).decode()


def request_bodies(route: str, appid: str, images: list[bytes], logid: int, rn: int) -> list[bytes]:
    """Serialised JSON bodies of one cell, built before its clock starts."""
    bodies = []
    for number, data in enumerate(images):
        body: dict[str, object] = {"from": "bench", "appid": appid, "logid": logid, "image": b64(data)}
        if route == "add":
            body["features"] = [{"fea_id": 1000, "fea_data": b64(f"bench-{number}".encode())}]
        else:
            body["rn"] = rn
        bodies.append(json.dumps(body).encode())
    return bodies


async def drive(url: str, bodies: list[bytes], concurrency: int, seconds: float) -> tuple[Row, Counter]:
    """Send ``bodies`` from ``concurrency`` clients until all are answered or ``seconds`` pass."""
    row = Row("", 0, 0.0)
    codes: Counter[str] = Counter()
    pending = iter(range(len(bodies)))  # shared by the clients: each takes the next body
    timeout = aiohttp.ClientTimeout(total=120)
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        started = time.perf_counter()

        async def client() -> None:
            for index in pending:
                if time.perf_counter() - started > seconds:
                    return
                began = time.perf_counter()
                try:
                    async with session.post(url, data=bodies[index]) as response:
                        answer = await response.json(content_type=None)
                except (aiohttp.ClientError, TimeoutError) as exc:
                    codes[type(exc).__name__] += 1
                    continue
                codes[str(answer["err_no"])] += 1
                if answer["err_no"] == 0:
                    row.latencies.append(time.perf_counter() - began)

        await asyncio.gather(*(client() for _ in range(concurrency)))
        row.seconds = time.perf_counter() - started
    row.images = codes["0"]
    row.errors = sum(n for code, n in codes.items() if code != "0")
    return row, codes


def server_latencies(log_path: Path, logid: int) -> list[float]:
    """The daemon's own per-request latencies (its access log) for one cell, in seconds."""
    found = []
    for line in log_path.read_text(errors="replace").splitlines():
        match = LOG_LINE.search(line)
        if match and match.group(1) == str(logid):
            found.append(float(match.group(2)) / 1000)
    return found


def daemon_config(cfg: ModelConfig) -> str:
    """The daemon's config.toml: defaults, with the model, batch and threads of the bare runs."""
    return (
        f'[model]\nname = "{cfg.name}"\nmax_batch = {cfg.max_batch}\nthreads = {cfg.threads}\n'
        f'workers = {cfg.workers}\nprecision = "{cfg.precision}"\n'
    )


@dataclass
class DaemonRun:
    """What the HTTP part measured."""

    rows: list[Row]
    model: dict
    rss_mib: float
    notes: list[str]
    #: The daemon's "precision auto -> MODE: why" log line (empty when precision was explicit).
    precision: str = ""
    #: Rate of the bare plan (bW) right before and right after each judged cell.
    brackets: dict[str, tuple[float, float]] = field(default_factory=dict)


@dataclass
class HttpLoad:
    """One running daemon and the requests to send it."""

    daemon: Daemon
    images: list[bytes]
    seconds: float
    rn: int
    notes: list[str] = field(default_factory=list)
    cells: int = 0

    def url(self, route: str) -> str:
        """Address of a retrieval route."""
        return self.daemon.url("search", f"/RTSAsService/{route}")

    def cell(self, route: str, appid: str, concurrency: int) -> Row:
        """One (route, concurrency) measurement; its requests carry a logid to find their log lines."""
        self.cells += 1
        bodies = request_bodies(route, appid, self.images, self.cells, self.rn)
        row, codes = asyncio.run(drive(self.url(route), bodies, concurrency, self.seconds))
        row.case = f"daemon {route}, concurrency {concurrency}"
        row.server_latencies = server_latencies(self.daemon.log, self.cells)
        if row.errors:
            self.notes.append(f"{row.case}: answers by err_no {dict(codes)}")
        return row

    def import_job(self, folder: Path, timeout: float) -> Row:
        """(j): the pictures written to ``folder``, imported by one job; rate from POST to done."""
        folder.mkdir()
        for number, data in enumerate(self.images):
            (folder / f"{number:06d}.jpg").write_bytes(data)
        self.daemon.rts("signup", appid="import_job")
        started = time.perf_counter()
        job = self.daemon.post("admin", "/api/jobs", {"appid": "import_job", "source": {"dir": str(folder)}})
        job_id = job["job"]["id"]
        while time.perf_counter() - started < timeout:
            job = self.daemon.get("admin", f"/api/jobs/{job_id}")["job"]
            if job["status"] not in ("queued", "running"):
                break
            time.sleep(0.05)
        row = Row("daemon import job (folder on the server)", job["done"], time.perf_counter() - started)
        row.errors = job["failed"]
        if job["status"] != "done":
            self.notes.append(
                f"{row.case}: status {job['status']} after {row.seconds:.0f}s ({job['message']})"
            )
        return row

    def warm_up(self, burst: int) -> None:
        """A few searches alone and one concurrent burst on an empty library: first passes are slow."""
        self.daemon.rts("signup", appid="warmup")
        bodies = request_bodies("search", "warmup", self.images[: max(burst, 3)], 0, 1)
        asyncio.run(drive(self.url("search"), bodies[:3], 1, 60))
        asyncio.run(drive(self.url("search"), bodies, burst, 60))


def bench_daemon(
    cfg: ModelConfig,
    images: list[bytes],
    concurrencies: list[int],
    seconds: float,
    rn: int,
    probe: Callable[[], Row] | None = None,
) -> DaemonRun:
    """(c): ``add`` (a fresh library per cell), then ``search`` at each concurrency, then an
    import job, one daemon. ``probe`` (the bare plan, bW) runs right before and right after
    every cell that has a target, while the daemon idles, so a machine whose speed drifts
    (other people's work) moves both sides of that cell's ratio alike."""
    rows: list[Row] = []
    brackets: dict[str, list[float]] = {}
    last_probe: list[float] = []  # the rate of a probe taken since the last cell, if any

    def measured(cell: Callable[[], Row], judged_cell: bool) -> Row:
        if probe is not None and judged_cell and not last_probe:
            last_probe.append(probe().rate)
        before = last_probe.pop() if last_probe else None
        row = cell()
        if probe is not None and judged_cell:
            after = probe().rate
            brackets[row.case] = [before, after]  # type: ignore[list-item]
            last_probe.append(after)
        return row

    with tempfile.TemporaryDirectory(prefix="bench-throughput-") as workdir:
        daemon = Daemon(Path(workdir), daemon_config(cfg))
        daemon.start(timeout=300)
        try:
            load = HttpLoad(daemon, images, seconds, rn)
            load.warm_up(max(concurrencies))
            sizes: dict[str, int] = {}
            for concurrency in concurrencies:
                appid = f"add_c{concurrency}"
                daemon.rts("signup", appid=appid)
                rows.append(measured(lambda a=appid, c=concurrency: load.cell("add", a, c), concurrency >= 8))
                sizes[appid] = daemon.rts("snapshot", appid=appid)["snapshot"]["index_size"]
            fullest = max(sizes, key=sizes.__getitem__)
            for concurrency in concurrencies:
                rows.append(measured(lambda c=concurrency: load.cell("search", fullest, c), concurrency >= 8))
            load.notes.append(f"search cells query library {fullest} ({sizes[fullest]} items, rn={rn})")
            folder = Path(workdir) / "import"
            rows.append(measured(lambda: load.import_job(folder, max(60.0, 4 * seconds)), True))
            model = daemon.get("admin", "/healthz")["model"]
            memory = rss_mib(daemon.proc.pid)
        finally:
            daemon.terminate()
        found = PRECISION_LINE.search(daemon.log.read_text(errors="replace"))
    run = DaemonRun(rows, model, memory, load.notes, found.group(0) if found else "")
    run.brackets = {case: (rates[0], rates[1]) for case, rates in brackets.items()}
    return run


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------


@dataclass
class Report:
    """Tables for the terminal and docs, and summary rows for run_all."""

    markdown: str
    summary: list[Summary]
    model_id: str
    #: What precision the run used and why (the "precision auto -> ..." line when auto).
    precision: str = ""


def fmt(value: float, digits: int = 1) -> str:
    """A number for a table cell; blank for NaN."""
    return "" if value != value else f"{value:,.{digits}f}"


def ratio(ours: float, bare: float) -> str:
    """``ours / bare`` as a table cell."""
    return fmt(ours / bare, 2) if bare and bare == bare and ours == ours else ""


def throughput_table(bare_rows: list[Row], daemon_rows: list[Row], bare: BareRun) -> str:
    """Every case with images/s, latency percentiles and the ratios to (a), (aW), (bW) and (b)."""
    lines = [
        "| case | images | images/s | client p50 ms | client p99 ms | server p50 ms | errors "
        "| / bare (a) | / bare (aW) | / bare (bW) | / bare (b) |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for row in [*bare_rows, *daemon_rows]:
        lines.append(
            f"| {row.case} | {row.images} | {fmt(row.rate)} | {fmt(row.p(0.5))} | {fmt(row.p(0.99))} "
            f"| {fmt(row.p(0.5, server=True))} | {row.errors} | {ratio(row.rate, bare.a.rate)} "
            f"| {ratio(row.rate, bare.aw.rate)} | {ratio(row.rate, bare.bw.rate)} "
            f"| {ratio(row.rate, bare.b.rate)} |"
        )
    return "\n".join(lines)


def target_of(row: Row) -> float | None:
    """The issue's target ratio to (bW) for a daemon row: add/search at concurrency >= 8, import jobs."""
    if row.case.startswith("daemon import"):
        return TARGETS["import"]
    match = re.fullmatch(r"daemon (add|search), concurrency (\d+)", row.case)
    return TARGETS[match.group(1)] if match and int(match.group(2)) >= 8 else None


def judged(row: Row) -> bool:
    """Whether a daemon row has a target against (bW)."""
    return target_of(row) is not None


def target_table(bare: BareRun, daemon_rows: list[Row], brackets: dict[str, tuple[float, float]]) -> str:
    """The issue's targets: add/search at concurrency >= 8 and the import job against (bW), the
    bare plan measured right before and after that cell (the pooled (bW) without brackets)."""
    lines = [
        "| daemon case | images/s | bW before / after | ratio to their mean | to pooled (bW) | target |",
        "|---|--:|--:|--:|--:|--:|",
    ]
    for row in filter(judged, daemon_rows):
        target = target_of(row)
        before, after = brackets.get(row.case, (float("nan"), float("nan")))
        around = (before + after) / 2
        share = row.rate / around if around == around else row.rate / bare.bw.rate
        verdict = "met" if share >= target else "missed"
        lines.append(
            f"| {row.case} | {fmt(row.rate)} | {fmt(before)} / {fmt(after)} | {ratio(row.rate, around)} "
            f"| {ratio(row.rate, bare.bw.rate)} | {target} ({verdict}) |"
        )
    return "\n".join(lines)


def latency_table(single: Row, search_c1: Row | None) -> str:
    """One search at concurrency 1 against one bare decode + batch-1 forward pass."""
    lines = [
        "| single image | n | p50 ms | p99 ms | mean ms |",
        "|---|--:|--:|--:|--:|",
    ]
    rows = [single] if search_c1 is None else [single, search_c1]
    for row in rows:
        mean = statistics.mean(row.latencies) * 1000 if row.latencies else float("nan")
        lines.append(
            f"| {row.case} | {len(row.latencies)} | {fmt(row.p(0.5))} | {fmt(row.p(0.99))} | {fmt(mean)} |"
        )
    if search_c1 is not None:
        lines.append(
            f"| ratio daemon / bare | | {ratio(search_c1.p(0.5), single.p(0.5))} "
            f"| {ratio(search_c1.p(0.99), single.p(0.99))} | |"
        )
    return "\n".join(lines)


def summarise(
    bare: BareRun, daemon_rows: list[Row], brackets: dict[str, tuple[float, float]] | None = None
) -> list[Summary]:
    """Daemon against bare, for the combined table of run_all; the targeted cells against the
    bare plan (bW) measured around them when ``brackets`` has them."""
    brackets = brackets or {}
    summary: list[Summary] = [
        (row.case, "images/s vs bare plan (bW) around it", row.rate, statistics.mean(brackets[row.case]))
        if row.case in brackets
        else (row.case, "images/s vs bare plan (bW)", row.rate, bare.bw.rate)
        for row in daemon_rows
        if judged(row)
    ]
    summary += [(row.case, "images/s vs bare (aW)", row.rate, bare.aw.rate) for row in daemon_rows]
    summary += [(row.case, "images/s vs bare (b)", row.rate, bare.b.rate) for row in daemon_rows]
    search_c1 = find(daemon_rows, "daemon search, concurrency 1")
    if search_c1 is not None:
        summary.append(("search, concurrency 1", "p50 ms vs bare (b1)", search_c1.p(0.5), bare.b1.p(0.5)))
        summary.append(("search, concurrency 1", "p99 ms vs bare (b1)", search_c1.p(0.99), bare.b1.p(0.99)))
    summary.append(("bare model, batch 1 vs (a)", "images/s", bare.a1.rate, bare.a.rate))
    summary.append(("bare model, (b) vs (a)", "images/s", bare.b.rate, bare.a.rate))
    return summary


def load_note(load_before: float) -> str:
    """The 1-minute load average around the run, with a warning when the machine was not idle."""
    note = f"load average (1 min) before / after: {load_before:.2f} / {os.getloadavg()[0]:.2f}"
    if load_before > 0.5:
        note += (
            " -- WARNING: other processes were running; torch's intra-op threads wait for each other "
            "at every layer, so a shared CPU can slow the forward pass several times over"
        )
    return note


def find(rows: list[Row], case: str) -> Row | None:
    """The row of a case, if it was measured."""
    return next((row for row in rows if row.case == case), None)


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """Flags of this benchmark (run_all passes its own through)."""
    defaults = ModelConfig()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=256, help="distinct images per cell (default 256)")
    parser.add_argument(
        "--concurrency",
        type=lambda text: list(dict.fromkeys(int(x) for x in text.split(",") if x)),
        default=[1, 8, 32],
        help="client concurrencies, comma-separated (default 1,8,32)",
    )
    parser.add_argument("--seconds", type=float, default=60.0, help="time cap per cell (default 60)")
    parser.add_argument("--model", default="efficientnet_lite0", help="[model] name for both sides")
    parser.add_argument("--max-batch", type=int, default=defaults.max_batch, help="[model] max_batch")
    parser.add_argument("--threads", type=int, default=defaults.threads, help="[model] threads (0: torch's)")
    parser.add_argument("--workers", type=int, default=defaults.workers, help="[model] workers (daemon only)")
    parser.add_argument(
        "--precision", default=defaults.precision, help="[model] precision for both sides (default auto)"
    )
    parser.add_argument("--rn", type=int, default=10, help="results per search request (default 10)")
    parser.add_argument("--photos", type=Path, default=PHOTO_DIR, help="folder of JPEG photos")
    parser.add_argument("--no-daemon", action="store_true", help="measure the bare model only")
    return parser


@dataclass
class BareRun:
    """The in-process measurements."""

    a: Row
    a1: Row
    decode_only: Row
    b: Row
    b1: Row
    aw: Row
    bw: Row

    @property
    def rows(self) -> list[Row]:
        """Table order."""
        return [self.a, self.aw, self.bw, self.a1, self.decode_only, self.b, self.b1]

    def pooled(self, later: BareRun) -> tuple[BareRun, list[str]]:
        """Both passes pooled (one before the daemon, one after), and notes where they disagree."""
        notes = []
        for first, second in zip(self.rows, later.rows, strict=True):
            if abs(first.rate - second.rate) > 0.15 * max(first.rate, second.rate):
                notes.append(
                    f"WARNING: {first.case}: {first.rate:.1f} images/s before the daemon cells, "
                    f"{second.rate:.1f} after (the machine's speed drifted; rates pooled)"
                )
        pooled = {
            name: Row(a.case, a.images + b.images, a.seconds + b.seconds, a.latencies + b.latencies)
            for name in ("a", "a1", "decode_only", "b", "b1", "aw", "bw")
            for a, b in [(getattr(self, name), getattr(later, name))]
        }
        return BareRun(**pooled), notes


def bench_bare(
    bare: Bare, images: list[bytes], pixels: np.ndarray, seconds: float, plan: ExecutionPlan
) -> BareRun:
    """(a), (aW), (bW), batch 1, decode alone, (b) and (b1) in this process."""
    a = bare.batched(pixels, seconds, bare.cfg.max_batch, " (a)")
    aw = bare.parallel(pixels, seconds, max(1, bare.cfg.workers))
    bw = bare.pipeline(images, seconds, plan)
    a1 = bare.batched(pixels, seconds, 1)
    b, decode_only = bare.batched_with_decode(images, seconds)
    b1 = bare.one_by_one(images, seconds)
    return BareRun(a, a1, decode_only, b, b1, aw, bw)


def run(args: argparse.Namespace) -> Report:
    """Bare model, daemon, bare model again (so a drifting machine shows), then the report."""
    cfg = ModelConfig(
        name=args.model,
        max_batch=args.max_batch,
        threads=args.threads,
        workers=args.workers,
        precision=args.precision,
    )
    # Resolve the daemon's "0 = auto" settings here, so both sides use the same batch and threads;
    # the bare model is one forward-pass stream, the daemon runs `workers` of them.
    plan = plan_execution(cfg, pick_device(cfg.device))
    cfg = dataclasses.replace(cfg, max_batch=plan.max_batch, threads=plan.threads, workers=plan.workers)
    load_before = os.getloadavg()[0]
    images, source = load_images(args.images, args.photos)
    model = Bare(cfg)
    plan = dataclasses.replace(plan, precision=model.embedder.plan.precision)
    choice = model.embedder.precision_choice
    precision = f"precision {args.precision} -> {plan.precision}" + (f": {choice.reason}" if choice else "")
    pixels = np.stack([model.prepare(data) for data in images])
    model.warm_up(pixels)
    bare = bench_bare(model, images, pixels, args.seconds, plan)
    info = model.embedder.info
    notes = [
        f"images: {source}",
        f"CPU: {cpu_description()}",
        f"model: {info.model_id} ({info.fingerprint}, dim {info.dim}, {info.device}), "
        f"plan: {plan.workers} workers x {plan.threads} torch threads, max_batch {plan.max_batch}, "
        f"{plan.decode_threads} decode threads, on {available_cores()} cores",
        f"bare model: {precision}",
    ]
    daemon_rows: list[Row] = []
    brackets: dict[str, tuple[float, float]] = {}
    if not args.no_daemon:
        probe_seconds = min(args.seconds, 15.0)
        daemon = bench_daemon(
            cfg,
            images,
            args.concurrency,
            args.seconds,
            args.rn,
            probe=lambda: model.pipeline(images, probe_seconds, plan),
        )
        daemon_rows, brackets = daemon.rows, daemon.brackets
        if daemon.model.get("fingerprint") != info.fingerprint:
            notes.append(f"WARNING: the daemon serves {daemon.model}, not the bare model's fingerprint")
        if daemon.precision:
            notes.append(f"daemon: {daemon.precision}")
        notes.append(f"daemon RSS at the end: {daemon.rss_mib:.0f} MiB")
        notes.extend(daemon.notes)
        bare, drift = bare.pooled(bench_bare(model, images, pixels, args.seconds, plan))
        notes.append("bare rows: two passes pooled, one before and one after the daemon cells")
        notes.extend(drift)
    notes.append(load_note(load_before))
    parts = [
        "### Embedding throughput: daemon vs bare model",
        throughput_table(bare.rows, daemon_rows, bare),
    ]
    if daemon_rows:
        parts += [
            "The issue's targets, against the daemon's plan run bare (bW) right before and after each cell:",
            target_table(bare, daemon_rows, brackets),
        ]
    parts += [
        "Single-request latency (search at concurrency 1 vs one decode + batch-1 forward pass):",
        latency_table(bare.b1, find(daemon_rows, "daemon search, concurrency 1")),
        "\n".join(f"- {note}" for note in notes),
    ]
    return Report(
        "\n\n".join(parts),
        summarise(bare, daemon_rows, brackets),
        f"{info.model_id}:{info.fingerprint}",
        precision,
    )


def main(argv: list[str] | None = None) -> int:
    """Parse flags, run, print the tables."""
    report = run(build_parser().parse_args(argv))
    print(report.markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

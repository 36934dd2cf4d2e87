"""The daemon with a million items, end to end over HTTP, on today's reduced index.

What a user with a 1M library sees, measured on the real daemon (``python -m same_search`` as a
subprocess, tests/daemon.py) and nothing else:

1. **load**: N descriptor-like 1280-d vectors (bench/descriptor_model.py, fitted on the
   development photos, deterministic) imported the way a user restores a library: export ZIPs
   of ``--chunk`` items each, uploaded one after the other to ``POST
   /api/libraries/{appid}/import`` (the first creates the library, reduced at once; the next ones
   are added to it). Tags: tag1 = 1 on 50% of the items, tag2 = 2 on 1% and 3 on 0.01%;
2. **needles**: ``--needles`` real photos (../shared/data/imagenet-samples) added as images;
3. **restart**: SIGTERM (the daemon saves its snapshot), start again; the time from launching
   the process to the first answered search (the index loaded from its snapshot, no rebuild:
   the log is checked) and the daemon's RSS;
4. **needle R@1**: each needle's edited copy (bench/hard_edits.py's strong edits, one per needle,
   in turn) searched by image: is the needle first? The same for exact search over the same
   vectors (the items' and the needles', the query's from the feature service);
5. **deep pages**: ``--page-queries`` stored items searched by contsign with each filter, read
   page by page (rn 50, 1,000 hits deep) and as one page of rn 1000: the pages must equal it;
   **searches**: by contsign (a stored item's vector: the index path, no forward pass) and by
   image (held-out photos: the vector path with its forward pass), unfiltered and with the
   50% / 1% / 0.01% tag filters, first on the idle daemon, then **while 8 clients add
   pictures**: p50/p99 over HTTP and recall@10 against exact numpy search over the bench's own
   copy of the vectors. A contsign query's own item is left out of both sides (the daemon is
   asked for 11 and the query dropped); by-image queries are photos none of the items comes
   from. Pictures the clients add meanwhile are not in the truth: hits on them count as misses;
6. **rebuild while serving**: ``POST /api/libraries/{appid}/rebuild``; its duration, the search
   latency during it, adds during it; afterwards every picture added in steps 5-6 is searched
   by its contsign and must be found;
7. **page cache**: searches by contsign with the daemon in a memory cgroup of its own whose limit
   is below its native vectors' file (bench/memory_cgroup.py), against the same searches
   without a limit; where no cgroup can be made, the file's pages are dropped with
   ``posix_fadvise(DONTNEED)`` instead, and the table says so.

The bench keeps its own copy of the vectors in a raw file beside the data dir and reads it a
chunk at a time (ground truth), dropping its pages from the cache afterwards so it does not
compete with the daemon's native file.

    nice .venv/bin/python bench/bench_daemon_million.py                 # 1M: about an hour on 2 cores
    .venv/bin/python bench/bench_daemon_million.py --items 20000        # a few minutes
"""

from __future__ import annotations

import argparse
import base64
import io
import itertools
import json
import os
import random
import re
import shutil
import tempfile
import threading
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import common  # first: puts the repository, tests/ and bench/ on sys.path
import hard_edits
import memory_cgroup
import numpy as np
from bench_million import VectorFile
from check_import_100k import export_meta, fitted, keys_for
from common import machine, percentile_ms, print_run_header, rss_mib
from daemon import Daemon
from descriptor_model import log
from images import jpeg
from numpy.lib import format as npy_format
from PIL import Image

from same_search.contsign import ContSign

APPID = "million"
K = 10
#: (name, tag sent with the search, share of the items carrying it).
FILTERS = (
    ("unfiltered", None, 1.0),
    ("tag 50%", (1, 0), 0.5),
    ("tag 1%", (0, 2), 0.01),
    ("tag 0.01%", (0, 3), 1e-4),
)
PLAIN = {"query_expansion": 0, "promote_same_picture": 0}
#: A search slower than this is logged with the time it ended.
SLOW_S = 0.5


def make_tags(start: int, stop: int) -> np.ndarray:
    """(n, 2) uint32 for items ``start..stop``: tag1 = 1 on every other item, tag2 = 2 on every
    100th and 3 on every 10,000th (disjoint), so each filter is one tag."""
    rows = np.arange(start, stop)
    tag1 = np.where(rows % 2 == 0, 1, 0)
    tag2 = np.where(rows % 100 == 1, 2, np.where(rows % 10_000 == 7, 3, 0))
    return np.stack([tag1, tag2], axis=1).astype(np.uint32)


def masks_for(n: int) -> list[np.ndarray | None]:
    """The items each of FILTERS allows (None: all)."""
    tags = make_tags(0, n)
    masks: list[np.ndarray | None] = [None]
    for _, wanted, _ in FILTERS[1:]:
        masks.append((tags[:, 0] == wanted[0]) if wanted[0] else (tags[:, 1] == wanted[1]))
    return masks


def tag_features(tags: tuple[int, int] | None) -> dict:
    """The search fields of a tag filter (none for None)."""
    if tags is None:
        return {}
    packed = int(tags[0]).to_bytes(4, "little") + int(tags[1]).to_bytes(4, "little")
    return {"features": [{"fea_id": 999, "fea_data": base64.b64encode(packed).decode()}], "tag_logic": 1}


# ---- loading over HTTP ---------------------------------------------------------------------------


def write_export(
    path: Path, keys: np.ndarray, vectors: np.ndarray, tags: np.ndarray, model: dict, first: int
) -> None:
    """An export ZIP of one chunk (the format of same_search.imports.export), vectors streamed."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
        archive.writestr("meta.json", json.dumps(export_meta(model, len(keys), APPID)))
        lines = io.StringIO()
        for i, key in enumerate(keys):
            tag = [int(tags[i, 0]), int(tags[i, 1])] if tags[i].any() else None
            brief = base64.b64encode(f"item {first + i}".encode()).decode()
            lines.write(
                json.dumps({"contsign": ContSign.from_key(int(key)).to_json(), "brief": brief, "tags": tag})
            )
            lines.write("\n")
        archive.writestr("items.jsonl", lines.getvalue())
        with archive.open("vectors.npy", "w", force_zip64=True) as out:
            header = {"descr": "<f4", "fortran_order": False, "shape": vectors.shape}
            npy_format.write_array_header_1_0(out, header)
            out.write(np.ascontiguousarray(vectors, dtype="<f4").tobytes())


def upload(daemon: Daemon, path: Path) -> dict:
    """POST an export ZIP to the import route; the answer comes once it is stored and indexed."""
    with path.open("rb") as body:
        request = urllib.request.Request(
            daemon.url("admin", f"/api/libraries/{APPID}/import"),
            data=body,
            headers={"Content-Type": "application/zip", "Content-Length": str(path.stat().st_size)},
        )
        with urllib.request.urlopen(request, timeout=7200) as response:
            return json.loads(response.read())


def load_library(
    daemon: Daemon, model_fit, items: int, chunk: int, seed: int, work: Path
) -> tuple[VectorFile, np.ndarray, list[float]]:
    """Import ``items`` vectors in chunks over HTTP; (the bench's copy, keys, seconds per chunk)."""
    model = daemon.get("admin", "/healthz")["model"]
    copy = VectorFile(work / "vectors.f32", model["dim"])
    copy.path.unlink(missing_ok=True)
    keys = keys_for(items, seed)
    seconds = []
    for number, vectors in enumerate(model_fit.sample_chunks(items, seed + 100, chunk)):
        start = number * chunk
        copy.append(vectors)
        export = work / "chunk.zip"
        write_export(
            export,
            keys[start : start + len(vectors)],
            vectors,
            make_tags(start, start + len(vectors)),
            model,
            start,
        )
        began = time.perf_counter()
        answer = upload(daemon, export)
        seconds.append(time.perf_counter() - began)
        assert answer["err_no"] == 0, answer
        export.unlink()
        rate = len(vectors) / seconds[-1]
        log(f"imported {start + len(vectors):,} items; this chunk {seconds[-1]:.1f}s ({rate:,.0f}/s)")
    copy.forget()
    return copy, keys, seconds


def library_stats(daemon: Daemon) -> dict:
    return daemon.get("admin", f"/api/libraries/{APPID}")["library"]


def wait_for_recall(daemon: Daemon, timeout: float) -> dict:
    """The library's stats once its own recall measurement has ended (it measures after an import)."""
    deadline = time.monotonic() + timeout
    while True:
        stats = library_stats(daemon)
        if (stats.get("recall") or {}).get("state") in ("measured", "exact") or time.monotonic() > deadline:
            return stats
        time.sleep(2)


# ---- searches ------------------------------------------------------------------------------------


def search(daemon: Daemon, body: dict) -> tuple[list[int], float]:
    """One search over HTTP: (keys of the hits in order, seconds)."""
    began = time.perf_counter()
    answer = daemon.rts("search", appid=APPID, **body)
    seconds = time.perf_counter() - began
    if seconds > SLOW_S:  # when, so that the daemon's log can say what it was doing then
        log(f"slow search: {seconds:.2f} s ({'image' if 'image' in body else 'contsign'})")
    if answer["err_no"] != 0:  # counted as a search that found nothing; the run goes on
        log(f"search answered {answer}")
        return [], seconds
    return [ContSign.from_json(hit["contsign"]).key for hit in answer["data_items"]], seconds


def recall_of(found: list[int], truth: list[int], ignored: set[int]) -> float:
    """Share of the true top-k among the first k hits that are not ``ignored``."""
    if not truth:
        return 1.0
    kept = [key for key in found if key not in ignored][: len(truth)]
    return len(set(kept) & set(truth)) / len(truth)


@dataclass
class Case:
    """One row of a search table: latencies, and what each query found against its truth."""

    name: str
    seconds: list[float] = field(default_factory=list)
    answers: list[tuple[list[int], list[int], set[int]]] = field(default_factory=list)
    ignored: set[int] = field(default_factory=set)

    def row(self) -> str:
        """The markdown row; hits on ``ignored`` keys (pictures added meanwhile) and a query's own
        item are skipped before comparing with the truth."""
        recalls = [recall_of(found, truth, own | self.ignored) for found, truth, own in self.answers]
        recall = f"{np.mean(recalls):.4f}" if recalls else "-"
        return (
            f"| {self.name} | {len(self.seconds)} | {recall} | {percentile_ms(self.seconds, 0.5):.1f} "
            f"| {percentile_ms(self.seconds, 0.99):.1f} |"
        )


@dataclass
class Queries:
    """What is searched: stored items (by contsign) and held-out photos (by image), with the truth."""

    rows: np.ndarray  # items searched by contsign
    keys: np.ndarray  # every item's key
    photos: list[bytes]  # held-out photos, searched by image
    truth_rows: list[list[list[int]]]  # [filter][query] true keys, the query's own item left out
    truth_photos: list[list[list[int]]]  # [filter][photo] true keys

    def by_contsign(self, daemon: Daemon, label: str) -> list[Case]:
        cases = []
        for number, (name, tags, _) in enumerate(FILTERS):
            case = Case(f"{label}by contsign, {name}")
            for query, row in enumerate(self.rows):
                own = int(self.keys[row])
                body = {"contsign": ContSign.from_key(own).to_json(), "rn": K + 1, **tag_features(tags)}
                found, seconds = search(daemon, body)
                case.seconds.append(seconds)
                case.answers.append((found, self.truth_rows[number][query], {own}))
            cases.append(case)
        return cases

    def by_image(self, daemon: Daemon, label: str) -> list[Case]:
        cases = []
        for number, (name, tags, _) in enumerate(FILTERS):
            case = Case(f"{label}by image (held-out photo), {name}")
            for query, photo in enumerate(self.photos):
                body = {"image": base64.b64encode(photo).decode(), "rn": K, **PLAIN, **tag_features(tags)}
                found, seconds = search(daemon, body)
                case.seconds.append(seconds)
                case.answers.append((found, self.truth_photos[number][query], set()))
            cases.append(case)
        return cases


def exact_truth(
    copy: VectorFile,
    keys: np.ndarray,
    queries: np.ndarray,
    own_rows: np.ndarray,
    masks: list[np.ndarray | None],
    extra: tuple[np.ndarray, np.ndarray] | None,
    k: int = K,
) -> list[list[list[int]]]:
    """Exact top-``k`` keys by inner product for each query and mask, one pass over the bench's
    copy of the vectors; a query's ``own_rows`` entry (-1: none) is left out. ``extra`` (keys,
    vectors) are further items no mask allows (the needles)."""
    nq = len(queries)
    best_s = [np.full((nq, k), -np.inf, np.float32) for _ in masks]
    best_k = [np.zeros((nq, k), np.int64) for _ in masks]

    def merge(number: int, scores: np.ndarray, block_keys: np.ndarray) -> None:
        """scores: (nq, m) for block_keys (m,)."""
        take = min(k, scores.shape[1])
        top = np.argpartition(-scores, take - 1, axis=1)[:, :take]
        all_s = np.concatenate([best_s[number], np.take_along_axis(scores, top, 1)], axis=1)
        all_k = np.concatenate([best_k[number], block_keys[top]], axis=1)
        order = np.argsort(-all_s, axis=1, kind="stable")[:, :k]
        best_s[number] = np.take_along_axis(all_s, order, 1)
        best_k[number] = np.take_along_axis(all_k, order, 1)

    for start, block in copy.chunks(50_000):
        scores = queries @ block.T  # (nq, m)
        inside = (own_rows >= start) & (own_rows < start + len(block))
        scores[np.flatnonzero(inside), own_rows[inside] - start] = -np.inf
        block_keys = keys[start : start + len(block)]
        for number, mask in enumerate(masks):
            merge(
                number,
                scores if mask is None else np.where(mask[start : start + len(block)], scores, -np.inf),
                block_keys,
            )
    if extra is not None:
        merge(0, queries @ extra[1].T, extra[0])
    copy.forget()
    return [
        [
            [int(key) for key, score in zip(best_k[m][q], best_s[m][q], strict=True) if score > -np.inf]
            for q in range(nq)
        ]
        for m in range(len(masks))
    ]


# ---- writers in the background ---------------------------------------------------------------------


class Adders:
    """``clients`` threads adding distinct generated pictures until stopped; keeps their keys."""

    def __init__(self, daemon: Daemon, clients: int, first_seed: int) -> None:
        self.daemon, self.clients = daemon, clients
        self.seeds = itertools.count(first_seed)
        self.keys: list[int] = []
        self.seconds: list[float] = []
        self.errors = 0
        self.stop_event = threading.Event()
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(clients)]
        self.lock = threading.Lock()

    def __enter__(self) -> Adders:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop_event.set()
        for thread in self.threads:
            thread.join()

    def _run(self) -> None:
        while not self.stop_event.is_set():
            seed = next(self.seeds)
            image = jpeg(seed)
            brief = [{"fea_id": 1000, "fea_data": base64.b64encode(f"added {seed}".encode()).decode()}]
            began = time.perf_counter()
            try:
                answer = self.daemon.rts(
                    "add", appid=APPID, image=base64.b64encode(image).decode(), features=brief
                )
            except (OSError, urllib.error.URLError):
                answer = {"err_no": -1}
            with self.lock:
                self.seconds.append(time.perf_counter() - began)
                if answer["err_no"] == 0:
                    self.keys.append(ContSign.from_json(answer["contsign"]).key)
                else:
                    self.errors += 1

    def summary(self, elapsed: float) -> str:
        return (
            f"{len(self.keys)} adds by {self.clients} clients, {len(self.keys) / elapsed:.1f}/s, "
            f"p50 {percentile_ms(self.seconds, 0.5):.0f} ms, p99 {percentile_ms(self.seconds, 0.99):.0f} ms, "
            f"{self.errors} errors"
        )


def missing_after(daemon: Daemon, keys: list[int]) -> tuple[int, int, int]:
    """Of ``keys``, how many a search by their own contsign does not find among its first 5
    hits: (not found, of those still stored (the management API's item read: a search miss,
    not a loss), of those outranked by five hits scoring as high as the item itself would)."""
    missing = stored = tied = 0
    for key in keys:
        sign = ContSign.from_key(key)
        answer = daemon.rts("search", appid=APPID, contsign=sign.to_json(), rn=5)
        hits = answer.get("data_items", [])
        if key in [ContSign.from_json(hit["contsign"]).key for hit in hits]:
            continue
        missing += 1
        path = f"/api/libraries/{APPID}/items/{sign.sign1},{sign.sign2}"
        try:
            if daemon.get("admin", path).get("err_no", 0) != 0:
                continue
        except urllib.error.HTTPError:  # the management port may answer a missing item 404
            continue
        stored += 1
        tied += len(hits) == 5 and min(hit["score"] for hit in hits) >= 0.9999
    return missing, stored, tied


def found_after(label: str, keys: list[int], missing: tuple[int, int, int]) -> tuple[str, str]:
    """A table row: how many of ``keys`` a search finds, and what the others are."""
    absent, stored, tied = missing
    value = f"**{len(keys) - absent} of {len(keys)}**"
    if absent:
        value += (
            f"; the {absent} others: {stored} still stored (a search miss, not a loss), {tied} of "
            "them outranked by 5 pictures with a score of 1.0 (identical vectors)"
        )
    return label, value


# ---- steps ---------------------------------------------------------------------------------------


def ready_after_restart(daemon: Daemon, probe_key: int, timeout: float) -> tuple[float, float, float]:
    """SIGTERM, then start and search until answered: (stop s, start-to-first-answer s, RSS MiB)."""
    began = time.perf_counter()
    assert daemon.terminate(timeout=1800) == 0
    stop_s = time.perf_counter() - began
    mark = daemon.log.stat().st_size
    began = time.perf_counter()
    daemon.start(wait=False)
    body = {"appid": APPID, "contsign": ContSign.from_key(probe_key).to_json(), "rn": 1, "from": "bench"}
    while True:
        assert daemon.proc is not None and daemon.proc.poll() is None, daemon.log.read_text()[-3000:]
        try:
            request = urllib.request.Request(
                daemon.url("search", "/RTSAsService/search"), data=json.dumps(body).encode()
            )
            with urllib.request.urlopen(request, timeout=5) as response:
                if json.loads(response.read()).get("err_no") == 0:
                    break
        except (OSError, urllib.error.URLError, ValueError):
            pass
        if time.perf_counter() - began > timeout:
            raise TimeoutError("no answered search")
        time.sleep(0.05)
    ready_s = time.perf_counter() - began
    text = daemon.log.read_text()[mark:]
    if re.search(r"rebuilding|not usable", text):
        raise AssertionError(f"the restart rebuilt instead of loading the snapshot:\n{text[-3000:]}")
    return stop_s, ready_s, rss_mib(daemon.proc.pid)


def edited(photo: bytes, number: int) -> tuple[str, bytes]:
    """The ``number``-th needle's edited copy: the strong edits in turn, seeded per needle."""
    names = list(hard_edits.STRONG_EDITS)
    name = names[number % len(names)]
    function, quality = hard_edits.STRONG_EDITS[name]
    picture = Image.open(io.BytesIO(photo)).convert("RGB")
    out = io.BytesIO()
    function(picture, random.Random(number * 1009)).convert("RGB").save(out, "JPEG", quality=quality)
    return name, out.getvalue()


@dataclass
class Needles:
    keys: np.ndarray
    vectors: np.ndarray
    queries: list[tuple[str, bytes]]
    query_vectors: np.ndarray


def add_needles(daemon: Daemon, photos: list[Path]) -> Needles:
    """Add ``photos`` as images; their vectors and their edited copies' (feature service)."""
    client = daemon.client(APPID)
    keys, vectors, queries, query_vectors = [], [], [], []
    for number, path in enumerate(photos):
        photo = path.read_bytes()
        brief = [{"fea_id": 1000, "fea_data": base64.b64encode(path.name.encode()).decode()}]
        answer = daemon.rts("add", appid=APPID, image=base64.b64encode(photo).decode(), features=brief)
        assert answer["err_no"] in (0, 101), answer  # 101: stored already (a rerun on the same data)
        keys.append(ContSign.of_image(photo).key)
        vectors.append(client.descriptor(photo))
        queries.append(edited(photo, number))
        query_vectors.append(client.descriptor(queries[-1][1]))
    return Needles(np.array(keys, np.int64), np.stack(vectors), queries, np.stack(query_vectors))


def needle_recall(
    daemon: Daemon, needles: Needles, exact_top1: list[int]
) -> list[tuple[str, float, float, int]]:
    """Per edit (and overall): (edit, daemon R@1, exact R@1, queries)."""
    per: dict[str, list[tuple[bool, bool]]] = {}
    for number, (name, image) in enumerate(needles.queries):
        found, _ = search(daemon, {"image": base64.b64encode(image).decode(), "rn": 1, **PLAIN})
        want = int(needles.keys[number])
        per.setdefault(name, []).append((bool(found) and found[0] == want, exact_top1[number] == want))
    rows = [
        (name, float(np.mean([d for d, _ in v])), float(np.mean([e for _, e in v])), len(v))
        for name, v in per.items()
    ]
    every = [pair for v in per.values() for pair in v]
    rows.append(
        (
            "all edits",
            float(np.mean([d for d, _ in every])),
            float(np.mean([e for _, e in every])),
            len(every),
        )
    )
    return rows


def during_rebuild(
    daemon: Daemon, keys: np.ndarray, clients: int, rng: np.random.Generator
) -> tuple[dict, Case, Adders, float]:
    """Start a rebuild; search by contsign (filters in turn) and add until it ends."""
    started = daemon.post("admin", f"/api/libraries/{APPID}/rebuild", {})["rebuild"]
    assert started["state"] == "running", started
    case = Case("by contsign during the rebuild (filters in turn)")
    began = time.perf_counter()
    with Adders(daemon, clients, 50_000_000) as adders:
        while True:
            for _ in range(20):
                _, tags, _ = FILTERS[len(case.seconds) % len(FILTERS)]
                body = {
                    "contsign": ContSign.from_key(int(rng.choice(keys))).to_json(),
                    "rn": K,
                    **tag_features(tags),
                }
                case.seconds.append(search(daemon, body)[1])
            state = daemon.get("admin", f"/api/libraries/{APPID}/rebuild")["rebuild"]
            if state["state"] != "running":
                break
    return state, case, adders, time.perf_counter() - began


def page_cache_cases(
    daemon: Daemon, queries: Queries, limits_gib: list[float], searches: int
) -> tuple[list[str], str]:
    """Searches by contsign (unfiltered and 1%) with the native file's cache limited; table rows."""
    assert daemon.proc is not None
    natives = sorted((daemon.data_dir / "indexes").glob("*.native.f32"))
    if not natives:  # a library small enough to be searched exactly keeps no native file
        return [], "skipped: the library keeps no native vectors file at this size"
    native = max(natives, key=lambda p: p.stat().st_size)
    rows = queries.rows[:searches]
    subset = Queries(rows, queries.keys, [], [t[: len(rows)] for t in queries.truth_rows], [])

    def measure(label: str, before: Callable[[], None] | None = None) -> list[str]:
        if before is not None:
            before()
        cases = [c for i, c in enumerate(subset.by_contsign(daemon, label)) if i in (0, 2)]
        share = memory_cgroup.cached_share(native)
        tail = f" (native file cached afterwards: {share:.0%})" if share is not None else ""
        return [c.row()[:-1] + f"{tail} |" for c in cases]

    out = measure("warm, no limit: ")
    cgroup, why = memory_cgroup.make(f"same_search-bench-{os.getpid()}")
    if cgroup is None:
        log(f"no memory cgroup ({why}): dropping the native file's pages before each run instead")
        out += measure(
            "cache dropped before the run (posix_fadvise DONTNEED, no cgroup: " + why + "): ",
            lambda: memory_cgroup.drop_cached(native),
        )
        return out, f"substitute: posix_fadvise(DONTNEED) ({why})"
    try:
        cgroup.add(daemon.proc.pid)
        for gib in limits_gib:
            cgroup.set_limit(int(gib * 2**30))
            memory_cgroup.drop_cached(native)
            out += measure(f"cgroup limit {gib:g} GiB, cold start: ")
            out += measure(f"cgroup limit {gib:g} GiB, second pass: ")
    finally:
        cgroup.set_limit(None)
        cgroup.remove(daemon.proc.pid)
    return out, why


# ---- main ----------------------------------------------------------------------------------------


def held_out_photos(paths: list[Path], count: int, exclude: set[str]) -> list[Path]:
    return [p for p in paths if p.name not in exclude][:count]


def show(title: str, rows: list[str] | list[tuple[str, str]], header: str = "") -> None:
    """Print one table as soon as its step is done (a later step failing loses nothing)."""
    if not header:
        header = f"| {title} | |\n|:---|:---|"
        rows = [f"| {name} | {value} |" for name, value in rows]  # type: ignore[misc]
    print(f"\n{header}")
    print("\n".join(rows), flush=True)  # type: ignore[arg-type]


SEARCH_HEADER = "| {} | queries | recall@10 | p50 ms | p99 ms |\n|:---|--:|--:|--:|--:|"
NEEDLE_HEADER = (
    "| near-duplicate needle, edited copy searched by image | daemon R@1 | exact R@1 | queries |\n"
    "|:---|--:|--:|--:|"
)


def load_step(daemon: Daemon, args: argparse.Namespace, model_fit, chunk: int, work: Path):
    """Steps 1: the import; prints its table; returns (copy, keys)."""
    assert daemon.proc is not None
    rss_empty = rss_mib(daemon.proc.pid)
    began = time.perf_counter()
    copy, keys, chunk_s = load_library(daemon, model_fit, args.items, chunk, args.seed, work)
    load_s = time.perf_counter() - began
    stats = wait_for_recall(daemon, timeout=1800)
    recall = stats.get("recall") or {}
    rss = rss_mib(daemon.proc.pid)
    show(
        f"{args.items:,} items imported over HTTP",
        [
            ("export ZIPs", f"{len(chunk_s)} x {chunk:,} items"),
            (
                "import to fully indexed, ZIP writing included",
                f"**{load_s:.0f} s** ({args.items / load_s:,.0f} items/s); "
                f"uploads alone {sum(chunk_s):.0f} s",
            ),
            ("seconds per chunk", ", ".join(f"{s:.0f}" for s in chunk_s)),
            ("library", f"{stats['items']:,} items, search `{stats['search']}`"),
            (
                "its own recall measurement",
                f"{recall.get('state')}: recall@10 {recall.get('recall')}, filtered "
                f"{recall.get('recall_filtered')}, ef {recall.get('ef')}, "
                f"candidates {recall.get('candidates')}",
            ),
            ("daemon RSS empty / after the import", f"{rss_empty:,.0f} / {rss:,.0f} MiB"),
        ],
    )
    return copy, keys, rss_empty


def restart_step(daemon: Daemon, args: argparse.Namespace, probe: int, rss_empty: float, dim: int) -> None:
    """Step 3: stop, start, first answered search; prints its table."""
    stop_s, ready_s, rss = ready_after_restart(daemon, probe, timeout=1800)
    raw = args.items * dim * 4 / 2**20
    show(
        "restart",
        [
            ("SIGTERM with snapshot save", f"{stop_s:.1f} s"),
            (
                "**process start to first answered search, from the snapshot (no rebuild)**",
                f"**{ready_s:.1f} s**",
            ),
            (
                f"daemon RSS: empty / after that start (native vectors, on disk: {raw:,.0f} MiB)",
                f"{rss_empty:,.0f} / {rss:,.0f} MiB: "
                f"{(rss - rss_empty) * 2**20 / args.items:,.0f} bytes/item over the empty daemon",
            ),
        ],
    )


PAGE_DEPTH = 1000
PAGE_RN = 50


def paging_step(daemon: Daemon, queries: Queries, count: int) -> None:
    """Step 5a: deep pages. ``count`` stored items searched by contsign with each filter, read
    page by page (``pn`` 0, 50, ... 950, ``rn`` 50, as a client paging through a result does)
    and as one page of ``rn`` 1000: successive pages must equal the long page (no hit repeated,
    none skipped) and scores must never rise. Run on a quiescent daemon: a write between two
    pages may rightly change the ranking."""
    rows = []
    for name, tags, _ in FILTERS:
        equal = repeated = skipped = rising = 0
        for row in queries.rows[:count]:
            body = {"contsign": ContSign.from_key(int(queries.keys[row])).to_json(), **tag_features(tags)}
            whole = _scored(daemon, {**body, "pn": 0, "rn": PAGE_DEPTH})
            paged: list[tuple[int, float]] = []
            for pn in range(0, PAGE_DEPTH, PAGE_RN):
                paged += _scored(daemon, {**body, "pn": pn, "rn": PAGE_RN})
            keys = [key for key, _ in paged]
            equal += paged == whole
            repeated += len(keys) - len(set(keys))
            skipped += len({key for key, _ in whole} - set(keys))
            rising += any(b[1] > a[1] for a, b in itertools.pairwise(paged))
        depth = min(PAGE_DEPTH, len(whole))
        counts = f"{repeated} | {skipped} | {rising}"
        rows.append(f"| {name} | {count} | {depth} | **{equal} of {count}** | {counts} |")
    show(
        "",
        rows,
        f"| deep pages (rn {PAGE_RN}, pn 0..{PAGE_DEPTH - PAGE_RN}) against one page of rn {PAGE_DEPTH}, "
        "by contsign | queries | hits deep | pages equal the long page | hits repeated | hits skipped "
        "| queries whose score rose |\n|:---|--:|--:|--:|--:|--:|--:|",
    )


def _scored(daemon: Daemon, body: dict) -> list[tuple[int, float]]:
    """One search's (key, score) pairs in order (none where it failed: logged)."""
    answer = daemon.rts("search", appid=APPID, **body)
    if answer["err_no"] != 0:
        log(f"search answered {answer}")
        return []
    return [(ContSign.from_json(hit["contsign"]).key, hit["score"]) for hit in answer["data_items"]]


def search_step(daemon: Daemon, queries: Queries, clients: int) -> set[int]:
    """Step 5: idle, then while ``clients`` add; prints the table; returns the added keys."""
    tables = queries.by_contsign(daemon, "idle: ")
    tables += queries.by_image(daemon, "idle: ")
    log(f"searches while {clients} clients add")
    began = time.perf_counter()
    with Adders(daemon, clients, 10_000_000) as load:
        time.sleep(1.0)  # let the writers get going
        loaded = queries.by_contsign(daemon, f"{clients} adding: ")
        loaded += queries.by_image(daemon, f"{clients} adding: ")
    known = set(load.keys)
    for case in loaded:
        case.ignored = known  # pictures added meanwhile are in no truth: skipped, not misses
    show("", [case.row() for case in tables + loaded], SEARCH_HEADER.format("searches (HTTP, one client)"))
    print(f"\nadds meanwhile: {load.summary(time.perf_counter() - began)}", flush=True)
    return known


def rebuild_step(daemon: Daemon, keys: np.ndarray, clients: int, rng, known: set[int]) -> None:
    """Step 6; prints its table."""
    state, case, adders, wall = during_rebuild(daemon, keys, clients, rng)
    missing = missing_after(daemon, adders.keys)
    missing_before = missing_after(daemon, sorted(known))
    show(
        "rebuild while serving (`POST /api/libraries/{appid}/rebuild`)",
        [
            ("outcome, duration", f"{state['state']} in **{state['seconds']:.0f} s**"),
            (
                "searches by contsign meanwhile (filters in turn)",
                f"{len(case.seconds)}: p50 {percentile_ms(case.seconds, 0.5):.1f} ms, "
                f"p99 {percentile_ms(case.seconds, 0.99):.1f} ms",
            ),
            ("adds meanwhile", adders.summary(wall)),
            found_after("adds found afterwards", adders.keys, missing),
            found_after("pictures added before it, found afterwards", sorted(known), missing_before),
        ],
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--chunk", type=int, default=100_000, help="items per export ZIP")
    parser.add_argument(
        "--queries", type=int, help="items searched by contsign per case (200; 60 below 100k)"
    )
    parser.add_argument("--image-queries", type=int, help="held-out photos per case (60; 20 below 100k)")
    parser.add_argument("--needles", type=int, help="photos added and searched edited (300; 48 below 100k)")
    parser.add_argument("--page-queries", type=int, default=20, help="items read 1,000 hits deep by pages")
    parser.add_argument("--clients", type=int, default=8, help="clients adding while searches are timed")
    parser.add_argument("--rebuild-clients", type=int, default=2, help="clients adding during the rebuild")
    parser.add_argument("--limits-gib", default="1,2.5", help="memory cgroup limits for the page-cache step")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--photos", type=Path, default=common.SHARED_DATA)
    parser.add_argument("--workdir", type=Path, help="parent of the temporary data dir (default: /tmp)")
    args = parser.parse_args(argv)
    small = args.items < 100_000
    n_queries = args.queries or (60 if small else 200)
    n_images = args.image_queries or (20 if small else 60)
    n_needles = args.needles or (48 if small else 300)
    chunk = min(args.chunk, args.items)

    with tempfile.TemporaryDirectory(prefix="daemon1m-", dir=args.workdir) as temp:
        work = Path(temp)
        print_run_header("bench_daemon_million.py", argv)
        model_fit, held_out = fitted(args.photos, args.seed)
        needle_paths = sorted((args.photos / "imagenet-samples").glob("*.JPEG"))[:n_needles]
        held_paths = held_out_photos(held_out, n_images, {p.name for p in needle_paths})
        daemon = Daemon(work)
        daemon.start()
        try:
            copy, keys, rss_empty = load_step(daemon, args, model_fit, chunk, work)
            log(f"adding {n_needles} needles")
            needles = add_needles(daemon, needle_paths)
            client = daemon.client(APPID)
            photos = [p.read_bytes() for p in held_paths]
            photo_vectors = np.stack([client.descriptor(p) for p in photos])
            rng = np.random.default_rng(args.seed + 7)
            rows = rng.choice(args.items, n_queries, replace=False)
            query_vectors = np.concatenate([copy.rows(rows), photo_vectors, needles.query_vectors])
            own = np.concatenate([rows, np.full(len(photos) + len(needles.queries), -1)])
            log(f"exact search for {len(query_vectors)} queries over {args.items:,} items")
            extra = (needles.keys, needles.vectors)
            truth = exact_truth(copy, keys, query_vectors, own, masks_for(args.items), extra)
            end = n_queries + len(photos)
            queries = Queries(
                rows, keys, photos, [t[:n_queries] for t in truth], [t[n_queries:end] for t in truth]
            )
            exact_top1 = [t[0] if t else -1 for t in truth[0][end:]]
            log("restarting the daemon")
            restart_step(daemon, args, int(keys[0]), rss_empty, copy.dim)
            log("needle R@1")
            show(
                "",
                [
                    f"| {n} | {d:.3f} | {e:.3f} | {c} |"
                    for n, d, e, c in needle_recall(daemon, needles, exact_top1)
                ],
                NEEDLE_HEADER,
            )
            log("deep pages")
            paging_step(daemon, queries, args.page_queries)
            log("searches on the idle daemon")
            known = search_step(daemon, queries, args.clients)
            log("rebuild while serving")
            rebuild_step(daemon, keys, args.rebuild_clients, rng, known)
            log("page cache")
            limits = [float(x) for x in args.limits_gib.split(",") if x]
            cache_rows, cache_how = page_cache_cases(daemon, queries, limits, min(n_queries, 200))
            show(
                "",
                cache_rows,
                SEARCH_HEADER.format(f"native vectors and the page cache, by contsign ({cache_how})"),
            )
            assert daemon.terminate(timeout=1800) == 0
        finally:
            daemon.stop()
            kept = work.parent / f"{work.name}-daemon.log"
            if daemon.log.exists():  # the data dir goes; its log, what a slow search coincided with, stays
                shutil.copyfile(daemon.log, kept)
                print(f"\n- the daemon's log: {kept}")
        print(f"\n- machine at the end: {machine()}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())

"""Black-box check of the million-item work: 100k descriptor-like vectors imported over HTTP into a
real daemon.

What it measures, the way the issue's own check does:

1. builds an export ZIP (``meta.json``, ``items.jsonl``, ``vectors.npy``: same_search.imports.export)
   of ``--items`` synthetic descriptors from ``bench/descriptor_model.py`` (fitted on the real photos
   of ``../shared/data``, deterministic with ``--seed``), with tags: tag1 = 1 on 50% of the items,
   tag2 = 2 on 1% of them;
2. starts the real daemon (``python -m same_search``, tests/daemon.py) on a temporary data dir;
3. uploads it with ``POST /api/libraries/{appid}/import`` and times upload-to-answer (the answer
   comes once every row is stored and indexed), then confirms the count on ``GET /api/libraries``;
4. the daemon's RSS growth per item over the empty daemon;
5. recall@10 over HTTP against exact search in numpy, unfiltered and with the 50% and 1% tag
   filters, with **held-out queries**: development photos the descriptor model was not fitted on,
   none of them in the library, searched by image (``/RTSAsService/search`` with the plain ranking,
   ``query_expansion: 0, promote_same_picture: 0``); the truth is exact search with the very vector
   the daemon computes for each photo (its feature service, fea_id 2001). A stored item searched by
   its own contsign finds itself, so such queries would get one hit in ten for free: they are
   timed (the index path without a forward pass) but not counted for recall;
6. with ``--during-rebuild``: adds (pictures) and searches over HTTP while a background rebuild of
   the library runs, their p50/p99, and that every add is found afterwards.

    .venv/bin/python bench/check_import_100k.py                 # 100k items, 300 queries per case
    .venv/bin/python bench/check_import_100k.py --items 20000   # a quicker look
"""

from __future__ import annotations

import argparse
import base64
import json
import tempfile
import time
import urllib.request
import zipfile
from pathlib import Path

import common  # first: puts the repository, tests/ and bench/ on sys.path
import numpy as np
from common import machine, percentile_ms, print_run_header, rss_mib
from daemon import Daemon
from descriptor_model import DescriptorModel, calibrate, embed_photos, log, photo_paths
from numpy.lib import format as npy_format

from same_search.contsign import ContSign

APPID = "import100k"
#: (name, tags sent with the search, tag_logic, mask over the items) per case.
HALF_TAG, RARE_TAG = 1, 2


def fitted(photos: Path, seed: int) -> tuple[DescriptorModel, list[Path]]:
    """descriptor_model's calibrated model, fitted on half of the photos under ``photos`` (as
    descriptor_model.fitted_model splits them), and the other half: photos it was not fitted on,
    in a random order (the held-out queries)."""
    paths = photo_paths(photos)
    if not paths:
        raise SystemExit(f"no development photos under {photos} (give --photos)")
    real, _ = embed_photos(paths)
    order = np.random.default_rng(seed).permutation(len(real))
    model = DescriptorModel.fit(real[order[: len(real) // 2]], seed=seed)
    calibrate(model, real[order[len(real) // 2 :]], seed=seed + 1)
    return model, [paths[i] for i in order[len(real) // 2 :]]


def keys_for(n: int, seed: int) -> np.ndarray:
    """``n`` distinct signed 64-bit contsign keys, spread over the whole range."""
    rng = np.random.default_rng(seed)
    keys = np.unique(rng.integers(-(1 << 62), 1 << 62, size=n + n // 100 + 10, dtype=np.int64))
    return rng.permutation(keys)[:n]


def tags_for(n: int) -> np.ndarray:
    """(n, 2) uint32: tag1 = 1 on every other item (50%), tag2 = 2 on every 100th (1%)."""
    tags = np.zeros((n, 2), np.uint32)
    tags[::2, 0] = HALF_TAG
    tags[::100, 1] = RARE_TAG
    return tags


def export_meta(model: dict, count: int, appid: str = APPID) -> dict:
    """meta.json of an export ZIP of ``count`` items with vectors, for the daemon's ``model``."""
    return {
        "format": "same_search-export-1",
        "appid": appid,
        "model_id": model["id"],
        "dim": model["dim"],
        "fingerprint": model["fingerprint"],
        "count": count,
        "vectors": True,
    }


def write_export(path: Path, keys: np.ndarray, vectors: np.ndarray, tags: np.ndarray, model: dict) -> None:
    """An export ZIP with vectors, streamed (the vectors are the bulk of it)."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
        archive.writestr("meta.json", json.dumps(export_meta(model, len(keys))))
        with archive.open("items.jsonl", "w", force_zip64=True) as out:
            for i, key in enumerate(keys):
                tag = [int(tags[i, 0]), int(tags[i, 1])] if tags[i].any() else None
                line = {
                    "contsign": ContSign.from_key(int(key)).to_json(),
                    "brief": base64.b64encode(f"item {i}".encode()).decode(),
                    "tags": tag,
                }
                out.write((json.dumps(line) + "\n").encode())
        with archive.open("vectors.npy", "w", force_zip64=True) as out:
            header = {"descr": "<f4", "fortran_order": False, "shape": vectors.shape}
            npy_format.write_array_header_1_0(out, header)
            for start in range(0, len(vectors), 10_000):
                out.write(np.ascontiguousarray(vectors[start : start + 10_000], dtype="<f4").tobytes())


def upload(daemon: Daemon, path: Path) -> dict:
    url = daemon.url("admin", f"/api/libraries/{APPID}/import")
    with path.open("rb") as body:
        request = urllib.request.Request(
            url,
            data=body,
            headers={"Content-Type": "application/zip", "Content-Length": str(path.stat().st_size)},
        )
        with urllib.request.urlopen(request, timeout=3600) as response:
            return json.loads(response.read())


def exact_top(vectors: np.ndarray, query: np.ndarray, allowed: np.ndarray | None, k: int) -> np.ndarray:
    scores = vectors @ query
    if allowed is not None:
        scores = np.where(allowed, scores, -np.inf)
    top = np.argpartition(-scores, k)[:k]
    return top[np.argsort(-scores[top])]


def timed_search(daemon: Daemon, body: dict, features: list | None) -> tuple[set[int], float]:
    """One search over HTTP (with the tag filter ``features`` when given): the keys it found
    and the seconds it took."""
    if features is not None:
        body = {**body, "features": features, "tag_logic": 1}
    started = time.perf_counter()
    answer = daemon.rts("search", appid=APPID, **body)
    seconds = time.perf_counter() - started
    assert answer["err_no"] == 0, answer
    return {ContSign.from_json(hit["contsign"]).key for hit in answer["data_items"]}, seconds


def held_out_case(
    daemon: Daemon,
    keys: np.ndarray,
    vectors: np.ndarray,
    queries: list[tuple[bytes, np.ndarray]],
    features: list | None,
    allowed: np.ndarray | None,
    k: int = 10,
) -> tuple[float, float, float]:
    """(recall@k, p50 ms, p99 ms) of held-out pictures searched by image over HTTP, plain ranking,
    against exact search with the daemon's own vector of each picture."""
    recalls, latencies = [], []
    for image, vector in queries:
        plain = {"query_expansion": 0, "promote_same_picture": 0}
        body = {"image": base64.b64encode(image).decode(), "rn": k, **plain}
        found, seconds = timed_search(daemon, body, features)
        latencies.append(seconds)
        truth = {int(keys[i]) for i in exact_top(vectors, vector, allowed, k)}
        recalls.append(len(found & truth) / len(truth))
    return float(np.mean(recalls)), percentile_ms(latencies, 0.5), percentile_ms(latencies, 0.99)


def stored_latency(
    daemon: Daemon, keys: np.ndarray, rows: np.ndarray, features: list | None, k: int = 10
) -> tuple[float, float]:
    """(p50 ms, p99 ms) of searches by a stored item's contsign: the index path without a
    forward pass. Not a recall measure: each query is in the library and finds itself."""
    latencies = []
    for row in rows:
        body = {"contsign": ContSign.from_key(int(keys[row])).to_json(), "rn": k}
        latencies.append(timed_search(daemon, body, features)[1])
    return percentile_ms(latencies, 0.5), percentile_ms(latencies, 0.99)


def tag_features(tag1: int, tag2: int) -> list[dict]:
    packed = int(tag1).to_bytes(4, "little") + int(tag2).to_bytes(4, "little")
    return [{"fea_id": 999, "fea_data": base64.b64encode(packed).decode()}]


def during_rebuild(daemon: Daemon, keys: np.ndarray) -> None:
    """Add pictures and search, one after the other, while a background rebuild runs."""
    from images import jpeg

    started = daemon.post("admin", f"/api/libraries/{APPID}/rebuild", {})["rebuild"]
    assert started["state"] == "running", started
    adds, searches, added = [], [], []
    seed = 10_000
    while True:
        state = daemon.get("admin", f"/api/libraries/{APPID}/rebuild")["rebuild"]
        if state["state"] != "running":
            break
        image = jpeg(seed)
        seed += 1
        began = time.perf_counter()
        brief = [{"fea_id": 1000, "fea_data": base64.b64encode(f"added {seed}".encode()).decode()}]
        answer = daemon.rts("add", appid=APPID, image=base64.b64encode(image).decode(), features=brief)
        adds.append(time.perf_counter() - began)
        assert answer["err_no"] == 0, answer
        added.append(answer["contsign"])
        query = ContSign.from_key(int(keys[seed % len(keys)])).to_json()
        began = time.perf_counter()
        found = daemon.rts("search", appid=APPID, contsign=query)
        searches.append(time.perf_counter() - began)
        assert found["err_no"] == 0, found
    assert state["state"] == "done", state
    missing = 0
    for contsign in added:
        hits = daemon.rts("search", appid=APPID, contsign=contsign, rn=1)["data_items"]
        missing += not hits or hits[0]["contsign"] != contsign
    print(
        f"\nduring a {state['seconds']:.0f} s background rebuild: {len(adds)} adds p50 "
        f"{percentile_ms(adds, 0.5):.0f} ms p99 {percentile_ms(adds, 0.99):.0f} ms; {len(searches)} "
        f"searches p50 {percentile_ms(searches, 0.5):.0f} ms p99 {percentile_ms(searches, 0.99):.0f} ms; "
        f"{len(added) - missing} of {len(added)} adds found afterwards"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument(
        "--queries", type=int, default=300, help="held-out photos searched (and stored items timed) per case"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--photos", type=Path, default=common.SHARED_DATA, help="the development photos (../shared/data)"
    )
    parser.add_argument(
        "--during-rebuild", action="store_true", help="then add and search while the library is rebuilt"
    )
    parser.add_argument("--workdir", type=Path, help="keep the data dir and ZIP here (default: a temp dir)")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="check100k-") as temp:
        work = args.workdir or Path(temp)
        work.mkdir(parents=True, exist_ok=True)
        print_run_header("check_import_100k.py", argv)
        model_fit, held_out = fitted(args.photos, args.seed)
        vectors = model_fit.sample(args.items, args.seed + 100)
        keys, tags = keys_for(args.items, args.seed), tags_for(args.items)
        daemon = Daemon(work)
        daemon.start()
        try:
            model = daemon.get("admin", "/healthz")["model"]
            assert model["dim"] == vectors.shape[1], "the descriptor model and the daemon disagree on dim"
            export = work / "export.zip"
            started = time.perf_counter()
            write_export(export, keys, vectors, tags, model)
            log(
                f"export ZIP of {args.items:,} items: {export.stat().st_size / 2**20:.0f} MiB in "
                f"{time.perf_counter() - started:.1f}s"
            )
            assert daemon.proc is not None
            empty_rss = rss_mib(daemon.proc.pid)
            started = time.perf_counter()
            answer = upload(daemon, export)
            seconds = time.perf_counter() - started
            assert answer["err_no"] == 0, answer
            items = daemon.get("admin", f"/api/libraries/{APPID}")["library"]["items"]
            assert items == args.items, f"{items} items indexed, {args.items} imported"
            rss = rss_mib(daemon.proc.pid)
            log(f"upload to fully indexed: {seconds:.1f}s ({args.items / seconds:.0f} items/s)")
            log(
                f"RSS: empty daemon {empty_rss:.0f} MiB, with the library {rss:.0f} MiB, "
                f"{(rss - empty_rss) * 1024 / args.items:.2f} KiB per item"
            )
            client = daemon.client(APPID)
            held = [(path.read_bytes(), None) for path in held_out[: args.queries]]
            held = [(image, client.descriptor(image)) for image, _ in held]
            stored = np.random.default_rng(args.seed + 7).choice(args.items, args.queries, replace=False)
            half = tags[:, 0] == HALF_TAG
            rare = tags[:, 1] == RARE_TAG
            cases = [
                ("unfiltered", None, None, stored),
                ("tag filter, 50%", tag_features(HALF_TAG, 0), half, stored[half[stored]]),
                ("tag filter, 1%", tag_features(0, RARE_TAG), rare, np.flatnonzero(rare)[: args.queries]),
            ]
            print(
                "\n| case | held-out queries | recall@10 | by image: p50 / p99 ms (forward pass included) "
                "| by contsign of a stored item: p50 / p99 ms (not counted for recall) |"
            )
            print("|---|--:|--:|--:|--:|")
            for name, features, allowed, rows in cases:
                recall, p50, p99 = held_out_case(daemon, keys, vectors, held, features, allowed)
                stored_p50, stored_p99 = stored_latency(daemon, keys, rows, features)
                print(
                    f"| {name} | {len(held)} | {recall:.4f} | {p50:.1f} / {p99:.1f} | "
                    f"{stored_p50:.1f} / {stored_p99:.1f} ({len(rows)}) |"
                )
            if args.during_rebuild:
                during_rebuild(daemon, keys)
            print(
                f"\nupload to fully indexed: {seconds:.1f} s; RSS growth "
                f"{(rss - empty_rss) * 1024 / args.items:.2f} KiB/item; {machine()}"
            )
            daemon.terminate()
        finally:
            daemon.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

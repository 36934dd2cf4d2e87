"""Export imports are checked whole before anything is stored, and stored all or nothing."""

from __future__ import annotations

import base64
import io
import json
import resource
import urllib.request
import zipfile
from collections.abc import Callable

import numpy as np
import pytest
from conftest import b64, brief
from daemon import Daemon
from images import jpeg

from same_search.backends.base import NewItem
from same_search.contsign import ContSign
from same_search.errors import ApiError
from same_search.services import SERVICES

R = "/RTSAsService"
Files = dict[str, bytes]


def unzip(data: bytes) -> Files:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def rezip(files: Files) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def lines_of(files: Files) -> list[dict]:
    return [json.loads(line) for line in files["items.jsonl"].decode().splitlines()]


def with_lines(files: Files, lines: list) -> Files:
    text = "".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines)
    return {**files, "items.jsonl": text.encode()}


def vectors_of(files: Files) -> np.ndarray:
    return np.load(io.BytesIO(files["vectors.npy"]))


def with_vectors(files: Files, matrix: np.ndarray) -> Files:
    buffer = io.BytesIO()
    np.save(buffer, matrix)
    return {**files, "vectors.npy": buffer.getvalue()}


def set_vector(row: int, change: Callable[[np.ndarray], np.ndarray]) -> Callable[[Files], Files]:
    def tamper(files: Files) -> Files:
        matrix = vectors_of(files).copy()
        matrix[row] = change(matrix[row])
        return with_vectors(files, matrix)

    return tamper


def set_line(row: int, **fields) -> Callable[[Files], Files]:
    def tamper(files: Files) -> Files:
        lines = lines_of(files)
        lines[row] = {**lines[row], **fields}
        return with_lines(files, lines)

    return tamper


def nan(v: np.ndarray) -> np.ndarray:
    v[3] = np.nan
    return v


def columns_1279(files: Files) -> Files:
    return with_vectors(files, vectors_of(files)[:, :1279].copy())


def duplicate_line(files: Files) -> Files:
    lines = lines_of(files)
    lines[2]["contsign"] = lines[0]["contsign"]
    return with_lines(files, lines)


def drop_line(files: Files) -> Files:
    return with_lines(files, lines_of(files)[:2])


def meta(**fields) -> Callable[[Files], Files]:
    def tamper(files: Files) -> Files:
        return {**files, "meta.json": json.dumps({**json.loads(files["meta.json"]), **fields}).encode()}

    return tamper


def padded_items(files: Files) -> Files:
    return {**files, "items.jsonl": files["items.jsonl"] + b"\n" * 200_000}


TAMPERED = {
    "1279 columns": (columns_1279, "vectors.npy has shape (3, 1279), expected (3, 1280)"),
    "NaN row": (set_vector(1, nan), "vectors.npy row 2 (items.jsonl line 2): vector holds NaN"),
    "1e30 row": (
        set_vector(0, lambda v: v * 1e30),
        "vectors.npy row 1 (items.jsonl line 1): vector norm is 1e+30",
    ),
    "non-unit row": (set_vector(2, lambda v: v * 1.01), "row 3 (items.jsonl line 3): vector norm is 1.01"),
    "zero row": (set_vector(2, lambda v: v * 0), "vector norm is 0"),
    "float64 vectors": (
        lambda f: with_vectors(f, vectors_of(f).astype(np.float64)),
        "vectors.npy holds float64",
    ),
    "tag above uint32": (set_line(1, tags=[1, 2**32]), "items.jsonl line 2: tags must be two integers"),
    "negative tag": (set_line(0, tags=[-1, 0]), "items.jsonl line 1: tags must be two integers"),
    "float tags": (set_line(0, tags=[1.5, 2]), "items.jsonl line 1: tags must be two integers"),
    "string tags": (set_line(0, tags=["1", "2"]), "tags must be two integers"),
    "three tags": (set_line(0, tags=[1, 2, 3]), "tags must be two integers"),
    "5 MB brief": (set_line(0, brief=b64(np.random.default_rng(0).bytes(5_000_000))), "items.jsonl declares"),
    "brief over the limit": (set_line(1, brief=b64(b"x" * 4100)), "line 2: brief is 4100 bytes, more than"),
    "brief not base64": (set_line(1, brief="not base64!"), "line 2: brief is not valid base64"),
    "contsign negative": (set_line(0, contsign={"sign1": -1, "sign2": 0}), "line 1: contsign.sign1 must be"),
    "contsign above uint32": (set_line(2, contsign={"sign1": 1, "sign2": 2**32}), "line 3: contsign.sign2"),
    "contsign a string": (set_line(0, contsign="1,2"), "line 1: contsign must be an object"),
    "duplicate contsign": (duplicate_line, "items.jsonl lines 1 and 3 hold the same contsign"),
    "fewer lines than rows": (drop_line, "items.jsonl has 2 lines, meta.json count says 3"),
    "unknown field": (set_line(0, vector=[1]), "line 1 has unknown fields"),
    "line not JSON": (lambda f: with_lines(f, ["{oops", *lines_of(f)[1:]]), "line 1 is not valid JSON"),
    "count says more": (meta(count=4), "vectors.npy declares"),
    "count not an int": (meta(count="3"), "meta.json count must be a non-negative integer"),
    "other dim": (meta(dim=1279), "meta.json dim is 1279"),
    "huge items.jsonl declared": (padded_items, "items.jsonl declares"),
    "meta not JSON": (lambda f: {**f, "meta.json": b"{"}, "meta.json is not valid JSON"),
    "no items.jsonl": (
        lambda f: {k: v for k, v in f.items() if k != "items.jsonl"},
        "items.jsonl are required",
    ),
}


async def make_export(client, api) -> bytes:
    await api(f"{R}/signup", appid="lib")
    for seed in range(3):
        tags = [{"fea_id": 999, "fea_data": b64(bytes([seed, 0, 0, 0, 9, 0, 0, 0]))}]
        await api(f"{R}/add", appid="lib", image=b64(jpeg(seed)), features=[brief(f"b{seed}"), *tags])
    return await (await client.get("/api/libraries/lib/export?vectors=1")).read()


async def appids(client) -> list[str]:
    return [lib["appid"] for lib in (await (await client.get("/api/libraries")).json())["libraries"]]


@pytest.mark.parametrize("case", list(TAMPERED))
async def test_tampered_export_is_refused_and_stores_nothing(client, api, case):
    export = await make_export(client, api)
    tamper, text = TAMPERED[case]
    answer = await (await client.post("/api/libraries/copy/import", data=rezip(tamper(unzip(export))))).json()
    assert answer["err_no"] == 1 and text in answer["err_msg"], answer
    assert "nothing was stored" in answer["err_msg"]
    assert await appids(client) == ["lib"]  # the library the import would have created is not there
    # Into an existing library: its rows stay as they were.
    await api(f"{R}/signup", appid="other")
    again = await (await client.post("/api/libraries/other/import", data=rezip(tamper(unzip(export))))).json()
    assert again["err_no"] == 1
    assert (await api(f"{R}/snapshot", appid="other"))["snapshot"]["index_size"] == 0
    # The untouched export still imports.
    fine = await (await client.post("/api/libraries/copy/import", data=export)).json()
    assert (fine["err_no"], fine["imported"]) == (0, 3)


async def test_not_a_zip_and_a_zip_bomb_are_refused_before_reading(client, api):
    await make_export(client, api)
    answer = await (await client.post("/api/libraries/copy/import", data=b"PK\x03\x04 not really")).json()
    assert answer["err_no"] == 1 and "not a ZIP file" in answer["err_msg"]
    # 400 MiB of items.jsonl (a ~0.4 MB upload): refused from the ZIP directory, never read.
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("meta.json", json.dumps({"format": "same_search-export-1", "count": 3}))
        with archive.open("items.jsonl", "w", force_zip64=True) as entry:
            block = b" " * (1 << 20)
            for _ in range(400):
                entry.write(block)
        archive.writestr("vectors.npy", b"")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    answer = await (await client.post("/api/libraries/copy/import", data=buffer.getvalue())).json()
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert answer["err_no"] == 1 and "items.jsonl expands from" in answer["err_msg"], answer
    assert grown_mb < 100
    # A directory of a million entries is refused before Python parses it.
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for number in range(20_000):
            archive.writestr(f"{number}", b"")
    answer = await (await client.post("/api/libraries/copy/import", data=buffer.getvalue())).json()
    assert answer["err_no"] == 1 and "the ZIP lists 20000 entries" in answer["err_msg"], answer
    assert await appids(client) == ["lib"]


async def test_valid_import_into_an_existing_library_counts_duplicates(client, api):
    export = await make_export(client, api)
    await api(f"{R}/signup", appid="copy")
    await api(f"{R}/add", appid="copy", image=b64(jpeg(1)), features=[brief("mine")])
    answer = await (await client.post("/api/libraries/copy/import", data=export)).json()
    assert (answer["err_no"], answer["imported"], answer["duplicates"]) == (0, 2, 1)
    assert answer["library"]["items"] == 3
    key = ContSign.of_image(jpeg(1))
    item = (await (await client.get(f"/api/libraries/copy/items/{key.sign1},{key.sign2}")).json())["item"]
    assert item["brief_text"] == "mine"  # a duplicate is left as it was
    tagged = await api(
        f"{R}/search",
        appid="copy",
        image=b64(jpeg(2)),
        features=[{"fea_id": 999, "fea_data": b64(bytes([2, 0, 0, 0, 0, 0, 0, 0]))}],
    )
    assert [base64.b64decode(i["features"][0]["fea_data"]) for i in tagged["data_items"]] == [b"b2"]


async def test_store_layer_refuses_rows_that_could_not_be_loaded(client, api):
    await api(f"{R}/signup", appid="lib")
    services = client.server.app[SERVICES]
    lib = await services.libraries.get("lib")
    good = np.ones(lib.row.dim, np.float32) / np.sqrt(lib.row.dim)
    for vector in (good[:-1], good * np.nan, good * 2):
        with pytest.raises(ApiError) as refused:
            await services.libraries.writes.store(lib, NewItem(ContSign(1, 2).key, b"", None, vector))
        assert refused.value.err_no == 11
    with pytest.raises(ApiError, match="tags must be two integers"):
        await services.libraries.writes.store(lib, NewItem(ContSign(1, 2).key, b"", (1, 2**32), good))
    assert (await api(f"{R}/snapshot", appid="lib"))["snapshot"]["index_size"] == 0


def http(d: Daemon, method: str, path: str, data: bytes | None = None) -> bytes:
    headers = {"Content-Type": "application/zip"} if data is not None else {}  # the browser guard wants it
    request = urllib.request.Request(d.url("admin", path), data=data, method=method, headers=headers)
    with urllib.request.urlopen(request, timeout=120) as response:
        return response.read()


@pytest.mark.heavy
def test_tampered_import_refused_then_valid_import_survives_restarts(tmp_path):
    d = Daemon(tmp_path)
    d.start()
    try:
        d.rts("signup", appid="lib")
        for seed in range(3):
            assert (
                d.rts("add", appid="lib", image=b64(jpeg(seed)), features=[brief(f"b{seed}")])["err_no"] == 0
            )
        export = http(d, "GET", "/api/libraries/lib/export?vectors=1")
        tampered = rezip(columns_1279(unzip(export)))
        refused = json.loads(http(d, "POST", "/api/libraries/copy/import", tampered))
        assert refused["err_no"] == 1 and "vectors.npy" in refused["err_msg"]
        assert [lib["appid"] for lib in d.get("admin", "/api/libraries")["libraries"]] == ["lib"]
        d.kill()
        d.start()  # the refused import left nothing that could stop a start
        assert d.get("admin", "/healthz")["status"] == "ok"
        answer = json.loads(http(d, "POST", "/api/libraries/copy/import", export))
        assert (answer["err_no"], answer["imported"]) == (0, 3)
        expected = d.rts("search", appid="lib", image=b64(jpeg(1)))["data_items"]
        d.kill()  # no index snapshot: the start replays the imported rows from the database
        d.start()
        found = d.rts("search", appid="copy", image=b64(jpeg(1)))["data_items"]
        assert [(i["contsign"], i["features"]) for i in found] == [
            (i["contsign"], i["features"]) for i in expected
        ]
        assert d.terminate() == 0
        d.start()  # and from the saved snapshot
        assert d.rts("snapshot", appid="copy")["snapshot"]["index_size"] == 3
    finally:
        d.stop()


async def test_import_failing_midway_rolls_everything_back(aiohttp_client, config, embedder, monkeypatch):
    """Batches of one item: the capacity is hit at the third, after two were inserted in the
    transaction; neither they nor the library the import created may remain."""
    from dataclasses import replace

    from same_search.app import create_app
    from same_search.imports import export_read as export_module

    limited = replace(config, limits=replace(config.limits, library_capacity=3))
    client = await aiohttp_client(create_app(limited, embedder))

    async def api(route: str, **body):
        return await (await client.post(route, json={"from": "pytest", **body})).json()

    export = await make_export(client, api)
    await api(f"{R}/signup", appid="other")
    await api(f"{R}/add", appid="other", image=b64(jpeg(7)), features=[brief("seven")])
    monkeypatch.setattr(export_module, "BATCH", 1)
    answer = await (await client.post("/api/libraries/other/import", data=export)).json()
    assert answer["err_no"] == 11 and "capacity of 3" in answer["err_msg"], answer
    assert (await api(f"{R}/snapshot", appid="other"))["snapshot"]["index_size"] == 1
    listed = (await (await client.get("/api/libraries/other/items")).json())["items"]
    assert [item["brief_text"] for item in listed] == ["seven"]
    fits = await (await client.post("/api/libraries/copy/import", data=export)).json()
    assert (fits["err_no"], fits["imported"]) == (0, 3)
    assert (await api(f"{R}/snapshot", appid="copy"))["snapshot"]["index_size"] == 3

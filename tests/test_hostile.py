"""Hostile input against a real daemon process: odd images, junk JSON, and a random storm.

Invariant everywhere: HTTP 200 with a JSON envelope carrying a known err_no, the daemon keeps
serving, and what was stored before is intact afterwards.
"""

from __future__ import annotations

import http.client
import io
import json
import struct
import zlib

import numpy as np
import pytest
from conftest import b64, brief
from daemon import Daemon
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from images import encode, jpeg, picture
from PIL import Image

from same_search.errors import ErrNo

KNOWN = {int(e) for e in ErrNo}
ROUTES = [f"/RTSAsService/{r}" for r in ("signup", "add", "update", "search", "remove", "snapshot")]
FEATURE = "/GeneralClassifyService/classify"


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    d = Daemon(tmp_path_factory.mktemp("hostile"))
    d.start()
    d.rts("signup", appid="keep")
    for seed in range(3):
        assert d.rts("add", appid="keep", image=b64(jpeg(seed)), features=[brief(f"k{seed}")])["err_no"] == 0
    d.rts("signup", appid="storm")
    yield d
    d.stop()


def raw_post(daemon: Daemon, service: str, path: str, body: bytes) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", daemon.ports[service], timeout=60)
    try:
        conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def png_bomb() -> bytes:
    def chunk(kind: bytes, payload: bytes) -> bytes:
        return (
            struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
        )

    ihdr = struct.pack(">IIBBBBB", 20000, 20000, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 20001 * 64))
        + chunk(b"IEND", b"")
    )


def hostile_images() -> dict[str, tuple[bytes, set[str]]]:
    """name -> (bytes, acceptable outcomes: "ok" or a 2162xx sub-code)."""
    exif = Image.Exif()
    exif[0x0112] = 8
    palette = picture(7, (96, 96)).convert("P")
    gif = io.BytesIO()
    frames = [picture(8, (96, 96)), picture(9, (96, 96))]
    frames[0].save(gif, "GIF", save_all=True, append_images=frames[1:])
    grey16 = Image.fromarray(np.arange(96 * 96, dtype=np.uint16).reshape(96, 96) * 7)
    return {
        "truncated jpeg": (jpeg(1)[:1000], {"216201"}),
        "zero bytes": (b"", {"216200"}),
        "text with a jpeg header": (b"\xff\xd8\xff\xe0 hello this is text", {"216201"}),
        "1x1": (encode(Image.new("RGB", (1, 1))), {"216202"}),
        "20000x20000 png bomb": (png_bomb(), {"216202"}),
        "cmyk jpeg": (encode(picture(2).convert("CMYK")), {"ok"}),
        "16-bit png": (encode(grey16, "PNG"), {"ok"}),
        "palette png with transparency": (encode(palette, "PNG", transparency=3), {"ok"}),
        "animated gif": (gif.getvalue(), {"ok"}),
        "exif-rotated jpeg": (encode(picture(3), exif=exif.tobytes()), {"ok"}),
        "webp": (encode(picture(4), "WEBP"), {"ok"}),
        "bmp": (encode(picture(5), "BMP"), {"ok"}),
        "tiff": (encode(picture(6), "TIFF"), {"ok"}),
        "heic bytes": (b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(200), {"216201"}),
    }


@pytest.mark.parametrize("name", sorted(hostile_images()))
def test_hostile_images(daemon, name):
    data, outcomes = hostile_images()[name]
    body = daemon.rts("search", appid="keep", image=b64(data))
    outcome = "ok" if body["err_no"] == 0 else body["err_msg"].split(":")[0]
    assert body["err_no"] in (0, 100) and outcome in outcomes, (name, body)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"pn": "x"}, "pn"),
        ({"features": {"fea_id": 999}}, "features"),
        ({"features": [{"fea_id": "999", "fea_data": "AAAAAAAAAAA="}]}, "fea_id"),
        ({"features": [{"fea_id": 999, "fea_data": 12}]}, "fea_data"),
        ({"contsigns": [{"sign1": 0, "sign2": 0}] * 100000}, "contsigns"),
        ({"appid": ["nested", {"junk": []}]}, "appid"),
        ({"appid": "ユニコード", "image": None}, "image or contsign"),
        ({"appid": "a,b"}, "comma"),
        ({"appid": "a" * 10000}, "appid"),
    ],
)
def test_hostile_json_names_the_field(daemon, body, field):
    request = {"from": "t", "appid": "keep", "image": b64(jpeg(0)), **body}
    request = {k: v for k, v in request.items() if v is not None}
    route = "/RTSAsService/remove" if "contsigns" in body else "/RTSAsService/search"
    status, answer = raw_post(daemon, "search", route, json.dumps(request).encode())
    assert (
        status == 200
        and answer["err_no"] in (1, 103)
        and (field in answer["err_msg"] or answer["err_no"] == 103)
    )


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
field_names = st.sampled_from(
    [
        "from",
        "appid",
        "sub_lib",
        "logid",
        "format",
        "image",
        "features",
        "contsign",
        "contsigns",
        "pn",
        "rn",
        "tag_logic",
        "data",
        "token",
        "fea_id",
        "fea_data",
        "sign1",
        "sign2",
    ]
)


def valid_request(route: str) -> dict:
    return {
        "from": "t",
        "appid": "storm",
        "image": b64(jpeg(99, (64, 48))),
        "features": [brief("s")],
        "contsign": {"sign1": 1, "sign2": 2},
        "contsigns": [{"sign1": 3, "sign2": 4}],
        "pn": 0,
        "rn": 5,
    }


def test_random_storm_keeps_the_envelope_and_the_data(daemon):
    """A storm of random requests on a library of its own, with a protected library beside it.

    Self-contained (the storm and the check in one test, on libraries no other test touches), so
    it holds whichever worker runs it and in whatever order: every answer is HTTP 200 with a known
    err_no, the storm really reached the write paths (some of its adds and removes succeeded), and
    the protected library is exactly as it was stored.
    """
    protected, storm_lib = "kept-through-storm", "storm"
    assert daemon.rts("signup", appid=protected)["err_no"] == 0
    for seed in range(3):
        answer = daemon.rts("add", appid=protected, image=b64(jpeg(seed)), features=[brief(f"p{seed}")])
        assert answer["err_no"] == 0
    before = library_contents(daemon, protected)
    answered: dict[tuple[str, int], int] = {}

    @settings(max_examples=1200, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(
        route=st.sampled_from([*ROUTES, FEATURE]),
        mutations=st.dictionaries(field_names, json_values, max_size=5),
        drop=st.lists(field_names, max_size=3),
        junk=st.one_of(st.none(), st.binary(max_size=64)),
    )
    def storm(route, mutations, drop, junk):
        if junk is not None:
            body = junk
        else:
            request = {**valid_request(route), **mutations}
            for name in drop:
                request.pop(name, None)
            if request.get("appid") in ("keep", protected):
                request["appid"] = storm_lib
            body = json.dumps(request).encode()
        service = "feature" if route == FEATURE else "search"
        status, answer = raw_post(daemon, service, route, body)
        assert status == 200
        assert answer["err_no"] in KNOWN and isinstance(answer["err_msg"], str)
        outcome = (route.rsplit("/", 1)[1], answer["err_no"])
        answered[outcome] = answered.get(outcome, 0) + 1

    storm()
    assert sum(answered.values()) >= 600, answered  # hypothesis ran the storm
    assert answered.get(("add", 0), 0) > 0 and answered.get(("remove", 0), 0) > 0, answered
    assert library_contents(daemon, protected) == before
    assert daemon.rts("snapshot", appid=protected)["snapshot"]["index_size"] == 3
    assert daemon.get("admin", "/healthz")["err_no"] == 0


def library_contents(daemon: Daemon, appid: str) -> list[tuple[tuple[int, int], str]]:
    """Every item of ``appid`` (contsign, brief), read back through search, in a fixed order."""
    body = daemon.rts("search", appid=appid, image=b64(jpeg(0)), rn=100, query_expansion=0)
    assert body["err_no"] == 0, body
    items = [
        ((i["contsign"]["sign1"], i["contsign"]["sign2"]), i["features"][0]["fea_data"])
        for i in body["data_items"]
    ]
    return sorted(items)

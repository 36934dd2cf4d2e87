"""Region search and add (extension): a box on the picture as the viewer sees it.

A two-panel picture: picture 1 on the left, picture 2 on the right. A box on either panel finds
that panel's picture first, in pixels or fractions, after EXIF rotation, and on a large JPEG that
is decoded at a reduced scale.
"""

from __future__ import annotations

import base64
import io

import pytest
from conftest import b64, brief
from images import encode, jpeg, picture
from PIL import Image

from same_search.contsign import ContSign

R = "/RTSAsService"
PANEL = (320, 240)


def two_panels(scale: int = 1) -> Image.Image:
    """Picture 1 left, picture 2 right, each ``PANEL * scale``."""
    w, h = PANEL[0] * scale, PANEL[1] * scale
    canvas = Image.new("RGB", (2 * w, h))
    canvas.paste(picture(1).resize((w, h)), (0, 0))
    canvas.paste(picture(2).resize((w, h)), (w, 0))
    return canvas


def rotated_with_exif(image: Image.Image) -> bytes:
    """Pixels stored a quarter turn off, with EXIF orientation 6 saying how to show them upright."""
    stored = image.transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    stored.save(buffer, format="JPEG", quality=90, exif=exif.tobytes())
    return buffer.getvalue()


async def library(api) -> None:
    assert (await api(f"{R}/signup", appid="lib"))["err_no"] == 0
    for seed in range(1, 7):
        answer = await api(f"{R}/add", appid="lib", image=b64(jpeg(seed)), features=[brief(f"p{seed}")])
        assert answer["err_no"] == 0


def brief_of(item: dict) -> str:
    return base64.b64decode(item["features"][0]["fea_data"]).decode()


async def best(api, image: bytes, **extra) -> tuple[str, float]:
    answer = await api(f"{R}/search", appid="lib", image=b64(image), rn=1, **extra)
    assert answer["err_no"] == 0, answer
    item = answer["data_items"][0]
    return brief_of(item), item["score"]


@pytest.mark.parametrize(
    ("region", "expected"),
    [
        ({"x": 0, "y": 0, "w": 320, "h": 240}, "p1"),
        ({"x": 320, "y": 0, "w": 320, "h": 240}, "p2"),
        ({"x": 0, "y": 0, "w": 0.5, "h": 1, "unit": "fraction"}, "p1"),
        ({"x": 0.5, "y": 0, "w": 0.5, "h": 1.0, "unit": "fraction"}, "p2"),
        ({"x": 340, "y": 20, "w": 280, "h": 200}, "p2"),
    ],
)
async def test_a_box_finds_its_panel(api, region, expected):
    await library(api)
    found, score = await best(api, encode(two_panels()), region=region)
    assert found == expected and score > 0.9


async def test_boxes_are_on_the_upright_picture_after_exif_rotation(api):
    await library(api)
    data = rotated_with_exif(two_panels())
    assert Image.open(io.BytesIO(data)).size == (240, 640)  # as stored: portrait
    assert (await best(api, data, region={"x": 320, "y": 0, "w": 320, "h": 240}))[0] == "p2"
    assert (await best(api, data, region={"x": 0, "y": 0, "w": 0.5, "h": 1, "unit": "fraction"}))[0] == "p1"


async def test_a_box_on_a_large_jpeg_decoded_at_reduced_scale(api):
    await library(api)
    data = encode(two_panels(scale=8))  # 5120x1920: the decoder drafts it down
    found, score = await best(api, data, region={"x": 2560, "y": 0, "w": 2560, "h": 1920})
    assert found == "p2" and score > 0.9
    found, _ = await best(api, data, region={"x": 0, "y": 0, "w": 0.5, "h": 1, "unit": "fraction"})
    assert found == "p1"


async def test_add_with_a_region_stores_that_part(api):
    await library(api)
    panels = encode(two_panels())
    answer = await api(
        f"{R}/add",
        appid="lib",
        image=b64(panels),
        features=[brief("right panel")],
        region={"x": 0.5, "y": 0, "w": 0.5, "h": 1, "unit": "fraction"},
    )
    assert answer["err_no"] == 0 and answer["contsign"] == ContSign.of_image(panels).to_json()
    found = await api(f"{R}/search", appid="lib", image=b64(jpeg(2)), rn=2)
    assert [brief_of(item) for item in found["data_items"]] == ["p2", "right panel"]
    assert found["data_items"][1]["score"] > 0.9


@pytest.mark.parametrize(
    ("region", "problem"),
    [
        ({"x": 600, "y": 0, "w": 100, "h": 100}, "outside the picture"),
        ({"x": 0, "y": 200, "w": 100, "h": 100}, "outside the picture"),
        ({"x": -1, "y": 0, "w": 100, "h": 100}, "outside the picture"),
        ({"x": 0.6, "y": 0, "w": 0.5, "h": 1, "unit": "fraction"}, "outside the picture"),
        ({"x": 0, "y": 0, "w": 0, "h": 100}, "empty"),
        ({"x": 0, "y": 0, "w": 100, "h": -5}, "empty"),
        ({"x": 0, "y": 0, "w": 20, "h": 100}, "at least 32 px"),
        ({"x": 0, "y": 0, "w": 0.02, "h": 1, "unit": "fraction"}, "at least 32 px"),
        ({"x": 0, "y": 0, "w": 100}, "region.h"),
        ({"x": "0", "y": 0, "w": 100, "h": 100}, "region.x"),
        ({"x": 0, "y": 0, "w": 100, "h": 100, "unit": "cm"}, "region.unit"),
        ({"x": 0, "y": 0, "w": 100, "h": 100, "left": 3}, "unknown keys"),
        ([0, 0, 100, 100], "region must be an object"),
    ],
)
async def test_bad_boxes_are_1_naming_the_problem_and_store_nothing(api, region, problem):
    await library(api)
    panels = b64(encode(two_panels()))
    answer = await api(f"{R}/search", appid="lib", image=panels, region=region)
    assert answer["err_no"] == 1 and problem in answer["err_msg"] and "region" in answer["err_msg"], answer
    answer = await api(f"{R}/add", appid="lib", image=panels, features=[brief("x")], region=region)
    assert answer["err_no"] == 1 and problem in answer["err_msg"], answer
    assert (await api(f"{R}/snapshot", appid="lib"))["snapshot"]["index_size"] == 6


async def test_a_region_without_an_image_is_1(api):
    await library(api)
    answer = await api(
        f"{R}/search",
        appid="lib",
        contsign=ContSign.of_image(jpeg(1)).to_json(),
        region={"x": 0, "y": 0, "w": 40, "h": 40},
    )
    assert answer["err_no"] == 1 and "region" in answer["err_msg"]


async def test_console_search_takes_a_region_in_the_query(client, api):
    await library(api)
    panels = encode(two_panels())
    answer = await (
        await client.post("/api/libraries/lib/search?rn=1&region=0.5,0,0.5,1&unit=fraction", data=panels)
    ).json()
    assert answer["err_no"] == 0 and answer["results"][0]["brief_text"] == "p2"
    answer = await (
        await client.post("/api/libraries/lib/search?rn=1&region=0,0,320,240", data=panels)
    ).json()
    assert answer["results"][0]["brief_text"] == "p1"
    bad = await (await client.post("/api/libraries/lib/search?region=1,2,3", data=panels)).json()
    assert bad["err_no"] == 1 and "region" in bad["err_msg"]


INFINITE_OR_HUGE = [
    ({"x": float("inf"), "y": 0, "w": 100, "h": 100}, "region.x"),
    ({"x": 0, "y": float("-inf"), "w": 100, "h": 100}, "region.y"),
    ({"x": 0, "y": 0, "w": 1e308, "h": 100}, "region.w"),
    ({"x": 1e308, "y": 0, "w": 1e308, "h": 100}, "region.x"),
    ({"x": 0, "y": 0, "w": 10**400, "h": 100}, "region.w"),
    ({"x": 0, "y": 0, "w": 1e300, "h": 1, "unit": "fraction"}, "region.w"),
]


@pytest.mark.parametrize(("region", "field"), INFINITE_OR_HUGE)
async def test_infinite_or_overflowing_boxes_are_1_naming_the_field(api, region, field):
    await library(api)
    panels = b64(encode(two_panels()))
    for route, extra in (("search", {}), ("add", {"features": [brief("x")]})):
        answer = await api(f"{R}/{route}", appid="lib", image=panels, region=region, **extra)
        assert answer["err_no"] == 1 and field in answer["err_msg"], answer
        assert len(answer["err_msg"]) < 200, answer["err_msg"]
    assert (await api(f"{R}/snapshot", appid="lib"))["snapshot"]["index_size"] == 6


@pytest.mark.parametrize("text", ["inf,0,100,100", "0,0,1e308,100", "1e999,0,1,1", "nan,0,1,1", "9" * 5000])
async def test_console_region_refuses_infinite_or_huge_numbers_without_echoing_them(client, api, text):
    await library(api)
    panels = encode(two_panels())
    answer = await (await client.post(f"/api/libraries/lib/search?rn=1&region={text}", data=panels)).json()
    assert answer["err_no"] == 1 and "region" in answer["err_msg"], answer
    assert len(answer["err_msg"]) < 200, answer["err_msg"][:300]


async def test_client_values_are_never_echoed_at_length(client, api):
    """Every err_msg that quotes what a client sent quotes at most a few dozen characters of it."""
    await library(api)
    huge = 10**4000
    long_text = "x" * 100_000
    answers = [
        await api(f"{R}/add", appid="lib", image=b64(jpeg(9)), features=[brief("x")], dup_policy=long_text),
        await api(f"{R}/add", appid="lib", image=b64(jpeg(9)), features=[brief("x")], dup_min_score=huge),
        await api(f"{R}/search", appid="lib", image=b64(jpeg(9)), query_expansion=huge),
        await api(
            f"{R}/search",
            appid="lib",
            image=b64(jpeg(9)),
            region={"x": 0, "y": 0, "w": 1, "h": 1, "unit": long_text},
        ),
        await (await client.get(f"/api/libraries/lib/items/{'1' * 5000},2")).json(),
        await (await client.post("/api/libraries/lib/duplicates", json={"min_score": huge})).json(),
    ]
    for answer in answers:
        assert answer["err_no"] == 1, answer["err_msg"][:200]
        assert len(answer["err_msg"]) < 300, answer["err_msg"][:300]


async def test_a_number_of_thousands_of_digits_is_1_not_an_internal_error(client):
    body = '{"from": "t", "appid": "lib", "logid": ' + "7" * 5000 + "}"
    answer = await (await client.post(f"{R}/snapshot", data=body)).json()
    assert answer["err_no"] == 1 and "digits" in answer["err_msg"] and len(answer["err_msg"]) < 200, answer

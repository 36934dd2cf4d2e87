"""Admission by decode cost: large pictures within a megapixel budget, never ahead of small ones.

Real app, real decodes: PNGs of 4096 x 4096 (17 megapixels, no reduced decode) against a budget
of 20 megapixels, so one is admitted at a time and the others are refused with err_no 99 at
once, while small searches go on being answered.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io

import pytest
from conftest import b64, brief
from images import encode, jpeg, picture
from PIL import Image

from same_search.app import create_app
from same_search.config import ConfigError, LimitsConfig, from_mapping
from same_search.embed.images import ImageLimits, decode, decode_cost

R = "/RTSAsService"


def flat_png(side: int, colour: tuple[int, int, int] = (200, 40, 40)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (side, side), colour).save(buffer, format="PNG", compress_level=9)
    return buffer.getvalue()


def flat_jpeg(side: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (side, side), (200, 40, 40)).save(buffer, format="JPEG")
    return buffer.getvalue()


def test_the_cost_is_what_the_decode_produces_read_from_the_header():
    limits = ImageLimits()
    png, jpg = flat_png(4096), flat_jpeg(4096)
    assert decode_cost(png, limits, 224) == pytest.approx(4096 * 4096 / 1e6)  # no reduced decode
    for target in (224, 320):
        assert decode_cost(jpg, limits, target) == pytest.approx(
            decode(jpg, limits, target).size[0] ** 2 / 1e6
        )
        assert decode_cost(jpg, limits, target) < 1.1  # JPEG's draft decode: an eighth per side
    small = encode(picture(1, (640, 480)))
    assert decode_cost(small, limits, 224) < 0.1


@pytest.fixture
async def budget_client(aiohttp_client, config, embedder):
    limits = dataclasses.replace(config.limits, decode_budget_mpx=20.0, heavy_decode_mpx=4.0)
    client = await aiohttp_client(create_app(dataclasses.replace(config, limits=limits), embedder))
    body = {"from": "t", "appid": "lib"}
    assert (await (await client.post(f"{R}/signup", json=body)).json())["err_no"] == 0
    for seed in range(3):
        add = {**body, "image": b64(jpeg(seed)), "features": [brief(f"p{seed}")]}
        assert (await (await client.post(f"{R}/add", json=add)).json())["err_no"] == 0
    return client


async def search(client, image: bytes) -> dict:
    response = await client.post(
        f"{R}/search", json={"from": "t", "appid": "lib", "image": b64(image), "rn": 3}
    )
    return await response.json()


async def test_large_pictures_past_the_budget_are_99_and_small_searches_go_on(budget_client):
    """Before: every large PNG was decoded (twice), all at once, and none was refused."""
    large = [flat_png(4096, (200, 40 + i, 40)) for i in range(4)]
    small = jpeg(1)
    answers = await asyncio.gather(
        *(search(budget_client, png) for png in large), search(budget_client, small)
    )
    large_answers, small_answer = answers[:-1], answers[-1]
    assert small_answer["err_no"] == 0 and len(small_answer["data_items"]) == 3
    shed = [a for a in large_answers if a["err_no"] == 99]
    assert shed and all("megapixels" in a["err_msg"] and "retry later" in a["err_msg"] for a in shed)
    assert any(a["err_no"] == 0 for a in large_answers)  # one at a time still gets through
    metrics = dict(
        line.rsplit(" ", 1)
        for line in (await (await budget_client.get("/metrics")).text()).splitlines()
        if line.startswith("same_search_decode")
    )
    assert float(metrics["same_search_decodes_shed_total"]) >= len(shed)  # a request's decodes, each
    assert float(metrics["same_search_decode_megapixels_in_flight"]) == 0.0


async def test_a_lone_large_picture_is_searched_and_added(budget_client):
    """Its two decodes (vector, local features) are one admission: never half refused."""
    png = flat_png(4096)
    assert (await search(budget_client, png))["err_no"] == 0
    add = {"from": "t", "appid": "lib", "image": b64(png), "features": [brief("large")]}
    assert (await (await budget_client.post(f"{R}/add", json=add)).json())["err_no"] == 0
    larger = flat_png(6000)  # 36 megapixels: more than the whole budget, admitted alone
    assert (await search(budget_client, larger))["err_no"] == 0


def test_admission_settings_are_checked():
    assert LimitsConfig().decode_budget_mpx >= LimitsConfig().heavy_decode_mpx
    for key, value in (("decode_budget_mpx", 0), ("heavy_decode_mpx", -1.0), ("heavy_decode_threads", 0)):
        with pytest.raises(ConfigError, match=key):
            from_mapping({"limits": {key: value}})

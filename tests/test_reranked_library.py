"""A library that chose re-ranking (promotion of confirmed copies, query expansion) holds to the
wire contract under paging, filters, limits, races and pictures the same-picture check cannot
describe."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from conftest import b64, brief
from exports import export_zip
from images import encode, jpeg, picture
from PIL import Image
from test_promotion import PALETTE, QUERY, fill, key
from test_retrieval_api import tags as tag_pair
from test_same_picture import scene

from same_search.config import SearchConfig
from same_search.contsign import ContSign
from same_search.services import SERVICES

R = "/RTSAsService"
#: Every test runs on both backends: a Milvus library can be re-ranked too.
BACKENDS = ("local", "milvus")


@pytest.fixture
def config(config):
    """New libraries are re-ranked: what ``PUT .../ranking {"order": "reranked"}`` gives one."""
    return dataclasses.replace(config, search=SearchConfig(query_expansion=2, promote_same_picture=True))


def tags(tag: int) -> dict:
    """Feature 999 with one tag."""
    return tag_pair(tag, 0)


def gradient(size: tuple[int, int] = (320, 240)) -> Image.Image:
    """A smooth grey ramp: a picture without a single SIFT keypoint (a plain banner or logo)."""
    return Image.linear_gradient("L").resize(size).convert("RGB")


async def library_with(api, data: bytes, name: str, others: int) -> bytes:
    """A library holding ``data`` and ``others`` ordinary pictures; returns ``data``."""
    assert (await api(f"{R}/signup", appid="lib"))["err_no"] == 0
    assert (await api(f"{R}/add", appid="lib", image=b64(data), features=[brief(name)]))["err_no"] == 0
    for seed in range(others):
        body = await api(f"{R}/add", appid="lib", image=b64(jpeg(seed)), features=[brief(str(seed))])
        assert body["err_no"] == 0, body
    return data


async def flat_library(api) -> bytes:
    """A library holding the gradient and five ordinary pictures; returns the gradient's file."""
    return await library_with(api, encode(gradient()), "flat", 5)


async def test_a_picture_without_keypoints_is_the_same_picture_as_its_exact_copy(api):
    """Failed before: the check compared zero keypoints with zero and said 'not the same', where
    an item stored without local features gets the strict score fallback."""
    data = await flat_library(api)
    body = await api(f"{R}/search", appid="lib", image=b64(data), same_picture=1)
    assert body["err_no"] == 0, body
    assert [hit["features"][0]["fea_data"] for hit in body["data_items"]] == [b64(b"flat")]


async def test_a_re_encoded_copy_of_a_picture_without_keypoints_is_rejected_as_a_near_duplicate(api):
    """Failed before: under dup_policy reject, a re-encoded plain picture was stored again."""
    await flat_library(api)
    copy = encode(gradient(), quality=60)
    body = await api(f"{R}/add", appid="lib", image=b64(copy), features=[brief("copy")], dup_policy="reject")
    assert body["err_no"] == 101, body


async def test_a_confirmed_copy_removed_during_the_search_leaves_no_hole_in_the_page(client, api):
    """Failed before: the page came back one hit short while has_more said more exist."""
    original = await fill(api)
    services = client.server.app[SERVICES]
    verifier = services.libraries.verifier
    real = verifier.judge

    async def judge_then_remove(query, candidates, stored, floors):
        verdicts = await real(query, candidates, stored, floors)
        lib = await services.libraries.get("lib")
        await services.libraries.writes.remove(lib, [ContSign.from_json(json.loads(original))])
        return verdicts

    verifier.judge = judge_then_remove
    try:
        body = await api(f"{R}/search", appid="lib", image=b64(QUERY), rn=3)
    finally:
        verifier.judge = real
    assert body["err_no"] == 0, body
    got = [key(hit["contsign"]) for hit in body["data_items"]]
    assert original not in got and len(got) == 3 and body["has_more"] == 1
    after = await api(f"{R}/search", appid="lib", image=b64(QUERY), rn=100)
    assert [key(hit["contsign"]) for hit in after["data_items"]][:3] == got


async def test_huge_pages_are_empty_not_errors(api):
    """pn has no maximum; with promotion DEPTH more hits are read past it."""
    await fill(api)
    for pn in (10**6, 2**63, 10**30):
        body = await api(f"{R}/search", appid="lib", image=b64(QUERY), pn=pn, rn=1000)
        assert body["err_no"] == 0 and body["data_items"] == [] and body["has_more"] == 0, (pn, body)


async def test_a_confirmed_copy_below_min_score_stays_out(api):
    original = await fill(api)
    plain = await api(
        f"{R}/search", appid="lib", image=b64(QUERY), rn=100, promote_same_picture=0, query_expansion=0
    )
    scores = {key(hit["contsign"]): hit["score"] for hit in plain["data_items"]}
    above = min(score for k, score in scores.items() if score > scores[original])
    floor = (scores[original] + above) / 2
    for expansion in (0, 2):
        body = await api(
            f"{R}/search", appid="lib", image=b64(QUERY), rn=100, min_score=floor, query_expansion=expansion
        )
        assert body["err_no"] == 0, body
        assert original not in [key(hit["contsign"]) for hit in body["data_items"]]
        assert body["data_items"] and all(hit["score"] >= floor for hit in body["data_items"])


async def tagged_library(api) -> str:
    """The six look-alikes tagged 1, except the query's original (tagged 2), and twenty other
    pictures tagged 1; returns the original's key."""
    assert (await api(f"{R}/signup", appid="lib"))["err_no"] == 0
    original = ""
    for layout in range(1, 7):
        tag = 2 if layout == 1 else 1
        image = b64(encode(scene(PALETTE, layout)))
        body = await api(f"{R}/add", appid="lib", image=image, features=[brief(str(layout)), tags(tag)])
        assert body["err_no"] == 0, body
        original = original or key(body["contsign"])
    for seed in range(20):
        body = await api(
            f"{R}/add", appid="lib", image=b64(jpeg(seed)), features=[brief(f"o{seed}"), tags(1)]
        )
        assert body["err_no"] == 0, body
    return original


async def test_reranked_pages_concatenate_with_a_tag_filter(api):
    """The defaults (expansion 2, promotion) on both backends: a tag filter keeps the confirmed
    copy out when it lacks the tag, and pages of any size concatenate to the whole ranking."""
    original = await tagged_library(api)
    whole = await api(f"{R}/search", appid="lib", image=b64(QUERY), rn=100)
    assert whole["err_no"] == 0, whole
    # Local features live on either backend: the copy is confirmed and leads on both.
    assert key(whole["data_items"][0]["contsign"]) == original
    assert len(whole["data_items"]) == 26 and whole["has_more"] == 0
    filtered = await api(f"{R}/search", appid="lib", image=b64(QUERY), rn=100, features=[tags(1)])
    everything = [key(hit["contsign"]) for hit in filtered["data_items"]]
    assert original not in everything and len(everything) == 25 and filtered["has_more"] == 0
    for rn in (1, 4, 7):
        pages: list[str] = []
        for pn in range(0, 26, rn):
            body = await api(f"{R}/search", appid="lib", image=b64(QUERY), pn=pn, rn=rn, features=[tags(1)])
            assert body["err_no"] == 0, body
            assert body["has_more"] == int(pn + rn < 25), (pn, rn)
            pages += [key(hit["contsign"]) for hit in body["data_items"]]
        assert pages == everything, rn


def side_by_side(left: Image.Image, right: Image.Image) -> Image.Image:
    canvas = Image.new("RGB", (left.width + right.width, max(left.height, right.height)))
    canvas.paste(left, (0, 0))
    canvas.paste(right, (left.width, 0))
    return canvas


RIGHT_HALF = {"x": 0.5, "y": 0, "w": 0.5, "h": 1, "unit": "fraction"}


async def test_a_region_search_promotes_copies_of_the_region_not_of_the_rest_of_the_picture(client, api):
    """Failed before: the whole picture's keypoints verified the candidates, so the picture on
    the other half of the query (outside the box) was 'confirmed' and jumped to the top."""
    assert (await api(f"{R}/signup", appid="lib"))["err_no"] == 0
    outside = scene(PALETTE, 1)
    body = await api(f"{R}/add", appid="lib", image=b64(encode(outside)), features=[brief("outside")])
    assert body["err_no"] == 0, body
    for layout in range(2, 7):  # look-alikes of what the box holds
        body = await api(
            f"{R}/add", appid="lib", image=b64(encode(scene(7, layout))), features=[brief("alike")]
        )
        assert body["err_no"] == 0, body
    query = encode(side_by_side(outside, scene(7, 1)))
    body = await api(f"{R}/search", appid="lib", image=b64(query), region=RIGHT_HALF, rn=100)
    assert body["err_no"] == 0, body
    found = [hit["features"][0]["fea_data"] for hit in body["data_items"]]
    assert found[0] == b64(b"alike") and found[-1] == b64(b"outside"), found
    answer = await (
        await client.post("/api/libraries/lib/search?rn=100&region=0.5,0,0.5,1&unit=fraction", data=query)
    ).json()
    assert answer["err_no"] == 0 and answer["results"][0]["brief_text"] == "alike", answer


async def test_same_picture_with_a_region_finds_a_copy_of_the_box_and_not_of_the_rest(api):
    assert (await api(f"{R}/signup", appid="lib"))["err_no"] == 0
    outside, inside = scene(PALETTE, 1), scene(7, 1)
    for image, text in ((outside, "outside"), (inside, "inside")):
        body = await api(f"{R}/add", appid="lib", image=b64(encode(image)), features=[brief(text)])
        assert body["err_no"] == 0, body
    query = b64(encode(side_by_side(outside, inside)))
    body = await api(f"{R}/search", appid="lib", image=query, region=RIGHT_HALF, same_picture=1)
    assert body["err_no"] == 0, body
    assert [hit["features"][0]["fea_data"] for hit in body["data_items"]] == [b64(b"inside")]


async def test_a_bad_region_is_still_err_1_with_promotion(api):
    await fill(api)
    outside = {"x": 0.8, "y": 0, "w": 0.5, "h": 1, "unit": "fraction"}
    body = await api(f"{R}/search", appid="lib", image=b64(QUERY), region=outside, same_picture=1)
    assert body["err_no"] == 1 and "region" in body["err_msg"], body
    body = await api(f"{R}/search", appid="lib", image=b64(QUERY), region=outside)
    assert body["err_no"] == 1 and "region" in body["err_msg"], body


def geometry_vectors(dim: int, distractors: int) -> np.ndarray:
    """Stored vectors built so that query expansion buries a hit above ``min_score`` 0.8.

    Row 0 is the query; rows 1-2 its two best hits (0.9), which pull the expanded query towards
    axis 1; row 3 the target (0.85 to the query, away from axis 1); the rest distractors that
    score 0.7 to the query but lie closer to the expanded query than the target does.
    """
    vectors = np.zeros((4 + distractors, dim), np.float32)
    vectors[0, 0] = 1.0
    vectors[1, [0, 1, 3]] = (0.9, 0.43, 0.07)
    vectors[2, [0, 1, 3]] = (0.9, 0.43, -0.07)
    vectors[3, [0, 2]] = (0.85, 0.527)
    for i in range(distractors):
        vectors[4 + i, [0, 1, 4 + i]] = (0.7, 0.71, 0.05)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


async def test_query_expansion_with_min_score_never_drops_a_hit_above_it(client, api):
    """Failed before: the expanded search stopped deepening before it reached the target, so a
    hit scoring above ``min_score`` was missing from every page (a plain search returns it)."""
    model = await (await client.get("/healthz")).json()
    vectors = geometry_vectors(model["model"]["dim"], 150)
    keys = list(range(1000, 1000 + len(vectors)))
    assert (await api(f"{R}/signup", appid="geo"))["err_no"] == 0
    archive = export_zip(keys, vectors, model["model"], appid="geo")
    answer = await (await client.post("/api/libraries/geo/import", data=archive)).json()
    assert answer["err_no"] == 0, answer
    query = ContSign.from_key(keys[0]).to_json()
    expected = {ContSign.from_key(k).to_json()["sign1"] for k in keys[:4]}
    for expansion in (0, 2):
        body = await api(
            f"{R}/search", appid="geo", contsign=query, rn=10, min_score=0.8, query_expansion=expansion
        )
        assert body["err_no"] == 0, body
        assert {hit["contsign"]["sign1"] for hit in body["data_items"]} == expected, expansion
        assert body["has_more"] == 0


def logo_on_plain(extra: bool = False) -> Image.Image:
    """A small logo in the corner of a plain ramp (its keypoints span under 1% of the picture);
    with ``extra``, another small emblem elsewhere: a different picture sharing the logo."""
    image = Image.linear_gradient("L").resize((640, 480)).convert("RGB")
    image.paste(picture(3, (120, 120)).resize((60, 60)), (10, 10))
    if extra:
        image.paste(picture(5, (240, 120)).resize((180, 60)), (300, 300))
    return image


async def test_an_exact_copy_of_a_small_logo_on_a_plain_background_is_the_same_picture(api):
    """Failed before: all its keypoints sit in one corner, under the coverage floor, so even the
    identical file was 'not the same picture' and a re-encoded copy passed dup_policy reject."""
    logo = await library_with(api, encode(logo_on_plain()), "logo", 4)
    body = await api(f"{R}/search", appid="lib", image=b64(logo), same_picture=1)
    assert [hit["features"][0]["fea_data"] for hit in body["data_items"]] == [b64(b"logo")], body
    copy = encode(logo_on_plain(), quality=60)
    body = await api(f"{R}/add", appid="lib", image=b64(copy), features=[brief("copy")], dup_policy="reject")
    assert body["err_no"] == 101, body


async def test_another_picture_sharing_the_logo_is_not_the_same_picture(api):
    assert (await api(f"{R}/signup", appid="lib"))["err_no"] == 0
    body = await api(f"{R}/add", appid="lib", image=b64(encode(logo_on_plain())), features=[brief("logo")])
    assert body["err_no"] == 0
    body = await api(f"{R}/search", appid="lib", image=b64(encode(logo_on_plain(extra=True))), same_picture=1)
    assert body["err_no"] == 0 and body["data_items"] == [], body


async def test_the_console_refuses_a_region_on_a_search_by_contsign(client, api):
    """Failed before: the box was silently ignored (the retrieval port's search says err_no 1)."""
    await fill(api)
    first = (await api(f"{R}/search", appid="lib", image=b64(QUERY), rn=1))["data_items"][0]["contsign"]
    sign = f"{first['sign1']},{first['sign2']}"
    answer = await (
        await client.post(f"/api/libraries/lib/search?contsign={sign}&region=0,0,0.5,0.5&unit=fraction")
    ).json()
    assert answer["err_no"] == 1 and "region" in answer["err_msg"], answer
    answer = await (await client.post(f"/api/libraries/lib/search?contsign={sign}&rn=3")).json()
    assert answer["err_no"] == 0 and len(answer["results"]) == 3, answer


async def test_null_ranking_fields_mean_the_librarys_ranking(api):
    await fill(api)
    default = await api(f"{R}/search", appid="lib", image=b64(QUERY), rn=100)
    nulls = await api(
        f"{R}/search", appid="lib", image=b64(QUERY), rn=100, query_expansion=None, promote_same_picture=None
    )
    assert nulls["err_no"] == 0 and nulls["data_items"] == default["data_items"]
    explicit = await api(
        f"{R}/search", appid="lib", image=b64(QUERY), rn=100, query_expansion=2, promote_same_picture=1
    )
    assert explicit["data_items"] == default["data_items"]

"""The spec's parameter table, line by line: which field names the item, and what base64 we read.

The ``consign`` row: when an image is also sent, the contsign computed from the image is the one
used. The ``consigns`` row: remove uses ``contsigns`` when it holds any, else the single item.
Clients on other stacks wrap base64 at 76 columns, use ``\\r\\n`` or drop the padding.
"""

from __future__ import annotations

import base64
import struct

import pytest
from conftest import b64, brief
from images import jpeg

from same_search.contsign import ContSign

R = "/RTSAsService"
A, B, C = 1, 2, 3


def sign(seed: int) -> dict:
    return ContSign.of_image(jpeg(seed)).to_json()


async def library_of_three(api) -> None:
    assert (await api(f"{R}/signup", appid="lib"))["err_no"] == 0
    for seed in (A, B, C):
        body = await api(f"{R}/add", appid="lib", image=b64(jpeg(seed)), features=[brief(f"item-{seed}")])
        assert body["err_no"] == 0


async def stored(api) -> set[int]:
    """Which of A, B, C are still stored."""
    found = set()
    for seed in (A, B, C):
        body = await api(f"{R}/search", appid="lib", contsign=sign(seed), rn=1)
        if body["err_no"] == 0:
            found.add(seed)
    return found


# ---- remove: contsigns when non-empty, else the image, else contsign -------------------------------


@pytest.mark.parametrize(
    ("fields", "removed"),
    [
        ({"contsigns": [A], "image": B, "contsign": C}, {A}),
        ({"contsigns": [A, C], "image": B}, {A, C}),
        ({"contsigns": [A], "contsign": C}, {A}),
        ({"contsigns": [], "image": B, "contsign": C}, {B}),
        ({"image": B, "contsign": C}, {B}),
        ({"consign": C, "image": B}, {B}),
        ({"contsigns": [], "contsign": C}, {C}),
        ({"contsign": C}, {C}),
        ({"image": B}, {B}),
        ({"consigns": [], "consign": A}, {A}),
    ],
)
async def test_remove_target_order(api, fields, removed):
    await library_of_three(api)
    body = {}
    for name, value in fields.items():
        if name == "image":
            body[name] = b64(jpeg(value))
        elif name in ("contsigns", "consigns"):
            body[name] = [sign(s) for s in value]
        else:
            body[name] = sign(value)
    answer = await api(f"{R}/remove", appid="lib", **body)
    assert answer["err_no"] == 0 and answer["removed"] == len(removed), answer
    assert await stored(api) == {A, B, C} - removed


async def test_remove_with_empty_contsigns_and_nothing_else_is_1(api):
    await library_of_three(api)
    answer = await api(f"{R}/remove", appid="lib", contsigns=[])
    assert answer["err_no"] == 1 and "contsigns, contsign or image" in answer["err_msg"]
    assert await stored(api) == {A, B, C}


async def test_remove_by_an_image_not_stored_removes_nothing_even_with_a_stored_contsign(api):
    await library_of_three(api)
    answer = await api(f"{R}/remove", appid="lib", image=b64(jpeg(9)), contsign=sign(A))
    assert answer["err_no"] == 0 and answer["removed"] == 0
    assert await stored(api) == {A, B, C}


# ---- update: the image, else contsign ---------------------------------------------------------------


async def briefs(api) -> dict[int, bytes]:
    result = {}
    for seed in (A, B, C):
        body = await api(f"{R}/search", appid="lib", contsign=sign(seed), rn=1)
        result[seed] = base64.b64decode(body["data_items"][0]["features"][0]["fea_data"])
    return result


@pytest.mark.parametrize(
    ("fields", "changed"),
    [
        ({"image": B, "contsign": C}, B),
        ({"image": B, "consign": C}, B),
        ({"contsign": C}, C),
        ({"image": B}, B),
        ({"contsigns": [A], "contsign": C}, C),  # contsigns is remove's field only
    ],
)
async def test_update_target_order(api, fields, changed):
    await library_of_three(api)
    body = {}
    for name, value in fields.items():
        if name == "image":
            body[name] = b64(jpeg(value))
        elif name == "contsigns":
            body[name] = [sign(s) for s in value]
        else:
            body[name] = sign(value)
    answer = await api(f"{R}/update", appid="lib", features=[brief("changed")], **body)
    assert answer["err_no"] == 0 and answer["contsign"] == sign(changed), answer
    expected = {seed: f"item-{seed}".encode() for seed in (A, B, C)} | {changed: b"changed"}
    assert await briefs(api) == expected


async def test_update_by_an_image_not_stored_is_102_even_with_a_stored_contsign(api):
    await library_of_three(api)
    answer = await api(
        f"{R}/update", appid="lib", image=b64(jpeg(9)), contsign=sign(A), features=[brief("x")]
    )
    assert answer["err_no"] == 102
    assert (await briefs(api))[A] == f"item-{A}".encode()


# ---- search: the image, else contsign ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "first"),
    [
        ({"image": B, "contsign": C}, B),
        ({"image": B, "consign": C}, B),
        ({"contsign": C}, C),
        ({"image": B}, B),
    ],
)
async def test_search_target_order(api, fields, first):
    await library_of_three(api)
    body = {name: b64(jpeg(v)) if name == "image" else sign(v) for name, v in fields.items()}
    answer = await api(f"{R}/search", appid="lib", rn=1, **body)
    assert answer["err_no"] == 0 and answer["data_items"][0]["contsign"] == sign(first), answer


async def test_search_by_an_image_not_stored_embeds_it_even_with_a_stored_contsign(api):
    await library_of_three(api)
    answer = await api(f"{R}/search", appid="lib", image=b64(jpeg(9)), contsign=sign(A))
    assert answer["err_no"] == 0
    assert all(item["score"] < 0.999 for item in answer["data_items"])


# ---- tolerant base64 --------------------------------------------------------------------------------


def mime(data: bytes) -> str:
    """What MIME encoders, the ``base64`` tool and Python 2's ``encodestring`` produce."""
    return base64.encodebytes(data).decode()


@pytest.mark.parametrize(
    "encode",
    [
        pytest.param(mime, id="76-columns-lf"),
        pytest.param(lambda d: mime(d).replace("\n", "\r\n"), id="76-columns-crlf"),
        pytest.param(lambda d: b64(d).rstrip("="), id="no-padding"),
        pytest.param(lambda d: mime(d).replace("=", ""), id="wrapped-no-padding"),
        pytest.param(lambda d: b64(d) + "\n", id="trailing-newline"),
    ],
)
async def test_image_and_fea_data_in_other_stacks_base64(api, encode):
    image = jpeg(7)
    assert len(b64(image)) % 4 == 0
    assert (await api(f"{R}/signup", appid="lib"))["err_no"] == 0
    tag_bytes = struct.pack("II", 5, 6)
    text = b"a brief"  # 8 bytes: its base64 has padding to lose
    answer = await api(
        f"{R}/add",
        appid="lib",
        image=encode(image),
        features=[{"fea_id": 1000, "fea_data": encode(text)}, {"fea_id": 999, "fea_data": encode(tag_bytes)}],
    )
    assert answer["err_no"] == 0, answer
    assert answer["contsign"] == ContSign.of_image(image).to_json()  # the very bytes, nothing lost
    found = await api(f"{R}/search", appid="lib", image=encode(image), rn=1)
    item = found["data_items"][0]
    assert item["score"] > 0.999
    assert item["features"] == [
        {"fea_id": 1000, "fea_data": b64(text)},
        {"fea_id": 999, "fea_data": b64(tag_bytes)},
    ]


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("@@not base64@@", "not valid base64"),
        ("QUJD RA==", "not valid base64"),  # a space: a '+' lost to form encoding looks like this
        ("QUJD\tRA==", "not valid base64"),
        ("QUJDR", "truncated"),  # 5 characters: 1 more than a multiple of 4
        ("QUJDRA=", "padding"),
        ("QUJDRA===", "'='"),
        ("QU=JDRA==", "not valid base64"),
        ("QUJD-_==", "not valid base64"),  # the URL-safe alphabet is another encoding
    ],
)
async def test_what_is_not_base64_is_still_1_naming_the_field(api, value, problem):
    assert (await api(f"{R}/signup", appid="lib"))["err_no"] == 0
    answer = await api(f"{R}/add", appid="lib", image=value, features=[brief("x")])
    assert answer["err_no"] == 1 and "image" in answer["err_msg"] and problem in answer["err_msg"], answer
    answer = await api(
        f"{R}/add", appid="lib", image=b64(jpeg(1)), features=[{"fea_id": 1000, "fea_data": value}]
    )
    assert answer["err_no"] == 1 and "features[0].fea_data" in answer["err_msg"], answer
    assert (await api(f"{R}/snapshot", appid="lib"))["snapshot"]["index_size"] == 0


async def test_a_truncated_wrapped_image_is_refused_not_shortened(api):
    assert (await api(f"{R}/signup", appid="lib"))["err_no"] == 0
    text = mime(jpeg(7))
    body = text.replace("\n", "")
    cut = body[: len(body) - (len(body) % 4) - 3]  # 1 more than a multiple of 4
    answer = await api(f"{R}/add", appid="lib", image=cut, features=[brief("x")])
    assert answer["err_no"] == 1 and "image" in answer["err_msg"]


async def test_feature_service_data_in_mime_base64(client):
    from same_search.proto import imgfeature_pb2

    request = imgfeature_pb2.FeatureRequest(image=jpeg(7), featureids="2002")
    data = mime(request.SerializeToString()).replace("\n", "\r\n")
    response = await client.post(
        "/GeneralClassifyService/classify", json={"from": "pytest", "appid": "x", "data": data}
    )
    body = await response.json()
    assert body["err_no"] == 0, body
    result = imgfeature_pb2.FeatureResponse()
    result.ParseFromString(base64.b64decode(body["result"]))
    assert result.features[0].fea_data == struct.pack("<II", *ContSign.of_image(jpeg(7)).to_json().values())

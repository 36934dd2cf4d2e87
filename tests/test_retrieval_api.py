"""The retrieval API on the real app: every route, every error number, paging, filters."""

from __future__ import annotations

import struct

import pytest
from conftest import b64, brief
from images import jpeg, near_duplicate

from same_search.contsign import ContSign

#: The wire contract holds on every backend (see conftest.pytest_generate_tests).
BACKENDS = ("local", "milvus")

R = "/RTSAsService"


def tags(tag1: int, tag2: int) -> dict:
    return {"fea_id": 999, "fea_data": b64(struct.pack("II", tag1, tag2))}


async def signup(api, appid: str = "lib") -> None:
    assert (await api(f"{R}/signup", appid=appid))["err_no"] == 0


async def add(api, seed: int, appid: str = "lib", text: str | None = None, **extra) -> dict:
    features = [brief(text or f"item-{seed}")]
    if "item_tags" in extra:
        features.append(tags(*extra.pop("item_tags")))
    return await api(f"{R}/add", appid=appid, image=b64(jpeg(seed)), features=features, **extra)


async def snapshot_size(api, appid: str = "lib") -> int:
    return (await api(f"{R}/snapshot", appid=appid))["snapshot"]["index_size"]


# ---- signup -------------------------------------------------------------------------------------


async def test_signup_then_again_is_104(api):
    await signup(api)
    again = await api(f"{R}/signup", appid="lib")
    assert again["err_no"] == 104 and "lib" in again["err_msg"]


async def test_unknown_appid_is_103_on_every_library_route(api):
    for route in ("add", "update", "search", "remove", "snapshot"):
        body = await api(f"{R}/{route}", appid="nobody", image=b64(jpeg(1)), features=[brief("x")])
        assert body["err_no"] == 103, (route, body)


async def test_sub_lib_is_its_own_library(api):
    await signup(api, "shop")
    assert (await api(f"{R}/signup", appid="shop", sub_lib="1"))["err_no"] == 0
    assert (await add(api, 1, appid="shop", sub_lib="1"))["err_no"] == 0
    assert await snapshot_size(api, "shop") == 0
    assert await snapshot_size(api, "shop_1") == 1
    assert (await api(f"{R}/snapshot", appid="shop", sub_lib="1"))["snapshot"]["index_size"] == 1


# ---- common field errors (err_no 1) -------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"appid": "lib"}, "from"),  # from missing (the fixture adds it unless set to None)
        ({"from": "x"}, "appid"),
        ({"from": "x", "appid": "a,b"}, "comma"),
        ({"from": "x", "appid": 5}, "appid"),
        ({"from": "x", "appid": "lib", "format": "xml"}, "format"),
        ({"from": "x", "appid": "lib", "sub_lib": "1,2"}, "sub_lib"),
        ({"from": "x", "appid": "x" * 300}, "appid"),
        ({"from": 7, "appid": "lib"}, "from"),
    ],
)
async def test_common_field_errors(client, body, field):
    response = await client.post(f"{R}/signup", json=body)
    assert response.status == 200
    data = await response.json()
    assert data["err_no"] == 1 and field in data["err_msg"]


@pytest.mark.parametrize("raw", [b"not json", b"[1,2]", b"", b'"string"', b"\xff\xfe"])
async def test_malformed_body_is_1(client, raw):
    response = await client.post(f"{R}/search", data=raw)
    assert response.status == 200
    assert (await response.json())["err_no"] == 1


async def test_unknown_route_and_get_are_enveloped(client):
    for response in (await client.post(f"{R}/nope", json={}), await client.get(f"{R}/search")):
        assert response.status == 200
        assert (await response.json())["err_no"] == 1


# ---- add ------------------------------------------------------------------------------------------


async def test_add_returns_the_contsign_clients_can_compute(api):
    await signup(api)
    body = await add(api, 1)
    assert body["err_no"] == 0
    assert body["contsign"] == ContSign.of_image(jpeg(1)).to_json()
    assert await snapshot_size(api) == 1


async def test_duplicate_add_is_101_with_the_stored_item(api):
    await signup(api)
    await add(api, 1, text="first", item_tags=(3, 4))
    body = await add(api, 1, text="second")
    assert body["err_no"] == 101
    [item] = body["data_items"]
    assert item["contsign"] == ContSign.of_image(jpeg(1)).to_json()
    features = {f["fea_id"]: f["fea_data"] for f in item["features"]}
    assert features[1000] == b64(b"first")
    assert features[999] == b64(struct.pack("II", 3, 4))
    assert await snapshot_size(api) == 1


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"image": None}, "image"),
        ({"image": "@@not base64@@"}, "image"),
        ({"features": None}, "brief"),
        ({"features": []}, "brief"),
        ({"features": "x"}, "features"),
        ({"features": [5]}, "features[0]"),
        ({"features": [{"fea_data": "eA=="}]}, "fea_id"),
        ({"features": [{"fea_id": 1000, "fea_data": "*"}]}, "fea_data"),
        ({"features": [{"fea_id": 1000, "fea_data": b64(b"x" * 4097)}]}, "brief"),
        ({"features": [brief("x"), {"fea_id": 999, "fea_data": b64(b"1234")}]}, "tags"),
    ],
)
async def test_add_field_errors_are_1_and_store_nothing(api, extra, field):
    await signup(api)
    body = {"appid": "lib", "image": b64(jpeg(1)), "features": [brief("x")]}
    body.update(extra)
    data = await api(f"{R}/add", **{k: v for k, v in body.items() if v is not None})
    assert data["err_no"] == 1 and field in data["err_msg"], data
    assert await snapshot_size(api) == 0


async def test_brief_at_the_limit_is_accepted(api):
    await signup(api)
    body = await api(
        f"{R}/add", appid="lib", image=b64(jpeg(1)), features=[{"fea_id": 1000, "fea_data": b64(b"x" * 4096)}]
    )
    assert body["err_no"] == 0


@pytest.mark.parametrize(
    ("image", "sub_code"),
    [
        (b"", "216200"),
        (b"this is not an image at all", "216201"),
        (b"\xff\xd8\xff\xe0" + b"\x00" * 64, "216201"),
        (jpeg(1)[:400], "216201"),
        (jpeg(1, size=(20, 200)), "216202"),
        (jpeg(1, size=(9000, 40)), "216202"),
    ],
)
async def test_bad_images_are_100_with_the_sub_code(api, image, sub_code):
    await signup(api)
    body = await api(f"{R}/add", appid="lib", image=b64(image), features=[brief("x")])
    assert body["err_no"] == 100 and body["err_msg"].startswith(sub_code), body
    assert await snapshot_size(api) == 0


# ---- search ---------------------------------------------------------------------------------------


async def test_search_finds_the_identical_image_first_with_score_one(api):
    await signup(api)
    for seed in range(5):
        await (add(api, seed, item_tags=(seed, 0)) if seed == 2 else add(api, seed))
    body = await api(f"{R}/search", appid="lib", image=b64(jpeg(2)))
    assert body["err_no"] == 0 and body["has_more"] == 0
    items = body["data_items"]
    assert len(items) == 5
    assert items[0]["contsign"] == ContSign.of_image(jpeg(2)).to_json()
    assert items[0]["score"] == pytest.approx(1.0, abs=1e-4)
    assert [f["fea_id"] for f in items[0]["features"]] == [1000, 999]
    assert [f["fea_id"] for f in items[1]["features"]] == [1000]
    scores = [item["score"] for item in items]
    assert scores == sorted(scores, reverse=True)


async def test_near_duplicate_finds_its_original_first(api):
    await signup(api)
    for seed in range(12):
        await add(api, seed)
    body = await api(f"{R}/search", appid="lib", image=b64(near_duplicate(jpeg(7))), rn=3)
    first = body["data_items"][0]
    assert first["contsign"] == ContSign.of_image(jpeg(7)).to_json()
    assert first["score"] > body["data_items"][1]["score"] + 0.05


async def test_paging_and_has_more(api):
    await signup(api)
    for seed in range(7):
        await add(api, seed)
    query = b64(jpeg(0))
    full = (await api(f"{R}/search", appid="lib", image=query))["data_items"]
    assert len(full) == 7
    pages, pn = [], 0
    while True:
        body = await api(f"{R}/search", appid="lib", image=query, pn=pn, rn=3)
        pages += body["data_items"]
        if not body["has_more"]:
            break
        pn += 3
    assert [p["contsign"] for p in pages] == [f["contsign"] for f in full]
    assert (await api(f"{R}/search", appid="lib", image=query, pn=4, rn=3))["has_more"] == 0
    assert (await api(f"{R}/search", appid="lib", image=query, pn=3, rn=3))["has_more"] == 1
    beyond = await api(f"{R}/search", appid="lib", image=query, pn=50, rn=3)
    assert beyond["data_items"] == [] and beyond["has_more"] == 0


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"rn": 1001}, "rn"),
        ({"rn": -1}, "rn"),
        ({"pn": "abc"}, "pn"),
        ({"pn": 1.5}, "pn"),
        ({"tag_logic": 2}, "tag_logic"),
        ({"image": None, "contsign": None}, "image or contsign"),
        ({"image": None, "contsign": {"sign1": 1}}, "sign2"),
        ({"image": None, "contsign": {"sign1": -1, "sign2": 0}}, "sign1"),
        ({"image": None, "contsign": [1, 2]}, "contsign"),
    ],
)
async def test_search_field_errors(api, extra, field):
    await signup(api)
    body = {"appid": "lib", "image": b64(jpeg(1))}
    body.update(extra)
    data = await api(f"{R}/search", **{k: v for k, v in body.items() if v is not None})
    assert data["err_no"] == 1 and field in data["err_msg"], data


async def test_rn_limit_and_defaults(api):
    await signup(api)
    await add(api, 1)
    assert (await api(f"{R}/search", appid="lib", image=b64(jpeg(1)), rn=1000))["err_no"] == 0
    assert (await api(f"{R}/search", appid="lib", image=b64(jpeg(1)), rn="2"))["err_no"] == 0


async def test_search_by_contsign_reuses_the_stored_vector(api):
    await signup(api)
    for seed in range(4):
        await add(api, seed)
    contsign = ContSign.of_image(jpeg(3)).to_json()
    body = await api(f"{R}/search", appid="lib", contsign=contsign)
    assert body["data_items"][0]["contsign"] == contsign
    assert body["data_items"][0]["score"] == pytest.approx(1.0, abs=1e-4)
    missing = await api(f"{R}/search", appid="lib", contsign={"sign1": 1, "sign2": 2})
    assert missing["err_no"] == 1 and "not in library" in missing["err_msg"]


async def test_search_by_contsign_answers_as_by_its_image(api):
    """A search by a stored item reads its vector and searches in one backend call where the
    backend can (Milvus): filters, pages and same_picture answer as a search by the item's image."""
    await signup(api)
    for seed, item_tags in {0: (1, 2), 1: (1, 3), 2: (2, 3), 3: (1, 0)}.items():
        await add(api, seed, item_tags=item_tags)
    query = {"contsign": ContSign.of_image(jpeg(1)).to_json()}
    for extra in ({"features": [tags(1, 0)], "pn": 1, "rn": 1}, {"same_picture": 1}):
        by_key = await api(f"{R}/search", appid="lib", **query, **extra)
        by_image = await api(f"{R}/search", appid="lib", image=b64(jpeg(1)), **extra)
        assert by_key["err_no"] == 0 and by_key["has_more"] == by_image["has_more"]
        shown = [[(i["contsign"], i["features"]) for i in body["data_items"]] for body in (by_key, by_image)]
        assert shown[0] and shown[0] == shown[1]


async def test_search_in_empty_library(api):
    await signup(api)
    body = await api(f"{R}/search", appid="lib", image=b64(jpeg(1)))
    assert body == {"err_no": 0, "err_msg": "OK", "data_items": [], "has_more": 0}


async def test_tag_filters_all_and_any(api):
    await signup(api)
    layout = {0: (1, 2), 1: (1, 3), 2: (2, 3), 3: (4, 0)}
    for seed, item_tags in layout.items():
        await add(api, seed, item_tags=item_tags)
    await add(api, 9)  # no tags at all

    async def found(t1, t2, logic, **extra):
        body = await api(
            f"{R}/search", appid="lib", image=b64(jpeg(0)), features=[tags(t1, t2)], tag_logic=logic, **extra
        )
        assert body["err_no"] == 0
        return {ContSign(**item["contsign"]) for item in body["data_items"]}, body["has_more"]

    def signs(*seeds):
        return {ContSign.of_image(jpeg(s)) for s in seeds}

    assert (await found(1, 0, 0))[0] == signs(0, 1)
    assert (await found(1, 3, 0))[0] == signs(1)
    assert (await found(1, 3, 1))[0] == signs(0, 1, 2)
    assert (await found(4, 0, 1))[0] == signs(3)
    assert (await found(7, 0, 0))[0] == set()
    assert (await found(0, 0, 0))[0] == signs(0, 1, 2, 3, 9)  # no non-zero tag: no filter
    items, has_more = await found(1, 3, 1, rn=2)
    assert len(items) == 2 and has_more == 1


# ---- update -------------------------------------------------------------------------------------------


async def test_update_by_image_and_by_contsign(api):
    await signup(api)
    await add(api, 1, text="old")
    assert (await api(f"{R}/update", appid="lib", image=b64(jpeg(1)), features=[brief("new")]))["err_no"] == 0
    hit = (await api(f"{R}/search", appid="lib", image=b64(jpeg(1))))["data_items"][0]
    assert hit["features"] == [{"fea_id": 1000, "fea_data": b64(b"new")}]
    contsign = ContSign.of_image(jpeg(1)).to_json()
    assert (await api(f"{R}/update", appid="lib", contsign=contsign, features=[tags(5, 6)]))["err_no"] == 0
    hit = (await api(f"{R}/search", appid="lib", image=b64(jpeg(1))))["data_items"][0]
    assert hit["features"] == [{"fea_id": 1000, "fea_data": b64(b"new")}, tags(5, 6)]
    filtered = await api(f"{R}/search", appid="lib", image=b64(jpeg(1)), features=[tags(6, 0)])
    assert len(filtered["data_items"]) == 1


async def test_update_image_wins_over_contsign(api):
    await signup(api)
    await add(api, 1, text="one")
    await add(api, 2, text="two")
    body = await api(
        f"{R}/update",
        appid="lib",
        image=b64(jpeg(2)),
        contsign=ContSign.of_image(jpeg(1)).to_json(),
        features=[brief("2!")],
    )
    assert body["contsign"] == ContSign.of_image(jpeg(2)).to_json()


async def test_update_of_missing_item_is_102(api):
    await signup(api)
    body = await api(f"{R}/update", appid="lib", image=b64(jpeg(1)), features=[brief("x")])
    assert body["err_no"] == 102
    body = await api(f"{R}/update", appid="lib", contsign={"sign1": 1, "sign2": 2}, features=[brief("x")])
    assert body["err_no"] == 102
    assert await snapshot_size(api) == 0


async def test_update_needs_something_to_change(api):
    await signup(api)
    await add(api, 1)
    for body in ({"image": b64(jpeg(1))}, {"features": [brief("x")]}):
        assert (await api(f"{R}/update", appid="lib", **body))["err_no"] == 1


# ---- remove -------------------------------------------------------------------------------------------


async def test_remove_three_ways_and_idempotent(api):
    await signup(api)
    for seed in range(6):
        await add(api, seed)
    signs = [ContSign.of_image(jpeg(s)).to_json() for s in range(6)]
    assert (await api(f"{R}/remove", appid="lib", contsigns=signs[:2]))["removed"] == 2
    assert (await api(f"{R}/remove", appid="lib", contsign=signs[2]))["removed"] == 1
    assert (await api(f"{R}/remove", appid="lib", image=b64(jpeg(3))))["removed"] == 1
    assert (await api(f"{R}/remove", appid="lib", contsigns=signs[:4]))["removed"] == 0
    assert await snapshot_size(api) == 2
    results = (await api(f"{R}/search", appid="lib", image=b64(jpeg(0))))["data_items"]
    assert {tuple(r["contsign"].values()) for r in results} == {tuple(s.values()) for s in signs[4:]}


async def test_remove_prefers_contsigns_over_contsign(api):
    await signup(api)
    await add(api, 1)
    await add(api, 2)
    one, two = (ContSign.of_image(jpeg(s)).to_json() for s in (1, 2))
    assert (await api(f"{R}/remove", appid="lib", contsigns=[one], contsign=two))["removed"] == 1
    assert (await api(f"{R}/search", appid="lib", contsign=two))["err_no"] == 0


async def test_removed_item_can_be_added_again(api):
    await signup(api)
    await add(api, 1)
    await api(f"{R}/remove", appid="lib", image=b64(jpeg(1)))
    assert (await add(api, 1, text="back"))["err_no"] == 0
    hit = (await api(f"{R}/search", appid="lib", image=b64(jpeg(1))))["data_items"][0]
    assert hit["features"][0]["fea_data"] == b64(b"back")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "contsigns, contsign or image"),
        ({"contsigns": "x"}, "contsigns"),
        ({"contsigns": [{"sign1": 1}]}, "contsigns[0].sign2"),
        ({"contsigns": [{"sign1": 0, "sign2": 0}] * 10001}, "at most"),
    ],
)
async def test_remove_field_errors(api, body, field):
    await signup(api)
    data = await api(f"{R}/remove", appid="lib", **body)
    assert data["err_no"] == 1 and field in data["err_msg"], data


# ---- snapshot -----------------------------------------------------------------------------------------


async def test_snapshot_shape(api):
    await signup(api)
    await add(api, 1)
    body = await api(f"{R}/snapshot", appid="lib")
    assert body == {
        "err_no": 0,
        "err_msg": "OK",
        "snapshot": {"tag": 0, "index_size": 1, "index_capacity": 0, "queue_size": 0},
    }


async def test_min_score_keeps_only_close_matches(api):
    await signup(api)
    for seed in range(5):
        await add(api, seed)
    query = b64(near_duplicate(jpeg(2)))
    ranked = (await api(f"{R}/search", appid="lib", image=query))["data_items"]
    floor = (ranked[0]["score"] + ranked[1]["score"]) / 2
    body = await api(f"{R}/search", appid="lib", image=query, min_score=floor)
    assert [i["contsign"] for i in body["data_items"]] == [ContSign.of_image(jpeg(2)).to_json()]
    assert body["has_more"] == 0
    everything = await api(f"{R}/search", appid="lib", image=b64(jpeg(2)), min_score=-1, rn=2)
    assert len(everything["data_items"]) == 2 and everything["has_more"] == 1
    for bad in ("high", 2, True):
        assert (await api(f"{R}/search", appid="lib", image=b64(jpeg(2)), min_score=bad))["err_no"] == 1

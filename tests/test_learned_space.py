"""A library moved into its learned space (same_search/index/space.py) ranks and scores there:
spec clients still get descending scores and 1.0 for the same picture; the move is a background
rebuild; stats say which space a library ranks in and when it was fitted; an export carries the
space, so an import ranks identically; moving back gives native cosine again."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from conftest import b64, brief
from images import jpeg, near_duplicate

from same_search.app import create_app
from same_search.index.space import LearnedSpace

R = "/RTSAsService"
#: Items in the test library, and the size from which its space is fitted (``[index]
#: space_min_items``; 1,000 by default, measured in docs/quality.md).
ITEMS, MIN_ITEMS = 16, 12


@pytest.fixture
def config(config):
    return dataclasses.replace(config, index=dataclasses.replace(config.index, space_min_items=MIN_ITEMS))


async def fill(api, appid: str = "lib", items: int = ITEMS) -> list[str]:
    assert (await api(f"{R}/signup", appid=appid))["err_no"] == 0
    signs = []
    for seed in range(items):
        body = await api(f"{R}/add", appid=appid, image=b64(jpeg(seed)), features=[brief(str(seed))])
        assert body["err_no"] == 0, body
        signs.append(json.dumps(body["contsign"], sort_keys=True))
    return signs


async def stats(client, appid: str = "lib") -> dict:
    return (await (await client.get(f"/api/libraries/{appid}")).json())["library"]


async def move(client, space: str, appid: str = "lib") -> dict:
    answer = await (await client.put(f"/api/libraries/{appid}/space?wait=1", json={"space": space})).json()
    assert answer["err_no"] == 0, answer
    assert answer["rebuild"]["state"] == "done", answer
    return answer["library"]


async def hits(api, image: bytes, appid: str = "lib", **extra) -> list[tuple[str, float]]:
    body = await api(f"{R}/search", appid=appid, image=b64(image), **({"rn": ITEMS} | extra))
    assert body["err_no"] == 0, body
    return [(json.dumps(h["contsign"], sort_keys=True), h["score"]) for h in body["data_items"]]


async def test_a_moved_library_answers_in_descending_score_with_one_for_the_same_picture(client, api):
    signs = await fill(api)
    assert (await stats(client))["space"] == {
        "chosen": "native",
        "ranks_in": "native",
        "min_items": MIN_ITEMS,
    }
    native = await hits(api, jpeg(3))

    space = (await move(client, "learned"))["space"]
    assert space["chosen"] == space["ranks_in"] == "learned"
    assert space["fitted_items"] == ITEMS and space["fitted_at"] > 0 and space["dim"] > 0
    listed = (await (await client.get("/api/libraries")).json())["libraries"]
    assert [lib["space"] for lib in listed if lib["appid"] == "lib"] == [space]
    page = await (await client.get("/libraries/lib")).text()
    assert "Ranks in its learned space" in page and f"on {ITEMS} items" in page

    learned = await hits(api, jpeg(3))
    scores = [score for _, score in learned]
    assert scores == sorted(scores, reverse=True)  # the spec's order
    assert learned[0] == (signs[3], pytest.approx(1.0, abs=1e-5))  # the same picture scores 1.0
    assert all(-1.0 <= s <= 1.0 + 1e-5 for s in scores)
    assert [s for _, s in learned[1:]] != pytest.approx(
        [s for _, s in native[1:]], abs=1e-3
    )  # its own scores
    assert (await hits(api, near_duplicate(jpeg(5))))[0][0] == signs[5]  # an edited copy keeps its place

    # Pages of the spec's port concatenate in that space too.
    first = await hits(api, jpeg(7), rn=10)
    body = await api(f"{R}/search", appid="lib", image=b64(jpeg(7)), rn=10, pn=10)
    second = [(json.dumps(h["contsign"], sort_keys=True), h["score"]) for h in body["data_items"]]
    assert first + second == (await hits(api, jpeg(7)))[:20]

    # Back to native cosine: the old scores again.
    assert (await move(client, "native"))["space"]["ranks_in"] == "native"
    assert [s for _, s in await hits(api, jpeg(3))] == pytest.approx([s for _, s in native], abs=1e-5)


async def test_a_small_library_keeps_native_cosine_until_it_is_large_enough(client, api):
    await fill(api, items=MIN_ITEMS - 2)
    space = (await move(client, "learned"))["space"]
    assert (space["chosen"], space["ranks_in"]) == ("learned", "native")
    for seed in range(100, 103):  # crossing space_min_items moves it in the background
        await api(f"{R}/add", appid="lib", image=b64(jpeg(seed)), features=[brief(str(seed))])
    rebuild = await (await client.get("/api/libraries/lib/rebuild?wait=1")).json()
    if rebuild["rebuild"] is not None and rebuild["rebuild"]["state"] == "running":
        await (await client.post("/api/libraries/lib/rebuild?wait=1")).json()
    assert (await stats(client))["space"]["ranks_in"] == "learned"


async def test_an_export_carries_the_space_and_the_import_ranks_identically(
    aiohttp_client, client, api, config, embedder
):
    await fill(api)
    fitted = (await move(client, "learned"))["space"]
    before = await hits(api, jpeg(4))
    await client.close()  # a restart builds the index of the stored space again, same ranking
    client = await aiohttp_client(create_app(config, embedder))
    assert (await stats(client))["space"] == fitted

    async def api(route: str, **body) -> dict:
        return await (await client.post(route, json={"from": "pytest", **body})).json()

    assert await hits(api, jpeg(4)) == before
    export = await (await client.get("/api/libraries/lib/export?vectors=1")).read()
    answer = await (await client.post("/api/libraries/copy/import", data=export)).json()
    assert answer["err_no"] == 0 and answer["imported"] == ITEMS, answer
    assert answer["library"]["space"]["fingerprint"] == fitted["fingerprint"]
    assert answer["library"]["space"]["fitted_at"] == fitted["fitted_at"]
    for image in (jpeg(2), near_duplicate(jpeg(9)), jpeg(500)):
        original, copied = await hits(api, image), await hits(api, image, appid="copy")
        assert [k for k, _ in copied] == [k for k, _ in original]
        assert [s for _, s in copied] == pytest.approx([s for _, s in original], abs=1e-6)


async def test_bad_space_requests_are_err_no_1(client, api):
    await fill(api, items=1)
    for body in ({"space": "pca"}, {}, {"space": "learned", "x": 1}):
        answer = await (await client.put("/api/libraries/lib/space", json=body)).json()
        assert answer["err_no"] == 1 and "space" in answer["err_msg"], answer


def test_the_joined_vector_scores_the_blend_and_one_for_itself():
    rng = np.random.default_rng(0)
    sample = rng.normal(size=(200, 64)).astype(np.float32)
    sample /= np.linalg.norm(sample, axis=1, keepdims=True)
    space = LearnedSpace.fit(sample, 200, "m", dim=16, weight=0.5)
    a, b = space.apply(sample[:2])
    native = float(sample[0] @ sample[1])
    learned = float(space.projection.apply(sample[0])[0] @ space.projection.apply(sample[1])[0])
    assert float(a @ b) == pytest.approx(0.5 * native + 0.5 * learned, abs=1e-5)
    assert float(a @ a) == pytest.approx(1.0, abs=1e-5) and space.dim == 64 + 16
    assert not space.due(399) and space.due(400)  # fitted again once the library has doubled
    meta, data = space.to_export()
    again = LearnedSpace.from_export(json.loads(json.dumps(meta)), data, 64)
    assert again.fingerprint == space.fingerprint and np.allclose(
        again.apply(sample[:5]), space.apply(sample[:5])
    )

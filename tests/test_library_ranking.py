"""Re-ranking is a library's choice: stored with the library, set through the management API,
the default for new libraries from ``[search]`` (shipped as the spec's order), overridden per
request; a re-ranked answer says so and marks the hits the same-picture decision confirmed."""

from __future__ import annotations

import dataclasses
import json

import pytest
from aiohttp.test_utils import TestClient, TestServer
from conftest import b64
from test_promotion import QUERY, fill, key

from same_search.app import create_app
from same_search.config import SearchConfig

BACKENDS = ("local", "milvus")
R = "/RTSAsService"


async def set_ranking(client, appid: str, **body) -> dict:
    response = await client.put(f"/api/libraries/{appid}/ranking", json=body)
    assert response.status == 200
    return await response.json()


async def stats(client, appid: str) -> dict:
    return (await (await client.get(f"/api/libraries/{appid}")).json())["library"]


async def search(api, **extra) -> dict:
    answer = await api(f"{R}/search", appid="lib", image=b64(QUERY), rn=100, **extra)
    assert answer["err_no"] == 0, answer
    return answer


def order(answer: dict) -> list[str]:
    return [key(hit["contsign"]) for hit in answer["data_items"]]


async def test_a_new_library_answers_in_score_order_until_its_operator_chooses(client, api):
    original = await fill(api)
    assert (await stats(client, "lib"))["ranking"] == {
        "order": "score",
        "query_expansion": 0,
        "promote_same_picture": False,
    }
    plain = await search(api)
    assert "ranking" not in plain and order(plain)[0] != original  # the descriptor ranks it lower
    scores = [hit["score"] for hit in plain["data_items"]]
    assert scores == sorted(scores, reverse=True)

    chosen = await set_ranking(client, "lib", order="reranked")
    assert chosen["err_no"] == 0
    assert chosen["library"]["ranking"] == {
        "order": "reranked",
        "query_expansion": 2,
        "promote_same_picture": True,
    }
    reranked = await search(api)
    assert reranked["ranking"] == "reranked"
    # Promotion needs local features, which every backend keeps.
    assert order(reranked)[0] == original
    assert reranked["data_items"][0]["same_picture"] == 1  # why a lower score leads
    assert all("same_picture" not in hit for hit in reranked["data_items"][1:])
    assert {key(h["contsign"]): h["score"] for h in reranked["data_items"]} == pytest.approx(
        {key(h["contsign"]): h["score"] for h in plain["data_items"]}, abs=1e-6
    )  # scores never change, only the order

    # The request's own fields override the library's choice, both ways.
    assert order(await search(api, query_expansion=0, promote_same_picture=0)) == order(plain)
    back = await set_ranking(client, "lib", order="score")
    assert back["library"]["ranking"]["order"] == "score"
    assert order(await search(api)) == order(plain)
    assert order(await search(api, promote_same_picture=1))[0] == original


async def test_the_two_fields_can_be_set_one_at_a_time(client, api, backend):
    await fill(api, layouts=3)
    await set_ranking(client, "lib", promote_same_picture=True)
    assert (await stats(client, "lib"))["ranking"] == {
        "order": "reranked",
        "query_expansion": 0,
        "promote_same_picture": True,
    }
    await set_ranking(client, "lib", query_expansion=3)
    assert (await stats(client, "lib"))["ranking"]["query_expansion"] == 3
    assert (await stats(client, "lib"))["ranking"]["promote_same_picture"] is True


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"order": "best"},
        {"order": "reranked", "query_expansion": 1},
        {"query_expansion": 11},
        {"query_expansion": "2"},
        {"promote_same_picture": "yes"},
        {"ranking": "score"},
    ],
)
async def test_a_bad_ranking_is_refused_and_nothing_changes(client, api, body):
    await fill(api, layouts=2)
    answer = await set_ranking(client, "lib", **body)
    assert answer["err_no"] == 1 and answer["err_msg"]
    assert (await stats(client, "lib"))["ranking"]["order"] == "score"


async def test_a_contsign_search_keeps_score_order_in_a_reranked_library(client, api, backend):
    original = await fill(api)
    await set_ranking(client, "lib", order="reranked")
    answer = await api(f"{R}/search", appid="lib", contsign=json.loads(original), rn=10)
    assert "ranking" not in answer
    scores = [hit["score"] for hit in answer["data_items"]]
    assert scores == sorted(scores, reverse=True)


@pytest.mark.local_only
async def test_the_choice_survives_a_restart(config, embedder):
    client = TestClient(TestServer(create_app(config, embedder)))
    await client.start_server()
    try:
        await client.post(f"{R}/signup", json={"from": "t", "appid": "lib"})
        await set_ranking(client, "lib", query_expansion=4, promote_same_picture=False)
    finally:
        await client.close()
    client = TestClient(TestServer(create_app(config, embedder)))
    await client.start_server()
    try:
        assert (await stats(client, "lib"))["ranking"] == {
            "order": "reranked",
            "query_expansion": 4,
            "promote_same_picture": False,
        }
    finally:
        await client.close()


@pytest.fixture
def config(config, request):
    """``[search]`` as the test's ``reranked_default`` marker says (new libraries re-ranked)."""
    if request.node.get_closest_marker("reranked_default") is None:
        return config
    return dataclasses.replace(config, search=SearchConfig(query_expansion=2, promote_same_picture=True))


@pytest.mark.reranked_default
async def test_the_config_sets_what_new_libraries_get(client, api):
    original = await fill(api)
    assert (await stats(client, "lib"))["ranking"]["order"] == "reranked"
    assert order(await search(api))[0] == original

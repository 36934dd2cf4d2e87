"""Average query expansion on search, against the real app: the order it gives, scores that stay
cosine similarity to the query as sent, min_score, paging, tag filters, near-duplicates first."""

from __future__ import annotations

import dataclasses
import json
import struct

import numpy as np
import pytest
from conftest import b64, brief
from images import encode, jpeg, picture
from test_feature_api import features_of, request_body

from same_search.app import create_app
from same_search.config import Config, ConfigError, from_mapping
from same_search.contsign import ContSign
from same_search.search import expansion as qe
from same_search.search.ranking import MAX_EXPANSION, Ranking
from same_search.search.reads import at_least
from same_search.search.request import SearchRequest
from same_search.store.db import LibraryRow
from same_search.verify import decision
from same_search.verify.decision import DEFAULT_MIN_SCORE

R = "/RTSAsService"
#: Library pictures (seeds) and the query picture; QE changes the order for this query (checked).
SEEDS = list(range(1, 15))
QUERY_SEED = 101


@pytest.fixture
def config(config):
    """New libraries expand by 2 in this module (an operator's choice; off by default)."""
    search = dataclasses.replace(config.search, query_expansion=2, promote_same_picture=False)
    return dataclasses.replace(config, search=search)


def key(contsign: dict) -> str:
    """A contsign (a JSON object on the wire) as a dictionary key."""
    return json.dumps(contsign, sort_keys=True)


def tags(tag1: int, tag2: int) -> dict:
    return {"fea_id": 999, "fea_data": b64(struct.pack("II", tag1, tag2))}


async def descriptor(client, image: bytes) -> np.ndarray:
    """The query's vector from the feature service (the vector search uses)."""
    response = await client.post("/GeneralClassifyService/classify", json=request_body(image, "2001"))
    return np.frombuffer(features_of(await response.json())[2001], dtype="<f4")


async def fill(api, client, with_tags: bool = False) -> dict[str, np.ndarray]:
    """A library of SEEDS pictures (odd seeds tagged 7 when asked); returns contsign -> vector."""
    assert (await api(f"{R}/signup", appid="lib"))["err_no"] == 0
    vectors = {}
    for seed in SEEDS:
        features = [brief(f"item-{seed}")]
        if with_tags and seed % 2:
            features.append(tags(7, 0))
        image = jpeg(seed)
        body = await api(f"{R}/add", appid="lib", image=b64(image), features=features)
        assert body["err_no"] == 0, body
        vectors[key(body["contsign"])] = await descriptor(client, image)
    return vectors


async def search(api, image: bytes, **extra) -> dict:
    body = await api(f"{R}/search", appid="lib", image=b64(image), **extra)
    assert body["err_no"] == 0, body
    return body


def ranked(body: dict) -> list[tuple[str, float]]:
    return [(key(hit["contsign"]), hit["score"]) for hit in body["data_items"]]


def expected_order(query: np.ndarray, vectors: dict[str, np.ndarray], n: int, floor: float) -> list[str]:
    """What QE must give, computed here from the vectors: near-duplicates by score first, then
    by cosine to the query averaged with its n best hits (copies of the query itself aside)."""
    plain = sorted(vectors, key=lambda c: -float(query @ vectors[c]))
    neighbours = [c for c in plain if float(query @ vectors[c]) < 0.9999][:n]
    expanded = query + sum(vectors[c] for c in neighbours)
    expanded = expanded / np.linalg.norm(expanded)
    leading = [c for c in plain if float(query @ vectors[c]) >= floor]
    rest = sorted((c for c in vectors if c not in leading), key=lambda c: -float(expanded @ vectors[c]))
    return leading + rest


async def test_order_is_the_expanded_querys_and_scores_stay_cosine_to_the_query(api, client):
    vectors = await fill(api, client)
    image = jpeg(QUERY_SEED)
    query = await descriptor(client, image)
    plain = ranked(await search(api, image, query_expansion=0, rn=100))
    expanded = ranked(await search(api, image, rn=100, query_expansion=2))
    want = expected_order(query, vectors, 2, DEFAULT_MIN_SCORE)
    assert [c for c, _ in expanded] == want
    assert [c for c, _ in plain] != want, "pick a query whose order QE changes"
    assert sorted(c for c, _ in plain) == sorted(c for c, _ in expanded)
    for contsign, score in expanded:
        assert score == pytest.approx(float(query @ vectors[contsign]), abs=1e-5)
        assert score == pytest.approx(dict(plain)[contsign], abs=1e-5)


async def test_per_request_count_overrides_the_default(api, client):
    vectors = await fill(api, client)
    image = jpeg(QUERY_SEED)
    query = await descriptor(client, image)
    for n in (1, 3):
        body = await search(api, image, query_expansion=n, rn=100)
        assert [c for c, _ in ranked(body)] == expected_order(query, vectors, n, DEFAULT_MIN_SCORE)


async def test_off_gives_descending_scores(api, client):
    await fill(api, client)
    scores = [s for _, s in ranked(await search(api, jpeg(QUERY_SEED), query_expansion=0, rn=100))]
    assert scores == sorted(scores, reverse=True)


async def test_an_exact_copy_leads(api, client):
    vectors = await fill(api, client)
    image = jpeg(SEEDS[3])
    query = await descriptor(client, image)
    hits = ranked(await search(api, image, rn=100))
    assert hits[0] == (list(vectors)[3], pytest.approx(1.0, abs=1e-4))
    assert [c for c, _ in hits] == expected_order(query, vectors, 2, DEFAULT_MIN_SCORE)


async def test_hits_at_the_librarys_near_duplicate_floor_lead_by_score(api, client):
    vectors = await fill(api, client)
    image = jpeg(QUERY_SEED)
    query = await descriptor(client, image)
    plain = sorted(vectors, key=lambda c: -float(query @ vectors[c]))
    # A floor between the 3rd and 4th plain score makes the best three near-duplicates.
    floor = (float(query @ vectors[plain[2]]) + float(query @ vectors[plain[3]])) / 2
    response = await client.put("/api/libraries/lib/dup_policy", json={"dup_min_score": floor})
    assert (await response.json())["err_no"] == 0
    hits = [c for c, _ in ranked(await search(api, image, rn=100))]
    assert hits[:3] == plain[:3]
    assert hits == expected_order(query, vectors, 2, floor)
    assert hits != expected_order(query, vectors, 2, DEFAULT_MIN_SCORE), "the floor must matter here"


async def test_min_score_filters_on_the_original_score(api, client):
    vectors = await fill(api, client)
    image = jpeg(QUERY_SEED)
    query = await descriptor(client, image)
    scores = sorted((float(query @ v) for v in vectors.values()), reverse=True)
    floor = (scores[4] + scores[5]) / 2  # five items qualify
    hits = ranked(await search(api, image, rn=100, min_score=floor))
    plain = ranked(await search(api, image, rn=100, min_score=floor, query_expansion=0))
    assert len(hits) == 5 and all(score >= floor for _, score in hits)
    assert sorted(hits) == sorted(plain)
    want = [c for c in expected_order(query, vectors, 2, DEFAULT_MIN_SCORE) if c in dict(plain)]
    assert [c for c, _ in hits] == want
    # A page of two from a filtered ranking: has_more tells the truth.
    first = await search(api, image, rn=2, min_score=floor)
    last = await search(api, image, pn=4, rn=2, min_score=floor)
    assert first["has_more"] == 1 and last["has_more"] == 0 and len(last["data_items"]) == 1


async def test_pages_concatenate_to_the_whole_ranking(api, client):
    await fill(api, client)
    image = jpeg(QUERY_SEED)
    whole = ranked(await search(api, image, rn=100))
    pages: list[tuple[str, float]] = []
    for pn in range(0, len(whole) + 3, 3):
        body = await search(api, image, pn=pn, rn=3)
        pages += ranked(body)
        assert body["has_more"] == int(pn + 3 < len(whole))
    assert [c for c, _ in pages] == [c for c, _ in whole]
    assert len({c for c, _ in pages}) == len(pages)
    for (_, a), (_, b) in zip(pages, whole, strict=True):
        assert a == pytest.approx(b, abs=1e-6)


async def test_tag_filter_holds_in_the_expanded_search(api, client):
    vectors = await fill(api, client, with_tags=True)
    tagged = {c: v for (c, v), seed in zip(vectors.items(), SEEDS, strict=True) if seed % 2}
    image = jpeg(QUERY_SEED)
    query = await descriptor(client, image)
    hits = [c for c, _ in ranked(await search(api, image, rn=100, features=[tags(7, 0)]))]
    # The expansion neighbours come from the filtered set too.
    assert hits == expected_order(query, tagged, 2, DEFAULT_MIN_SCORE)


async def test_search_by_contsign_is_plain_unless_asked(api, client):
    """A stored item's neighbours come by descending score (exact nearest neighbours) unless the
    request asks for expansion; asked, they follow the expanded query like a search by image."""
    vectors = await fill(api, client)
    contsign = next(iter(vectors))
    body = await api(f"{R}/search", appid="lib", contsign=json.loads(contsign), rn=100)
    assert body["err_no"] == 0
    scores = [score for _, score in ranked(body)]
    assert scores == sorted(scores, reverse=True) and len(scores) == len(vectors)
    asked = await api(f"{R}/search", appid="lib", contsign=json.loads(contsign), rn=100, query_expansion=2)
    hits = [c for c, _ in ranked(asked)]
    assert hits == expected_order(vectors[contsign], vectors, 2, DEFAULT_MIN_SCORE)
    assert hits[0] == contsign


async def test_rerank_contsign_searches_applies_the_defaults_to_them(aiohttp_client, config, embedder):
    """``[search] rerank_contsign_searches = true``: searches by contsign expand by default too."""
    search_cfg = dataclasses.replace(config.search, rerank_contsign_searches=True)
    client = await aiohttp_client(create_app(dataclasses.replace(config, search=search_cfg), embedder))

    async def api(route: str, **body) -> dict:
        return await (await client.post(route, json={"from": "pytest", **body})).json()

    vectors = await fill(api, client)
    contsign = next(iter(vectors))
    body = await api(f"{R}/search", appid="lib", contsign=json.loads(contsign), rn=100)
    assert [c for c, _ in ranked(body)] == expected_order(vectors[contsign], vectors, 2, DEFAULT_MIN_SCORE)


async def test_same_picture_is_unaffected(api, client):
    await fill(api, client)
    big = picture(SEEDS[2], (480, 360))  # enough keypoints for the local-feature check
    stored = await api(f"{R}/add", appid="lib", image=b64(encode(big)), features=[brief("big")])
    assert stored["err_no"] == 0
    edited = encode(big.crop((90, 60, 410, 300)), quality=60)
    with_qe = await search(api, edited, same_picture=1, query_expansion=3)
    without = await search(api, edited, same_picture=1, query_expansion=0)
    assert ranked(with_qe) == ranked(without)
    assert stored["contsign"] in [hit["contsign"] for hit in with_qe["data_items"]]


@pytest.mark.parametrize("value", [-1, MAX_EXPANSION + 1, "2", 1.5, True, None])
async def test_bad_query_expansion_is_err_no_1(api, client, value):
    await fill(api, client)
    body = await api(f"{R}/search", appid="lib", image=b64(jpeg(QUERY_SEED)), query_expansion=value)
    if value is None:  # JSON null: absent, the default applies
        assert body["err_no"] == 0
        return
    assert body["err_no"] == 1 and "query_expansion" in body["err_msg"]


def test_config_section_and_its_bounds():
    search = Config().search
    # New libraries answer in the spec's order (descending score) unless configured.
    assert (search.query_expansion, search.promote_same_picture) == (0, False)
    reranked = LibraryRow(1, "lib", "m", 4, "f", 0.0, query_expansion=2, promote_same_picture=True)
    by_image, by_contsign = SearchRequest(image=b"x"), SearchRequest(contsign=ContSign(1, 2))
    # A library's choice ranks its searches by image; by contsign they stay plain nearest
    # neighbours by descending score unless configured or asked.
    assert by_image.ranking(reranked, search) == Ranking(2, True)
    assert by_contsign.ranking(reranked, search) == Ranking(0, False)
    everywhere = from_mapping({"search": {"rerank_contsign_searches": True}}).search
    assert by_contsign.ranking(reranked, everywhere) == Ranking(2, True)
    asked = SearchRequest(image=b"x", query_expansion=0, promote_same_picture=False)
    assert asked.ranking(reranked, search) == Ranking(0, False)
    assert from_mapping({"search": {"query_expansion": 3}}).search.query_expansion == 3
    for bad in (-1, MAX_EXPANSION + 1, True, "2"):
        with pytest.raises(ConfigError, match="query_expansion"):
            from_mapping({"search": {"query_expansion": bad}})


def test_merged_ranking_keeps_near_duplicates_first_and_filters_on_original_scores():
    leading = [(1, 0.99), (2, 0.96)]
    original = {1: 0.99, 2: 0.96, 3: 0.5, 4: 0.7, 5: 0.6}
    assert qe.merged_ranking(leading, [4, 1, 3, 5, 2], original) == [
        (1, 0.99),
        (2, 0.96),
        (4, 0.7),
        (3, 0.5),
        (5, 0.6),
    ]
    assert at_least(qe.merged_ranking(leading, [4, 3, 5], original), 0.55) == [
        (1, 0.99),
        (2, 0.96),
        (4, 0.7),
        (5, 0.6),
    ]
    assert qe.same_picture_prefix([(1, 0.99), (2, 0.9), (3, 0.97)], decision.ADD) == [(1, 0.99)]
    assert qe.expanding_keys([(1, 1.0), (2, 0.99995), (3, 0.9), (4, 0.8), (5, 0.7)], 2) == [3, 4]

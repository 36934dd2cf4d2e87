"""Search's ``promote_same_picture`` on the real app: an edited copy that the descriptor ranks
below look-alikes comes first once the same-picture check confirms it; scores never change.

The libraries of this module are re-ranked (``[search]`` gives new libraries query expansion 2
and promotion, as an operator who chose re-ranking has them)."""

from __future__ import annotations

import dataclasses
import json

import pytest
from conftest import b64, brief
from images import encode, jpeg
from PIL import Image, ImageDraw
from test_same_picture import scene

from same_search.app import create_app
from same_search.config import SearchConfig
from same_search.search import promotion
from same_search.verify import decision, service
from same_search.verify.service import Verdict

R = "/RTSAsService"
#: Six photos of one kind of scene (one palette, six layouts): look-alikes of each other.
PALETTE = 60


def sticker(image: Image.Image) -> Image.Image:
    """A black sticker over the lower right 30% of the picture."""
    out = image.copy()
    w, h = image.size
    ImageDraw.Draw(out).rectangle((w // 2, int(h * 0.4), w, h), fill=(0, 0, 0))
    return out


@pytest.fixture
def config(config):
    """New libraries are re-ranked: what ``PUT .../ranking {"order": "reranked"}`` gives one."""
    return dataclasses.replace(config, search=SearchConfig(query_expansion=2, promote_same_picture=True))


#: The edited copy of layout 1 the descriptor ranks below some look-alikes.
QUERY = encode(sticker(scene(PALETTE, 1)), quality=70)


def key(contsign: dict) -> str:
    return json.dumps(contsign, sort_keys=True)


async def fill(api, layouts: int = 6) -> str:
    """``layouts`` look-alikes; returns the key of the one the query is a copy of."""
    assert (await api(f"{R}/signup", appid="lib"))["err_no"] == 0
    keys = []
    for layout in range(1, layouts + 1):
        body = await api(
            f"{R}/add", appid="lib", image=b64(encode(scene(PALETTE, layout))), features=[brief(str(layout))]
        )
        assert body["err_no"] == 0, body
        keys.append(key(body["contsign"]))
    return keys[0]


async def ranking(api, **extra) -> list[tuple[str, float]]:
    body = await api(f"{R}/search", appid="lib", image=b64(QUERY), rn=100, **extra)
    assert body["err_no"] == 0, body
    return [(key(hit["contsign"]), hit["score"]) for hit in body["data_items"]]


async def test_a_confirmed_copy_comes_first_with_its_score_unchanged(api):
    original = await fill(api)
    plain = await ranking(api, query_expansion=0, promote_same_picture=0)
    assert plain[0][0] != original, "the query must be one the descriptor gets wrong"
    promoted = await ranking(api, query_expansion=0, promote_same_picture=1)
    assert promoted[0][0] == original
    assert promoted[1:] == [hit for hit in plain if hit[0] != original]
    assert dict(promoted) == pytest.approx(dict(plain), abs=1e-6)


async def test_promotion_on_top_of_query_expansion_and_paging(api):
    original = await fill(api)
    whole = await ranking(api, promote_same_picture=1, query_expansion=2)
    assert whole[0][0] == original
    pages = []
    for pn in range(0, 6, 2):
        body = await api(
            f"{R}/search",
            appid="lib",
            image=b64(QUERY),
            pn=pn,
            rn=2,
            promote_same_picture=1,
            query_expansion=2,
        )
        pages += [(key(hit["contsign"]), hit["score"]) for hit in body["data_items"]]
    assert [k for k, _ in pages] == [k for k, _ in whole]


async def test_pages_past_the_checked_depth_concatenate_without_repeats_or_gaps(api):
    """Every page, also those starting past the 10 checked candidates, is cut from one promoted
    ranking: a confirmed copy shows up once, at the top, and nothing is skipped."""
    original = await fill(api)
    for seed in range(20):
        body = await api(f"{R}/add", appid="lib", image=b64(jpeg(seed)), features=[brief(f"other-{seed}")])
        assert body["err_no"] == 0, body
    for expansion in (0, 2):
        whole = await ranking(api, query_expansion=expansion)
        assert whole[0][0] == original and len(whole) == 26
        pages = []
        for pn in range(0, 27, 3):
            body = await api(
                f"{R}/search", appid="lib", image=b64(QUERY), pn=pn, rn=3, query_expansion=expansion
            )
            assert body["has_more"] == int(pn + 3 < len(whole))
            pages += [(key(hit["contsign"]), hit["score"]) for hit in body["data_items"]]
        assert [k for k, _ in pages] == [k for k, _ in whole]


async def test_a_copy_ranked_below_ten_look_alikes_is_found_deeper(api):
    """Among 40 look-alikes the sticker copy's original ranks past the first 10 checked; the
    screened deeper check finds it and puts it first, score unchanged; ``same_picture`` looks as
    deep and answers it alone, with the same score."""
    original = await fill(api, layouts=40)
    plain = await ranking(api, query_expansion=0, promote_same_picture=0)
    position = [k for k, _ in plain].index(original)
    assert decision.DEPTH <= position < decision.DEEP_DEPTH, "the original must rank past the first check"
    for expansion in (0, 2):
        promoted = await ranking(api, query_expansion=expansion)
        assert promoted[0] == plain[position]
    # A short page verifies the first 10 under the search floors, then screens deeper.
    body = await api(f"{R}/search", appid="lib", image=b64(QUERY), rn=5, same_picture=1)
    assert [(key(hit["contsign"]), hit["score"]) for hit in body["data_items"]] == [plain[position]]
    # Without local features on the query's side nothing deeper is ever confirmed.
    assert service.judge(None, plain[10:30], {}, decision.DEEP) == [
        service.Verdict(k, score, False, None) for k, score in plain[10:30]
    ]


async def test_look_alikes_are_never_promoted(api):
    await fill(api)
    look_alike = encode(scene(PALETTE, 7))  # another layout: not in the library
    plain = await api(
        f"{R}/search", appid="lib", image=b64(look_alike), rn=100, query_expansion=0, promote_same_picture=0
    )
    promoted = await api(
        f"{R}/search", appid="lib", image=b64(look_alike), rn=100, query_expansion=0, promote_same_picture=1
    )
    assert promoted["data_items"] == plain["data_items"]


async def test_on_by_default_for_searches_by_image_and_a_request_turns_it_off(api):
    original = await fill(api)
    assert (await ranking(api))[0][0] == original
    assert (await ranking(api, promote_same_picture=0))[0][0] != original
    assert (await ranking(api, promote_same_picture=None))[0][0] == original  # null: the default


async def test_searches_by_contsign_rank_by_score_unless_asked(api):
    await fill(api)
    lookalike = json.loads(next(iter(dict(await ranking(api, promote_same_picture=0)))))
    body = await api(f"{R}/search", appid="lib", contsign=lookalike, rn=100)
    scores = [hit["score"] for hit in body["data_items"]]
    assert body["err_no"] == 0 and scores == sorted(scores, reverse=True)


async def test_a_library_in_score_order_promotes_only_when_asked(aiohttp_client, config, embedder):
    config = dataclasses.replace(config, search=SearchConfig(query_expansion=0, promote_same_picture=False))
    client = await aiohttp_client(create_app(config, embedder))

    async def api(route: str, **body):
        body.setdefault("from", "pytest")
        return await (await client.post(route, json=body)).json()

    original = await fill(api)
    assert (await ranking(api))[0][0] != original
    assert (await ranking(api, promote_same_picture=1))[0][0] == original


@pytest.mark.parametrize("bad", [2, -1, "1", True])
async def test_bad_flag_is_err_no_1(api, bad):
    await fill(api)
    body = await api(f"{R}/search", appid="lib", image=b64(QUERY), promote_same_picture=bad)
    assert body["err_no"] == 1 and "promote_same_picture" in body["err_msg"]


def confirmed(*hits: tuple[int, float]) -> list[Verdict]:
    return [Verdict(key, score, True, None) for key, score in hits]


def test_promoted_puts_confirmed_hits_first_and_keeps_the_rest_in_order():
    found = [(k, 1.0 - k / 100) for k in range(20)]
    assert promotion.promoted(found, confirmed(found[3], found[1], found[15])) == [
        found[1],
        found[3],
        found[15],
        *[hit for hit in found if hit[0] not in (1, 3, 15)],
    ]
    # A confirmed hit the page's ranking did not reach (query expansion moved it deeper) leads too.
    assert promotion.promoted(found[:5], confirmed((42, 0.7))) == [(42, 0.7), *found[:5]]

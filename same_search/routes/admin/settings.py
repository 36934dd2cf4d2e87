"""A library's operator settings on the management port: its near-duplicate policy on add and
its ranking. Each answer is the library's stats, settings included."""

from __future__ import annotations

import dataclasses

from aiohttp import web

from same_search.errors import bad_request
from same_search.near_duplicates import check_min_score, check_mode
from same_search.routes.admin.common import json_body, library
from same_search.routes.envelope import ok
from same_search.search.ranking import check_expansion


async def set_dup_policy(request: web.Request) -> web.Response:
    """``{"dup_policy": "off|warn|reject", "dup_min_score": x | null}``: the library's default.

    A field left out keeps its current value; ``"dup_min_score": null`` returns to the built-in floors.
    """
    services, lib = await library(request)
    body = await json_body(request)
    if not {"dup_policy", "dup_min_score"} & body.keys():
        raise bad_request('give dup_policy ("off", "warn" or "reject") and/or dup_min_score')
    mode = check_mode(body["dup_policy"]) if "dup_policy" in body else lib.row.dup_policy
    floor = lib.row.dup_min_score
    if "dup_min_score" in body:
        floor = None if body["dup_min_score"] is None else check_min_score(body["dup_min_score"])
    settings = dataclasses.replace(lib.row.settings, dup_policy=mode, dup_min_score=floor)
    await services.libraries.registry.save_settings(lib, settings)
    return ok(library=await services.libraries.stats.of(lib))


#: Named rankings a console or a script can ask for instead of the two fields.
PRESETS = {"score": (0, False), "reranked": (2, True)}


async def set_ranking(request: web.Request) -> web.Response:
    """How the library ranks its searches by image: ``{"order": "score"}`` (the spec's order,
    nearest neighbours by descending score), ``{"order": "reranked"}`` (query expansion 2 and
    promotion of confirmed copies, as measured in docs/quality.md), or the two fields
    ``{"query_expansion": 0-10, "promote_same_picture": true|false}``; a field left out keeps
    its value."""
    services, lib = await library(request)
    body = await json_body(request)
    known = {"order", "query_expansion", "promote_same_picture"}
    if not known & body.keys():
        raise bad_request(
            'give {"order": "score" | "reranked"} or query_expansion (0-10) and/or promote_same_picture '
            "(true/false)"
        )
    expansion, promote = lib.row.query_expansion, lib.row.promote_same_picture
    if "order" in body:
        if body["order"] not in PRESETS or len(known & body.keys()) > 1:
            raise bad_request('order must be "score" or "reranked", alone (or give the two fields instead)')
        expansion, promote = PRESETS[body["order"]]
    if "query_expansion" in body:
        try:
            expansion = check_expansion(body["query_expansion"])
        except ValueError as exc:
            raise bad_request(str(exc)) from None
    if "promote_same_picture" in body:
        if not isinstance(body["promote_same_picture"], bool) and body["promote_same_picture"] not in (0, 1):
            raise bad_request("promote_same_picture must be true or false")
        promote = bool(body["promote_same_picture"])
    settings = dataclasses.replace(lib.row.settings, query_expansion=expansion, promote_same_picture=promote)
    await services.libraries.registry.save_settings(lib, settings)
    return ok(library=await services.libraries.stats.of(lib))

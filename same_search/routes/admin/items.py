"""Items on the management port: browse, read, delete, thumbnails, and search by picture
(what the console's drop zone and "find similar" send)."""

from __future__ import annotations

from aiohttp import web

from same_search.embed.images import Region
from same_search.errors import ApiError, ErrNo, bad_request, shown
from same_search.routes.admin.common import MAX_PAGE, contsign_in, item_card, json_body, library, query_int
from same_search.routes.envelope import ok, read_body
from same_search.routes.fields import decode_base64, parse_region
from same_search.search.request import SearchRequest


async def list_items(request: web.Request) -> web.Response:
    services, lib = await library(request)
    offset = query_int(request, "offset", 0, 1 << 62)
    limit = query_int(request, "limit", 50, MAX_PAGE)
    items = await services.libraries.reads.items_page(lib, offset, limit)
    total = await services.libraries.count(lib)
    return ok(
        total=total,
        offset=offset,
        items=[item_card(lib.row.appid, item) for item in items],
        has_more=int(offset + len(items) < total),
    )


async def get_item(request: web.Request) -> web.Response:
    services, lib = await library(request)
    found = await services.libraries.reads.item(lib, contsign_in(request))
    if found is None:
        raise ApiError(ErrNo.UPDATE_MISSING, f"no item {request.match_info['contsign']} in {lib.row.appid!r}")
    return ok(item=item_card(lib.row.appid, found))


async def delete_item(request: web.Request) -> web.Response:
    services, lib = await library(request)
    return ok(removed=await services.libraries.writes.remove(lib, [contsign_in(request)]))


#: The fields an edit may carry.
EDITABLE = frozenset({"brief", "brief_text", "tags"})
UINT32_MAX = (1 << 32) - 1


async def edit_item(request: web.Request) -> web.Response:
    """Change an item's brief and/or tags, as the spec's ``update`` does: ``{"brief_text": str}``
    (stored as UTF-8) or ``{"brief": base64}``, and/or ``{"tags": [tag1, tag2]}``. A field left
    out keeps its value; answers the item as it is now (err_no 102 when it is not stored)."""
    services, lib = await library(request)
    contsign = contsign_in(request)
    body = await json_body(request)
    unknown = sorted(set(body) - EDITABLE)
    if unknown or not body:
        raise bad_request('send "brief_text" (or base64 "brief") and/or "tags": [tag1, tag2]')
    if "brief" in body and "brief_text" in body:
        raise bad_request("send brief_text or brief, not both")
    brief = _edited_brief(body, services.cfg.limits.brief_max_bytes)
    tags = _edited_tags(body.get("tags"))
    await services.libraries.writes.update(lib, contsign, brief, tags)
    found = await services.libraries.reads.item(lib, contsign)
    if found is None:  # removed meanwhile
        raise ApiError(ErrNo.UPDATE_MISSING, f"no item {request.match_info['contsign']} in {lib.row.appid!r}")
    return ok(item=item_card(lib.row.appid, found))


def _edited_brief(body: dict, limit: int) -> bytes | None:
    if "brief_text" in body:
        if not isinstance(body["brief_text"], str):
            raise bad_request("brief_text must be a string")
        try:
            brief = body["brief_text"].encode("utf-8")
        except UnicodeEncodeError:
            raise bad_request("brief_text is not valid Unicode (a lone surrogate)") from None
    elif "brief" in body:
        brief = decode_base64(body["brief"], "brief")
    else:
        return None
    if len(brief) > limit:
        raise bad_request(f"the brief is {len(brief)} bytes; at most {limit} are allowed")
    return brief


def _edited_tags(value: object) -> tuple[int, int] | None:
    if value is None:
        return None
    if (
        not isinstance(value, list)
        or len(value) != 2
        or not all(isinstance(t, int) and not isinstance(t, bool) and 0 <= t <= UINT32_MAX for t in value)
    ):
        raise bad_request("tags must be two integers from 0 to 4294967295: [tag1, tag2]")
    return value[0], value[1]


#: What ``?placeholder=1`` answers for an item without a stored thumbnail (imported as vectors,
#: or added with ``[storage] thumbnail_side = 0``): an image, so a page's <img> shows a grey tile
#: saying so instead of a broken picture. Without the parameter the answer stays err_no 102.
PLACEHOLDER_SVG = (
    '<svg xmlns="http://www.w3.org/2000/svg" width="128" height="128" viewBox="0 0 128 128">'
    '<rect width="128" height="128" fill="#e4e4e4"/>'
    '<g font-family="sans-serif" font-size="13" fill="#777" text-anchor="middle">'
    '<text x="64" y="60">no</text><text x="64" y="78">thumbnail</text></g>'
    "</svg>"
)


async def thumbnail(request: web.Request) -> web.Response:
    """The stored JPEG; ``?placeholder=1``: a placeholder image when none is stored."""
    services, lib = await library(request)
    contsign = contsign_in(request)
    jpeg = await services.libraries.reads.thumbnail(lib, contsign)
    if jpeg is None and request.query.get("placeholder") == "1":
        return web.Response(
            text=PLACEHOLDER_SVG, content_type="image/svg+xml", headers={"Cache-Control": "private, no-store"}
        )
    if jpeg is None:
        raise ApiError(
            ErrNo.UPDATE_MISSING,
            f"no thumbnail for item {contsign.sign1},{contsign.sign2} in library {lib.row.appid!r}: "
            "no such item, or it was added with [storage] thumbnail_side = 0",
        )
    # Never in a shared cache; with tokens not even in the browser's, so no picture of a library
    # outlives the session that was allowed to see it (logout also clears the cache).
    cache = "private, no-store" if services.cfg.auth.enabled else "private, max-age=86400"
    return web.Response(body=jpeg, content_type="image/jpeg", headers={"Cache-Control": cache})


async def search_image(request: web.Request) -> web.Response:
    """Search with the raw image as the body, or ``?contsign=`` for a stored item's neighbours;
    ``?pn=&rn=`` page, ``?min_score=`` filters, ``?region=`` boxes, ``?same_picture=1`` keeps
    the hits the same-picture check confirms. Ranked as the library chose (the same pipeline as
    the retrieval port); the answer says which ranking answered, and a confirmed hit where the
    copy lies (``region``)."""
    services, lib = await library(request)
    rn = query_int(request, "rn", 20, services.cfg.limits.max_rn)
    pn = query_int(request, "pn", 0, 1 << 30)
    contsign = contsign_in(request, request.query["contsign"]) if "contsign" in request.query else None
    region = query_region(request)
    if contsign is not None and region is not None:  # as the retrieval port's search says
        raise bad_request("region needs an image to cut it from; a stored item's vector has no region")
    image = None if contsign is not None else bytes(await read_body(request))
    same_picture = request.query.get("same_picture", "0")
    if same_picture not in ("0", "1"):
        raise bad_request("same_picture must be 0 or 1")
    search = SearchRequest(
        image, contsign, region, pn, rn, min_score=_min_score(request), same_picture=same_picture == "1"
    )
    page = await services.libraries.search.run(lib, search)
    results = [
        {
            **item_card(lib.row.appid, hit.item),
            "score": hit.score,
            "same_picture": hit.confirmed,
            "region": None if hit.region is None else hit.region.to_json(),
        }
        for hit in page.hits
    ]
    return ok(results=results, has_more=int(page.has_more), ranking=page.ranking.to_json())


def _min_score(request: web.Request) -> float | None:
    text = request.query.get("min_score")
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not -1.0 <= value <= 1.0:
        raise bad_request("min_score must be a number from -1 to 1")
    return value


def query_region(request: web.Request) -> Region | None:
    """``?region=x,y,w,h`` (pixels, or fractions with ``&unit=fraction``): the console's box."""
    text = request.query.get("region")
    if not text:
        return None
    try:
        x, y, w, h = (float(part) for part in text.split(","))
    except ValueError:
        raise bad_request(f"region {shown(text)} must be x,y,w,h") from None
    return parse_region({"x": x, "y": y, "w": w, "h": h, "unit": request.query.get("unit", "px")})

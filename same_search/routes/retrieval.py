"""Retrieval service, port 8025: ``/RTSAsService/{signup,add,update,search,remove,snapshot}``.

Handlers only translate between the wire and :class:`LibraryService`; every rule about what
is stored lives there.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from same_search.contsign import ContSign
from same_search.errors import ApiError, ErrNo, bad_request
from same_search.libraries import DuplicateAdd, Item, Library, NearDuplicateAdd, SearchPage, TagFilter
from same_search.near_duplicates import DupPolicy, check_min_score, check_mode, resolve
from same_search.routes.auth import check_token, presented_token
from same_search.routes.envelope import APPID, LOGID, ok, read_body
from same_search.routes.fields import (
    Fields,
    brief_of,
    encode_base64,
    pack_tags,
    parse_json_object,
    tags_of,
)
from same_search.search.ranking import check_expansion
from same_search.search.request import SearchRequest
from same_search.services import SERVICES, Services
from same_search.wire import FEA_BRIEF, FEA_TAGS
from same_search.wire import RTS_PREFIX as PREFIX


def item_json(item: Item, score: float | None = None) -> dict[str, Any]:
    """A stored item in the spec's ``data_items`` shape."""
    features = [{"fea_id": FEA_BRIEF, "fea_data": encode_base64(item.brief)}]
    if item.tags is not None:
        features.append({"fea_id": FEA_TAGS, "fea_data": encode_base64(pack_tags(item.tags))})
    body: dict[str, Any] = {"contsign": item.contsign.to_json()}
    if score is not None:
        body["score"] = score
    body["features"] = features
    return body


async def _read(request: web.Request) -> tuple[Services, Fields, str]:
    """Services, the parsed fields, and the library name, with the common checks done."""
    services = request.app[SERVICES]
    fields = Fields(parse_json_object(await read_body(request)))
    request[LOGID] = fields.data.get("logid", "-")
    fields.check_common()
    name = fields.library_name()
    request[APPID] = name
    # The token is checked against the library the request resolves to (appid + sub_lib), never
    # the bare appid: ``shop`` + sub_lib ``2`` is the library ``shop_2``, maybe another tenant's.
    check_token(services.cfg.auth, name, presented_token(request, fields.data))
    return services, fields, name


async def _library(request: web.Request) -> tuple[Services, Fields, Library]:
    services, fields, name = await _read(request)
    return services, fields, await services.libraries.get(name)


async def signup(request: web.Request) -> web.Response:
    services, fields, name = await _read(request)
    # Extension: ``model`` names a model profile ([models.<name>]); absent: the default model.
    model = fields.data.get("model")
    if model is not None and not isinstance(model, str):
        raise bad_request("model must be the name of a model profile (a string)")
    await services.libraries.registry.signup(name, model)
    return ok()


async def add(request: web.Request) -> web.Response:
    services, fields, lib = await _library(request)
    features = fields.features()
    brief = brief_of(features, services.cfg.limits.brief_max_bytes, required=True)
    tags = tags_of(features)
    policy = dup_policy(fields, lib)
    region = fields.region()
    image = await _image_or_url(services, fields, required=True)  # last: a URL costs a fetch
    assert image is not None and brief is not None
    try:
        result = await services.libraries.writes.add(lib, image, brief, tags, policy, region)
    except DuplicateAdd as exc:
        raise ApiError(ErrNo.DUPLICATED_ADD, exc.err_msg, data_items=[item_json(exc.item)]) from None
    except NearDuplicateAdd as exc:
        close = [item_json(hit.item, hit.score) for hit in exc.hits]
        raise ApiError(ErrNo.DUPLICATED_ADD, exc.err_msg, data_items=close) from None
    if policy.mode == "warn":
        close = [item_json(hit.item, hit.score) for hit in result.near_duplicates]
        return ok(contsign=result.contsign.to_json(), data_items=close)
    return ok(contsign=result.contsign.to_json())


async def _image_or_url(services: Services, fields: Fields, required: bool) -> bytes | None:
    """The ``image``, or (extension) the picture at ``url`` when the operator allows fetching."""
    if not fields.has("url"):
        return fields.image(required=required)
    if fields.has("image"):
        raise bad_request("give image or url, not both")
    return await services.fetcher.fetch(fields.data["url"])


def dup_policy(fields: Fields, lib: Library) -> DupPolicy:
    """Extension: ``dup_policy`` and ``dup_min_score`` of the request over the library's default."""
    mode = fields.data.get("dup_policy")
    floor = fields.data.get("dup_min_score")
    return resolve(
        lib.row.dup_policy,
        lib.row.dup_min_score,
        None if mode is None else check_mode(mode),
        None if floor is None else check_min_score(floor),
    )


async def update(request: web.Request) -> web.Response:
    services, fields, lib = await _library(request)
    contsign = _target(fields)
    features = fields.features()
    brief = brief_of(features, services.cfg.limits.brief_max_bytes, required=False)
    tags = tags_of(features)
    if brief is None and tags is None:
        raise bad_request(
            f"features must contain the brief (fea_id {FEA_BRIEF}) and/or tags (fea_id {FEA_TAGS})"
        )
    await services.libraries.writes.update(lib, contsign, brief, tags)
    return ok(contsign=contsign.to_json())


def _target(fields: Fields, missing: str = "image or contsign is required") -> ContSign:
    """The item a request names: the image's contsign wins over a ``contsign`` field."""
    image = fields.image(required=False)
    if image is not None:
        return ContSign.of_image(image)
    contsign = fields.contsign()
    if contsign is None:
        raise bad_request(missing)
    return contsign


async def search(request: web.Request) -> web.Response:
    services, fields, lib = await _library(request)
    page = await services.libraries.search.run(lib, await search_request(services, fields))
    return ok(**page_json(page))


def page_json(page: SearchPage) -> dict[str, Any]:
    """A page as the spec answers it: ``data_items`` by the ranking, ``has_more``. A re-ranked
    answer (a library's or a request's choice) also says so (``ranking``) and marks each hit the
    same-picture decision confirmed (``same_picture: 1``): why a lower score may lead. A hit its
    geometry confirmed (``same_picture`` searches, promotion) carries ``region``: where the copy
    lies in the stored picture and in the query."""
    body: dict[str, Any] = {}
    items = []
    for hit in page.hits:
        shown = item_json(hit.item, hit.score)
        if page.ranking.reranked and hit.confirmed:
            shown["same_picture"] = 1
        if hit.region is not None:  # extension: where a confirmed copy lies (docs/api.md)
            shown["region"] = hit.region.to_json()
        items.append(shown)
    body["data_items"] = items
    body["has_more"] = int(page.has_more)
    if page.ranking.reranked:
        body["ranking"] = page.ranking.name
    return body


async def search_request(services: Services, fields: Fields) -> SearchRequest:
    """The retrieval port's search fields as a :class:`SearchRequest` (err_no 1 naming a bad one)."""
    limits = services.cfg.limits
    pn = fields.uint("pn", 0)
    rn = fields.uint("rn", limits.default_rn, maximum=limits.max_rn)
    tag_filter = _tag_filter(fields)
    same_picture = _flag(fields, "same_picture")
    promote = _optional_flag(fields, "promote_same_picture")
    min_score, expansion = _min_score(fields), _query_expansion(fields)
    region = fields.region()
    image = await _image_or_url(services, fields, required=False)  # last: a URL costs a fetch
    contsign = None
    if image is None:
        if region is not None:
            raise bad_request(
                "region needs an image (or url) to cut it from; a stored item's vector has no region"
            )
        contsign = fields.contsign()
        if contsign is None:
            raise bad_request("image or contsign is required")
    return SearchRequest(
        image, contsign, region, pn, rn, tag_filter, min_score, same_picture, expansion, promote
    )


def _flag(fields: Fields, name: str, default: bool = False) -> bool:
    """An optional 0/1 extension field (absent = ``default``)."""
    value = _optional_flag(fields, name)
    return default if value is None else value


def _optional_flag(fields: Fields, name: str) -> bool | None:
    """An optional 0/1 extension field; None when absent (the caller's default applies)."""
    value = fields.data.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or value not in (0, 1):
        raise bad_request(f"{name} must be 0 or 1")
    return value == 1


def _min_score(fields: Fields) -> float | None:
    """Optional extension: only results scoring at least this (near-duplicates only, say)."""
    value = fields.data.get("min_score")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not -1.0 <= value <= 1.0:
        raise bad_request("min_score must be a number from -1 to 1")
    return float(value)


def _query_expansion(fields: Fields) -> int | None:
    """Optional extension: how many best hits expand the query (0 = off); absent = the config's."""
    value = fields.data.get("query_expansion")
    if value is None:
        return None
    try:
        return check_expansion(value)
    except ValueError as exc:
        raise bad_request(str(exc)) from None


def _tag_filter(fields: Fields) -> TagFilter | None:
    tags = tags_of(fields.features())
    logic = fields.uint("tag_logic", 0)
    if logic not in (0, 1):
        raise bad_request("tag_logic must be 0 (all tags) or 1 (any tag)")
    return None if tags is None else TagFilter(tags, match_all=logic == 0)


async def remove(request: web.Request) -> web.Response:
    """The spec's order: ``contsigns`` when it holds any; else the item the request names, where
    an image's contsign wins over a ``contsign`` field (the spec's ``consign`` row)."""
    services, fields, lib = await _library(request)
    targets = fields.contsigns()
    if not targets:
        targets = [_target(fields, "contsigns, contsign or image is required")]
    removed = await services.libraries.writes.remove(lib, targets)
    return ok(removed=removed)


async def snapshot(request: web.Request) -> web.Response:
    services, _, lib = await _library(request)
    return ok(snapshot=await services.libraries.stats.snapshot(lib))


def add_routes(app: web.Application) -> None:
    """Register the six retrieval routes."""
    for name, handler in (
        ("signup", signup),
        ("add", add),
        ("update", update),
        ("search", search),
        ("remove", remove),
        ("snapshot", snapshot),
    ):
        app.router.add_post(f"{PREFIX}/{name}", handler)

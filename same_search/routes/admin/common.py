"""What every management route shares: the operator check, the library in the path, the
contsign in the path, query-string integers, JSON bodies, and an item as the API shows it."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from aiohttp import web

from same_search import wire
from same_search.contsign import ContSign
from same_search.errors import bad_request, shown
from same_search.libraries import Item, Library
from same_search.routes.auth import WILDCARD, check_token, presented_token
from same_search.routes.envelope import APPID
from same_search.routes.fields import check_library_name, encode_base64, is_decimal
from same_search.services import SERVICES, Services

#: The longest page of items, groups or results one request may ask for.
MAX_PAGE = 1000


def operator(request: web.Request) -> Services:
    """The services, once the request carries the operator's token (when tokens are set)."""
    services = request.app[SERVICES]
    check_token(services.cfg.auth, WILDCARD, presented_token(request, {}))
    return services


async def library(request: web.Request) -> tuple[Services, Library]:
    """The services and the served library named in the path (err_no 103 / 6 otherwise)."""
    services = operator(request)
    appid = request.match_info["appid"]
    request[APPID] = appid
    # No library can have a name the naming rule refuses; the refusal does not quote it back.
    return services, await services.libraries.get(check_library_name(appid))


def contsign_in(request: web.Request, text: str | None = None) -> ContSign:
    """The ``sign1,sign2`` in the URL (or ``text``) as a ContSign."""
    text = request.match_info["contsign"] if text is None else text
    try:
        sign1, sign2 = (int(part) for part in text.split(","))
    except ValueError:
        raise bad_request(f"contsign {shown(text)} must be 'sign1,sign2'") from None
    return ContSign.from_json({"sign1": sign1, "sign2": sign2})


def query_int(request: web.Request, name: str, default: int, maximum: int) -> int:
    """An integer query parameter from 0 to ``maximum`` (err_no 1 naming it otherwise)."""
    value = request.query.get(name, str(default))
    if not is_decimal(value) or len(value) > 20 or int(value) > maximum:
        raise bad_request(f"{name} must be an integer from 0 to {maximum}")
    return int(value)


async def json_body(request: web.Request) -> dict[str, Any]:
    """The body as a JSON object (an empty body is an empty object)."""
    if not request.can_read_body:
        return {}
    try:
        body = await request.json()
    except ValueError:
        raise bad_request("body must be a JSON object") from None
    if not isinstance(body, dict):
        raise bad_request("body must be a JSON object")
    return body


def item_card(appid: str, item: Item) -> dict[str, Any]:
    """An item as the management API and the console show it (the wire API's shape is
    ``routes.retrieval.item_json``)."""
    try:
        text: str | None = item.brief.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    key = f"{item.contsign.sign1},{item.contsign.sign2}"
    return {
        "contsign": item.contsign.to_json(),
        "key": key,
        "brief": encode_base64(item.brief),
        "brief_text": text,
        "tags": list(item.tags) if item.tags is not None else None,
        "created": item.created_at,
        "updated": item.updated_at,
        "thumbnail": f"{wire.API}/libraries/{quote(appid, safe='')}/items/{key}/thumbnail",
    }

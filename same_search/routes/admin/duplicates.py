"""The duplicates view on the management port (an extension): scan a library for groups of
near-duplicates, page through them, remove the extras, cancel a long scan."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from same_search.contsign import ContSign
from same_search.duplicates import Scan
from same_search.errors import bad_request
from same_search.libraries import Library
from same_search.near_duplicates import check_min_score
from same_search.routes.admin.common import item_card, json_body, library, query_int
from same_search.routes.envelope import ok
from same_search.services import Services
from same_search.verify.regions import MatchedRegion

#: How long starting a scan waits for it to end, so a small library's groups come in one answer.
SCAN_WAIT_S = 2.0
MAX_GROUPS_PAGE = 500


async def start_scan(request: web.Request) -> web.Response:
    """``{"min_score": x}`` (default: the library's near-duplicate floors): scan for groups."""
    services, lib = await library(request)
    body = await json_body(request)
    floor = body.get("min_score")
    scan = await services.duplicates.start(
        lib, None if floor is None else check_min_score(floor, "min_score")
    )
    await services.duplicates.wait(scan, SCAN_WAIT_S)
    return ok(scan=await _scan_json(request, services, lib, scan))


async def get_scan(request: web.Request) -> web.Response:
    """A scan's progress, and its groups once done (``?offset=&limit=`` pages through groups)."""
    services, lib = await library(request)
    scan = services.duplicates.get(lib, _scan_id(request))
    return ok(scan=await _scan_json(request, services, lib, scan))


async def remove_extras(request: web.Request) -> web.Response:
    """Remove every extra of a scan, or only ``{"contsigns": [...]}`` among them; kept items stay."""
    services, lib = await library(request)
    scan = services.duplicates.get(lib, _scan_id(request))
    body = await json_body(request)
    contsigns = None
    if body.get("contsigns") is not None:
        listed = body["contsigns"]
        if not isinstance(listed, list):
            raise bad_request("contsigns must be a list of {sign1, sign2}")
        contsigns = [ContSign.from_json(c, f"contsigns[{i}]") for i, c in enumerate(listed)]
    removed = await services.duplicates.remove_extras(lib, scan, contsigns)
    return ok(removed=removed, scan=await _scan_json(request, services, lib, scan))


async def cancel_scan(request: web.Request) -> web.Response:
    """Stop a running scan (a long one of a large library)."""
    services, lib = await library(request)
    scan = services.duplicates.get(lib, _scan_id(request))
    await services.duplicates.cancel(scan)
    return ok(scan=await _scan_json(request, services, lib, scan))


def _region(region: MatchedRegion | None) -> dict[str, Any]:
    """An extra's ``region`` (extension): where it matched its kept item, in each original's
    pixels; nothing when the pair was confirmed by its score alone."""
    if region is None:
        return {}
    return {
        "region": {
            "kept": list(region.stored),
            "extra": list(region.query),
            "kept_size": list(region.stored_size),
            "extra_size": list(region.query_size),
        }
    }


def _scan_id(request: web.Request) -> int:
    text = request.match_info["scan_id"]
    if not text.isdigit() or len(text) > 18:
        raise bad_request("scan id must be an integer")
    return int(text)


async def _scan_json(request: web.Request, services: Services, lib: Library, scan: Scan) -> dict[str, Any]:
    """A scan as the API shows it: progress, and a page of groups as item cards with scores."""
    offset = query_int(request, "offset", 0, 1 << 62)
    limit = query_int(request, "limit", 100, MAX_GROUPS_PAGE)
    page = scan.groups[offset : offset + limit]
    keys = [key for group in page for key in (group.keep, *(k for k, _ in group.extras))]
    items = await services.libraries.reads.items(lib, keys)

    def card(key: int, score: float) -> dict[str, Any] | None:
        item = items.get(key)
        if item is None:  # removed since the scan
            return None
        return item_card(lib.row.appid, item) | {"score": score}

    groups = []
    for group in page:
        keep = card(group.keep, 1.0)
        extras = [
            c | _region(group.regions.get(k))
            for k, c in ((k, card(k, s)) for k, s in group.extras)
            if c is not None
        ]
        if keep is not None and extras:
            groups.append({"keep": keep, "extras": extras})
    return {
        "id": scan.id,
        "appid": scan.appid,
        "status": scan.status,
        "message": scan.message,
        "method": scan.method,
        "min_score": scan.min_score,
        "pairs_per_item": scan.pairs_per_item,
        "total": scan.total,
        "done": scan.done,
        "progress": round(scan.done / scan.total, 4) if scan.total else 1.0,
        "groups_total": len(scan.groups),
        "extras_total": len(scan.extras),
        "offset": offset,
        "groups": groups,
    }

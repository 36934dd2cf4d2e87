"""Libraries on the management port: list, create, stats, delete, and their maintenance
(save, rebuild, compact, repair)."""

from __future__ import annotations

from aiohttp import web

from same_search.errors import bad_request
from same_search.index.space import LEARNED, SPACES
from same_search.libraries.maintenance import REPAIR_REPORT_MAX
from same_search.libraries.rebuilds import COMPACT, MANUAL
from same_search.routes.admin.common import json_body, library, operator
from same_search.routes.envelope import APPID, ok
from same_search.routes.fields import check_library_name


async def list_libraries(request: web.Request) -> web.Response:
    services = operator(request)
    return ok(libraries=await services.libraries.stats.all())


async def create_library(request: web.Request) -> web.Response:
    services = operator(request)
    body = await request.json() if request.can_read_body else {}
    appid = body.get("appid") if isinstance(body, dict) else None
    if not isinstance(appid, str):
        raise bad_request("appid is required: a non-empty string without commas")
    request[APPID] = check_library_name(appid)
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise bad_request("model must be the name of a model profile (a string)")
    lib = await services.libraries.registry.signup(appid, model)
    return ok(library=await services.libraries.stats.of(lib))


async def library_stats(request: web.Request) -> web.Response:
    services, lib = await library(request)
    queue = services.libraries.registry.embed_for(lib).queue_size
    return ok(library=await services.libraries.stats.of(lib), queue_size=queue)


async def delete_library(request: web.Request) -> web.Response:
    """Deleting needs ``?confirm=<appid>``: a typo must not wipe a library (served or set aside)."""
    services = operator(request)
    request[APPID] = request.match_info["appid"]
    registry = services.libraries.registry
    lib = await registry.get_any(check_library_name(request.match_info["appid"]))
    items = await registry.stored_count(lib)
    if request.query.get("confirm") != lib.row.appid:
        what = "its items" if items is None else f"its {items} items"
        raise bad_request(f"add ?confirm={lib.row.appid} to delete this library and {what}")
    await services.libraries.maintenance.delete(lib)
    await services.schedules.delete(lib.row.appid)  # a library of the same name later starts afresh
    return ok(deleted=lib.row.appid, items=items)


async def save_index(request: web.Request) -> web.Response:
    services, lib = await library(request)
    await services.libraries.maintenance.save_indexes(only_dirty=False)
    return ok(library=await services.libraries.stats.of(lib))


async def rebuild_index(request: web.Request) -> web.Response:
    """Start a background rebuild from the database (also how deleted slots are compacted away)
    and answer at once with its state; a rebuild already running is answered, not doubled.
    ``?wait=1`` answers when it has ended instead (scripts, the CLI)."""
    services, lib = await library(request)
    wait = request.query.get("wait", "0")
    if wait not in ("0", "1"):
        raise bad_request("wait must be 0 or 1")
    reason = COMPACT if request.path.endswith("/compact") else MANUAL
    maintenance = services.libraries.maintenance
    rebuild = maintenance.rebuild(lib, reason)
    if wait == "1":
        await maintenance.wait_rebuild(rebuild)
    return ok(
        rebuild=rebuild.to_json(),
        seconds=round(rebuild.seconds(), 3),
        library=await services.libraries.stats.of(await services.libraries.get(lib.row.appid)),
    )


async def set_space(request: web.Request) -> web.Response:
    """Move the library into its learned space or back to native cosine: ``{"space": "learned" |
    "native"}``. The choice is stored at once; a background rebuild (the move job) fits the
    space if the library has at least ``[index] space_min_items`` items and swaps the index in
    while it serves; until it ends searches rank as before. ``?wait=1`` answers when it ended."""
    services, lib = await library(request)
    body = await json_body(request)
    wait = request.query.get("wait", "0")
    if wait not in ("0", "1"):
        raise bad_request("wait must be 0 or 1")
    if body.get("space") not in SPACES or len(body) != 1:
        raise bad_request('give {"space": "learned"} or {"space": "native"}')
    maintenance = services.libraries.maintenance
    rebuild = await maintenance.move_space(lib, body["space"] == LEARNED)
    if wait == "1":
        await maintenance.wait_rebuild(rebuild)
    return ok(
        rebuild=rebuild.to_json(),
        library=await services.libraries.stats.of(await services.libraries.get(lib.row.appid)),
    )


async def measure_recall(request: web.Request) -> web.Response:
    """Measure the library's recall now and tune its depth (after the measurement already
    running, if any); answers with the library's stats when it is done."""
    services, lib = await library(request)
    if not await services.libraries.maintenance.recall.measure_now(lib):
        raise bad_request(f"the {services.libraries.backend.name} backend does not measure recall")
    return ok(library=await services.libraries.stats.of(await services.libraries.get(lib.row.appid)))


async def rebuild_status(request: web.Request) -> web.Response:
    """The library's running rebuild, else its last one since the daemon started (null: none)."""
    services, lib = await library(request)
    return ok(rebuild=services.libraries.maintenance.rebuild_state(lib.row.appid))


async def refill_local_features(request: web.Request) -> web.Response:
    """Start giving the library's items without local features theirs back from their kept
    originals, in the background, and answer at once with its state (a running refill is
    answered, not doubled); ``?wait=1`` answers when it has ended."""
    services, lib = await library(request)
    wait = request.query.get("wait", "0")
    if wait not in ("0", "1"):
        raise bad_request("wait must be 0 or 1")
    refills = services.libraries.refills
    refill = refills.start(lib)
    if wait == "1":
        await refills.wait(refill)
    return ok(refill=refill.to_json(), library=await services.libraries.stats.of(lib))


async def local_features_status(request: web.Request) -> web.Response:
    """The library's running refill, else its last one since the daemon started (null: none),
    and how many of its items lack local features."""
    services, lib = await library(request)
    refill = services.libraries.refills.state(lib.row.appid)
    stats = await services.libraries.stats.of(lib)
    return ok(
        refill=None if refill is None else refill.to_json(),
        items=stats["items"],
        items_without_local_features=stats["items_without_local_features"],
    )


async def repair_library(request: web.Request) -> web.Response:
    """Drop the rows that cannot be loaded (reported one by one) and bring a set-aside library back."""
    services = operator(request)
    appid = request.match_info["appid"]
    request[APPID] = appid
    report = await services.libraries.maintenance.repair(check_library_name(appid), services.libraries.writes)
    lib = services.libraries.libraries[appid]
    return ok(
        dropped=len(report.dropped),
        rows=[
            {"contsign": contsign.to_json(), "reason": reason}
            for contsign, reason in report.dropped[:REPAIR_REPORT_MAX]
        ],
        restored=report.restored,
        library=await services.libraries.stats.of(lib),
    )

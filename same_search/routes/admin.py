"""Library management, port 8103: health, metrics and the management API under ``/api``.

Replies use the same JSON envelope as the other ports (HTTP 200, ``err_no``), except the
probes (``/healthz``, ``/readyz``) and ``/metrics``, which monitoring reads by status and format.
When ``[auth] tokens`` are set, ``/api`` needs the ``"*"`` token (the operator's).
"""

from __future__ import annotations

import asyncio
import secrets
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
from aiohttp import web

from same_search import wire
from same_search.contsign import ContSign
from same_search.embed.images import Region
from same_search.errors import ApiError, ErrNo, bad_request, shown
from same_search.imports.export import write_export
from same_search.imports.export_read import check_export, export_batches
from same_search.libraries import REPAIR_REPORT_MAX, Item, Library, SearchPage
from same_search.near_duplicates import check_min_score, check_mode
from same_search.rebuilds import COMPACT, MANUAL
from same_search.reembed import describe as describe_reembed
from same_search.routes.auth import WILDCARD, check_token, presented_token
from same_search.routes.envelope import APPID, ok, read_body
from same_search.routes.fields import check_library_name, encode_base64, is_decimal, parse_region
from same_search.services import SERVICES, Services
from same_search.verify.service import QueryFeatures

API = wire.API
MAX_PAGE = 1000


async def healthz(request: web.Request) -> web.Response:
    """Alive, with the version, the serving model and how many libraries are loaded."""
    return ok(**request.app[SERVICES].health(names=_may_name_libraries(request)))


def _may_name_libraries(request: web.Request) -> bool:
    """Whether a probe may name libraries: always without tokens, else to the operator (or to
    everyone when ``[auth] probes_name_libraries`` says so). Monitoring needs no token."""
    auth = request.app[SERVICES].cfg.auth
    if not auth.enabled or auth.probes_name_libraries:
        return True
    try:
        check_token(auth, WILDCARD, presented_token(request, {}))
    except ApiError:
        return False
    return True


async def readyz(request: web.Request) -> web.Response:
    """Ready: the model is loaded and every library's index is loaded (HTTP 503 otherwise)."""
    services = request.app[SERVICES]
    ready = services.ready
    body = {"ready": ready, "libraries": len(services.libraries.libraries)}
    if ready:
        return ok(**body)
    # HTTP 503 so load balancers stop sending; the body is still the usual envelope.
    not_ready = ApiError(ErrNo.FEATURE_UNAVAILABLE, "not ready: shutting down")
    return web.json_response({**not_ready.body(), **body}, status=503)


async def metrics(request: web.Request) -> web.Response:
    """Prometheus text exposition."""
    services = request.app[SERVICES]
    body = services.metrics.exposition(await services.libraries.census(), _may_name_libraries(request))
    return web.Response(body=body, content_type="text/plain", charset="utf-8")


def _operator(request: web.Request) -> Services:
    services = request.app[SERVICES]
    check_token(services.cfg.auth, WILDCARD, presented_token(request, {}))
    return services


async def _library(request: web.Request) -> tuple[Services, Library]:
    services = _operator(request)
    appid = request.match_info["appid"]
    request[APPID] = appid
    # No library can have a name the naming rule refuses; the refusal does not quote it back.
    return services, await services.libraries.get(check_library_name(appid))


def _contsign(request: web.Request, text: str | None = None) -> ContSign:
    """The ``sign1,sign2`` in the URL (or ``text``) as a ContSign."""
    text = request.match_info["contsign"] if text is None else text
    try:
        sign1, sign2 = (int(part) for part in text.split(","))
    except ValueError:
        raise bad_request(f"contsign {shown(text)} must be 'sign1,sign2'") from None
    return ContSign.from_json({"sign1": sign1, "sign2": sign2})


def _query_int(request: web.Request, name: str, default: int, maximum: int) -> int:
    value = request.query.get(name, str(default))
    if not is_decimal(value) or int(value) > maximum:
        raise bad_request(f"{name} must be an integer from 0 to {maximum}")
    return int(value)


def item_card(appid: str, item: Item, created: float, updated: float) -> dict[str, Any]:
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
        "created": created,
        "updated": updated,
        "thumbnail": f"{API}/libraries/{quote(appid, safe='')}/items/{key}/thumbnail",
    }


async def list_libraries(request: web.Request) -> web.Response:
    services = _operator(request)
    return ok(libraries=await services.libraries.all_stats())


async def create_library(request: web.Request) -> web.Response:
    services = _operator(request)
    body = await request.json() if request.can_read_body else {}
    appid = body.get("appid") if isinstance(body, dict) else None
    if not isinstance(appid, str):
        raise bad_request("appid is required: a non-empty string without commas")
    request[APPID] = check_library_name(appid)
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise bad_request("model must be the name of a model profile (a string)")
    lib = await services.libraries.signup(appid, model)
    return ok(library=await services.libraries.stats(lib))


async def library_stats(request: web.Request) -> web.Response:
    services, lib = await _library(request)
    return ok(
        library=await services.libraries.stats(lib), queue_size=services.libraries.embed_for(lib).queue_size
    )


async def delete_library(request: web.Request) -> web.Response:
    """Deleting needs ``?confirm=<appid>``: a typo must not wipe a library (served or set aside)."""
    services = _operator(request)
    request[APPID] = request.match_info["appid"]
    lib = await services.libraries.get_any(check_library_name(request.match_info["appid"]))
    items = await services.libraries.stored_count(lib)
    if request.query.get("confirm") != lib.row.appid:
        what = "its items" if items is None else f"its {items} items"
        raise bad_request(f"add ?confirm={lib.row.appid} to delete this library and {what}")
    await services.libraries.delete_library(lib)
    return ok(deleted=lib.row.appid, items=items)


async def list_items(request: web.Request) -> web.Response:
    services, lib = await _library(request)
    offset = _query_int(request, "offset", 0, 1 << 62)
    limit = _query_int(request, "limit", 50, MAX_PAGE)
    rows = await services.libraries.items_page(lib, offset, limit)
    total = await services.libraries.count(lib)
    return ok(
        total=total,
        offset=offset,
        items=[item_card(lib.row.appid, *row) for row in rows],
        has_more=int(offset + len(rows) < total),
    )


async def get_item(request: web.Request) -> web.Response:
    services, lib = await _library(request)
    found = await services.libraries.item(lib, _contsign(request))
    if found is None:
        raise ApiError(ErrNo.UPDATE_MISSING, f"no item {request.match_info['contsign']} in {lib.row.appid!r}")
    return ok(item=item_card(lib.row.appid, *found))


async def delete_item(request: web.Request) -> web.Response:
    services, lib = await _library(request)
    return ok(removed=await services.libraries.remove(lib, [_contsign(request)]))


async def thumbnail(request: web.Request) -> web.Response:
    services, lib = await _library(request)
    contsign = _contsign(request)
    jpeg = await services.libraries.thumbnail(lib, contsign)
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


async def save_index(request: web.Request) -> web.Response:
    services, lib = await _library(request)
    await services.libraries.save_indexes(only_dirty=False)
    return ok(library=await services.libraries.stats(lib))


async def rebuild_index(request: web.Request) -> web.Response:
    """Start a background rebuild from the database (also how deleted slots are compacted away)
    and answer at once with its state; a rebuild already running is answered, not doubled.
    ``?wait=1`` answers when it has ended instead (scripts, the CLI)."""
    services, lib = await _library(request)
    wait = request.query.get("wait", "0")
    if wait not in ("0", "1"):
        raise bad_request("wait must be 0 or 1")
    reason = COMPACT if request.path.endswith("/compact") else MANUAL
    rebuild = services.libraries.rebuild(lib, reason)
    if wait == "1":
        await services.libraries.wait_rebuild(rebuild)
    return ok(
        rebuild=rebuild.to_json(),
        seconds=round(rebuild.seconds(), 3),
        library=await services.libraries.stats(await services.libraries.get(lib.row.appid)),
    )


async def rebuild_status(request: web.Request) -> web.Response:
    """The library's running rebuild, else its last one since the daemon started (null: none)."""
    services, lib = await _library(request)
    return ok(rebuild=services.libraries.rebuild_state(lib.row.appid))


async def repair_library(request: web.Request) -> web.Response:
    """Drop the rows that cannot be loaded (reported one by one) and bring a set-aside library back."""
    services = _operator(request)
    appid = request.match_info["appid"]
    request[APPID] = appid
    report = await services.libraries.repair(check_library_name(appid))
    library = services.libraries.libraries[appid]
    return ok(
        dropped=len(report.dropped),
        rows=[
            {"contsign": contsign.to_json(), "reason": reason}
            for contsign, reason in report.dropped[:REPAIR_REPORT_MAX]
        ],
        restored=report.restored,
        library=await services.libraries.stats(library),
    )


def add_routes(app: web.Application) -> None:
    """Register every management route: one table, paths from the wire vocabulary (``wire``),
    so the client and the daemon cannot disagree on a path."""
    for method, path, handler in (
        ("GET", wire.HEALTHZ, healthz),
        ("GET", wire.READYZ, readyz),
        ("GET", wire.METRICS, metrics),
        ("GET", wire.LIBRARIES, list_libraries),
        ("POST", wire.LIBRARIES, create_library),
        ("GET", wire.LIBRARY, library_stats),
        ("DELETE", wire.LIBRARY, delete_library),
        ("GET", wire.ITEMS, list_items),
        ("GET", wire.ITEM, get_item),
        ("DELETE", wire.ITEM, delete_item),
        ("GET", wire.THUMBNAIL, thumbnail),
        ("POST", wire.SAVE, save_index),
        ("POST", wire.REBUILD, rebuild_index),
        ("GET", wire.REBUILD, rebuild_status),
        ("POST", wire.COMPACT, rebuild_index),
        ("POST", wire.REPAIR, repair_library),
        ("POST", wire.LIBRARY_SEARCH, search_image),
        ("GET", wire.EXPORT, export_library),
        ("POST", wire.IMPORT, import_library),
        ("POST", wire.JOBS, create_job),
        ("POST", wire.JOB_UPLOAD, upload_job),
        ("GET", wire.JOBS, list_jobs),
        ("GET", wire.JOB, get_job),
        ("POST", wire.JOB_CANCEL, cancel_job),
        # Extensions: the near-duplicate policy and the duplicates view.
        ("PUT", wire.DUP_POLICY, set_dup_policy),
        ("POST", wire.DUP_POLICY, set_dup_policy),
        ("POST", wire.DUPLICATES, start_duplicates_scan),
        ("GET", wire.DUPLICATES_SCAN, get_duplicates_scan),
        ("POST", wire.DUPLICATES_REMOVE, remove_duplicate_extras),
        ("POST", wire.DUPLICATES_CANCEL, cancel_duplicates_scan),
        # Extensions: re-embedding a library with another model (issue 16).
        ("POST", wire.REEMBED, start_reembed),
        ("GET", wire.REEMBED, list_reembeds),
        ("GET", wire.REEMBED_JOB, get_reembed),
        ("POST", wire.REEMBED_CANCEL, cancel_reembed),
    ):
        app.router.add_route(method, path, handler)


# ---- search from the console, bulk import jobs, export and import -----------------------------------


async def _save_upload(request: web.Request, path: Path) -> int:
    """Stream the request body to ``path`` (never all in memory); err_no 1 past the upload limit.

    Whatever stops it (the limit, an empty body, the client going away mid-body, a full disk)
    deletes the partial file: an upload is either complete or not on disk at all.
    """
    limit = request.app[SERVICES].cfg.server.max_upload_bytes
    path.parent.mkdir(parents=True, exist_ok=True)
    size = 0
    try:
        with path.open("wb") as fh:
            async for chunk in request.content.iter_chunked(1 << 20):
                size += len(chunk)
                if size > limit:
                    raise bad_request(f"upload exceeds the limit of {limit} bytes")
                fh.write(chunk)
        if size == 0:
            raise bad_request("the upload is empty")
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return size


def _upload_path(services: Services, suffix: str) -> Path:
    return services.cfg.data_path / "uploads" / f"{int(time.time() * 1000)}-{secrets.token_hex(4)}{suffix}"


async def search_image(request: web.Request) -> web.Response:
    """Search with the raw image as the body (what the console's drop zone sends)."""
    services, lib = await _library(request)
    rn = _query_int(request, "rn", 20, services.cfg.limits.max_rn)
    image = None if "contsign" in request.query else bytes(await read_body(request))
    contsign = None if image is not None else _contsign(request, request.query["contsign"])
    # The same default ranking as the retrieval port's search (config [search]).
    ranking = services.cfg.search.ranking_for(by_image=image is not None)
    region = query_region(request)
    if contsign is not None and region is not None:  # as the retrieval port's search says
        raise bad_request("region needs an image to cut it from; a stored item's vector has no region")

    async def features() -> QueryFeatures | None:
        if not ranking.promote_same_picture:
            return None
        return await services.libraries.query_features(lib, image, contsign, region)

    async def vector_of() -> np.ndarray:
        if contsign is not None:  # "find similar" on an item page: reuse the stored vector
            return await services.libraries.vector_of(lib, contsign)
        return await services.libraries.embed_query(lib, image, region)

    async def once() -> SearchPage:
        # The query's local features (for promotion) are extracted while its vector is computed.
        vector, query = await asyncio.gather(vector_of(), features())
        return await services.libraries.search(
            lib, vector, 0, rn, None, None, ranking.query_expansion, ranking.promote_same_picture, query
        )

    # Embedded and searched again if a re-embed switches the library in between.
    page = await services.libraries.on_one_model(lib, once)
    results = []
    for hit in page.hits:
        found = await services.libraries.item(lib, hit.item.contsign)
        if found is not None:
            results.append({**item_card(lib.row.appid, *found), "score": hit.score})
    return ok(results=results, has_more=int(page.has_more))


async def create_job(request: web.Request) -> web.Response:
    """``{"appid", "source": {"dir": path} | {"manifest": path}}``: a folder or manifest on the server."""
    services = _operator(request)
    try:
        body = await request.json()
    except ValueError:
        raise bad_request("body must be JSON: {appid, source: {dir | manifest}}") from None
    source = body.get("source") if isinstance(body, dict) else None
    if not isinstance(source, dict) or len(source) != 1 or next(iter(source)) not in ("dir", "manifest"):
        raise bad_request('source must be {"dir": "/path"} or {"manifest": "/path/file.csv|.jsonl"}')
    kind, path = next(iter(source.items()))
    if not isinstance(path, str) or not Path(path).is_absolute():
        raise bad_request(f"source.{kind} must be an absolute path on the server")
    appid = body.get("appid")
    if not isinstance(appid, str):
        raise bad_request("appid is required")
    job = await services.jobs.create(appid, kind, path, *_job_policy(body))
    return ok(job=await services.jobs.describe(job))


async def upload_job(request: web.Request) -> web.Response:
    """A ZIP of images as the body, ``?appid=``; imported like a folder."""
    services = _operator(request)
    appid = request.query.get("appid", "")
    await services.libraries.get(appid)
    policy = _job_policy(_query_policy(request))
    path = _upload_path(services, ".zip")
    await _save_upload(request, path)
    try:
        job = await services.jobs.create(appid, "zip", str(path), *policy)
    except BaseException:  # refused, or the request was cancelled: the ZIP is nobody's
        path.unlink(missing_ok=True)
        raise
    return ok(job=await services.jobs.describe(job))


async def list_jobs(request: web.Request) -> web.Response:
    services = _operator(request)
    return ok(jobs=[await services.jobs.describe(job, errors=0) for job in await services.jobs.list()])


def _job_id(request: web.Request) -> int:
    text = request.match_info["job_id"]
    # At most 18 digits: a longer one is no job of ours, and would overflow SQLite's integers
    # (or Python's digit limit) instead of answering err_no 1.
    if not is_decimal(text) or len(text) > 18:
        raise bad_request(f"job id must be an integer of at most 18 digits, got {text[:40]!r}")
    return int(text)


async def get_job(request: web.Request) -> web.Response:
    services = _operator(request)
    return ok(job=await services.jobs.describe(await services.jobs.get(_job_id(request))))


async def cancel_job(request: web.Request) -> web.Response:
    services = _operator(request)
    return ok(job=await services.jobs.describe(await services.jobs.cancel(_job_id(request))))


async def export_library(request: web.Request) -> web.StreamResponse:
    """The library as a ZIP (``?vectors=1`` adds vectors.npy, needed to import it elsewhere)."""
    services, lib = await _library(request)
    path = _upload_path(services, ".export.zip")
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        await write_export(
            services.libraries,
            lib,
            path,
            request.query.get("vectors") in ("1", "true"),
            request.query.get("originals") not in ("0", "false"),  # kept originals: in unless left out
        )
        response = web.StreamResponse(
            headers={
                "Content-Type": "application/zip",
                "Content-Disposition": _attachment(f"{lib.row.appid}.zip"),
            }
        )
        response.content_length = path.stat().st_size
        await response.prepare(request)
        with path.open("rb") as fh:
            while chunk := fh.read(1 << 20):
                await response.write(chunk)
        await response.write_eof()
        return response
    finally:
        path.unlink(missing_ok=True)


def _attachment(filename: str) -> str:
    """A Content-Disposition header safe for any library name (RFC 6266: ASCII fallback + UTF-8)."""
    fallback = "".join(c if (c.isascii() and c.isalnum()) or c in "._-" else "_" for c in filename)
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(filename, safe='')}"


async def import_library(request: web.Request) -> web.Response:
    """An export ZIP (with vectors) as the body; the library is created if missing.

    All or nothing: the whole file is checked first (err_no 1 naming the line and field), then
    stored in one transaction, together with the library when the import creates it.
    """
    services = _operator(request)
    appid = check_library_name(request.match_info["appid"])
    request[APPID] = appid
    if appid in services.libraries.unavailable:
        await services.libraries.get(appid)  # err_no 6 before a long upload
    path = _upload_path(services, ".import.zip")
    await _save_upload(request, path)
    try:
        accepted = services.libraries.import_models(appid)
        limits = services.cfg.limits
        export = await asyncio.to_thread(
            check_export, path, accepted, limits.brief_max_bytes, limits.max_image_bytes
        )
        lib, imported, duplicates = await services.libraries.import_items(
            appid, export_batches(export), export.meta["fingerprint"]
        )
    finally:
        path.unlink(missing_ok=True)
    return ok(imported=imported, duplicates=duplicates, library=await services.libraries.stats(lib))


# ---- extensions of issue 12: near-duplicate policy, region ----------------------------------------------


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


def _job_policy(body: dict[str, Any]) -> tuple[str | None, float | None]:
    """A job's own ``dup_policy``/``dup_min_score`` (None: the library's default when it runs)."""
    mode, floor = body.get("dup_policy"), body.get("dup_min_score")
    return (
        None if mode is None else check_mode(mode),
        None if floor is None else check_min_score(floor),
    )


def _query_policy(request: web.Request) -> dict[str, Any]:
    """``?dup_policy=&dup_min_score=`` of an upload, as a body would carry them."""
    body: dict[str, Any] = {}
    if "dup_policy" in request.query:
        body["dup_policy"] = request.query["dup_policy"]
    if "dup_min_score" in request.query:
        try:
            body["dup_min_score"] = float(request.query["dup_min_score"])
        except ValueError:
            raise bad_request("dup_min_score must be a number from 0 to 1") from None
    return body


async def set_dup_policy(request: web.Request) -> web.Response:
    """``{"dup_policy": "off|warn|reject", "dup_min_score": x | null}``: the library's default.

    A field left out keeps its current value; ``"dup_min_score": null`` returns to the built-in floor.
    """
    services, lib = await _library(request)
    try:
        body = await request.json()
    except ValueError:
        raise bad_request('body must be JSON: {"dup_policy": "off|warn|reject", "dup_min_score"}') from None
    if not isinstance(body, dict) or not {"dup_policy", "dup_min_score"} & body.keys():
        raise bad_request("give dup_policy and/or dup_min_score")
    mode = check_mode(body["dup_policy"]) if "dup_policy" in body else lib.row.dup_policy
    floor = lib.row.dup_min_score
    if "dup_min_score" in body:
        floor = None if body["dup_min_score"] is None else check_min_score(body["dup_min_score"])
    await services.libraries.set_dup_policy(lib, mode, floor)
    return ok(library=await services.libraries.stats(lib))


#: How long starting a scan waits for it to end, so a small library's groups come in one answer.
SCAN_WAIT_S = 2.0
MAX_GROUPS_PAGE = 500


async def start_duplicates_scan(request: web.Request) -> web.Response:
    """``{"min_score": x}`` (default: the library's dup_min_score): scan for near-duplicate groups."""
    services, lib = await _library(request)
    body = await _json_body(request)
    floor = body.get("min_score")
    if floor is None:
        floor = (await services.libraries.stats(lib))["dup_min_score"]
    scan = await services.duplicates.start(lib, check_min_score(floor, "min_score"))
    await services.duplicates.wait(scan, SCAN_WAIT_S)
    return ok(scan=await _scan_json(request, services, lib, scan))


async def get_duplicates_scan(request: web.Request) -> web.Response:
    """A scan's progress, and its groups once done (``?offset=&limit=`` pages through groups)."""
    services, lib = await _library(request)
    scan = services.duplicates.get(lib, _scan_id(request))
    return ok(scan=await _scan_json(request, services, lib, scan))


async def remove_duplicate_extras(request: web.Request) -> web.Response:
    """Remove every extra of a scan, or only ``{"contsigns": [...]}`` among them; kept items stay."""
    services, lib = await _library(request)
    scan = services.duplicates.get(lib, _scan_id(request))
    body = await _json_body(request)
    contsigns = None
    if body.get("contsigns") is not None:
        listed = body["contsigns"]
        if not isinstance(listed, list):
            raise bad_request("contsigns must be a list of {sign1, sign2}")
        contsigns = [ContSign.from_json(c, f"contsigns[{i}]") for i, c in enumerate(listed)]
    removed = await services.duplicates.remove_extras(lib, scan, contsigns)
    return ok(removed=removed, scan=await _scan_json(request, services, lib, scan))


async def cancel_duplicates_scan(request: web.Request) -> web.Response:
    """Stop a running scan (a long one of a large library)."""
    services, lib = await _library(request)
    scan = services.duplicates.get(lib, _scan_id(request))
    await services.duplicates.cancel(scan)
    return ok(scan=await _scan_json(request, services, lib, scan))


async def _json_body(request: web.Request) -> dict[str, Any]:
    if not request.can_read_body:
        return {}
    try:
        body = await request.json()
    except ValueError:
        raise bad_request("body must be a JSON object") from None
    if not isinstance(body, dict):
        raise bad_request("body must be a JSON object")
    return body


def _scan_id(request: web.Request) -> int:
    text = request.match_info["scan_id"]
    if not text.isdigit():
        raise bad_request("scan id must be an integer")
    return int(text)


async def _scan_json(request: web.Request, services: Services, lib: Library, scan: Any) -> dict[str, Any]:
    """A scan as the API shows it: progress, and a page of groups as item cards with scores."""
    offset = _query_int(request, "offset", 0, 1 << 62)
    limit = _query_int(request, "limit", 100, MAX_GROUPS_PAGE)
    page = scan.groups[offset : offset + limit]
    keys = [key for group in page for key in (group.keep, *(k for k, _ in group.extras))]
    items = await services.duplicates.items(lib, keys)

    def card(key: int, score: float) -> dict[str, Any] | None:
        item = items.get(key)
        if item is None:  # removed since the scan
            return None
        shown = item_card(lib.row.appid, item, 0.0, 0.0)
        return {k: v for k, v in shown.items() if k not in ("created", "updated")} | {"score": score}

    groups = []
    for group in page:
        keep = card(group.keep, 1.0)
        extras = [c for c in (card(k, s) for k, s in group.extras) if c is not None]
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


# ---- extension of issue 16: re-embedding a library with another model --------------------------------


async def start_reembed(request: web.Request) -> web.Response:
    """``{"model": name}``: build the library again with that model profile from its kept
    originals, then switch (err_no 1 when refused: unknown model, same model, no originals)."""
    services, lib = await _library(request)
    body = await _json_body(request)
    job = await services.reembeds.begin(lib, body.get("model"))
    return ok(job=describe_reembed(job))


async def list_reembeds(request: web.Request) -> web.Response:
    services, lib = await _library(request)
    return ok(jobs=[describe_reembed(job) for job in await services.reembeds.of_library(lib)])


async def _reembed_job(request: web.Request) -> tuple[Services, Any]:
    services, lib = await _library(request)
    job = await services.reembeds.get(_job_id(request))
    if job.appid != lib.row.appid:
        raise bad_request(f"re-embed job {job.id} belongs to library {job.appid!r}")
    return services, job


async def get_reembed(request: web.Request) -> web.Response:
    _, job = await _reembed_job(request)
    return ok(job=describe_reembed(job))


async def cancel_reembed(request: web.Request) -> web.Response:
    services, job = await _reembed_job(request)
    return ok(job=describe_reembed(await services.reembeds.cancel(job.id)))

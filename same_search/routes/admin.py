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

from aiohttp import web

from same_search.contsign import ContSign
from same_search.errors import ApiError, ErrNo, bad_request
from same_search.imports.export import write_export
from same_search.imports.export_read import check_export, export_batches
from same_search.libraries import REPAIR_REPORT_MAX, Item, Library
from same_search.routes.auth import WILDCARD, check_token, presented_token
from same_search.routes.envelope import APPID, ok, read_body
from same_search.routes.fields import encode_base64
from same_search.services import SERVICES, Services

API = "/api"
MAX_PAGE = 1000


async def healthz(request: web.Request) -> web.Response:
    """Alive, with the version, the serving model and how many libraries are loaded."""
    return ok(**request.app[SERVICES].health())


async def readyz(request: web.Request) -> web.Response:
    """Ready: the model is loaded and every library's index is loaded (HTTP 503 otherwise)."""
    services = request.app[SERVICES]
    ready = services.ready
    body = {"ready": ready, "libraries": len(services.libraries.libraries)}
    return (
        ok(**body) if ready else web.json_response({"err_no": 5, "err_msg": "not ready", **body}, status=503)
    )


async def metrics(request: web.Request) -> web.Response:
    """Prometheus text exposition."""
    body = request.app[SERVICES].metrics.exposition()
    return web.Response(body=body, content_type="text/plain", charset="utf-8")


def _operator(request: web.Request) -> Services:
    services = request.app[SERVICES]
    check_token(services.cfg.auth, WILDCARD, presented_token(request, {}))
    return services


def _library(request: web.Request) -> tuple[Services, Library]:
    services = _operator(request)
    appid = request.match_info["appid"]
    request[APPID] = appid
    return services, services.libraries.get(appid)


def _contsign(request: web.Request, text: str | None = None) -> ContSign:
    """The ``sign1,sign2`` in the URL (or ``text``) as a ContSign."""
    text = request.match_info["contsign"] if text is None else text
    try:
        sign1, sign2 = (int(part) for part in text.split(","))
    except ValueError:
        raise bad_request(f"contsign {text!r} must be 'sign1,sign2'") from None
    return ContSign.from_json({"sign1": sign1, "sign2": sign2})


def _query_int(request: web.Request, name: str, default: int, maximum: int) -> int:
    value = request.query.get(name, str(default))
    if not value.isdigit() or int(value) > maximum:
        raise bad_request(f"{name} must be an integer from 0 to {maximum}")
    return int(value)


def item_json(appid: str, item: Item, created: float, updated: float) -> dict[str, Any]:
    """An item as the management API shows it."""
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
        "thumbnail": f"{API}/libraries/{appid}/items/{key}/thumbnail",
    }


async def list_libraries(request: web.Request) -> web.Response:
    services = _operator(request)
    return ok(libraries=services.libraries.all_stats())


async def create_library(request: web.Request) -> web.Response:
    services = _operator(request)
    body = await request.json() if request.can_read_body else {}
    appid = body.get("appid") if isinstance(body, dict) else None
    if not isinstance(appid, str) or not appid or "," in appid:
        raise bad_request("appid is required: a non-empty string without commas")
    request[APPID] = appid
    lib = await services.libraries.signup(appid)
    return ok(library=services.libraries.stats(lib))


async def library_stats(request: web.Request) -> web.Response:
    services, lib = _library(request)
    return ok(library=services.libraries.stats(lib), queue_size=services.embed.queue_size)


async def delete_library(request: web.Request) -> web.Response:
    """Deleting needs ``?confirm=<appid>``: a typo must not wipe a library (served or set aside)."""
    services = _operator(request)
    request[APPID] = request.match_info["appid"]
    lib = services.libraries.get_any(request.match_info["appid"])
    items = await services.libraries.stored_count(lib)
    if request.query.get("confirm") != lib.row.appid:
        raise bad_request(f"add ?confirm={lib.row.appid} to delete this library and its {items} items")
    await services.libraries.delete_library(lib)
    return ok(deleted=lib.row.appid, items=items)


async def list_items(request: web.Request) -> web.Response:
    services, lib = _library(request)
    offset = _query_int(request, "offset", 0, 1 << 62)
    limit = _query_int(request, "limit", 50, MAX_PAGE)
    rows = await services.libraries.items_page(lib, offset, limit)
    total = lib.index.count()
    return ok(
        total=total,
        offset=offset,
        items=[item_json(lib.row.appid, *row) for row in rows],
        has_more=int(offset + len(rows) < total),
    )


async def get_item(request: web.Request) -> web.Response:
    services, lib = _library(request)
    found = await services.libraries.item(lib, _contsign(request))
    if found is None:
        raise ApiError(ErrNo.UPDATE_MISSING, f"no item {request.match_info['contsign']} in {lib.row.appid!r}")
    return ok(item=item_json(lib.row.appid, *found))


async def delete_item(request: web.Request) -> web.Response:
    services, lib = _library(request)
    return ok(removed=await services.libraries.remove(lib, [_contsign(request)]))


async def thumbnail(request: web.Request) -> web.Response:
    services, lib = _library(request)
    jpeg = await services.store.thumbnail(lib.row.id, _contsign(request).key)
    if jpeg is None:
        raise web.HTTPNotFound(text="no thumbnail for this item")
    return web.Response(body=jpeg, content_type="image/jpeg", headers={"Cache-Control": "max-age=86400"})


async def save_index(request: web.Request) -> web.Response:
    services, lib = _library(request)
    await services.libraries.save_indexes(only_dirty=False)
    return ok(library=services.libraries.stats(lib))


async def rebuild_index(request: web.Request) -> web.Response:
    """Rebuild from the database; this is also how deleted slots are compacted away."""
    services, lib = _library(request)
    seconds = await services.libraries.rebuild(lib)
    return ok(
        seconds=round(seconds, 3), library=services.libraries.stats(services.libraries.get(lib.row.appid))
    )


async def repair_library(request: web.Request) -> web.Response:
    """Drop the rows that cannot be loaded (reported one by one) and bring a set-aside library back."""
    services = _operator(request)
    appid = request.match_info["appid"]
    request[APPID] = appid
    report = await services.libraries.repair(appid)
    library = services.libraries.libraries[appid]
    return ok(
        dropped=len(report.dropped),
        rows=[
            {"contsign": contsign.to_json(), "reason": reason}
            for contsign, reason in report.dropped[:REPAIR_REPORT_MAX]
        ],
        restored=report.restored,
        library=services.libraries.stats(library),
    )


def add_routes(app: web.Application) -> None:
    """Register the management routes."""
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    lib = f"{API}/libraries/{{appid}}"
    app.router.add_get(f"{API}/libraries", list_libraries)
    app.router.add_post(f"{API}/libraries", create_library)
    app.router.add_get(lib, library_stats)
    app.router.add_delete(lib, delete_library)
    app.router.add_get(f"{lib}/items", list_items)
    app.router.add_get(f"{lib}/items/{{contsign}}", get_item)
    app.router.add_delete(f"{lib}/items/{{contsign}}", delete_item)
    app.router.add_get(f"{lib}/items/{{contsign}}/thumbnail", thumbnail)
    app.router.add_post(f"{lib}/save", save_index)
    app.router.add_post(f"{lib}/rebuild", rebuild_index)
    app.router.add_post(f"{lib}/compact", rebuild_index)
    app.router.add_post(f"{lib}/repair", repair_library)
    add_job_routes(app)


# ---- search from the console, bulk import jobs, export and import -----------------------------------


async def _save_upload(request: web.Request, path: Path) -> int:
    """Stream the request body to ``path`` (never all in memory); err_no 1 past the upload limit."""
    limit = request.app[SERVICES].cfg.server.max_upload_bytes
    path.parent.mkdir(parents=True, exist_ok=True)
    size = 0
    with path.open("wb") as fh:
        async for chunk in request.content.iter_chunked(1 << 20):
            size += len(chunk)
            if size > limit:
                fh.close()
                path.unlink(missing_ok=True)
                raise bad_request(f"upload exceeds the limit of {limit} bytes")
            fh.write(chunk)
    if size == 0:
        path.unlink(missing_ok=True)
        raise bad_request("the upload is empty")
    return size


def _upload_path(services: Services, suffix: str) -> Path:
    return services.cfg.data_path / "uploads" / f"{int(time.time() * 1000)}-{secrets.token_hex(4)}{suffix}"


async def search_image(request: web.Request) -> web.Response:
    """Search with the raw image as the body (what the console's drop zone sends)."""
    services, lib = _library(request)
    rn = _query_int(request, "rn", 20, services.cfg.limits.max_rn)
    if "contsign" in request.query:  # "find similar" on an item page: reuse the stored vector
        vector = await services.libraries.vector_of(lib, _contsign(request, request.query["contsign"]))
    else:
        vector = await services.embed.embed_image(bytes(await read_body(request)))
    page = await services.libraries.search(lib, vector, 0, rn, None)
    results = []
    for hit in page.hits:
        found = await services.libraries.item(lib, hit.item.contsign)
        if found is not None:
            results.append({**item_json(lib.row.appid, *found), "score": hit.score})
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
    job = await services.jobs.create(appid, kind, path)
    return ok(job=await services.jobs.describe(job))


async def upload_job(request: web.Request) -> web.Response:
    """A ZIP of images as the body, ``?appid=``; imported like a folder."""
    services = _operator(request)
    appid = request.query.get("appid", "")
    services.libraries.get(appid)
    path = _upload_path(services, ".zip")
    await _save_upload(request, path)
    try:
        job = await services.jobs.create(appid, "zip", str(path))
    except ApiError:
        path.unlink(missing_ok=True)
        raise
    return ok(job=await services.jobs.describe(job))


async def list_jobs(request: web.Request) -> web.Response:
    services = _operator(request)
    return ok(jobs=[await services.jobs.describe(job, errors=0) for job in await services.store.jobs()])


def _job_id(request: web.Request) -> int:
    text = request.match_info["job_id"]
    if not text.isdigit():
        raise bad_request("job id must be an integer")
    return int(text)


async def get_job(request: web.Request) -> web.Response:
    services = _operator(request)
    return ok(job=await services.jobs.describe(await services.jobs.get(_job_id(request))))


async def cancel_job(request: web.Request) -> web.Response:
    services = _operator(request)
    return ok(job=await services.jobs.describe(await services.jobs.cancel(_job_id(request))))


async def export_library(request: web.Request) -> web.StreamResponse:
    """The library as a ZIP (``?vectors=1`` adds vectors.npy, needed to import it elsewhere)."""
    services, lib = _library(request)
    path = _upload_path(services, ".export.zip")
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        await write_export(services.libraries, lib, path, request.query.get("vectors") in ("1", "true"))
        response = web.StreamResponse(
            headers={
                "Content-Type": "application/zip",
                "Content-Disposition": f'attachment; filename="{lib.row.appid}.zip"',
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


async def import_library(request: web.Request) -> web.Response:
    """An export ZIP (with vectors) as the body; the library is created if missing.

    All or nothing: the whole file is checked first (err_no 1 naming the line and field), then
    stored in one transaction, together with the library when the import creates it.
    """
    services = _operator(request)
    appid = request.match_info["appid"]
    request[APPID] = appid
    if appid in services.libraries.unavailable:
        services.libraries.get(appid)  # err_no 6 before a long upload
    path = _upload_path(services, ".import.zip")
    await _save_upload(request, path)
    try:
        info = services.embed.info
        limit = services.cfg.limits.brief_max_bytes
        export = await asyncio.to_thread(check_export, path, info.fingerprint, info.dim, limit)
        lib, imported, duplicates = await services.libraries.import_items(appid, export_batches(export))
    finally:
        path.unlink(missing_ok=True)
    return ok(imported=imported, duplicates=duplicates, library=services.libraries.stats(lib))


def add_job_routes(app: web.Application) -> None:
    """Register search, jobs, export and import."""
    lib = f"{API}/libraries/{{appid}}"
    app.router.add_post(f"{lib}/search", search_image)
    app.router.add_get(f"{lib}/export", export_library)
    app.router.add_post(f"{lib}/import", import_library)
    app.router.add_post(f"{API}/jobs", create_job)
    app.router.add_post(f"{API}/jobs/upload", upload_job)
    app.router.add_get(f"{API}/jobs", list_jobs)
    app.router.add_get(f"{API}/jobs/{{job_id}}", get_job)
    app.router.add_post(f"{API}/jobs/{{job_id}}/cancel", cancel_job)

"""Moving a library between daemons: export as a ZIP, import an export (all or nothing)."""

from __future__ import annotations

import asyncio
from urllib.parse import quote

from aiohttp import web

from same_search.imports.export import write_export
from same_search.imports.export_read import check_export, export_batches
from same_search.routes.admin.common import library, operator
from same_search.routes.admin.uploads import save_upload, upload_path
from same_search.routes.envelope import APPID, ok
from same_search.routes.fields import check_library_name


async def export_library(request: web.Request) -> web.StreamResponse:
    """The library as a ZIP (``?vectors=1`` adds vectors.npy, needed to import it elsewhere;
    ``?originals=0`` and ``?local_features=0`` leave those out)."""
    services, lib = await library(request)
    path = upload_path(services, ".export.zip")
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        await write_export(
            services.libraries,
            lib,
            path,
            request.query.get("vectors") in ("1", "true"),
            request.query.get("originals") not in ("0", "false"),  # kept originals: in unless left out
            request.query.get("local_features") not in ("0", "false"),  # for a daemon that predates them
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
    services = operator(request)
    appid = check_library_name(request.match_info["appid"])
    request[APPID] = appid
    if appid in services.libraries.unavailable:
        await services.libraries.get(appid)  # err_no 6 before a long upload
    path = upload_path(services, ".import.zip")
    await save_upload(request, path)
    try:
        imports = services.libraries.imports
        limits = services.cfg.limits
        export = await asyncio.to_thread(
            check_export, path, imports.accepted_models(appid), limits.brief_max_bytes, limits.max_image_bytes
        )
        lib, imported, duplicates = await imports.import_items(
            appid, export_batches(export), export.meta["fingerprint"]
        )
    finally:
        path.unlink(missing_ok=True)
    if export.space is not None:
        lib = await services.libraries.maintenance.adopt_space(lib, export.space)
    return ok(imported=imported, duplicates=duplicates, library=await services.libraries.stats.of(lib))

"""Folder-sync schedules on the management port (an extension): a library follows a folder, a
sync job every interval (``same_search.imports.schedule``)."""

from __future__ import annotations

import math

from aiohttp import web

from same_search.errors import bad_request
from same_search.imports.schedule import check_folder, parse_every
from same_search.routes.admin.common import json_body, library, operator
from same_search.routes.envelope import ok

#: What a schedule's body may hold; anything else is refused, so a misspelt field is not ignored.
FIELDS = frozenset({"folder", "every", "remove_missing", "start_at"})


async def get_schedule(request: web.Request) -> web.Response:
    """``schedule``: the library's, or null when it follows no folder."""
    services, lib = await library(request)
    row = await services.schedules.get(lib.row.appid)
    return ok(schedule=None if row is None else await services.schedules.describe(row))


async def set_schedule(request: web.Request) -> web.Response:
    """``{"folder": "/abs", "every": "1h", "remove_missing": false, "start_at": epoch}``: follow
    the folder; the first run is due at ``start_at`` (left out: at once)."""
    services, lib = await library(request)
    body = await json_body(request)
    unknown = sorted(set(body) - FIELDS)
    if unknown:
        takes = ", ".join(sorted(FIELDS))
        raise bad_request(f"unknown field(s) {', '.join(unknown)}; a schedule takes {takes}")
    folder = check_folder(body.get("folder"))
    if "every" not in body:
        raise bad_request('every is required: seconds, or "15m", "6h", "1d"')
    interval_s = parse_every(body["every"])
    remove_missing = body.get("remove_missing", False)
    if not isinstance(remove_missing, bool):
        raise bad_request("remove_missing must be true or false")
    start_at = body.get("start_at")
    if start_at is not None and (
        isinstance(start_at, bool) or not isinstance(start_at, int | float) or not math.isfinite(start_at)
    ):
        raise bad_request("start_at must be a time in seconds since the epoch (or left out: at once)")
    row = await services.schedules.set(lib.row.appid, folder, interval_s, remove_missing, start_at)
    return ok(schedule=await services.schedules.describe(row))


async def delete_schedule(request: web.Request) -> web.Response:
    """Stop following the folder: ``removed`` 1, or 0 when there was no schedule."""
    services, lib = await library(request)
    return ok(removed=await services.schedules.delete(lib.row.appid))


async def run_now(request: web.Request) -> web.Response:
    """Sync now: ``job`` and ``started`` (false: the library's sync job already queued or running)."""
    services, lib = await library(request)
    job, started = await services.schedules.run_now(lib.row.appid)
    return ok(job=await services.jobs.describe(job, errors=0), started=started)


async def list_schedules(request: web.Request) -> web.Response:
    """Every library's schedule."""
    services = operator(request)
    return ok(schedules=[await services.schedules.describe(row) for row in await services.schedules.all()])

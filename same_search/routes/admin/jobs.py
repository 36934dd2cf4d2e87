"""Import jobs on the management port: a folder or manifest on the server, or an uploaded ZIP;
their progress, and cancelling them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aiohttp import web

from same_search.errors import bad_request
from same_search.near_duplicates import check_min_score, check_mode
from same_search.routes.admin.common import operator
from same_search.routes.admin.uploads import save_upload, upload_path
from same_search.routes.envelope import ok
from same_search.routes.fields import is_decimal

#: The sources a job reads on the server (an uploaded ZIP has its own route).
KINDS = ("dir", "manifest", "sync")


async def create_job(request: web.Request) -> web.Response:
    """``{"appid", "source": {"dir": path} | {"manifest": path} | {"sync": path}}``: a folder or
    manifest on the server, or a folder the library follows (``"remove_missing": true`` also
    removes the items whose file is gone)."""
    services = operator(request)
    try:
        body = await request.json()
    except ValueError:
        raise bad_request("body must be JSON: {appid, source: {dir | manifest}}") from None
    source = body.get("source") if isinstance(body, dict) else None
    if not isinstance(source, dict) or len(source) != 1 or next(iter(source)) not in KINDS:
        raise bad_request(
            'source must be {"dir": "/path"}, {"manifest": "/path/file.csv|.jsonl"} or {"sync": "/path"}'
        )
    kind, path = next(iter(source.items()))
    if not isinstance(path, str) or not Path(path).is_absolute():
        raise bad_request(f"source.{kind} must be an absolute path on the server")
    appid = body.get("appid")
    if not isinstance(appid, str):
        raise bad_request("appid is required")
    remove_missing = body.get("remove_missing", False)
    if not isinstance(remove_missing, bool) or (remove_missing and kind != "sync"):
        raise bad_request("remove_missing must be true or false, and only for a sync source")
    job = await services.jobs.create(appid, kind, path, *job_policy(body), remove_missing)
    return ok(job=await services.jobs.describe(job))


async def upload_job(request: web.Request) -> web.Response:
    """A ZIP of images as the body, ``?appid=``; imported like a folder."""
    services = operator(request)
    appid = request.query.get("appid", "")
    await services.libraries.get(appid)
    policy = job_policy(_query_policy(request))
    path = upload_path(services, ".zip")
    await save_upload(request, path)
    try:
        job = await services.jobs.create(appid, "zip", str(path), *policy)
    except BaseException:  # refused, or the request was cancelled: the ZIP is nobody's
        path.unlink(missing_ok=True)
        raise
    return ok(job=await services.jobs.describe(job))


async def list_jobs(request: web.Request) -> web.Response:
    services = operator(request)
    return ok(jobs=[await services.jobs.describe(job, errors=0) for job in await services.jobs.list()])


def job_id(request: web.Request) -> int:
    """The job id in the path."""
    text = request.match_info["job_id"]
    # At most 18 digits: a longer one is no job of ours, and would overflow SQLite's integers
    # (or Python's digit limit) instead of answering err_no 1.
    if not is_decimal(text) or len(text) > 18:
        raise bad_request(f"job id must be an integer of at most 18 digits, got {text[:40]!r}")
    return int(text)


async def get_job(request: web.Request) -> web.Response:
    services = operator(request)
    return ok(job=await services.jobs.describe(await services.jobs.get(job_id(request))))


async def cancel_job(request: web.Request) -> web.Response:
    services = operator(request)
    return ok(job=await services.jobs.describe(await services.jobs.cancel(job_id(request))))


def job_policy(body: dict[str, Any]) -> tuple[str | None, float | None]:
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

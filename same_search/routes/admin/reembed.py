"""Re-embedding on the management port (an extension): move a library to another model
profile from its kept originals, follow the job, cancel it."""

from __future__ import annotations

from aiohttp import web

from same_search.errors import bad_request
from same_search.records import ReembedJobRow
from same_search.reembed import describe
from same_search.routes.admin.common import json_body, library
from same_search.routes.admin.jobs import job_id
from same_search.routes.envelope import ok
from same_search.services import Services


async def start_reembed(request: web.Request) -> web.Response:
    """``{"model": name}``: build the library again with that model profile from its kept
    originals, then switch (err_no 1 when refused: unknown model, same model, no originals)."""
    services, lib = await library(request)
    body = await json_body(request)
    job = await services.reembeds.begin(lib, body.get("model"))
    return ok(job=describe(job))


async def list_reembeds(request: web.Request) -> web.Response:
    services, lib = await library(request)
    return ok(jobs=[describe(job) for job in await services.reembeds.of_library(lib)])


async def _reembed_job(request: web.Request) -> tuple[Services, ReembedJobRow]:
    services, lib = await library(request)
    job = await services.reembeds.get(job_id(request))
    if job.appid != lib.row.appid:
        raise bad_request(f"re-embed job {job.id} belongs to library {job.appid!r}")
    return services, job


async def get_reembed(request: web.Request) -> web.Response:
    _, job = await _reembed_job(request)
    return ok(job=describe(job))


async def cancel_reembed(request: web.Request) -> web.Response:
    services, job = await _reembed_job(request)
    return ok(job=describe(await services.reembeds.cancel(job.id)))

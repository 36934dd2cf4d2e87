"""Monitoring: ``/healthz``, ``/readyz`` (status codes for load balancers) and ``/metrics``."""

from __future__ import annotations

from aiohttp import web

from same_search.errors import ApiError, ErrNo
from same_search.routes.envelope import ok
from same_search.services import SERVICES


async def healthz(request: web.Request) -> web.Response:
    """Alive, with the version, the serving model and how many libraries are loaded."""
    return ok(**request.app[SERVICES].health())


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
    body = services.metrics.exposition(await services.libraries.stats.census())
    return web.Response(body=body, content_type="text/plain", charset="utf-8")

"""Monitoring: ``/healthz``, ``/readyz`` (status codes for load balancers) and ``/metrics``."""

from __future__ import annotations

from aiohttp import web

from same_search.errors import ApiError, ErrNo
from same_search.routes.auth import WILDCARD, check_token, presented_token
from same_search.routes.envelope import ok
from same_search.services import SERVICES


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
    census = await services.libraries.stats.census()
    body = services.metrics.exposition(census, _may_name_libraries(request))
    return web.Response(body=body, content_type="text/plain", charset="utf-8")

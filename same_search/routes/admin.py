"""Library management, port 8103. For now only health; the management API is its own issue."""

from __future__ import annotations

from aiohttp import web

from same_search.routes.envelope import ok
from same_search.services import SERVICES


async def healthz(request: web.Request) -> web.Response:
    """Alive, with the version, the serving model and how many libraries are loaded."""
    return ok(**request.app[SERVICES].health())


def add_routes(app: web.Application) -> None:
    """Register the management routes."""
    app.router.add_get("/healthz", healthz)

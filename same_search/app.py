"""The one aiohttp application: routes of all three services, middlewares, resource lifecycle.

It is served on three ports (see ``server.py``); ``port_guard`` makes each port answer only its
own service, so a client pointed at the wrong port gets a clear error instead of a surprise.
Behind a single test server (no port map) every route is reachable, which keeps tests simple.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator

from aiohttp import web

from same_search.config import Config
from same_search.console import login, pages
from same_search.console.throttle import LoginThrottle
from same_search.embed.embedder import Embedder
from same_search.errors import bad_request, shown
from same_search.routes import admin, browser_guard, feature, retrieval
from same_search.routes.auth import SESSIONS, ConsoleSessions, short_tokens
from same_search.routes.envelope import BODY_TIMEOUT, ERRNO, MAX_BODY, Handler, envelope_middleware
from same_search.services import SERVICES, open_services

log = logging.getLogger(__name__)

FEATURE, SEARCH, ADMIN = "feature", "search", "admin"
#: Local port -> which service it serves; filled in by the server once its sites are bound.
PORT_SERVICES = web.AppKey("port_services", dict)


def service_of(path: str) -> str:
    """Which of the three services a request path belongs to."""
    if path.startswith(feature.PATH):
        return FEATURE
    if path.startswith(retrieval.PREFIX + "/"):
        return SEARCH
    return ADMIN


def arrival_service(request: web.Request) -> str:
    """The service of the port a request arrived on (its path's service behind a single test server)."""
    ports = request.app[PORT_SERVICES]
    sockname = request.transport.get_extra_info("sockname") if request.transport is not None else None
    served = ports.get(sockname[1]) if ports and sockname else None
    return served if served is not None else service_of(request.path)


@web.middleware
async def metrics_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Count every answered request by service, route and err_no (outside the envelope)."""
    started = time.monotonic()
    response = await handler(request)
    services = request.app.get(SERVICES)
    if services is not None:
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else "unmatched"
        services.metrics.observe_request(
            service_of(request.path), route, request.get(ERRNO, 0), time.monotonic() - started
        )
    return response


@web.middleware
async def port_guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Refuse a route arriving on another service's port."""
    ports = request.app[PORT_SERVICES]
    if ports and request.transport is not None:
        sockname = request.transport.get_extra_info("sockname")
        served = ports.get(sockname[1]) if sockname else None
        if served is not None and served != service_of(request.path):
            where = f"port {sockname[1]} (the {served} port)"
            raise bad_request(f"{shown(request.path)} is not served on {where}")
    return await handler(request)


def create_app(cfg: Config, embedder: Embedder | None = None) -> web.Application:
    """Build the application; services open when a runner starts it and close on cleanup."""
    for warning in short_tokens(cfg.auth):
        log.warning(warning)
    guard = browser_guard.BrowserGuard(cfg, is_admin=lambda request: arrival_service(request) == ADMIN)
    app = web.Application(
        client_max_size=cfg.server.max_body_bytes,
        middlewares=[metrics_middleware, envelope_middleware, guard.middleware, port_guard],
    )
    app.on_response_prepare.append(browser_guard.add_cors_headers)
    app[MAX_BODY] = cfg.server.max_body_bytes
    app[BODY_TIMEOUT] = cfg.server.body_timeout_s
    app[PORT_SERVICES] = {}
    app[SESSIONS] = ConsoleSessions()
    app[login.LOGIN_THROTTLE] = LoginThrottle()

    async def services_ctx(app: web.Application) -> AsyncIterator[None]:
        async with open_services(cfg, embedder) as services:
            app[SERVICES] = services
            yield

    app.cleanup_ctx.append(services_ctx)
    feature.add_routes(app)
    retrieval.add_routes(app)
    admin.add_routes(app)
    pages.add_routes(app)
    login.add_routes(app)
    return app

"""Keep web pages from driving the daemon: Origin, Sec-Fetch-Site, Host and Content-Type rules, and CORS.

A browser lends any page it shows the operator's network position (and the console's session
cookie): without these rules a page on another origin could create libraries, start imports or
remove items with "simple" requests that need no CORS preflight (``fetch(..., {mode: "no-cors"})``,
a form post), and a page under a name the attacker re-points at 127.0.0.1 (DNS rebinding) could
even read the answers. Non-browser clients (curl, the spec's sample clients, ``same_search.client``)
send neither ``Origin`` nor ``Sec-Fetch-*`` and are not affected.

Checked on the request headers alone, before any handler runs and before the body is read:

- every port: an ``Origin`` must be the request's own origin on an accepted host name, or, on the
  feature and retrieval ports, one of ``[security] allowed_origins`` (answered with CORS headers).
  ``Origin: null`` is foreign. Without ``Origin``, ``Sec-Fetch-Site: cross-site | same-site`` is
  refused except for a top-level navigation to a page (a link followed from elsewhere);
- the management port: the ``Host`` must be an accepted name (its bind address, ``localhost``,
  ``127.0.0.1``, ``[::1]``, the address the connection arrived on, or ``[security] allowed_hosts``),
  and a request body must carry the content type its route expects, never one of the "simple" types
  a form or a no-cors fetch can send.

Refusals are the JSON envelope: err_no 12 for who is asking (origin, site, host), err_no 1 for what
was sent (content type). The probes answer a refused Host with HTTP 403, so a monitor never reads a
refusal as "healthy".
"""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import hdrs, web

from same_search import wire
from same_search.config import Config, host_key, normalise_host, origin_key
from same_search.errors import ApiError, ErrNo, bad_request, shown
from same_search.routes.auth import SESSION_COOKIE, SESSION_TOKEN, SESSIONS
from same_search.routes.envelope import ERRNO, Handler

#: The allowed origin a request came from, when CORS headers must go on its answer.
CORS_ORIGIN = web.RequestKey("cors_origin", str)

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
WILDCARD_ADDRESSES = ("", "0.0.0.0", "::")
PROBES = ("/healthz", "/readyz", "/metrics")
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
FOREIGN_SITES = ("cross-site", "same-site")
DEFAULT_PORTS = {"http": 80, "https": 443}

#: What a form or a no-cors fetch can send; never accepted with a body on the management port.
SIMPLE_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data", "text/plain")
JSON_TYPES = ("application/json",)
IMAGE_TYPES = ("image/*", "application/octet-stream")
ZIP_TYPES = ("application/zip", "application/x-zip-compressed", "application/octet-stream")
#: (method, route) -> the content types its body may have. JSON routes need the type even without
#: a body; raw-body routes whenever a body is sent. tests/test_browser_guard.py checks every route exists.
BODY_TYPES: dict[tuple[str, str], tuple[str, ...]] = {
    ("POST", wire.LIBRARIES): JSON_TYPES,
    ("POST", wire.JOBS): JSON_TYPES,
    ("POST", "/login"): JSON_TYPES,
    ("POST", wire.LIBRARY_SEARCH): IMAGE_TYPES,
    ("POST", wire.JOB_UPLOAD): ZIP_TYPES,
    ("POST", wire.IMPORT): ZIP_TYPES,
    ("PUT", wire.DUP_POLICY): JSON_TYPES,
    ("POST", wire.DUP_POLICY): JSON_TYPES,
    ("PUT", wire.RANKING): JSON_TYPES,
    ("POST", wire.RANKING): JSON_TYPES,
    ("PUT", wire.SPACE): JSON_TYPES,
    ("POST", wire.SPACE): JSON_TYPES,
    ("POST", wire.DUPLICATES): JSON_TYPES,
    ("POST", wire.DUPLICATES_REMOVE): JSON_TYPES,
    ("POST", wire.REEMBED): JSON_TYPES,
    ("PUT", wire.SYNC): JSON_TYPES,
    ("POST", wire.SYNC): JSON_TYPES,
    ("PATCH", wire.ITEM): JSON_TYPES,
}
#: JSON routes whose body is optional (no body: remove every extra); a body sent must be JSON.
BODY_OPTIONAL = frozenset({("POST", wire.DUPLICATES_REMOVE)})

CORS_METHODS = "POST, OPTIONS"
CORS_HEADERS = "Content-Type, X-Same-Token, Authorization"
CORS_MAX_AGE = "600"


class BrowserGuard:
    """The rules above for one configuration.

    ``is_admin`` says whether a request arrived on the management port.
    """

    def __init__(self, cfg: Config, is_admin: Callable[[web.Request], bool]) -> None:
        self.is_admin = is_admin
        extra = [key for key in map(host_key, cfg.security.allowed_hosts) if key is not None]
        self._any_port = {host for host, port in extra if port is None}
        self._with_port = {(host, port) for host, port in extra if port is not None}
        self._bind = {
            True: normalise_host(cfg.server.admin_host),
            False: normalise_host(cfg.server.host),
        }
        self._origins = {key for key in map(origin_key, cfg.security.allowed_origins) if key is not None}

    # ---- the checks ----------------------------------------------------------------------------

    def accepted_host(self, request: web.Request, admin: bool) -> bool:
        """Whether the ``Host`` names this daemon (a request without one comes from no browser)."""
        raw = request.headers.get(hdrs.HOST)
        if raw is None:
            return True
        key = host_key(raw)
        if key is None:
            return False
        host, port = key
        if host in LOOPBACK_NAMES or host in self._any_port or (host, port) in self._with_port:
            return True
        bind = self._bind[admin]
        if bind not in WILDCARD_ADDRESSES and host == bind:
            return True
        return host == self._local_address(request)

    @staticmethod
    def _local_address(request: web.Request) -> str | None:
        """The address the connection arrived on: a browser using it directly names this machine."""
        sockname = request.transport.get_extra_info("sockname") if request.transport else None
        return normalise_host(str(sockname[0])) if sockname else None

    def same_origin(self, request: web.Request, origin: tuple[str, str, int], admin: bool) -> bool:
        """``Origin`` is the request's own: same host and port as ``Host``, on an accepted name.

        The scheme is not compared with the connection's, so a TLS reverse proxy that passes the
        ``Host`` through keeps working; the port is (the scheme's default when ``Host`` has none).
        """
        raw = request.headers.get(hdrs.HOST)
        key = host_key(raw) if raw is not None else None
        if key is None or not self.accepted_host(request, admin):
            return False
        scheme, host, port = origin
        host_port = key[1] if key[1] is not None else DEFAULT_PORTS[scheme]
        return host == key[0] and port == host_port

    def check_origin(self, request: web.Request, admin: bool) -> str | None:
        """Refuse a foreign browser request; return the origin when it is an allowed cross-origin one."""
        origin = request.headers.get(hdrs.ORIGIN)
        if origin is None:
            site = request.headers.get("Sec-Fetch-Site", "").lower()
            if site in FOREIGN_SITES and not _top_level_navigation(request):
                raise ApiError(
                    ErrNo.AUTH_FAILED,
                    f"{site} browser request refused: only this daemon's own pages may call it "
                    "(Sec-Fetch-Site without Origin)",
                )
            return None
        key = origin_key(origin)
        if key is not None and self.same_origin(request, key, admin):
            return None
        if key is not None and not admin and key in self._origins:
            return origin
        where = (
            "the management port accepts only its own pages"
            if admin
            else "add it to [security] allowed_origins"
        )
        message = f"cross-origin request from Origin {shown(origin)} refused: {where}"
        raise ApiError(ErrNo.AUTH_FAILED, message)

    @staticmethod
    def check_content_type(request: web.Request) -> None:
        """Bodies on the management port carry their route's type, never a form's or no-cors fetch's."""
        if request.method in SAFE_METHODS:
            return
        raw = request.headers.get(hdrs.CONTENT_TYPE)
        mime = request.content_type if raw is not None else None
        resource = request.match_info.route.resource
        route = (request.method, resource.canonical) if resource is not None else None
        wanted = BODY_TYPES.get(route) if route is not None else None
        needs_type = wanted is not None and (
            (wanted is JSON_TYPES and route not in BODY_OPTIONAL) or request.body_exists
        )
        if needs_type and not _matches(mime, wanted):
            listed = " or ".join(wanted)
            got = f"got {mime}" if mime else "none was sent"
            hint = " (curl: add -H 'Content-Type: application/json')" if wanted is JSON_TYPES else ""
            raise bad_request(
                f"Content-Type must be {listed} on {request.method} {request.path}, {got}{hint}"
            )
        if mime in SIMPLE_TYPES:
            raise bad_request(
                f"Content-Type {mime} is not accepted on the management port: send application/json, "
                "or the body's own type (an image, application/zip)"
            )

    # ---- the middleware and the response hook ---------------------------------------------------

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Apply the rules; answer CORS preflights of allowed origins; resolve the console session."""
        admin = self.is_admin(request)
        if admin and not self.accepted_host(request, admin):
            host = shown(request.headers.get(hdrs.HOST))
            message = (
                f"Host {host} is not a name of this daemon's management port; "
                "add it to [security] allowed_hosts if it is"
            )
            if request.path in PROBES:
                request[ERRNO] = int(ErrNo.AUTH_FAILED)
                return web.json_response({"err_no": int(ErrNo.AUTH_FAILED), "err_msg": message}, status=403)
            raise ApiError(ErrNo.AUTH_FAILED, message)
        cors = self.check_origin(request, admin)
        if cors is not None:
            request[CORS_ORIGIN] = cors
            if request.method == "OPTIONS" and hdrs.ACCESS_CONTROL_REQUEST_METHOD in request.headers:
                return _preflight()
        if admin:
            self.check_content_type(request)
            token = request.app[SESSIONS].token_of(request.cookies.get(SESSION_COOKIE))
            if token is not None:
                request[SESSION_TOKEN] = token
        return await handler(request)


def _top_level_navigation(request: web.Request) -> bool:
    """A link to one of our pages followed from another site: harmless, it changes nothing."""
    return (
        request.method in ("GET", "HEAD")
        and request.headers.get("Sec-Fetch-Mode", "").lower() == "navigate"
        and request.headers.get("Sec-Fetch-Dest", "document").lower() == "document"
    )


def _matches(mime: str | None, wanted: tuple[str, ...]) -> bool:
    if not mime:
        return False
    return any(mime == w or (w.endswith("/*") and mime.startswith(w[:-1])) for w in wanted)


def _preflight() -> web.Response:
    """The answer to an allowed origin's preflight (the response hook adds the origin itself)."""
    return web.Response(
        status=204,
        headers={
            hdrs.ACCESS_CONTROL_ALLOW_METHODS: CORS_METHODS,
            hdrs.ACCESS_CONTROL_ALLOW_HEADERS: CORS_HEADERS,
            hdrs.ACCESS_CONTROL_MAX_AGE: CORS_MAX_AGE,
        },
    )


async def add_cors_headers(request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare``: every answer to an allowed origin, errors included, names it."""
    origin = request.get(CORS_ORIGIN)
    if origin is not None:
        response.headers[hdrs.ACCESS_CONTROL_ALLOW_ORIGIN] = origin
        vary = response.headers.get(hdrs.VARY)
        if vary is None or "origin" not in vary.lower():
            response.headers[hdrs.VARY] = f"{vary}, Origin" if vary else "Origin"

"""The console's login: the operator token (the ``"*"`` entry of ``[auth] tokens``) for a session cookie.

When tokens are configured every console page needs the operator, and an ``<img>`` thumbnail cannot
send a token header, so the login form posts the token once and gets back a cookie holding a random
session id: ``HttpOnly`` (no script reads it), ``SameSite=Strict``, ``Path=/`` and without
``Max-Age``, so it dies with the browser session. The raw token never appears in a URL. Without
tokens the console needs no login and these routes only point back to it.
"""

from __future__ import annotations

import asyncio
import logging
import math
import urllib.parse
from html import escape

from aiohttp import web

from same_search.console.throttle import FAILURE_DELAY_S, LoginThrottle
from same_search.errors import ApiError, ErrNo, bad_request
from same_search.routes.auth import SESSION_COOKIE, SESSIONS, WILDCARD, check_token, presented_token
from same_search.routes.envelope import Handler, ok, read_body
from same_search.routes.fields import parse_json_object
from same_search.services import SERVICES

log = logging.getLogger(__name__)

LOGIN = "/login"
LOGOUT = "/logout"
#: Failed logins per client address (:mod:`same_search.console.throttle`).
LOGIN_THROTTLE = web.AppKey("login_throttle", LoginThrottle)


def is_operator(request: web.Request) -> bool:
    """Whether the request may see the console: no tokens configured, or the operator's credential."""
    auth = request.app[SERVICES].cfg.auth
    try:
        check_token(auth, WILDCARD, presented_token(request, {}))
    except ApiError:
        return False
    return True


def login_location(next_path: str) -> str:
    """The login page, coming back to ``next_path`` (a local path) afterwards."""
    return f"{LOGIN}?{urllib.parse.urlencode({'next': next_path})}"


def operator_only(handler: Handler) -> Handler:
    """Wrap a console page: a visitor without the operator's credential is sent to the login form."""

    async def guarded(request: web.Request) -> web.StreamResponse:
        if not is_operator(request):
            return web.Response(status=303, headers={"Location": login_location(request.raw_path)})
        return await handler(request)

    guarded.__doc__ = handler.__doc__
    return guarded


async def login_page(request: web.Request) -> web.Response:
    """The form; it shows nothing about the libraries, not even how many there are."""
    if not request.app[SERVICES].cfg.auth.enabled:
        return web.Response(status=303, headers={"Location": "/"})
    html = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Log in · same_search</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="stylesheet" href="/static/console.css"></head>
<body><header><a class="brand" href="/">same_search</a></header>
<main><h1>Log in</h1>
<form id="login" class="inline" action="{escape(LOGIN)}" method="post">
<label>Operator token
<input type="password" name="token" autocomplete="current-password" required autofocus></label>
<button>Log in</button> <span class="message"></span></form>
<p>The operator token is the <code>"*"</code> entry of <code>[auth] tokens</code>
in the daemon's config.toml.</p>
</main><script src="/static/console.js"></script></body></html>"""
    return web.Response(text=html, content_type="text/html", headers=FRAME_HEADERS)


async def login(request: web.Request) -> web.Response:
    """``{"token"}``: check it is the operator token, then open a session and set its cookie.

    Failures are slowed down, logged and, past a few, refused outright per client address
    (:mod:`same_search.console.throttle`); the token itself is never logged."""
    auth = request.app[SERVICES].cfg.auth
    body = parse_json_object(await read_body(request))
    token = body.get("token")
    if not auth.enabled:
        raise bad_request("no [auth] tokens are configured: the console needs no login")
    if not isinstance(token, str) or not token:
        raise bad_request("token is required: the operator token (the '*' entry of [auth] tokens)")
    throttle, client = request.app[LOGIN_THROTTLE], request.remote or "unknown"
    wait = throttle.locked_for(client)
    if wait > 0:
        raise ApiError(
            ErrNo.AUTH_FAILED,
            f"too many failed logins from {client}: try again in {math.ceil(wait)} s",
        )
    try:
        check_token(auth, WILDCARD, token)
    except ApiError:
        failures, lock = throttle.failed(client)
        locked = f"; locked out for {lock:g} s" if lock else ""
        log.warning("console login failed from %s (%d failures in a row%s)", client, failures, locked)
        await asyncio.sleep(FAILURE_DELAY_S)  # this answer only: the loop serves everyone else meanwhile
        raise
    throttle.succeeded(client)
    response = ok()
    session = request.app[SESSIONS].open(token)
    response.set_cookie(SESSION_COOKIE, session, path="/", httponly=True, samesite="Strict")
    return response


async def logout(request: web.Request) -> web.Response:
    """End the session on the daemon (its cookie stops working everywhere) and drop the cookie."""
    request.app[SESSIONS].close(request.cookies.get(SESSION_COOKIE))
    # The browser drops what it cached during the session (thumbnails of the libraries).
    response = ok()
    response.headers["Clear-Site-Data"] = '"cache"'
    response.del_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="Strict")
    return response


#: On every console page: no other site may frame it (clickjacking the forms and buttons).
FRAME_HEADERS = {"X-Frame-Options": "DENY", "Content-Security-Policy": "frame-ancestors 'none'"}


def add_routes(app: web.Application) -> None:
    """Register the login form, login and logout."""
    app.router.add_get(LOGIN, login_page)
    app.router.add_post(LOGIN, login)
    app.router.add_post(LOGOUT, logout)

"""Optional per-appid tokens (``[auth] tokens`` in config.toml), and the console's login sessions.

A client sends its token in the ``X-Same-Token`` header, as ``Authorization: Bearer <token>``, or,
for scripts that can only change the JSON body, as a ``token`` field. Comparison is constant-time
and tokens never reach the log.

The web console cannot put a header on an ``<img>`` request, so an operator who logged in with the
``"*"`` token gets a session cookie instead; ``routes.browser_guard`` honours it on the management
port only, and only for requests that passed its Origin and Host checks.
"""

from __future__ import annotations

import hmac
import secrets
from collections import OrderedDict

from aiohttp import web

from same_search.config import AuthConfig
from same_search.errors import ApiError, ErrNo
from same_search.wire import TOKEN_HEADER as HEADER

WILDCARD = "*"
#: Tokens shorter than this are warned about at start (docs/operations.md: use 32 or more random
#: characters, e.g. ``secrets.token_urlsafe(32)``).
MIN_TOKEN_LENGTH = 20
#: The console's session cookie: a random id; the token it stands for stays in the daemon's memory.
SESSION_COOKIE = "same_search_session"
#: The operator token a valid session cookie stands for, set by the browser guard.
SESSION_TOKEN = web.RequestKey("session_token", str)


class ConsoleSessions:
    """Console logins held in memory: they end at logout, when the browser closes, or at a restart.

    The cookie carries only a random id, so the raw token never travels again after the login and
    a logout really ends the session (a stolen cookie stops working). The oldest sessions are
    forgotten beyond ``limit``, so a login loop cannot grow memory.
    """

    def __init__(self, limit: int = 1024) -> None:
        self._tokens: OrderedDict[str, str] = OrderedDict()
        self._limit = limit

    def open(self, token: str) -> str:
        """A new session id standing for ``token``."""
        session_id = secrets.token_urlsafe(32)
        self._tokens[session_id] = token
        while len(self._tokens) > self._limit:
            self._tokens.popitem(last=False)
        return session_id

    def token_of(self, session_id: str | None) -> str | None:
        """The token a session id stands for, or None when it is unknown or closed."""
        return self._tokens.get(session_id) if session_id else None

    def close(self, session_id: str | None) -> None:
        """End a session (logout)."""
        if session_id:
            self._tokens.pop(session_id, None)


SESSIONS = web.AppKey("console_sessions", ConsoleSessions)


def short_tokens(cfg: AuthConfig) -> list[str]:
    """A warning per configured token shorter than :data:`MIN_TOKEN_LENGTH` (never the token)."""
    return [
        f"[auth] tokens: the token of {appid!r} has {len(token)} characters; a guesser needs few tries "
        f"for a short one: use at least {MIN_TOKEN_LENGTH} random characters, 32 or more is better "
        '(python -c "import secrets; print(secrets.token_urlsafe(32))")'
        for appid, token in cfg.tokens.items()
        if len(token) < MIN_TOKEN_LENGTH
    ]


def presented_token(request: web.Request, body: dict) -> str | None:
    """The token a request carries: header, Authorization header, body, else the console session."""
    token = request.headers.get(HEADER)
    if token is None:
        scheme, _, value = request.headers.get("Authorization", "").partition(" ")
        token = value.strip() if scheme.lower() == "bearer" and value.strip() else None
    if token is None and isinstance(body.get("token"), str):
        token = body["token"]
    if token is None:
        token = request.get(SESSION_TOKEN)
    return token


def owner_of(cfg: AuthConfig, library: str) -> str | None:
    """The configured appid whose token guards ``library``: the most specific one naming it.

    ``appid`` + ``sub_lib`` resolve to the library ``appid_sub_lib``, a name another tenant may
    hold as its own appid. So a token is checked against the library a request resolves to, and
    that library belongs to the longest configured appid ``A`` with ``library == A`` or
    ``library.startswith(A + "_")``: with tokens for ``shop`` and ``shop_2``, the library
    ``shop_2`` (however it is named in the request) is ``shop_2``'s, and ``shop_3`` is ``shop``'s.
    ``None``: no tenant owns it, only the wildcard token reaches it.
    """
    best: str | None = None
    for appid in cfg.tokens:
        if appid == WILDCARD:
            continue
        if (library == appid or library.startswith(appid + "_")) and (best is None or len(appid) > len(best)):
            best = appid
    return best


def check_token(cfg: AuthConfig, library: str, presented: str | None) -> None:
    """err_no 12 unless ``presented`` is the token of ``library``'s owner or the wildcard token."""
    if not cfg.enabled:
        return
    accepted = False
    owner = owner_of(cfg, library)
    for expected in (cfg.tokens.get(owner) if owner else None, cfg.tokens.get(WILDCARD)):
        if expected is not None and presented is not None:
            # Evaluate both comparisons every time: no early exit that timing could reveal.
            accepted |= hmac.compare_digest(expected.encode(), presented.encode())
    if not accepted:
        raise ApiError(ErrNo.AUTH_FAILED, f"missing or wrong token for library {library!r}")

"""Optional per-appid tokens (``[auth] tokens`` in config.toml).

A client sends its token in the ``X-Same-Token`` header, as ``Authorization: Bearer <token>``, or,
for scripts that can only change the JSON body, as a ``token`` field. Comparison is constant-time
and tokens never reach the log.
"""

from __future__ import annotations

import hmac

from aiohttp import web

from same_search.config import AuthConfig
from same_search.errors import ApiError, ErrNo
from same_search.wire import TOKEN_HEADER as HEADER

WILDCARD = "*"


def presented_token(request: web.Request, body: dict) -> str | None:
    """The token a request carries, from the header, the Authorization header or the body."""
    token = request.headers.get(HEADER)
    if token is None:
        scheme, _, value = request.headers.get("Authorization", "").partition(" ")
        token = value.strip() if scheme.lower() == "bearer" and value.strip() else None
    if token is None and isinstance(body.get("token"), str):
        token = body["token"]
    return token


def check_token(cfg: AuthConfig, appid: str, presented: str | None) -> None:
    """err_no 12 unless ``presented`` is the token of ``appid`` or the wildcard token."""
    if not cfg.enabled:
        return
    accepted = False
    for expected in (cfg.tokens.get(appid), cfg.tokens.get(WILDCARD)):
        if expected is not None and presented is not None:
            # Evaluate both comparisons every time: no early exit that timing could reveal.
            accepted |= hmac.compare_digest(expected.encode(), presented.encode())
    if not accepted:
        raise ApiError(ErrNo.AUTH_FAILED, f"missing or wrong token for appid {appid!r}")

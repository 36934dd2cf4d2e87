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

HEADER = "X-Same-Token"
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

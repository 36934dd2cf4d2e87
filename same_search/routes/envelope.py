"""The JSON envelope every answer travels in, and the request log line.

The spec's clients read ``err_no`` from a JSON body and treat any HTTP status other than 200
as a transport failure, so every outcome of the API routes, errors included, is HTTP 200 with
``{"err_no", "err_msg", ...}``. This middleware is the one place that happens.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError

from same_search.embed.errors import EmbedError
from same_search.error_mapping import api_error
from same_search.errors import ApiError, ErrNo, bad_request, shown
from same_search.logs import clip

log = logging.getLogger("same_search.access")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

#: What a handler sets on the request so the log line can carry it.
LOGID = web.RequestKey("logid", object)
APPID = web.RequestKey("appid", str)
ERRNO = web.RequestKey("err_no", int)
#: Set when the rest of the body cannot be read: answer, then close the connection.
CLOSE = web.RequestKey("close_connection", bool)
#: The body size limit, for the error message.
MAX_BODY = web.AppKey("max_body_bytes", int)
#: Seconds a request body may take to arrive.
BODY_TIMEOUT = web.AppKey("body_timeout_s", float)


def ok(**fields: Any) -> web.Response:
    """A success envelope with extra fields."""
    return envelope_response({"err_no": 0, "err_msg": "OK", **fields})


def envelope_response(body: dict[str, Any]) -> web.Response:
    """Serialise an envelope (HTTP 200 always)."""
    return web.Response(text=json.dumps(body, ensure_ascii=False), content_type="application/json")


def _http_error(request: web.Request, exc: web.HTTPException) -> ApiError:
    if isinstance(exc, web.HTTPRequestEntityTooLarge):
        return bad_request(f"request body exceeds the limit of {request.app[MAX_BODY]} bytes")
    if isinstance(exc, web.HTTPMethodNotAllowed):
        return bad_request(f"{shown(request.method)} is not allowed on {shown(request.path)}; use POST")
    if isinstance(exc, web.HTTPNotFound):
        return bad_request(f"no such route {shown(request.path)} on this port")
    return bad_request(f"HTTP error {exc.status}: {exc.reason}")


@web.middleware
async def envelope_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn every outcome into the envelope and log one line per request."""
    started = time.monotonic()
    error: ApiError | None = None
    try:
        response = await handler(request)
    except (ApiError, EmbedError) as exc:
        error = api_error(exc)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        error = _http_error(request, exc)
    except Exception:
        log.exception("unhandled error on %s", clip(request.path))
        error = ApiError(ErrNo.INTERNAL, "internal error; see the daemon log")
    if error is not None:
        response = envelope_response(error.body())
    if request.get(CLOSE):
        response.force_close()
    request[ERRNO] = request.get(ERRNO, 0) if error is None else int(error.err_no)
    _log_request(request, started)
    return response


def _log_request(request: web.Request, started: float) -> None:
    """One line per request; the fields a client chooses are clipped (:func:`logs.clip`)."""
    fields = {
        "route": clip(request.path),
        "logid": clip(request.get(LOGID, "-")),
        "appid": clip(request.get(APPID, "-")),
        "err_no": request.get(ERRNO, "-"),
        "latency_ms": round((time.monotonic() - started) * 1000.0, 1),
    }
    log.info(" ".join(f"{key}=%s" for key in fields), *fields.values(), extra=fields)


async def read_body(request: web.Request) -> bytearray:
    """The request body, refused past the size limit before it is all in memory.

    Read from the stream rather than with ``request.read()``, which would keep a second copy of
    the body cached on the request for its whole lifetime. A body that trickles in slower than
    the body timeout, or that does not match its ``Content-Encoding``, is the client's error.
    """
    limit = request.app[MAX_BODY]
    if request.content_length is not None and request.content_length > limit:
        raise bad_request(f"request body exceeds the limit of {limit} bytes")
    content = request.content
    if content.is_eof() and content.exception() is None:
        # The whole body came with the headers (a small JSON request): taken as it is, without
        # arming a timer and iterating chunks for it, a tenth of a millisecond on a busy machine.
        body = bytearray(content.read_nowait())
        if len(body) > limit:
            raise bad_request(f"request body exceeds the limit of {limit} bytes")
        return body
    timeout = request.app.get(BODY_TIMEOUT, 60.0)
    body = bytearray()
    try:
        async with asyncio.timeout(timeout):
            async for chunk in request.content.iter_chunked(1 << 16):
                if len(body) + len(chunk) > limit:
                    raise bad_request(f"request body exceeds the limit of {limit} bytes")
                body += chunk
    except TimeoutError:
        request[CLOSE] = True
        raise bad_request(f"request body not received within {timeout:g} s") from None
    except RequestPayloadError as exc:
        request[CLOSE] = True
        encoding = request.headers.get("Content-Encoding", "")
        raise bad_request(f"request body does not match Content-Encoding {encoding!r}: {exc}") from None
    return body

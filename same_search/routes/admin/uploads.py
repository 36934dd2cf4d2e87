"""Request bodies streamed to a file in the data directory (import ZIPs), never all in memory."""

from __future__ import annotations

import secrets
import time
from pathlib import Path

from aiohttp import web

from same_search.errors import bad_request
from same_search.services import SERVICES, Services


async def save_upload(request: web.Request, path: Path) -> int:
    """Stream the request body to ``path``; err_no 1 past the upload limit.

    Whatever stops it (the limit, an empty body, the client going away mid-body, a full disk)
    deletes the partial file: an upload is either complete or not on disk at all.
    """
    limit = request.app[SERVICES].cfg.server.max_upload_bytes
    path.parent.mkdir(parents=True, exist_ok=True)
    size = 0
    try:
        with path.open("wb") as fh:
            async for chunk in request.content.iter_chunked(1 << 20):
                size += len(chunk)
                if size > limit:
                    raise bad_request(f"upload exceeds the limit of {limit} bytes")
                fh.write(chunk)
        if size == 0:
            raise bad_request("the upload is empty")
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return size


def upload_path(services: Services, suffix: str) -> Path:
    """A fresh file name under ``<data_dir>/uploads``."""
    return services.cfg.data_path / "uploads" / f"{int(time.time() * 1000)}-{secrets.token_hex(4)}{suffix}"

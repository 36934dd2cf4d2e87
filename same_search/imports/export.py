"""Export a library to a ZIP, and import such a ZIP into another box without re-embedding.

The ZIP holds ``meta.json`` (appid, model, dimension, fingerprint, count), ``items.jsonl`` (one
``{"contsign", "brief", "tags"}`` per line, brief in base64) and, when asked for, ``vectors.npy``
(float32, one row per line of items.jsonl). Vectors only mean something to the same model, so an
import requires the serving model's fingerprint.

Reading an export back (checked whole, then stored all or nothing) is ``export_read``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
import time
import zipfile
from pathlib import Path

import numpy as np
from numpy.lib import format as npy_format

from same_search.contsign import ContSign
from same_search.libraries import Library, LibraryService

FORMAT = "same_search-export-1"


async def write_export(libraries: LibraryService, lib: Library, path: Path, with_vectors: bool) -> int:
    """Write ``lib`` to a ZIP at ``path``; returns the item count.

    Streamed, so memory stays at one chunk of rows whatever the library's size: lines and raw
    vectors go to two temporary files beside ``path`` (the count is only known at the end, and
    meta.json and the vectors.npy header carry it), then into the ZIP.
    """
    items_tmp, vectors_tmp = path.with_name(path.name + ".items"), path.with_name(path.name + ".vectors")
    count = 0
    try:
        with items_tmp.open("wb") as items_out, vectors_tmp.open("wb") as vectors_out:
            async for chunk in libraries.export_items(lib):
                lines = "".join(_export_line(item.contsign.key, item.brief, item.tags) for item, _ in chunk)
                await asyncio.to_thread(items_out.write, lines.encode())
                if with_vectors:
                    raw = b"".join(np.asarray(vector, dtype="<f4").tobytes() for _, vector in chunk)
                    await asyncio.to_thread(vectors_out.write, raw)
                count += len(chunk)
        meta = {
            "format": FORMAT,
            "appid": lib.row.appid,
            "model_id": lib.row.model_id,
            "dim": lib.row.dim,
            "fingerprint": lib.row.fingerprint,
            "count": count,
            "vectors": with_vectors,
            "exported_at": time.time(),
        }
        await asyncio.to_thread(_write_zip, path, meta, items_tmp, vectors_tmp if with_vectors else None)
    finally:
        items_tmp.unlink(missing_ok=True)
        vectors_tmp.unlink(missing_ok=True)
    return count


def _export_line(key: int, brief: bytes, tags: tuple[int, int] | None) -> str:
    line = {
        "contsign": ContSign.from_key(key).to_json(),
        "brief": base64.b64encode(brief).decode(),
        "tags": list(tags) if tags else None,
    }
    return json.dumps(line) + "\n"


def _write_zip(path: Path, meta: dict, items: Path, vectors: Path | None) -> None:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("meta.json", json.dumps(meta, indent=1))
        with items.open("rb") as source, archive.open("items.jsonl", "w", force_zip64=True) as target:
            shutil.copyfileobj(source, target, 1 << 20)
        if vectors is not None:
            with vectors.open("rb") as source, archive.open("vectors.npy", "w", force_zip64=True) as target:
                header = {"descr": "<f4", "fortran_order": False, "shape": (meta["count"], meta["dim"])}
                npy_format.write_array_header_1_0(target, header)
                shutil.copyfileobj(source, target, 1 << 20)

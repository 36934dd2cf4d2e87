"""Export a library to a ZIP, and import such a ZIP into another box without re-embedding.

The ZIP holds ``meta.json`` (appid, model, dimension, fingerprint, count), ``items.jsonl`` (one
``{"contsign", "brief", "tags"}`` per line, brief in base64, plus ``"original": sha256`` for an
item with a kept original, and ``"local_features"``: base64 of their stored form
(same_search/verify/local_features.py) for an item that has them, so the same-picture check
answers alike where the library is imported), when asked for ``vectors.npy`` (float32, one row per line of
items.jsonl), and the kept originals as ``originals/<sha256>`` (unless left out with
``originals=False``), so the library can be re-embedded where it is imported; and, for a library
that ranks in its learned space, ``space.npz`` (its projection; ``space`` in meta.json), so the
import ranks identically. Vectors only mean
something to the same model, so an import requires a served model's fingerprint.

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
#: The folder of kept originals inside an export ZIP.
ORIGINALS = "originals/"
#: The library's learned space, when it ranks in one (meta.json's ``space`` describes it).
SPACE = "space.npz"


async def write_export(
    libraries: LibraryService,
    lib: Library,
    path: Path,
    with_vectors: bool,
    with_originals: bool = True,
    with_features: bool = True,
) -> int:
    """Write ``lib`` to a ZIP at ``path``; returns the item count.

    Streamed, so memory stays at one chunk of rows whatever the library's size: lines and raw
    vectors go to two temporary files beside ``path`` (the count is only known at the end, and
    meta.json and the vectors.npy header carry it), then into the ZIP.
    """
    items_tmp, vectors_tmp = path.with_name(path.name + ".items"), path.with_name(path.name + ".vectors")
    count = features_count = 0
    originals: dict[str, None] = {}  # in first-seen order: the ZIP lists each file once
    try:
        with items_tmp.open("wb") as items_out, vectors_tmp.open("wb") as vectors_out:
            async for chunk in libraries.reads.export_items(lib):
                keys = [item.contsign.key for item, _ in chunk]
                features = await libraries.reads.local_features(lib, keys) if with_features else {}
                features_count += len(features)
                lines = "".join(
                    _export_line(
                        item.contsign.key,
                        item.brief,
                        item.tags,
                        item.original if with_originals else None,
                        features.get(item.contsign.key),
                    )
                    for item, _ in chunk
                )
                if with_originals:
                    originals.update((item.original, None) for item, _ in chunk if item.original)
                await asyncio.to_thread(items_out.write, lines.encode())
                if with_vectors:
                    raw = b"".join(np.asarray(vector, dtype="<f4").tobytes() for _, vector in chunk)
                    await asyncio.to_thread(vectors_out.write, raw)
                count += len(chunk)
        space = libraries.reads.space(lib)
        meta = {
            "format": FORMAT,
            "appid": lib.row.appid,
            "model_id": lib.row.model_id,
            "dim": lib.row.dim,
            "fingerprint": lib.row.fingerprint,
            "count": count,
            "vectors": with_vectors,
            "originals": len(originals),
            "local_features": features_count,
            "exported_at": time.time(),
        }
        fitted = None
        if space is not None:  # the import ranks in the same space (index/space.py)
            meta["space"], fitted = space.to_export()
        await asyncio.to_thread(
            _write_zip, path, meta, items_tmp, vectors_tmp if with_vectors else None, fitted
        )
        if originals:
            await _append_originals(libraries, path, list(originals))
    finally:
        items_tmp.unlink(missing_ok=True)
        vectors_tmp.unlink(missing_ok=True)
    return count


def _export_line(
    key: int, brief: bytes, tags: tuple[int, int] | None, original: str | None, features: bytes | None
) -> str:
    line: dict = {
        "contsign": ContSign.from_key(key).to_json(),
        "brief": base64.b64encode(brief).decode(),
        "tags": list(tags) if tags else None,
    }
    if original:
        line["original"] = original
    if features:
        line["local_features"] = base64.b64encode(features).decode()
    return json.dumps(line) + "\n"


async def _append_originals(libraries: LibraryService, path: Path, shas: list[str]) -> None:
    """Add ``originals/<sha256>`` entries, one file at a time (stored: JPEGs do not deflate)."""
    archive = await asyncio.to_thread(zipfile.ZipFile, path, "a")
    try:
        async for sha, data in libraries.reads.read_originals(shas):
            info = zipfile.ZipInfo(f"{ORIGINALS}{sha}", date_time=time.localtime()[:6])
            info.compress_type = zipfile.ZIP_STORED
            await asyncio.to_thread(archive.writestr, info, data)
    finally:
        await asyncio.to_thread(archive.close)


def _write_zip(path: Path, meta: dict, items: Path, vectors: Path | None, space: bytes | None = None) -> None:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("meta.json", json.dumps(meta, indent=1))
        if space is not None:
            archive.writestr(SPACE, space)
        with items.open("rb") as source, archive.open("items.jsonl", "w", force_zip64=True) as target:
            shutil.copyfileobj(source, target, 1 << 20)
        if vectors is not None:
            with vectors.open("rb") as source, archive.open("vectors.npy", "w", force_zip64=True) as target:
                header = {"descr": "<f4", "fortran_order": False, "shape": (meta["count"], meta["dim"])}
                npy_format.write_array_header_1_0(target, header)
                shutil.copyfileobj(source, target, 1 << 20)

"""Export a library to a ZIP, and import such a ZIP into another box without re-embedding.

The ZIP holds ``meta.json`` (appid, model, dimension, fingerprint, count), ``items.jsonl`` (one
``{"contsign", "brief", "tags"}`` per line, brief in base64) and, when asked for, ``vectors.npy``
(float32, one row per line of items.jsonl). Vectors only mean something to the same model, so an
import requires the serving model's fingerprint.
"""

from __future__ import annotations

import base64
import io
import json
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from same_search.backends.base import NewItem
from same_search.contsign import ContSign
from same_search.errors import bad_request
from same_search.libraries import Library, LibraryService

FORMAT = "same_search-export-1"
#: Items stored per backend call when importing (one transaction / one upsert per batch).
IMPORT_BATCH = 256


async def write_export(libraries: LibraryService, lib: Library, path: Path, with_vectors: bool) -> int:
    """Write ``lib`` to a ZIP at ``path``; returns the item count."""
    lines: list[str] = []
    vectors: list[np.ndarray] = []
    async for chunk in libraries.export_items(lib):
        for item, vector in chunk:
            lines.append(
                json.dumps(
                    {
                        "contsign": item.contsign.to_json(),
                        "brief": base64.b64encode(item.brief).decode(),
                        "tags": list(item.tags) if item.tags else None,
                    }
                )
            )
            if with_vectors:
                vectors.append(vector)
    meta = {
        "format": FORMAT,
        "appid": lib.row.appid,
        "model_id": lib.row.model_id,
        "dim": lib.row.dim,
        "fingerprint": lib.row.fingerprint,
        "count": len(lines),
        "vectors": with_vectors,
        "exported_at": time.time(),
    }
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("meta.json", json.dumps(meta, indent=1))
        archive.writestr("items.jsonl", "\n".join(lines) + ("\n" if lines else ""))
        if with_vectors:
            buffer = io.BytesIO()
            matrix = np.stack(vectors) if vectors else np.empty((0, lib.row.dim), np.float32)
            np.save(buffer, matrix.astype("<f4"))
            archive.writestr("vectors.npy", buffer.getvalue())
    return len(lines)


@dataclass
class ImportResult:
    imported: int
    duplicates: int


def read_export(path: Path, fingerprint: str) -> tuple[dict, list[dict], np.ndarray]:
    """Validate and read an export ZIP (runs in a worker thread)."""
    try:
        with zipfile.ZipFile(path) as archive:
            meta = json.loads(archive.read("meta.json"))
            lines = [json.loads(line) for line in archive.read("items.jsonl").decode().splitlines() if line]
            if "vectors.npy" not in archive.namelist():
                raise bad_request(
                    "this export has no vectors.npy; export with ?vectors=1 to import it elsewhere"
                )
            matrix = np.load(io.BytesIO(archive.read("vectors.npy")), allow_pickle=False)
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as exc:
        raise bad_request(f"not a same_search export: {exc}") from exc
    if meta.get("format") != FORMAT:
        raise bad_request(f"unknown export format {meta.get('format')!r}")
    if meta.get("fingerprint") != fingerprint:
        raise bad_request(
            f"export made with model {meta.get('model_id')} (fingerprint {meta.get('fingerprint')}); this "
            f"daemon serves fingerprint {fingerprint}: vectors are not comparable, add the images instead"
        )
    if matrix.ndim != 2 or matrix.shape[0] != len(lines):
        raise bad_request("vectors.npy does not match items.jsonl")
    return meta, lines, matrix.astype(np.float32)


async def import_export(
    libraries: LibraryService, lib: Library, lines: list[dict], matrix: np.ndarray
) -> ImportResult:
    """Store every exported item with its vector, in batches; items already present count as duplicates."""
    result = ImportResult(0, 0)
    batch: dict[int, NewItem] = {}
    for line, vector in zip(lines, matrix, strict=True):
        contsign = ContSign.from_json(line.get("contsign"))
        brief = base64.b64decode(line.get("brief") or "")
        tags = tuple(line["tags"]) if line.get("tags") else None
        if contsign.key in batch:  # the same item twice in one file: the second is a duplicate
            result.duplicates += 1
            continue
        batch[contsign.key] = NewItem(contsign.key, brief, tags, vector)  # type: ignore[arg-type]
        if len(batch) >= IMPORT_BATCH:
            await _store_batch(libraries, lib, list(batch.values()), result)
            batch.clear()
    if batch:
        await _store_batch(libraries, lib, list(batch.values()), result)
    return result


async def _store_batch(
    libraries: LibraryService, lib: Library, items: list[NewItem], result: ImportResult
) -> None:
    stored = await libraries.store_vectors(lib, items)
    result.imported += sum(stored)
    result.duplicates += len(stored) - sum(stored)

"""Export ZIPs with vectors built directly (``POST /api/libraries/{appid}/import``'s format), so a
test can put thousands of items in a library in a second, without embedding a picture."""

from __future__ import annotations

import base64
import io
import json
import zipfile
from collections.abc import Sequence

import numpy as np

from same_search.contsign import ContSign


def unit_vectors(count: int, dim: int, seed: int) -> np.ndarray:
    """``count`` random L2-normalised float32 vectors."""
    vectors = np.random.default_rng(seed).standard_normal((count, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def export_zip(
    keys: Sequence[int],
    vectors: np.ndarray,
    model: dict,
    tags: Sequence[tuple[int, int] | None] | None = None,
    appid: str = "exported",
) -> bytes:
    """An export ZIP of ``keys`` with ``vectors`` for the serving ``model`` (/healthz's ``model``)."""
    lines = []
    for i, key in enumerate(keys):
        tag = tags[i] if tags is not None else None
        line = {
            "contsign": ContSign.from_key(int(key)).to_json(),
            "brief": base64.b64encode(f"item {key}".encode()).decode(),
            "tags": list(tag) if tag else None,
        }
        lines.append(json.dumps(line))
    meta = {
        "format": "same_search-export-1",
        "appid": appid,
        "model_id": model["id"],
        "dim": model["dim"],
        "fingerprint": model["fingerprint"],
        "count": len(keys),
        "vectors": True,
    }
    matrix = io.BytesIO()
    np.save(matrix, np.ascontiguousarray(vectors, dtype="<f4"))
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
        archive.writestr("meta.json", json.dumps(meta))
        archive.writestr("items.jsonl", "\n".join(lines) + "\n")
        archive.writestr("vectors.npy", matrix.getvalue())
    return buffer.getvalue()

"""Saved index graphs (the operator's "index snapshots"): written atomically, checked before use.

Named apart from the spec's ``snapshot`` statistics block (``/RTSAsService/snapshot``), which
has nothing to do with these files.

A snapshot is two files per library: the graph (``<id>.hnsw``) and a JSON header
(``<id>.meta.json``) with the format version, the model fingerprint, the live count, the write
sequence the graph contains and the graph's SHA-256. Each is written to a temporary name,
fsynced and renamed, header last; a crash between the two renames leaves a header whose checksum
does not match, which reads as "no usable snapshot" and triggers a rebuild from SQLite.

A reduced index (index/reduced.py) adds two files that the header vouches for: its row map
(``<id>.rows.npz``: row -> key, live mask, int8 reduced codes; its SHA-256 in the header, written before
the graph) and its native vector file (``<id>.<generation>.native.f32``, fsynced before the
header; the header records its name and the rows it holds, and anything after them is cut at
load and replayed from SQLite). The header also names the projection the graph was built with.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from same_search.files import replace_durably, sha256_file, write_atomically

FORMAT_VERSION = 1


@dataclass(frozen=True)
class SnapshotHeader:
    """What a saved graph claims to be."""

    format_version: int
    fingerprint: str
    dim: int
    count: int
    seq: int
    sha256: str
    saved_at: float
    #: A reduced index's projection fingerprint ("" for a full-dimension graph): a snapshot whose
    #: projection is not the library's stored one is rebuilt, never served.
    projection: str = ""
    #: A reduced index's native vector file (a name in the same folder) and the rows it vouches for.
    native_file: str = ""
    native_rows: int = 0
    #: SHA-256 of the row map file (``<id>.rows.npz``) of a reduced index.
    rows_sha256: str = ""


class SnapshotInvalid(Exception):
    """The snapshot is missing, truncated, corrupted or made by another model."""


def paths(directory: Path, lib_id: int) -> tuple[Path, Path]:
    """(graph file, header file) of one library."""
    return directory / f"{lib_id}.hnsw", directory / f"{lib_id}.meta.json"


def rows_path(directory: Path, lib_id: int) -> Path:
    """The row map of a library's reduced index (row -> key, live)."""
    return directory / f"{lib_id}.rows.npz"


def all_files(directory: Path, lib_id: int) -> list[Path]:
    """Every file of one library's index, whatever its kind: snapshot, row map, native vectors
    and the temporary files a save interrupted by a crash leaves (all are named ``<id>.*``)."""
    return sorted(directory.glob(f"{lib_id}.*"))


def commit_graph(tmp_graph: Path, directory: Path, lib_id: int, header: SnapshotHeader) -> None:
    """Make a freshly written ``tmp_graph`` the library's snapshot, durably and atomically."""
    graph, meta = paths(directory, lib_id)
    header = SnapshotHeader(**{**asdict(header), "sha256": sha256_file(tmp_graph)})
    replace_durably(tmp_graph, graph)
    write_atomically(meta, json.dumps(asdict(header)))


def read_header(directory: Path, lib_id: int, fingerprint: str, dim: int) -> SnapshotHeader:
    """The verified header of a library's snapshot; :class:`SnapshotInvalid` says why not."""
    graph, meta = paths(directory, lib_id)
    if not meta.exists() or not graph.exists():
        raise SnapshotInvalid("no snapshot on disk")
    try:
        header = SnapshotHeader(**json.loads(meta.read_text()))
    except (ValueError, TypeError) as exc:
        raise SnapshotInvalid(f"unreadable header: {exc}") from exc
    if header.format_version != FORMAT_VERSION:
        raise SnapshotInvalid(f"format version {header.format_version}, expected {FORMAT_VERSION}")
    if header.fingerprint != fingerprint or header.dim != dim:
        raise SnapshotInvalid(f"made by model {header.fingerprint}/{header.dim}, serving {fingerprint}/{dim}")
    if sha256_file(graph) != header.sha256:
        raise SnapshotInvalid("checksum mismatch (truncated or corrupted graph file)")
    return header

"""Where an import job's images come from: a folder, a CSV/JSONL manifest, or a ZIP.

Each source lists its entries in a fixed order (so a job can resume at a position after a
restart) and reads one entry's bytes on demand (so a 200,000-photo job never holds more than a
handful of images in memory).
"""

from __future__ import annotations

import csv
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff"})


class SourceError(ValueError):
    """The source cannot be read at all (missing folder, malformed manifest, broken ZIP)."""


@dataclass(frozen=True)
class Entry:
    """One image to import: where it is, and what to store with it."""

    name: str
    brief: bytes
    tags: tuple[int, int] | None


def _is_image(name: str) -> bool:
    return Path(name).suffix.lower() in IMAGE_SUFFIXES


def list_entries(kind: str, source: str) -> list[Entry]:
    """The ordered entries of a source; brief defaults to the path relative to the source."""
    if kind == "dir":
        return _dir_entries(Path(source))
    if kind == "zip":
        return _zip_entries(Path(source))
    if kind == "manifest":
        return _manifest_entries(Path(source))
    raise SourceError(f"unknown source kind {kind!r}")


def read_entry(kind: str, source: str, entry: Entry) -> bytes:
    """The raw bytes of one entry (runs in a worker thread)."""
    if kind == "zip":
        with zipfile.ZipFile(source) as archive:
            return archive.read(entry.name)
    base = Path(source) if kind == "dir" else Path(source).parent
    return (base / entry.name).read_bytes()


def _dir_entries(root: Path) -> list[Entry]:
    if not root.is_dir():
        raise SourceError(f"{root} is not a folder on the server")
    names = sorted(
        p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() and _is_image(p.name)
    )
    return [Entry(name, name.encode(), None) for name in names]


def _zip_entries(path: Path) -> list[Entry]:
    try:
        with zipfile.ZipFile(path) as archive:
            names = sorted(i.filename for i in archive.infolist() if not i.is_dir() and _is_image(i.filename))
    except (OSError, zipfile.BadZipFile) as exc:
        raise SourceError(f"{path.name} is not a readable ZIP: {exc}") from exc
    return [Entry(name, name.encode(), None) for name in names]


def _parse_tags(value: object, where: str) -> tuple[int, int] | None:
    """Tags as ``[t1, t2]`` (JSONL) or ``"t1,t2"`` / ``"t1 t2"`` (CSV); empty means none."""
    if value in (None, "", []):
        return None
    parts = value if isinstance(value, list) else str(value).replace(",", " ").split()
    try:
        tags = [int(p) for p in parts]
    except (TypeError, ValueError):
        raise SourceError(f"{where}: tags must be two unsigned integers") from None
    tags = [*tags, 0, 0][:2]
    if len(parts) > 2 or not all(0 <= t < 2**32 for t in tags):
        raise SourceError(f"{where}: tags must be at most two unsigned 32-bit integers")
    return tags[0], tags[1]


def _manifest_entries(path: Path) -> list[Entry]:
    if not path.is_file():
        raise SourceError(f"manifest {path} not found on the server")
    rows: list[dict] = []
    try:
        if path.suffix.lower() == ".jsonl":
            for number, line in enumerate(path.read_text().splitlines(), 1):
                if line.strip():
                    row = json.loads(line)
                    if not isinstance(row, dict):
                        raise SourceError(f"{path.name}:{number}: each line must be a JSON object")
                    rows.append(row)
        else:
            rows = list(csv.DictReader(path.read_text().splitlines()))
    except (json.JSONDecodeError, csv.Error, UnicodeDecodeError) as exc:
        raise SourceError(f"{path.name} is not a valid manifest: {exc}") from exc
    entries = []
    for number, row in enumerate(rows, 1):
        name = row.get("path")
        if not isinstance(name, str) or not name:
            raise SourceError(f"{path.name}: row {number} has no path")
        brief = row.get("brief") or name
        entries.append(
            Entry(name, str(brief).encode(), _parse_tags(row.get("tags"), f"{path.name} row {number}"))
        )
    return entries

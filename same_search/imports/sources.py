"""Where an import job's images come from: a folder, a CSV/JSONL manifest, or a ZIP.

A source is opened once per job run: it lists its entries in a fixed order (so a job can resume
at a position after a restart) and reads one entry's bytes on demand, from any thread (so a
200,000-photo job never holds more than a handful of images in memory). A ZIP stays open for the
whole run: reading an entry is a dictionary look-up, not a re-parse of the central directory.

Every read is bounded by the image limit (``limits.max_image_bytes``) before anything is read:
files must be regular files (see :mod:`same_search.imports.finder`), ZIP entries are refused by
their declared size and read with a hard cap (the declared size can lie).
"""

from __future__ import annotations

import csv
import json
import struct
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

from same_search.imports.finder import (
    MAX_ENTRIES,
    EntryError,
    SourceError,
    find_images,
    is_image_name,
    read_regular_file,
    too_large,
)

__all__ = ["Entry", "EntryError", "Source", "SourceError", "open_source"]

#: Largest manifest read (it is parsed in memory): a million lines of path, brief and tags.
MAX_MANIFEST_BYTES = 256 * 1024 * 1024


@dataclass(frozen=True)
class Entry:
    """One image to import: where it is, and what to store with it."""

    name: str
    brief: bytes
    tags: tuple[int, int] | None


class Source:
    """An opened source: its entries, and a thread-safe :meth:`read` of one of them."""

    def __init__(self, entries: list[Entry], max_bytes: int) -> None:
        self.entries = entries
        self.max_bytes = max_bytes

    def read(self, entry: Entry) -> bytes:
        """The raw bytes of one entry (runs in a worker thread); :class:`EntryError` if refused."""
        raise NotImplementedError

    def close(self) -> None:
        """Release what the source holds open."""

    def __enter__(self) -> Source:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_source(kind: str, source: str, max_bytes: int) -> Source:
    """Open and list a source (blocking: run it in a worker thread); :class:`SourceError` if unusable."""
    if kind in ("dir", "sync"):  # a sync job reads a folder as a folder import does
        return FolderSource(Path(source), max_bytes)
    if kind == "zip":
        return ZipSource(Path(source), max_bytes)
    if kind == "manifest":
        return ManifestSource(Path(source), max_bytes)
    raise SourceError(f"unknown source kind {kind!r}")


class FolderSource(Source):
    """Every image file under a folder (see :func:`find_images`); brief = the relative path."""

    def __init__(self, root: Path, max_bytes: int) -> None:
        self.root = root
        super().__init__([Entry(name, name.encode(), None) for name in find_images(root)], max_bytes)

    def read(self, entry: Entry) -> bytes:
        return read_regular_file(self.root / entry.name, self.max_bytes)


class ManifestSource(Source):
    """The files a manifest names, relative to its folder (absolute paths are taken as they are)."""

    def __init__(self, path: Path, max_bytes: int) -> None:
        self.base = path.parent
        super().__init__(_manifest_entries(path), max_bytes)

    def read(self, entry: Entry) -> bytes:
        return read_regular_file(self.base / entry.name, self.max_bytes)


class ZipSource(Source):
    """The image entries of a ZIP, open for as long as the source is."""

    def __init__(self, path: Path, max_bytes: int) -> None:
        try:
            with path.open("rb") as fh:
                declared = _declared_entry_count(fh)
            if declared is not None and declared > MAX_ENTRIES:
                raise SourceError(f"{path.name} holds {declared} entries, more than {MAX_ENTRIES}; split it")
            self.archive = zipfile.ZipFile(path)
        except (OSError, zipfile.BadZipFile, ValueError) as exc:
            if isinstance(exc, SourceError):
                raise
            raise SourceError(f"{path.name} is not a readable ZIP: {exc}") from exc
        names = sorted(
            i.filename for i in self.archive.infolist() if not i.is_dir() and is_image_name(i.filename)
        )
        super().__init__([Entry(name, name.encode(), None) for name in names], max_bytes)

    def read(self, entry: Entry) -> bytes:
        try:
            info = self.archive.getinfo(entry.name)
        except KeyError:
            raise EntryError("no longer in the ZIP") from None
        if info.file_size > self.max_bytes:
            raise EntryError(too_large(info.file_size, self.max_bytes) + " (uncompressed size in the ZIP)")
        try:
            with self.archive.open(info) as member:
                data = member.read(self.max_bytes + 1)
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError, RuntimeError, NotImplementedError) as exc:
            raise EntryError(f"cannot read from the ZIP: {exc}") from exc
        if len(data) > self.max_bytes:  # the declared size lied
            raise EntryError(
                f"expands past the image limit of {self.max_bytes} bytes (limits.max_image_bytes)"
            )
        return data

    def close(self) -> None:
        self.archive.close()


def _declared_entry_count(fh) -> int | None:
    """The entry count of the end-of-central-directory record (ZIP64 too), read before the
    central directory itself is parsed into memory; ``None`` when there is no such record."""
    fh.seek(0, 2)
    size = fh.tell()
    tail_size = min(size, 65_535 + 22)
    fh.seek(size - tail_size)
    tail = fh.read(tail_size)
    at = tail.rfind(b"PK\x05\x06")
    if at < 0 or len(tail) - at < 22:
        return None
    (count,) = struct.unpack("<H", tail[at + 10 : at + 12])
    if count == 0xFFFF and at >= 20 and tail[at - 20 : at - 16] == b"PK\x06\x07":
        (offset,) = struct.unpack("<Q", tail[at - 12 : at - 4])
        fh.seek(offset)
        record = fh.read(56)
        if record[:4] == b"PK\x06\x06" and len(record) == 56:
            (count,) = struct.unpack("<Q", record[32:40])
    return count


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


def _manifest_rows(path: Path) -> list[dict]:
    """The manifest's rows: a regular file of at most :data:`MAX_MANIFEST_BYTES`, CSV or JSONL."""
    try:
        text = read_regular_file(path, MAX_MANIFEST_BYTES).decode()
    except EntryError as exc:
        raise SourceError(f"manifest {path}: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise SourceError(f"{path.name} is not a valid manifest: {exc}") from exc
    rows: list[dict] = []
    try:
        if path.suffix.lower() == ".jsonl":
            for number, line in enumerate(text.splitlines(), 1):
                if line.strip():
                    row = json.loads(line)
                    if not isinstance(row, dict):
                        raise SourceError(f"{path.name}:{number}: each line must be a JSON object")
                    rows.append(row)
        else:
            rows = list(csv.DictReader(text.splitlines()))
    except (json.JSONDecodeError, csv.Error) as exc:
        raise SourceError(f"{path.name} is not a valid manifest: {exc}") from exc
    if len(rows) > MAX_ENTRIES:
        raise SourceError(f"{path.name} lists {len(rows)} files, more than {MAX_ENTRIES}; split it")
    return rows


def _manifest_entries(path: Path) -> list[Entry]:
    if not path.exists():
        raise SourceError(f"manifest {path} not found on the server")
    entries = []
    for number, row in enumerate(_manifest_rows(path), 1):
        name = row.get("path")
        if not isinstance(name, str) or not name:
            raise SourceError(f"{path.name}: row {number} has no path")
        brief = row.get("brief") or name
        entries.append(
            Entry(name, str(brief).encode(), _parse_tags(row.get("tags"), f"{path.name} row {number}"))
        )
    return entries

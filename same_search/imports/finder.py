"""Which files an import takes, and how it reads one: shared by the CLI import and server jobs.

One rule decides what an image file is, wherever it is found:

- its suffix is one the decoder reads (:data:`IMAGE_SUFFIXES`, case-insensitive);
- no part of its path starts with a dot (hidden files and folders, ``.git``, macOS ``._x.jpg``);
- it is a regular file. Symlinks to regular files are followed (photo trees are often organised
  with them); symlinked folders are not descended into (no loops, no walking out of the tree).

Reading opens the file without blocking (``O_NONBLOCK``: a FIFO cannot hang the open), checks on
the open descriptor that it is a regular file no larger than the image limit, and reads at most
one byte past that limit: ``/dev/zero``, a FIFO or a 1.5 GB sparse file cost no memory and no wait.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

log = logging.getLogger(__name__)

#: Every suffix the decoder (Pillow: JPEG, PNG, GIF, BMP, WebP, TIFF, MPO, ICO, PPM) is asked to read.
IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".jpe", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff", ".mpo", ".ico", ".ppm"}
)
#: Most entries one source may list (a folder, a manifest, a ZIP): the listing is held in memory.
MAX_ENTRIES = 1_000_000


class SourceError(ValueError):
    """The source cannot be read at all (missing folder, malformed manifest, broken ZIP)."""


class EntryError(ValueError):
    """One entry cannot be read (not a regular file, too large, unreadable); the import goes on."""


def is_image_name(name: str) -> bool:
    """True for a ``/``-separated relative path with an image suffix and no hidden part."""
    parts = name.split("/")
    return Path(parts[-1]).suffix.lower() in IMAGE_SUFFIXES and not any(p.startswith(".") for p in parts)


def find_images(root: Path, max_entries: int = MAX_ENTRIES) -> list[str]:
    """The image files under ``root`` as sorted ``/``-separated paths relative to it.

    The order is fixed (a job's position indexes it). Folders that cannot be listed are skipped
    with a warning; more than ``max_entries`` images is a :class:`SourceError`.
    """
    if not root.is_dir():
        raise SourceError(f"{root} is not a folder on the server")
    found: list[str] = []
    pending = [""]
    while pending:
        folder = pending.pop()
        try:
            with os.scandir(root / folder) as listing:
                for entry in listing:
                    if entry.name.startswith("."):
                        continue
                    name = f"{folder}/{entry.name}" if folder else entry.name
                    if entry.is_dir(follow_symlinks=False):
                        pending.append(name)
                    elif entry.is_file() and is_image_name(entry.name):  # follows a file symlink
                        found.append(name)
                        if len(found) > max_entries:
                            raise SourceError(f"{root} holds more than {max_entries} images; split it")
        except OSError as exc:
            log.warning("skipping folder %s: %s", root / folder, exc.strerror or exc)
    return sorted(found)


def too_large(size: int, max_bytes: int) -> str:
    """The reason recorded for an image above the limit."""
    return f"{size} bytes, above the image limit of {max_bytes} bytes (limits.max_image_bytes)"


def _kind(mode: int) -> str:
    kinds = [
        (stat.S_ISDIR, "a folder"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ]
    return next((name for test, name in kinds if test(mode)), "not a regular file")


def _check_regular(info: os.stat_result, max_bytes: int) -> None:
    if not stat.S_ISREG(info.st_mode):
        raise EntryError(f"not a regular file ({_kind(info.st_mode)}); only regular files are imported")
    if info.st_size > max_bytes:
        raise EntryError(too_large(info.st_size, max_bytes))


def read_regular_file(path: str | Path, max_bytes: int) -> bytes:
    """The bytes of a regular file of at most ``max_bytes``; :class:`EntryError` otherwise.

    ``stat`` first, so a device is never even opened (opening some has side effects); then the
    checks again on the opened descriptor, so a file swapped in between is caught; then a read
    capped one byte past the limit, in case the file grows while it is read.
    """
    try:
        _check_regular(os.stat(path), max_bytes)
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as exc:
        raise EntryError(f"cannot read: {exc.strerror or exc}") from exc
    with os.fdopen(fd, "rb") as fh:
        try:
            _check_regular(os.fstat(fd), max_bytes)
            data = fh.read(max_bytes + 1)
        except OSError as exc:
            raise EntryError(f"cannot read: {exc.strerror or exc}") from exc
    if len(data) > max_bytes:
        raise EntryError(too_large(len(data), max_bytes) + " (it grew while being read)")
    return data

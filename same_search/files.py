"""Small file helpers: checksums and content names, and the one way this daemon replaces a file
durably.

A durable replacement writes a temporary file beside the target, fsyncs it, renames it over the
target (atomic: a reader sees the old file or the new one, never half of one) and fsyncs the
folder, so the rename itself survives a power cut. Temporary names end in ``.tmp`` and start
with the target's name, so whoever owns a folder can sweep what a crash left behind.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from pathlib import Path


def sha256_file(path: Path, block: int = 1 << 22) -> str:
    """Hex SHA-256 of a file, streamed in blocks so large index files never sit in memory."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(block), b""):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_hex(data: bytes) -> str:
    """Hex SHA-256 of some bytes: the name a kept original is stored under."""
    return hashlib.sha256(data).hexdigest()


def is_sha256_hex(text: object) -> bool:
    """Whether ``text`` is a lower-case hex sha256 (a name :func:`sha256_hex` could have made)."""
    return isinstance(text, str) and len(text) == 64 and all(c in "0123456789abcdef" for c in text)


def temporary_beside(target: Path) -> Path:
    """A fresh temporary name in ``target``'s folder (``<name>.<random>.tmp``)."""
    return target.with_name(f"{target.name}.{secrets.token_hex(4)}.tmp")


def write_atomically(target: Path, data: bytes | str) -> None:
    """Replace ``target`` with ``data``, durably (see the module's docstring); on failure the
    temporary file is removed and ``target`` is as it was."""
    tmp = temporary_beside(target)
    try:
        with tmp.open("wb") as fh:
            fh.write(data.encode() if isinstance(data, str) else data)
        replace_durably(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def replace_durably(written: Path, target: Path) -> None:
    """Make a file written by someone else (a library's own save routine) ``target``: fsync it,
    rename it over ``target``, fsync the folder."""
    with written.open("rb+") as fh:
        os.fsync(fh.fileno())
    os.replace(written, target)
    fsync_dir(target.parent)


def fsync_dir(folder: Path) -> None:
    """Make the renames in ``folder`` durable (the directory entries, not only the files)."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

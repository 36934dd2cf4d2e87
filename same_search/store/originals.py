"""Kept originals: uploaded image bytes, content-addressed under ``<data_dir>/originals``.

A file is named by the sha256 of its bytes (``originals/ab/cdef...``), so two items holding the
same picture share it. It is written durably (temporary file, fsync, rename, fsync of the folder)
before the row that references it is committed; which items reference a file, and its size, live
in the database (``items.original``, table ``originals``), so only :class:`same_search.store.db.Store`
decides when a file goes.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from same_search.files import write_atomically


def sha256_hex(data: bytes) -> str:
    """The name a picture's bytes are kept under."""
    return hashlib.sha256(data).hexdigest()


def is_sha256_hex(text: object) -> bool:
    """Whether ``text`` is a lower-case hex sha256 (a file name this store could have made)."""
    return isinstance(text, str) and len(text) == 64 and all(c in "0123456789abcdef" for c in text)


class Originals:
    """The folder of kept originals. Blocking file I/O: call from a worker thread."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, sha256: str) -> Path:
        """Where the file of ``sha256`` lives (two-character fan-out keeps folders small)."""
        return self.root / sha256[:2] / sha256[2:]

    def write(self, sha256: str, data: bytes) -> bool:
        """Make the file durable; False when it was already there (same name, same size)."""
        target = self.path(sha256)
        if target.is_file() and target.stat().st_size == len(data):
            return False
        target.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(target, data)
        return True

    def read(self, sha256: str) -> bytes:
        """The kept bytes; OSError when the file is missing."""
        return self.path(sha256).read_bytes()

    def remove(self, sha256: str) -> None:
        """Delete a file no item references any more."""
        self.path(sha256).unlink(missing_ok=True)

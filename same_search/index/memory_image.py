"""A graph's snapshot written to memory first, so writers and readers wait for RAM, not the disk.

hnswlib's ``save_index`` holds the GIL for its whole write. Into the page cache of a file on
disk, a million-item graph (1.2 GB) took about 4 s under the kernel's dirty-page throttling:
every request of the process waited that long, and every add the whole save (6-7 s) for the
library's write lock. Written into an anonymous memory file (``memfd_create``: no size limit of
``/dev/shm``, freed when closed) the same bytes take a fraction of that; the copy to disk, its
fsync and checksum then run with the GIL released and writers back at work.

The memory file costs the graph's size in RAM for the length of one save. Where it cannot be
made (not Linux, or no memory for it) the caller writes the graph straight to disk, as before.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)


class GraphImage:
    """The bytes of a saved graph, held in an anonymous memory file until :meth:`write_to`."""

    def __init__(self, fd: int) -> None:
        self._fd = fd

    @classmethod
    def of(cls, save: Callable[[str], None]) -> GraphImage | None:
        """``save(path)`` (hnswlib's ``save_index``) into memory; None where that fails."""
        if not hasattr(os, "memfd_create"):
            return None
        try:
            fd = os.memfd_create("same_search-snapshot", os.MFD_CLOEXEC)
        except OSError as exc:
            log.warning("no memory file for an index snapshot (%s); writing it to disk directly", exc)
            return None
        image = cls(fd)
        try:
            save(f"/proc/self/fd/{fd}")
        except Exception as exc:  # out of memory while writing: the disk is the fallback
            image.close()
            log.warning("index snapshot did not fit in memory (%s); writing it to disk directly", exc)
            return None
        return image

    @property
    def size(self) -> int:
        """Bytes held."""
        return os.fstat(self._fd).st_size

    def write_to(self, path: Path) -> None:
        """Copy the image into a new file at ``path`` in the kernel (no GIL, no Python buffer)
        and release the memory; the caller fsyncs and renames it."""
        try:
            size = self.size
            out = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                done = 0
                while done < size:
                    sent = os.sendfile(out, self._fd, done, size - done)
                    if sent == 0:
                        raise OSError(f"copy of the index snapshot stopped at {done} of {size} bytes")
                    done += sent
            finally:
                os.close(out)
        finally:
            self.close()

    def close(self) -> None:
        """Release the memory (idempotent)."""
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = -1

    def __del__(self) -> None:
        self.close()

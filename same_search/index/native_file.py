"""Native vectors on disk for re-ranking: one float32 file per reduced index, row i at i * dim * 4.

A reduced index searches its graph with short vectors and re-ranks a few hundred candidates with
the native ones; keeping those in RAM would cost dim * 4 bytes per item (5 KB at 1280-d), more
than the whole budget. Candidates are read with ``pread`` (not a memory map: mapped pages, once
touched, count in the daemon's RSS), from the page cache when it holds the file; when it does
not (a file of gigabytes, memory shared with other work) the rows of one re-rank are requested
from the disk together, so a cold re-rank waits for the disk about once, not once per row.

float32, not float16: float16 halves the file but moves a score by up to ~5e-4 (an item scored
against itself came out 1.00003), and a returned score must be the native cosine that
``min_score`` and the near-duplicate thresholds are defined on. A re-rank reads C x dim x 4
bytes (200 x 5 KB = 1 MB at 1280-d) from the page cache.

The file is derived data, rebuilt from SQLite. It is appended as items are added and fsynced
before a snapshot header that counts its rows is committed; at start it is cut back to those
rows (anything after them is replayed from SQLite), and a spot check of rows against SQLite
catches a file that does not belong to the snapshot.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

SUFFIX = ".native.f32"
DTYPE = "<f4"
#: posix_fadvise exists on Linux and most Unixes (not macOS); without it reads are only slower.
_CAN_ADVISE = hasattr(os, "posix_fadvise")


def new_path(directory: Path, lib_id: int) -> Path:
    """A fresh file name for a library (a rebuild's index writes beside the serving one)."""
    return directory / f"{lib_id}.{time.time_ns()}{SUFFIX}"


def generation(path: Path) -> int:
    """When a native file was created (its name's second part), 0 if the name is not ours."""
    try:
        return int(path.name.split(".")[1])
    except (IndexError, ValueError):
        return 0


def files_of(directory: Path, lib_id: int) -> list[Path]:
    """Every native file of a library."""
    return sorted(directory.glob(f"{lib_id}.*{SUFFIX}"))


class NativeFile:
    """Write and random-read float32 rows."""

    def __init__(self, path: Path, dim: int, rows: int | None = None) -> None:
        """Open (creating) ``path``; ``rows``: the rows a snapshot vouches for (the rest is cut)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.dim = dim
        self.row_bytes = 4 * dim
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        size = os.fstat(self._fd).st_size
        if rows is not None:
            if size < rows * self.row_bytes:
                self.close()
                raise ValueError(f"{path.name} holds {size // self.row_bytes} rows, the snapshot {rows}")
            os.ftruncate(self._fd, rows * self.row_bytes)
        else:
            os.ftruncate(self._fd, 0)

    def write(self, rows: np.ndarray, vectors: np.ndarray) -> None:
        """Store ``vectors`` (n x dim) at ``rows``; consecutive rows go in one write."""
        rows = np.asarray(rows, np.int64)
        data = np.asarray(vectors, np.float32).astype(DTYPE)
        if not len(rows):
            return
        breaks = np.flatnonzero(np.diff(rows) != 1) + 1
        for run in np.split(np.arange(len(rows)), breaks):
            os.pwrite(self._fd, data[run].tobytes(), int(rows[run[0]]) * self.row_bytes)

    def read(self, rows: np.ndarray) -> np.ndarray:
        """float32 (n x dim) of ``rows``, in the order given.

        One ``preadv`` per row straight into the result (no intermediate bytes; the file is
        little-endian like every host this runs on), in ascending file order: about 2 us a row
        from the page cache. Rows not in the page cache are first asked for all at once
        (:meth:`_advise`), so the disk fetches them in parallel instead of one read at a time.
        """
        rows = np.asarray(rows, np.int64)
        out = np.empty((len(rows), self.dim), np.float32)
        if not len(rows):
            return out
        order = np.argsort(rows, kind="stable")
        self._advise(rows[order])
        view = memoryview(out).cast("B")
        row_bytes, fd = self.row_bytes, self._fd
        for i, row in zip(order.tolist(), rows[order].tolist(), strict=True):
            got = os.preadv(fd, [view[i * row_bytes : (i + 1) * row_bytes]], row * row_bytes)
            if got != row_bytes:
                raise ValueError(f"{self.path.name}: row {row} is past the end of the file")
        return out

    def _advise(self, ascending: np.ndarray) -> None:
        """``POSIX_FADV_WILLNEED`` for each run of consecutive rows (ascending, repeats allowed).

        A re-rank reads a few hundred rows scattered over a file of gigabytes; when they are not
        in the page cache (a large library, memory shared with other work), reading them one
        ``preadv`` at a time waits for the disk once per row. The advice starts every fetch at
        once and returns without waiting; for cached rows it costs about a microsecond each.
        """
        if not _CAN_ADVISE:
            return
        starts = np.flatnonzero(np.diff(ascending, prepend=-2) > 1)
        stops = np.append(starts[1:], len(ascending)) - 1
        row_bytes, fd = self.row_bytes, self._fd
        for first, last in zip(ascending[starts].tolist(), ascending[stops].tolist(), strict=True):
            os.posix_fadvise(fd, first * row_bytes, (last - first + 1) * row_bytes, os.POSIX_FADV_WILLNEED)

    def sync(self) -> None:
        """Make every written row durable."""
        os.fsync(self._fd)

    def close(self) -> None:
        """Release the file descriptor (idempotent)."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __del__(self) -> None:
        if getattr(self, "_fd", -1) >= 0:
            self.close()

"""A memory limit on one process, for measuring a daemon whose files do not fit the page cache.

Linux charges page-cache pages to the memory cgroup of the process that read them, and reclaims
a cgroup's pages once it reaches its limit. So a daemon moved into a cgroup of its own with a
limit below its native vectors' file keeps only that much of the file cached: the situation of a
machine whose RAM is shared with other work. This module makes such a cgroup *below* the one
this process runs in (so every limit above still applies), moves a process in and out, and
removes it again.

cgroup v2 (``memory.max``) and v1 (``memory.limit_in_bytes``) are both handled. On v1 a moved
process's earlier charges stay where they were (``memory.move_charge_at_immigrate`` is left at
0): the limit bounds what the process reads and allocates *after* the move, which is the page
cache the search path fills, plus new heap. Where no writable memory cgroup exists (no root, a
read-only mount, systemd-run without systemd) :func:`make` says why, and the benchmark falls
back to dropping the file's pages with ``posix_fadvise(DONTNEED)``, named as such.
"""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path("/sys/fs/cgroup")


def _own_memory_cgroup() -> tuple[Path, str] | None:
    """(directory of this process's memory cgroup, "v1" or "v2"), or None."""
    v1 = v2 = None
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        number, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            v1 = ROOT / "memory" / path.lstrip("/")
        elif number == "0" and controllers == "":
            v2 = path
    if v1 is not None and (v1 / "memory.limit_in_bytes").exists():
        return v1, "v1"
    for base in (ROOT, ROOT / "unified"):
        if v2 is not None and (base / "cgroup.controllers").exists():
            own = base / v2.lstrip("/")
            if (
                "memory" in (own.parent / "cgroup.subtree_control").read_text().split()
                or (own / "memory.max").exists()
            ):
                return own, "v2"
    return None


class MemoryCgroup:
    """One cgroup of this benchmark's own, with a memory limit it can change."""

    def __init__(self, path: Path, version: str) -> None:
        self.path, self.version = path, version

    def set_limit(self, limit_bytes: int | None) -> None:
        """The limit in bytes; None lifts it."""
        name = "memory.max" if self.version == "v2" else "memory.limit_in_bytes"
        value = ("max" if self.version == "v2" else "-1") if limit_bytes is None else str(limit_bytes)
        (self.path / name).write_text(value)

    def usage(self) -> int:
        """Bytes charged now (page cache included)."""
        name = "memory.current" if self.version == "v2" else "memory.usage_in_bytes"
        return int((self.path / name).read_text())

    def add(self, pid: int) -> None:
        """Move every thread of ``pid`` in."""
        (self.path / "cgroup.procs").write_text(str(pid))

    def remove(self, pid: int) -> None:
        """Move ``pid`` back to the parent cgroup and delete this one (its charges go up)."""
        (self.path.parent / "cgroup.procs").write_text(str(pid))
        self.path.rmdir()


def make(name: str) -> tuple[MemoryCgroup | None, str]:
    """A new memory cgroup below this process's own, or (None, why not)."""
    found = _own_memory_cgroup()
    if found is None:
        return None, "no memory cgroup controller is mounted under /sys/fs/cgroup"
    parent, version = found
    path = parent / name
    try:
        path.mkdir()
    except OSError as exc:
        return None, f"cannot create {path}: {exc.strerror}"
    return MemoryCgroup(path, version), f"cgroup {version} at {path}"


def drop_cached(path: Path) -> None:
    """Drop a file's pages from the page cache (``posix_fadvise(DONTNEED)``; dirty pages stay)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def cached_share(path: Path) -> float | None:
    """The share of ``path``'s pages in the page cache, via ``mincore`` on a mapping (None
    where that is not available)."""
    try:
        import ctypes
        import mmap

        import numpy as np

        size = path.stat().st_size
        if size == 0:
            return 0.0
        libc = ctypes.CDLL(None, use_errno=True)
        libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
        pages = (size + mmap.PAGESIZE - 1) // mmap.PAGESIZE
        vec = (ctypes.c_ubyte * pages)()
        with path.open("rb") as handle, mmap.mmap(handle.fileno(), size, access=mmap.ACCESS_COPY) as mapped:
            anchor = ctypes.c_char.from_buffer(mapped)
            ok = libc.mincore(ctypes.addressof(anchor), size, vec) == 0
            del anchor
        if not ok:
            return None
        return float((np.frombuffer(vec, np.uint8) & 1).mean())
    except (OSError, ValueError, TypeError, AttributeError):
        return None

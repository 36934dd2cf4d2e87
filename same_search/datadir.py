"""One daemon per data dir: an exclusive ``flock`` on ``data_dir/.lock`` held for the process's life.

Two daemons over one database would each keep their own in-memory index of it and save
snapshots of their own view, so the second one is refused before it opens anything. The lock
is the kernel's, not the file's existence: the OS drops it when the holder dies (even by
``kill -9``), so a lock file left behind never blocks a restart. The file keeps the holder's
pid, host and start time, only to name the holder in the refusal.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from pathlib import Path

LOCK_NAME = ".lock"


class DataDirInUse(Exception):
    """Another live process holds the data dir."""


class DataDirLock:
    """The exclusive lock on one data dir; :meth:`acquire` it, :meth:`release` it at the end."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock and record who holds it; :class:`DataDirInUse` naming the holder if taken."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _describe(_read_holder(fd))
            os.close(fd)
            raise DataDirInUse(
                f"data dir {self.path.parent.resolve()} is in use by another same_search ({holder}); "
                "stop that daemon first, or start this one with another --data-dir"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "started_at": time.time()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)
        os.fsync(fd)
        self._fd = fd

    def release(self) -> None:
        """Drop the lock. The file stays: removing it would let a third process lock a new inode
        while a second one still waits on the old."""
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(self._fd, 0)
        with contextlib.suppress(OSError):
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> DataDirLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _read_holder(fd: int) -> dict:
    try:
        data = json.loads(os.pread(fd, 4096, 0) or b"{}")
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _describe(holder: dict) -> str:
    """``pid 123 on host h, started 2026-01-02 03:04:05 UTC``, as far as the file tells."""
    if "pid" not in holder:
        return "its pid is not recorded yet"
    text = f"pid {holder['pid']}"
    if holder.get("host"):
        text += f" on host {holder['host']}"
    started = holder.get("started_at")
    if isinstance(started, int | float):
        text += ", started " + time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(started))
    return text

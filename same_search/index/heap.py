"""Give the C heap's free memory back to the system after a bulk index build.

An import, a rebuild or a start-up replay allocates and frees hundreds of megabytes of
temporaries (row chunks read from SQLite, the projection's sample, batches of reduced vectors).
glibc keeps most of what was freed in its arenas, so the daemon's RSS after a 100k import
stayed about a kilobyte per item above what its indexes hold, and an operator sizing a box from
RSS would plan for memory that is only idle heap. ``malloc_trim(0)`` returns those pages; it is
called once per bulk operation, never per request. Elsewhere than glibc it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Callable


def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        return ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to trim
        return None


_TRIM = _malloc_trim()


def release_free_heap() -> bool:
    """Return the heap's free pages to the system; False where the C library cannot."""
    if _TRIM is None:
        return False
    _TRIM(0)
    return True

"""Freed heap memory goes back to the system after a bulk build (same_search.index.heap)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from same_search.index import heap


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@pytest.mark.skipif(not sys.platform.startswith("linux") or heap._TRIM is None, reason="glibc only")
def test_freed_temporaries_leave_the_rss_once_released():
    """Many mid-sized temporaries (below glibc's mmap threshold, as a bulk build's are) freed while
    a later one pins the heap's top: the allocator keeps them until the heap is released."""
    blocks = [np.ones(100_000 // 8) for _ in range(2_000)]  # ~200 MB of 100 KB blocks, touched
    pin = np.ones(100_000 // 8)
    del blocks
    held = rss_mib()
    assert heap.release_free_heap()
    released = rss_mib()
    assert held - released > 100, (held, released)
    del pin

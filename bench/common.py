"""What the benchmark scripts share: where things are, the import path, memory and percentiles.

Importing this module puts the repository, ``tests/`` (the daemon runner and test images) and
``bench/`` at the front of ``sys.path``, ahead of any installed copy of the package, so a script
run from a worktree measures that worktree's code; each script imports it before anything from
those places (it is found first because a script's own folder is always on ``sys.path``).
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
#: The reference photos next to the repository (absent on most machines: scripts fall back).
SHARED_DATA = REPO.parent / "shared" / "data"
PHOTOS = SHARED_DATA / "imagenet-samples"

for _path in (REPO / "bench", REPO / "tests", REPO):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

#: One row of a benchmark's summary for run_all's combined table: (case, metric, ours, bare).
Summary = tuple[str, str, float, float]


def percentile_ms(values: Sequence[float], q: float) -> float:
    """The nearest-rank percentile ``q`` (0..1) of ``values`` in seconds, in milliseconds; NaN if empty.

    Nearest rank (the smallest sample with at least ``q`` of all samples at or below it) rather
    than interpolation: every figure reported is a latency that was really observed, p99 of a
    small sample is its slowest request instead of a blend, and the numbers stay comparable with
    those already in docs/benchmarks.md, which were computed this way.
    """
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))] * 1000


def rss_mib(pid: int) -> float:
    """Resident memory of a process in MiB, from /proc (NaN where there is no VmRSS line)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def shown(path: Path) -> str:
    """``path`` as a report should name it: relative to the repository when it lies beside it
    (``../shared/data/imagenet-samples``), so docs do not carry one machine's absolute paths."""
    resolved = path.resolve()
    if not resolved.is_relative_to(REPO.parent):
        return str(path)
    return os.path.relpath(resolved, REPO)

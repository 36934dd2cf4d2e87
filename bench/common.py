"""What the benchmark scripts share: where things are, the import path, memory and percentiles.

Importing this module puts the repository, ``tests/`` (the daemon runner and test images) and
``bench/`` at the front of ``sys.path``, ahead of any installed copy of the package, so a script
run from a worktree measures that worktree's code; each script imports it before anything from
those places (it is found first because a script's own folder is always on ``sys.path``).
"""

from __future__ import annotations

import math
import os
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
#: The reference photos next to the repository, or next to the folder of worktrees it is one of
#: (absent on most machines: scripts fall back).
_SHARED = (REPO.parent / "shared" / "data", REPO.parents[1] / "shared" / "data")
SHARED_DATA = next((d for d in _SHARED if d.is_dir()), _SHARED[0])
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


def cpu_model() -> str:
    """The ``model name`` line of /proc/cpuinfo (the platform's processor string elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


#: The CPU flags that decide which arithmetic is fast (bf16, int8) and how wide the vectors are.
ARITHMETIC_FLAGS = (
    "avx2",
    "fma",
    "avx512f",
    "avx512_bf16",
    "avx512_vnni",
    "avx_vnni",
    "avx512_fp16",
    "amx_tile",
    "amx_bf16",
    "amx_int8",
)


def cpu_flags() -> set[str]:
    """The ``flags`` of the first CPU in /proc/cpuinfo (empty elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def machine() -> str:
    """The machine a figure was measured on, as the docs record it: the CPU's model name (lscpu's
    "Model name"), which of :data:`ARITHMETIC_FLAGS` it has, the cores this process may use and
    the load average (1, 5 minutes)."""
    present = " ".join(f for f in ARITHMETIC_FLAGS if f in cpu_flags()) or "none of " + " ".join(
        ARITHMETIC_FLAGS
    )
    load = os.getloadavg()
    cores = len(os.sched_getaffinity(0))
    return f"{cpu_model()} ({present}), {cores} cores, load average {load[0]:.2f} / {load[1]:.2f}"


def print_run_header(script: str, argv: Sequence[str] | None) -> None:
    """The lines a recorded run starts with: its date, the machine (with its load) and the command."""
    print(f"- date: {time.strftime('%Y-%m-%dT%H:%M:%S%z')}")
    print(f"- machine at the start: {machine()}")
    print(f"- command: `.venv/bin/python bench/{script} {' '.join(argv or sys.argv[1:])}`")

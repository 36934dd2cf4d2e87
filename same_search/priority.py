"""CPU priorities of the daemon's threads: the threads that answer get the CPU first.

On two cores, the forward passes of eight clients adding pictures keep both cores busy; a
search by contsign needs no forward pass, only the event loop and the index thread for a few
milliseconds, yet it waited behind them for its share of the CPU (p99 52-87 ms at 1M while 8
clients added, 8-12 ms idle). So the threads that work on pictures (decodes, forward passes,
local features: seconds of CPU per busy second) run nicer than the process; the event loop,
the index thread and the database threads keep its priority and are scheduled first whenever
they have work. A rebuild's graph building (backends/local/rebuilds.py: both cores for minutes
at a million items) runs as nice as the picture threads; heavy decodes (embed/admission.py) are
nicer still.

The index snapshot's capture (index/memory_image.py) holds the GIL while it copies the graph: at
a million items, with both cores taken by adds and a rebuild at the process's priority, it got a
third of a core and every request waited 2-4 s for it; the save thread keeps the process's
priority, so it gets a core.

Linux only: there a thread id names one thread and its OpenMP workers inherit its niceness
when they are made (torch makes them on the first forward pass of the thread that runs it);
elsewhere the same call would slow the whole process down, so it is skipped.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections.abc import Callable

#: How much nicer than the process the picture threads (decode, forward pass, local features) run.
PICTURE_NICENESS = 5
#: How much nicer than the process a rebuild's graph building runs (its hnswlib workers too).
BACKGROUND_NICENESS = 5
#: How much nicer than the process the heavy decodes run (embed/admission.py).
HEAVY_NICENESS = 10


def nicer_by(niceness: int) -> Callable[[], None]:
    """A thread pool ``initializer`` that makes each of its threads ``niceness`` nicer than the
    process (at most 19)."""

    def lower() -> None:
        if not sys.platform.startswith("linux"):
            return
        with contextlib.suppress(OSError):
            tid = threading.get_native_id()
            os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + niceness))

    return lower

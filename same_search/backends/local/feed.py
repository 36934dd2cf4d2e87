"""Stored rows into an index: the one loop that replays, builds and catches up.

Rows come from SQLite in seq order, a chunk at a time (``Store.tagged_vectors_since``). Every
chunk is checked before anything of it is indexed: a row that is not a finite unit vector of the
library's dimension raises :class:`BadRows` naming it (the service then sets the library aside).
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import numpy as np

from same_search.backends.base import BadRows
from same_search.index.vectors import row_problems

log = logging.getLogger(__name__)

#: Seconds between progress lines of a long index rebuild or replay.
REPLAY_LOG_S = 15.0

#: (keys, vectors, tags (n, 2) uint32, seq of the chunk's last row)
Chunk = tuple[np.ndarray, np.ndarray, np.ndarray, int]
AddChunk = Callable[[np.ndarray, np.ndarray, np.ndarray, int], Awaitable[None]]


class ProgressLog:
    """Logs how far a long pass over a library got, every ``REPLAY_LOG_S`` seconds, so an operator
    watching the log of a rebuild that takes minutes knows it is alive and when it will end."""

    def __init__(self, appid: str, doing: str, total: int | None = None) -> None:
        self.appid = appid
        self.doing = doing
        self.total = total
        self.started = self.last = time.monotonic()

    def at(self, done: int) -> None:
        now = time.monotonic()
        if now - self.last < REPLAY_LOG_S:
            return
        self.last = now
        rate = done / (now - self.started)
        total = self.total
        of = f" of {total:,}" if total else ""
        left = f", about {max(0, total - done) / rate:.0f}s left" if total and rate > 0 else ""
        log.info("library %s: %s %s%s items (%.0f/s%s)", self.appid, self.doing, f"{done:,}", of, rate, left)


async def feed_rows(
    chunks: AsyncIterator[Chunk], dim: int, add: AddChunk, progress: ProgressLog | None = None
) -> tuple[int, int | None]:
    """Check each chunk of stored rows, then hand it to ``add``; (rows added, seq of the last)."""
    added, last = 0, None
    async for keys, vectors, tags, seq in chunks:
        bad = row_problems(vectors, dim)
        if bad:
            raise BadRows([(int(keys[i]), problem) for i, problem in bad])
        await add(keys, vectors, tags, seq)
        added, last = added + len(keys), seq
        if progress is not None:
            progress.at(added)
    return added, last

"""Which failed adds an import tries again, and how long it waits: one rule for the CLI import and
server import jobs.

Only failures that say "not now" are retried: the embedder queue is full (99), the vector did not
come in time (2), the embedder is briefly unavailable (5). Everything else (a bad image, a bad
request, a full library) fails the same way every time. The CLI, a foreground command, gives up
after :data:`CLI_ATTEMPTS`; a server job runs in the background and yields to interactive traffic
by design, so it keeps trying until it is cancelled or the daemon stops.
"""

from __future__ import annotations

from same_search.errors import ErrNo

RETRYABLE = frozenset({ErrNo.FEATURE_TIMEOUT, ErrNo.FEATURE_UNAVAILABLE, ErrNo.BUSY})
#: Tries of one file by the CLI import before it is reported as failed.
CLI_ATTEMPTS = 6


def retryable(err_no: int) -> bool:
    """True when an add that failed with ``err_no`` may succeed if tried again later."""
    return err_no in RETRYABLE


def backoff_s(attempt: int) -> float:
    """Seconds to wait after failed attempt number ``attempt`` (0-based): 0.2, 0.4, ... at most 5."""
    return min(0.2 * 2**attempt, 5.0)

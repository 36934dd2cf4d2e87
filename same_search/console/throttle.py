"""Failed console logins, per client address: a delay on each, then a lock that doubles.

The login form is the one place where a guesser gets a plain yes/no for a token, as fast as the
daemon answers (about 1,800 guesses a second on 2 cores before this). Each failure is answered
only after :data:`FAILURE_DELAY_S` (an ``asyncio.sleep``: the event loop and every other client
go on), and after :data:`FREE_FAILURES` failures the address is locked for 1 s, then 2, 4, ... up
to :data:`MAX_LOCK_S`: while locked, every login from it is refused without looking at the token
(a lock that a right guess could pass would tell the guesser when it guessed right). A
successful login forgets the address's failures; so does :data:`FORGET_S` without one.

Per address, so an attacker cannot lock the operator out from elsewhere; behind a reverse proxy
every client shares the proxy's address (docs/operations.md). Long random tokens are the real
defence; this only makes guessing slow and visible in the log.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

#: Seconds every failed login waits before its answer.
FAILURE_DELAY_S = 0.3
#: Failures an address may have before it is locked out.
FREE_FAILURES = 3
#: The longest lock, in seconds (the lock doubles with each further failure up to this).
MAX_LOCK_S = 300.0
#: An address whose last failure is this old starts again from zero.
FORGET_S = 3600.0
#: Addresses remembered at most (the oldest are forgotten first), so a flood cannot grow memory.
MAX_CLIENTS = 4096


@dataclass
class _Failures:
    count: int
    last: float
    locked_until: float


class LoginThrottle:
    """Failed logins by client address (see the module docstring)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clients: OrderedDict[str, _Failures] = OrderedDict()
        self._clock = clock

    def locked_for(self, client: str) -> float:
        """Seconds until ``client`` may try again (0: it may now)."""
        entry = self._current(client)
        return 0.0 if entry is None else max(0.0, entry.locked_until - self._clock())

    def failed(self, client: str) -> tuple[int, float]:
        """Record a failure; (failures so far, seconds of the lock it brought, 0 for none)."""
        now = self._clock()
        entry = self._current(client) or _Failures(0, now, now)
        entry.count += 1
        entry.last = now
        lock = 0.0
        if entry.count >= FREE_FAILURES:
            lock = min(MAX_LOCK_S, 2.0 ** (entry.count - FREE_FAILURES))
            entry.locked_until = now + lock
        self._clients[client] = entry
        self._clients.move_to_end(client)
        while len(self._clients) > MAX_CLIENTS:
            self._clients.popitem(last=False)
        return entry.count, lock

    def succeeded(self, client: str) -> None:
        """A right token: the address starts again from zero."""
        self._clients.pop(client, None)

    def _current(self, client: str) -> _Failures | None:
        entry = self._clients.get(client)
        if entry is not None and self._clock() - entry.last > FORGET_S:
            del self._clients[client]
            return None
        return entry

"""Blocking file work of an import, run so that it can never hold up the daemon.

Each call gets its own daemon thread and a deadline. ``asyncio.to_thread`` would use the loop's
default executor, whose threads the interpreter joins at exit: one read stuck on a hung network
mount (or, before the regular-file checks, a FIFO) kept the process alive after SIGTERM. A daemon
thread is abandoned instead; the job records the entry as failed and goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


async def run_detached(func: Callable[..., T], *args: object, timeout: float) -> T:
    """``func(*args)`` in a fresh daemon thread; :class:`TimeoutError` after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def deliver(settle: Callable[[], None]) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
            loop.call_soon_threadsafe(settle)

    def work() -> None:
        try:
            result = func(*args)
        except BaseException as exc:  # handed to the awaiting coroutine, raised there
            error = exc
            deliver(lambda: future.done() or future.set_exception(error))
        else:
            deliver(lambda: future.done() or future.set_result(result))

    threading.Thread(target=work, name=f"import-io-{getattr(func, '__name__', 'call')}", daemon=True).start()
    return await asyncio.wait_for(future, timeout)

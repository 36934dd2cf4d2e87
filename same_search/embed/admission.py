"""Admission by cost: a picture's decode is weighed from its header before a pixel is decoded.

Request counts do not measure work. An 8192 x 8192 single-colour PNG is 215 KB on the wire and
67 megapixels to decode (PNG has no reduced decode, unlike JPEG's draft mode): about 1 CPU-second
and 200 MB per decode, twice per search by image (the vector, then the local features). Twenty
of them at once made an unrelated small search take 15 s instead of 0.02 s, grew the daemon by
1 GB, and none was refused, because the embedder's queue counted them as twenty requests.

So every decode is costed first (:func:`same_search.embed.images.decode_cost`, the header only):

- a **light** decode (at most ``heavy_decode_mpx`` megapixels: JPEGs of any size thanks to their
  reduced decode, ordinary PNGs) runs where it always did, in the caller's pool;
- a **heavy** one runs in its own small pool (``heavy_decode_threads``, 1 by default), so light
  decodes never queue behind it, and at most that many large pictures are in memory at once. On
  Linux those threads run at a lower CPU priority (nice +10, theirs alone): they get the CPU that
  light requests leave, so a small search is barely slower while large pictures are decoded;
- heavy decodes admitted (waiting or decoding) may add up to ``decode_budget_mpx`` megapixels;
  a picture that would go past it is refused with err_no 99 ("busy, retry later") before it costs
  anything, instead of making everyone wait. The refusal is answered after
  :data:`REFUSAL_PAUSE_S` (an ``asyncio.sleep``, free): reading and parsing a large request costs
  the event loop about 3 ms, and twenty clients retrying the moment they are refused would
  otherwise spend that many times a second. A picture larger than the whole budget is admitted
  when no other heavy decode is in flight.

A request decodes its picture twice (vector and local features, in parallel); both decodes of the
same bytes are one admission: the second joins the first (it is never refused once the first was
admitted), so a request is admitted or refused whole.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from same_search.config import LimitsConfig
from same_search.embed.errors import EmbedderBusy
from same_search.index.heap import release_free_heap
from same_search.priority import HEAVY_NICENESS, nicer_by

log = logging.getLogger(__name__)


#: Seconds a refused heavy picture waits before its err_no 99 is answered (module docstring).
REFUSAL_PAUSE_S = 0.5


class _HeavyPool(ThreadPoolExecutor):
    """The heavy decodes' threads, at a lower CPU priority; after each decode the heap it freed
    goes back to the system (glibc keeps a large picture's hundreds of MB in its arenas
    otherwise; the daemon stayed 1 GB larger after a burst of them)."""

    def __init__(self, threads: int) -> None:
        super().__init__(threads, thread_name_prefix="decode-heavy", initializer=nicer_by(HEAVY_NICENESS))

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        return super().submit(_then_trim, fn, *args, **kwargs)


def _then_trim(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    try:
        return fn(*args, **kwargs)
    finally:
        release_free_heap()


@dataclass
class _Admitted:
    """A picture with heavy decodes in flight: its bytes (so its ``id`` stays its own) and how many."""

    data: bytes
    decodes: int = 0


class DecodeAdmission:
    """The decode budget shared by every model's queue and the local-feature extraction."""

    def __init__(self, budget_mpx: float, heavy_mpx: float, heavy_threads: int) -> None:
        self.budget_mpx = budget_mpx
        self.heavy_mpx = heavy_mpx
        self._pool = _HeavyPool(heavy_threads)
        #: Megapixels of heavy decodes admitted and not finished (waiting for a thread or decoding).
        self.in_flight = 0.0
        #: Heavy pictures refused since the start (for /metrics).
        self.shed = 0
        self._pictures: dict[int, _Admitted] = {}

    @classmethod
    def from_limits(cls, limits: LimitsConfig) -> DecodeAdmission:
        return cls(limits.decode_budget_mpx, limits.heavy_decode_mpx, limits.heavy_decode_threads)

    @contextlib.asynccontextmanager
    async def admit(self, data: bytes, megapixels: float) -> AsyncIterator[ThreadPoolExecutor | None]:
        """Admit one decode of ``data`` costing ``megapixels``; yields the pool a heavy decode must
        run in, or None for a light one (run it where you would). Raises :class:`EmbedderBusy`
        (err_no 99, after :data:`REFUSAL_PAUSE_S`) for a heavy picture past the budget. Enter it
        right before submitting the decode, and keep it open until the decode ends."""
        if megapixels <= self.heavy_mpx:
            yield None
            return
        admitted = self._pictures.get(id(data))
        if admitted is None:  # a picture of its own: the budget decides
            if self.in_flight > 0 and self.in_flight + megapixels > self.budget_mpx:
                self.shed += 1
                in_flight = self.in_flight
                await asyncio.sleep(REFUSAL_PAUSE_S)
                raise EmbedderBusy(
                    f"large pictures are being decoded ({in_flight:.0f} of {self.budget_mpx:g} "
                    f"megapixels admitted); this one needs {megapixels:.0f}: retry later"
                )
            admitted = self._pictures[id(data)] = _Admitted(data)
        admitted.decodes += 1
        self.in_flight += megapixels
        try:
            yield self._pool
        finally:
            self.in_flight -= megapixels
            admitted.decodes -= 1
            if admitted.decodes == 0:
                del self._pictures[id(data)]
            if not self._pictures:
                self.in_flight = 0.0  # no float residue from the sums

    def close(self) -> None:
        """Stop the heavy decode threads (decodes still queued are dropped)."""
        self._pool.shutdown(wait=False, cancel_futures=True)

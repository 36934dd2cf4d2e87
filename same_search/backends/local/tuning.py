"""Each library's recall measured on its own items and its search depth tuned (index/recall.py).

A measurement shares the index thread with served searches one query at a time (hnswlib's ef
is one setting per graph, so no other thread may walk a graph), reads the library's vectors for
the exact answer there in chunks, and does the arithmetic in a worker thread: a search waits for
at most one measured query or one chunk read, never for the whole measurement. The chosen depth
is stored (table ``index_tuning``), so a restart serves it at once; an index of another kind,
model or projection starts from ``[index]`` and is measured again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import TypeVar

from same_search.backends.base import Library, LibraryRow
from same_search.backends.local.state import LocalState, index_of
from same_search.index import recall
from same_search.index.library_index import LibraryIndex

log = logging.getLogger(__name__)
T = TypeVar("T")


class RecallTuning(LocalState):
    """Measuring a library's recall, choosing and keeping its search depth."""

    async def restore_tuning(self, row: LibraryRow, index: LibraryIndex) -> None:
        """Give a freshly loaded index its library's stored depth, if it was measured on one like it."""
        stored = await self.store.tuning(row.id)
        if stored is not None:
            self._tunings[row.id] = stored
            if stored.fits(index, row.fingerprint):
                depth = recall.at_least(stored.depth, recall.starting_depth(index))
                index.depth, index.measured_items = depth, stored.items
                if stored.screened:  # not serving yet: filled here, before its first search
                    await recall.fill_screen(index, self._on_index)

    def keep_depth(self, row: LibraryRow, fresh: LibraryIndex) -> None:
        """A rebuilt index starts from the depth its library was tuned to (measured again soon)."""
        stored = self._tunings.get(row.id)
        if stored is not None and stored.fits(fresh, row.fingerprint):
            fresh.depth = recall.at_least(stored.depth, recall.starting_depth(fresh))

    def screen_fresh(self, row: LibraryRow, fresh: LibraryIndex) -> None:
        """An empty index about to be built for a library whose tuned depth screens keeps its
        int8 screen from the first row on (index/screen.py), so it serves that depth at once."""
        stored = self._tunings.get(row.id)
        screens = stored is not None and stored.screened and hasattr(fresh, "begin_screen_now")
        if screens and not fresh.count():
            fresh.begin_screen_now()
            fresh.screen_filled_now()

    def wants_tuning(self, lib: Library) -> bool:
        """Whether the library's index searches a graph and was not measured yet (built, adopted,
        loaded without a fitting measurement), or has doubled since."""
        index = index_of(lib)
        if index.strategy == "exact" or lib.row.id in self._measuring:
            return False
        return index.measured_items is None or index.count() >= 2 * max(index.measured_items, 1)

    def recall_state(self, lib: Library) -> dict[str, object]:
        """The library's recall as its stats show it."""
        index, row = index_of(lib), lib.row
        target = self.cfg.index.target_recall
        if index.strategy == "exact":
            return {"state": "exact", "recall": 1.0, "target": target, "below_target": False}
        state = "measuring" if row.id in self._measuring else "not measured"
        deeper = index.depth_for(stored=False)
        # What a search by image (any vector not stored in the library) walks: deeper than the
        # depth measured on stored items ([index] new_vector_depth).
        walk = {"ef": deeper.ef, "candidates": deeper.candidates, "flat": deeper.flat}
        by_image = {"by_image": {**walk, "scan": deeper.scan}}
        stored = self._tunings.get(row.id)
        if stored is None or not stored.fits(index, row.fingerprint) or index.measured_items is None:
            return {
                "state": state,
                "ef": index.depth.ef,
                "candidates": index.depth.candidates,
                "target": target,
                **by_image,
            }
        state = "measuring" if row.id in self._measuring else "measured"
        return {**stored.to_json(), "state": state, **by_image}

    async def tune(self, lib: Library) -> recall.Tuning | None:
        """Measure the library's recall, choose the cheapest depth that reaches ``[index]
        target_recall``, serve and store it; None when the library searches exactly."""
        index, row = index_of(lib), lib.row
        if index.strategy == "exact":
            return None
        self._measuring.add(row.id)
        started = time.monotonic()
        try:
            tuning = await self._measure(index, row)
        finally:
            self._measuring.discard(row.id)
        if index_of(lib) is index:  # not replaced by a rebuild meanwhile
            index.depth, index.measured_items = tuning.depth, tuning.items
        if not tuning.screened and getattr(index, "screen", None) is not None:
            await self._on_index(index.drop_screen_now)  # filled to try deeper rungs: not needed
        await self.store.save_tuning(row.id, tuning)
        self._tunings[row.id] = tuning
        log.log(
            logging.INFO if tuning.met else logging.WARNING,
            "library %s: recall@%d %.3f (filtered %s) with %s %d, %d candidates at %d items, target %.3f%s "
            "(%.1fs)",
            row.appid,
            recall.K,
            tuning.recall,
            "-" if tuning.recall_filtered is None else f"{tuning.recall_filtered:.3f}",
            "a flat scan, ef" if tuning.flat else "ef",
            tuning.ef,
            tuning.candidates,
            tuning.items,
            tuning.target,
            "" if tuning.met else ": BELOW TARGET at the deepest setting tried",
            time.monotonic() - started,
        )
        return tuning

    async def _on_index(self, fn: Callable[..., T], *args: object) -> T:
        """Run ``fn`` in the index thread (between searches)."""
        return await asyncio.get_running_loop().run_in_executor(self._index_pool, fn, *args)

    async def _measure(self, index: LibraryIndex, row: LibraryRow) -> recall.Tuning:
        cfg = self.cfg.index
        return await recall.measure(
            index, row.fingerprint, cfg.target_recall, self._on_index, asyncio.to_thread, cfg.recall_sample
        )

"""The duplicates view (extension): groups of near-duplicates in a library, and removing the extras.

A scan reads every stored vector in insertion order and lists each item's near neighbours: exactly
(all pairs, block by block) when the library is small enough to be searched exactly
(``index.exact_threshold``), else through the library's index, ``NEIGHBOURS`` per item. Whether a
neighbour is a near-duplicate is the same decision the add policy makes
(:func:`same_search.verify.decision.is_same_picture`), under the same floors: the scan's
``min_score`` for every pair when one is given, else the library's near-duplicate floors.

Groups are formed greedily in insertion order: the oldest item not yet grouped keeps its
near-duplicates that are not grouped yet. So every extra is the same picture as its group's kept
item, and "remove the extras" keeps the first-stored copy of each picture.

Scans run in the background with progress and live in memory (a restart forgets them; scanning
again is always possible); the last ``KEEP_SCANS`` are kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from dataclasses import dataclass, field

import numpy as np

from same_search.contsign import ContSign
from same_search.errors import bad_request
from same_search.libraries import Library, LibraryService
from same_search.near_duplicates import floors_for
from same_search.verify import decision

log = logging.getLogger(__name__)

#: Neighbours looked at per item when the library is scanned through its index.
NEIGHBOURS = 16
#: Rows per block of the exact all-pairs product (memory: BLOCK x items floats).
BLOCK = 512
KEEP_SCANS = 20


@dataclass
class Group:
    """One picture's copies: the kept (oldest) item and the extras with their scores against it."""

    keep: int
    extras: list[tuple[int, float]]


@dataclass
class Scan:
    """One duplicates scan of a library and its progress."""

    id: int
    appid: str
    #: What the decision needs: the scan's own floor for every pair, or the library's floors.
    floors: decision.Floors
    method: str  # exact | index
    total: int
    done: int = 0
    status: str = "running"  # running | done | failed | cancelled
    message: str = ""
    groups: list[Group] = field(default_factory=list)
    started: float = field(default_factory=time.time)
    finished: float | None = None

    @property
    def min_score(self) -> float:
        """The lowest score at which a pair can be grouped."""
        return self.floors.lowest

    @property
    def extras(self) -> list[int]:
        return [key for group in self.groups for key, _ in group.extras]


class DuplicateScans:
    """Starts, tracks and acts on duplicates scans."""

    def __init__(self, libraries: LibraryService) -> None:
        self.libraries = libraries
        self.scans: dict[int, Scan] = {}
        self._tasks: dict[int, asyncio.Task] = {}
        self._ids = itertools.count(1)

    async def start(self, lib: Library, min_score: float | None = None) -> Scan:
        """Begin a scan in the background; returns it at once (status ``running``). ``min_score``
        None: the library's near-duplicate floors."""
        total = await self.libraries.count(lib)
        exact = total <= self.libraries.cfg.index.exact_threshold
        floors = floors_for(lib.row.dup_min_score if min_score is None else min_score)
        scan = Scan(next(self._ids), lib.row.appid, floors, "exact" if exact else "index", total)
        self.scans[scan.id] = scan
        for old in sorted(self.scans)[:-KEEP_SCANS]:
            self.scans.pop(old, None)
        self._tasks[scan.id] = asyncio.create_task(self._run(scan, lib), name=f"duplicates-{scan.id}")
        return scan

    def get(self, lib: Library, scan_id: int) -> Scan:
        scan = self.scans.get(scan_id)
        if scan is None or scan.appid != lib.row.appid:
            raise bad_request(
                f"no duplicates scan {scan_id} of {lib.row.appid!r} (scans live until a restart)"
            )
        return scan

    async def wait(self, scan: Scan, seconds: float) -> None:
        """Wait up to ``seconds`` for a scan to end (small libraries answer in one request)."""
        task = self._tasks.get(scan.id)
        if task is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(task), seconds)

    async def cancel(self, scan: Scan) -> None:
        """Stop a running scan (its groups stay empty); a finished one is left as it is."""
        task = self._tasks.get(scan.id)
        if task is None:
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        scan.message = "cancelled by the operator"

    async def close(self) -> None:
        """Cancel scans still running (shutdown)."""
        for task in self._tasks.values():
            task.cancel()
        for task in self._tasks.values():
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def _run(self, scan: Scan, lib: Library) -> None:
        try:
            if scan.method == "exact":
                keys, vectors = await self._vectors(lib)
                scan.total = len(keys)
                neighbours = await asyncio.to_thread(_exact_neighbours, keys, vectors, scan)
            else:
                keys, neighbours = await self._index_neighbours(lib, scan)
            neighbours = await self._verified(lib, scan, neighbours)
            scan.groups = _groups(keys, neighbours)
            scan.status = "done"
        except asyncio.CancelledError:
            scan.status, scan.message = "cancelled", "the daemon is shutting down"
            raise
        except Exception as exc:
            log.exception("duplicates scan %d of %s failed", scan.id, scan.appid)
            scan.status, scan.message = "failed", f"internal error: {exc}"
        finally:
            scan.finished = time.time()
            self._tasks.pop(scan.id, None)
        log.info(
            "duplicates scan %d of %s (%s, min_score %g): %d groups, %d extras among %d items",
            scan.id,
            scan.appid,
            scan.method,
            scan.min_score,
            len(scan.groups),
            len(scan.extras),
            scan.total,
        )

    async def _vectors(self, lib: Library) -> tuple[list[int], np.ndarray]:
        """Every stored key and vector, in insertion order (small libraries only: all in memory)."""
        keys: list[int] = []
        chunks = []
        async for chunk in self.libraries.reads.export_items(lib):
            keys += [item.contsign.key for item, _ in chunk]
            chunks.append(np.stack([vector for _, vector in chunk]))
        vectors = np.concatenate(chunks) if chunks else np.empty((0, lib.row.dim), np.float32)
        return keys, vectors

    async def _index_neighbours(self, lib: Library, scan: Scan) -> tuple[list[int], Neighbours]:
        """Keys in insertion order, and each item's neighbours above the floor among its
        ``NEIGHBOURS`` nearest by the index. Vectors are streamed chunk by chunk, so a large
        library is never all in memory; only the (few) pairs above the floor are kept."""
        keys: list[int] = []
        neighbours: Neighbours = {}
        k = NEIGHBOURS + 1
        async for chunk in self.libraries.reads.export_items(lib):
            for item, vector in chunk:
                key = item.contsign.key
                keys.append(key)
                found = (await self.libraries.reads.nearest(lib, vector, k)).found
                for other, score in found:
                    if other != key and score >= scan.min_score:
                        _link(neighbours, key, other, score)
                scan.done = len(keys)
        scan.total = len(keys)
        return keys, neighbours

    async def _verified(self, lib: Library, scan: Scan, neighbours: Neighbours) -> Neighbours:
        """The pairs above the floor that the same-picture decision confirms under the scan's
        floors: a pair of look-alikes above a floor is not a near-duplicate; a pair where either
        item has no local features is judged by its score alone, as on add."""
        pairs = {
            (min(a, b), max(a, b)): score for a, others in neighbours.items() for b, score in others.items()
        }
        if not pairs:
            return neighbours
        stored = await self.libraries.reads.local_features(lib, sorted({k for pair in pairs for k in pair}))
        verifier = self.libraries.verifier
        kept: Neighbours = {}
        for (a, b), score in pairs.items():
            query = verifier.stored_query(stored.get(a))
            [verdict] = await verifier.judge(query, [(b, score)], stored, scan.floors)
            if verdict.same:
                _link(kept, a, b, score)
        return kept

    async def remove_extras(self, lib: Library, scan: Scan, contsigns: list[ContSign] | None) -> int:
        """Remove the scan's extras (all, or those listed: each must be an extra, never a kept item)."""
        if scan.status != "done":
            raise bad_request(f"duplicates scan {scan.id} is {scan.status}; wait until it is done")
        extras = set(scan.extras)
        if contsigns is None:
            chosen = list(extras)
        else:
            chosen = [c.key for c in contsigns]
            stray = [str(ContSign.from_key(k)) for k in chosen if k not in extras]
            if stray:
                raise bad_request(
                    f"not extras of scan {scan.id} (kept items are never removed here): {stray[:5]}"
                )
        removed = await self.libraries.writes.remove(lib, [ContSign.from_key(k) for k in chosen])
        gone = set(chosen)
        scan.groups = [
            Group(g.keep, [(k, s) for k, s in g.extras if k not in gone])
            for g in scan.groups
            if any(k not in gone for k, _ in g.extras)
        ]
        return removed


#: key -> {other key: score}, symmetric: a pair found from either side is known to both.
Neighbours = dict[int, dict[int, float]]


def _link(neighbours: Neighbours, a: int, b: int, score: float) -> None:
    neighbours.setdefault(a, {})[b] = score
    neighbours.setdefault(b, {})[a] = score


def _exact_neighbours(keys: list[int], vectors: np.ndarray, scan: Scan) -> Neighbours:
    """Every pair at or above the floor (all pairs, block by block)."""
    n = len(vectors)
    neighbours: Neighbours = {}
    for start in range(0, n, BLOCK):
        scores = vectors[start : start + BLOCK] @ vectors.T
        for offset, row_scores in enumerate(scores):
            row = start + offset
            for other in np.flatnonzero(row_scores >= scan.min_score):
                if other != row:
                    _link(neighbours, keys[row], keys[int(other)], float(row_scores[other]))
        scan.done = min(n, start + BLOCK)
    return neighbours


def _groups(keys: list[int], neighbours: Neighbours) -> list[Group]:
    """Greedy groups in insertion order (module doc); extras best first."""
    grouped: set[int] = set()
    groups = []
    for key in keys:
        if key in grouped or key not in neighbours:
            continue
        extras = sorted(
            ((other, score) for other, score in neighbours[key].items() if other not in grouped),
            key=lambda pair: -pair[1],
        )
        if extras:
            grouped.add(key)
            grouped.update(other for other, _ in extras)
            groups.append(Group(key, extras))
    return groups

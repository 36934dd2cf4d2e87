"""The duplicates view (extension): groups of near-duplicates in a library, and removing the extras.

A scan reads every stored vector in insertion order and lists each item's near neighbours: exactly
(all pairs, block by block) when the library is small enough to be searched exactly
(``index.exact_threshold``), else through the library's index, ``NEIGHBOURS`` per item. Whether a
neighbour is a near-duplicate is the same decision the add policy uses: the score floor
(:func:`near_duplicates.is_near_duplicate`), then the same-picture check of
:mod:`same_search.verify` on the pairs above it.

Groups are formed greedily in insertion order: the oldest item not yet grouped keeps its
near-duplicates that are not grouped yet. So every extra scores at least ``min_score`` against its
group's kept item, and "remove the extras" keeps the first-stored copy of each picture.

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
from same_search.libraries import Item, Library, LibraryService
from same_search.near_duplicates import Candidate, DupPolicy, Query, is_near_duplicate

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
    min_score: float
    method: str  # exact | index
    total: int
    done: int = 0
    status: str = "running"  # running | done | failed | cancelled
    message: str = ""
    groups: list[Group] = field(default_factory=list)
    started: float = field(default_factory=time.time)
    finished: float | None = None

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

    async def start(self, lib: Library, min_score: float) -> Scan:
        """Begin a scan in the background; returns it at once (status ``running``)."""
        total = await self.libraries.count(lib)
        exact = total <= self.libraries.cfg.index.exact_threshold
        scan = Scan(next(self._ids), lib.row.appid, min_score, "exact" if exact else "index", total)
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
        running = list(self._tasks.values())  # each task removes itself from _tasks as it ends
        for task in running:
            task.cancel()
        for task in running:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def _run(self, scan: Scan, lib: Library) -> None:
        policy = DupPolicy("warn", scan.min_score)
        try:
            if scan.method == "exact":
                keys, vectors = await self._vectors(lib)
                scan.total = len(keys)
                neighbours = await asyncio.to_thread(_exact_neighbours, keys, vectors, scan, policy)
            else:
                keys, neighbours = await self._index_neighbours(lib, scan, policy)
            neighbours = await self._verified(lib, neighbours)
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
        async for chunk in self.libraries.export_items(lib):
            keys += [item.contsign.key for item, _ in chunk]
            chunks.append(np.stack([vector for _, vector in chunk]))
        vectors = np.concatenate(chunks) if chunks else np.empty((0, lib.row.dim), np.float32)
        return keys, vectors

    async def _index_neighbours(
        self, lib: Library, scan: Scan, policy: DupPolicy
    ) -> tuple[list[int], Neighbours]:
        """Keys in insertion order, and each item's near-duplicates among its ``NEIGHBOURS`` nearest
        by the index. Vectors are streamed chunk by chunk, so a large library is never all in memory;
        only the (few) pairs above the floor are kept."""
        keys: list[int] = []
        neighbours: Neighbours = {}
        k = NEIGHBOURS + 1
        async for chunk in self.libraries.export_items(lib):
            for item, vector in chunk:
                key = item.contsign.key
                keys.append(key)
                found = await self.libraries.nearest(lib, vector, k)
                query = Query(vector)
                for other, score in found:
                    if other != key and score >= scan.min_score and _decide(query, other, score, policy):
                        _link(neighbours, key, other, score)
                scan.done = len(keys)
        scan.total = len(keys)
        return keys, neighbours

    async def _verified(self, lib: Library, neighbours: Neighbours) -> Neighbours:
        """The pairs above the floor that the same-picture decision confirms.

        The decision search's ``same_picture`` and the add policy use (:mod:`same_search.verify`):
        a pair of look-alikes above the floor is not a near-duplicate. A pair where either item
        has no local features keeps the floor alone.
        """
        pairs = {
            (min(a, b), max(a, b)): score for a, others in neighbours.items() for b, score in others.items()
        }
        if not pairs:
            return neighbours
        stored = await self.libraries.local_features(lib, sorted({k for pair in pairs for k in pair}))
        verifier = self.libraries.verifier
        kept: Neighbours = {}
        for (a, b), score in pairs.items():
            if a in stored and b in stored:
                [verdict] = await verifier.judge(verifier.stored_query(stored[a]), [(b, score)], stored)
                if not verdict.same:
                    continue
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
        removed = await self.libraries.remove(lib, [ContSign.from_key(k) for k in chosen])
        gone = set(chosen)
        scan.groups = [
            Group(g.keep, [(k, s) for k, s in g.extras if k not in gone])
            for g in scan.groups
            if any(k not in gone for k, _ in g.extras)
        ]
        return removed

    async def items(self, lib: Library, keys: list[int]) -> dict[int, Item]:
        """The stored items of ``keys`` (removed ones are absent)."""
        return await self.libraries.items(lib, keys)


#: key -> {other key: score}, symmetric: a pair found from either side is known to both.
Neighbours = dict[int, dict[int, float]]


def _decide(query: Query, key: int, score: float, policy: DupPolicy) -> bool:
    return is_near_duplicate(query, Candidate(key, score), policy)


def _link(neighbours: Neighbours, a: int, b: int, score: float) -> None:
    neighbours.setdefault(a, {})[b] = score
    neighbours.setdefault(b, {})[a] = score


def _exact_neighbours(keys: list[int], vectors: np.ndarray, scan: Scan, policy: DupPolicy) -> Neighbours:
    """Every pair at or above the floor (all pairs, block by block) that the decision accepts."""
    n = len(vectors)
    neighbours: Neighbours = {}
    for start in range(0, n, BLOCK):
        scores = vectors[start : start + BLOCK] @ vectors.T
        for offset, row_scores in enumerate(scores):
            row = start + offset
            query = Query(vectors[row])
            for other in np.flatnonzero(row_scores >= scan.min_score):
                score = float(row_scores[other])
                if other != row and _decide(query, keys[other], score, policy):
                    _link(neighbours, keys[row], keys[int(other)], score)
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

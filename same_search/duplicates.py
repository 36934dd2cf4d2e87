"""The duplicates view (extension): groups of near-duplicates in a library, and removing the extras.

A scan reads every stored vector in insertion order and lists each item's near neighbours: exactly
(all pairs, block by block) when the library is small enough to be searched exactly
(``index.exact_threshold``), else through the library's index, ``NEIGHBOURS`` per item. Whether a
neighbour is a near-duplicate is the same decision the add policy makes
(:func:`same_search.verify.decision.is_same_picture`), under the same floors: the scan's
``min_score`` for every pair when one is given, else the library's near-duplicate floors.

Groups are formed greedily in insertion order: the oldest item not yet grouped keeps its
near-duplicates that are not grouped yet. So every extra is the same picture as its group's kept
item, and "remove the extras" keeps the first-stored copy of each picture. Removing
checks first that every kept item it relies on is still stored as it was at the scan: a kept item
removed (or stored again) since would make its group's extras the picture's last copies, so the
stale scan is refused and the operator scans again.

A scan has a budget, whatever ``min_score`` says: each item keeps at most ``NEIGHBOURS`` pairs
(its best-scoring ones), the exact method holds at most ``EXACT_MAX_BYTES`` of vectors (larger
libraries go through the index), local features are read ``VERIFY_KEYS`` items at a time, one scan
runs per library (starting another answers the running one), and the heap the scan freed is given
back to the system when it ends. A picture with more copies than ``NEIGHBOURS`` may show as
several groups; after removing their extras a new scan finds what is left.

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
from same_search.index.heap import release_free_heap
from same_search.libraries import Library, LibraryService
from same_search.near_duplicates import floors_for
from same_search.verify import decision
from same_search.verify.regions import MatchedRegion

log = logging.getLogger(__name__)

#: Neighbours looked at per item when the library is scanned through its index, and the most
#: pairs any one item keeps in a scan by either method (its best-scoring ones): with min_score 0
#: the exact method kept every pair, n^2/2 of them (3.4 GB for two scans of 3,000 items).
NEIGHBOURS = 16
#: Rows per block of the exact all-pairs product (memory: BLOCK x items floats).
BLOCK = 512
#: The exact method holds every vector in memory: a library with more bytes of vectors than this
#: is scanned through its index instead, whatever ``index.exact_threshold`` says.
EXACT_MAX_BYTES = 64 * 1024**2
#: Items whose stored local features are read at once when a scan's pairs are verified (about
#: 36 KB each), so verifying the pairs of a large library never holds all of them.
VERIFY_KEYS = 512
KEEP_SCANS = 20


@dataclass
class Group:
    """One picture's copies: the kept (oldest) item and the extras with their scores against it."""

    keep: int
    extras: list[tuple[int, float]]
    #: Where each extra (by key) matched the kept item, when the check's geometry confirmed it:
    #: ``stored`` is the box in the kept item, ``query`` the box in the extra.
    regions: dict[int, MatchedRegion] = field(default_factory=dict)


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

    @property
    def pairs_per_item(self) -> int:
        """The most near-duplicates one item keeps in a scan (its best-scoring ones)."""
        return NEIGHBOURS


class DuplicateScans:
    """Starts, tracks and acts on duplicates scans."""

    def __init__(self, libraries: LibraryService) -> None:
        self.libraries = libraries
        self.scans: dict[int, Scan] = {}
        self._tasks: dict[int, asyncio.Task] = {}
        self._ids = itertools.count(1)

    async def start(self, lib: Library, min_score: float | None = None) -> Scan:
        """Begin a scan in the background; returns it at once (status ``running``). While a scan of
        the library runs, that scan is the answer (one scan per library: each holds memory).
        ``min_score`` None: the library's near-duplicate floors."""
        running = self._running(lib.row.appid)
        if running is not None:
            return running
        total = await self.libraries.count(lib)
        running = self._running(lib.row.appid)  # started by a request while we counted
        if running is not None:
            return running
        exact = (
            total <= self.libraries.cfg.index.exact_threshold and total * lib.row.dim * 4 <= EXACT_MAX_BYTES
        )
        # The exact scan compares native vectors; the index answers in the library's space.
        built_in = decision.ADD if exact else self.libraries.reads.floors(lib)[2]
        floors = floors_for(lib.row.dup_min_score if min_score is None else min_score, built_in)
        scan = Scan(next(self._ids), lib.row.appid, floors, "exact" if exact else "index", total)
        self.scans[scan.id] = scan
        for old in sorted(self.scans)[:-KEEP_SCANS]:
            self.scans.pop(old, None)
        self._tasks[scan.id] = asyncio.create_task(self._run(scan, lib), name=f"duplicates-{scan.id}")
        return scan

    def _running(self, appid: str) -> Scan | None:
        """The scan of ``appid`` still running, if any."""
        for scan_id in self._tasks:
            scan = self.scans.get(scan_id)
            if scan is not None and scan.appid == appid:
                return scan
        return None

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
        tasks = list(self._tasks.values())  # each removes itself from _tasks as it ends
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def _run(self, scan: Scan, lib: Library) -> None:
        try:
            scan.groups = await self._scan(scan, lib)
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
        # The vectors, scores and pairs are garbage now; hand the heap they used back to the system.
        await asyncio.to_thread(release_free_heap)
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

    async def _scan(self, scan: Scan, lib: Library) -> list[Group]:
        """The groups of one scan (the vectors and pairs it needed die with this call)."""
        if scan.method == "exact":
            keys, vectors = await self._vectors(lib)
            scan.total = len(keys)
            neighbours = await asyncio.to_thread(_exact_neighbours, keys, vectors, scan)
            del vectors
        else:
            keys, neighbours = await self._index_neighbours(lib, scan)
        verified: Neighbours = {}
        regions: Regions = {}
        for chunk in _chunks(neighbours, VERIFY_KEYS):
            for a, others in (await self._verified(lib, scan, chunk, regions)).items():
                for b, score in others.items():
                    _link(verified, a, b, score)
        return _groups(keys, verified, regions)

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
                found = (await self.libraries.reads.nearest(lib, vector, k, stored=True)).found
                for other, score in found:
                    if other != key and score >= scan.min_score:
                        _link(neighbours, key, other, score)
                scan.done = len(keys)
        scan.total = len(keys)
        return keys, neighbours

    async def _verified(
        self, lib: Library, scan: Scan, neighbours: Neighbours, regions: Regions
    ) -> Neighbours:
        """The pairs above the floor that the same-picture decision confirms under the scan's
        floors: a pair of look-alikes above a floor is not a near-duplicate; a pair where either
        item has no local features is judged by its score alone, as on add. Where each pair
        confirmed by its geometry matched goes to ``regions``."""
        pairs = {
            (min(a, b), max(a, b)): score for a, others in neighbours.items() for b, score in others.items()
        }
        if not pairs:
            return neighbours
        keys = sorted({k for pair in pairs for k in pair})
        stored = await self.libraries.reads.local_features(lib, keys)
        verifier = self.libraries.verifier
        kept: Neighbours = {}
        for (a, b), score in pairs.items():
            [verdict] = await verifier.judge(
                verifier.stored_query(stored.get(a)), [(b, score)], stored, scan.floors
            )
            if verdict.same:
                _link(kept, a, b, score)
                if verdict.region is not None:
                    regions[a, b] = verdict.region
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
        await self._check_kept(lib, scan, set(chosen))
        removed = await self.libraries.writes.remove(lib, [ContSign.from_key(k) for k in chosen])
        gone = set(chosen)
        scan.groups = [
            Group(g.keep, [(k, s) for k, s in g.extras if k not in gone], g.regions)
            for g in scan.groups
            if any(k not in gone for k, _ in g.extras)
        ]
        return removed

    async def _check_kept(self, lib: Library, scan: Scan, chosen: set[int]) -> None:
        """Refuse (err_no 1) when a group losing extras lost its kept item since the scan, or the
        kept item was stored again or changed: its extras may now be the picture's last copies,
        or no longer copies of what is stored."""
        stale = []
        for group in scan.groups:
            if not any(key in chosen for key, _ in group.extras):
                continue
            found = await self.libraries.reads.item(lib, ContSign.from_key(group.keep))
            if found is None or max(found.created_at, found.updated_at) > scan.started:
                stale.append(str(ContSign.from_key(group.keep)))
        if stale:
            raise bad_request(
                f"duplicates scan {scan.id} is stale: the kept item of {len(stale)} group(s) was removed, "
                f"stored again or changed since the scan ({', '.join(stale[:5])}), so their extras may be "
                "the last copies of a picture; nothing was removed: scan again"
            )


#: key -> {other key: score}, symmetric: a pair found from either side is known to both.
Neighbours = dict[int, dict[int, float]]
#: (a, b) with a < b -> where they matched: ``query`` the box in a, ``stored`` the box in b.
Regions = dict[tuple[int, int], MatchedRegion]


def _link(neighbours: Neighbours, a: int, b: int, score: float) -> None:
    """Record the pair on both sides; an item already holding ``NEIGHBOURS`` pairs keeps its best."""
    for one, other in ((a, b), (b, a)):
        pairs = neighbours.setdefault(one, {})
        if other not in pairs and len(pairs) >= NEIGHBOURS:
            weakest = min(pairs, key=pairs.__getitem__)
            if pairs[weakest] >= score:
                continue
            del pairs[weakest]
        pairs[other] = score


def _chunks(neighbours: Neighbours, keys: int) -> list[Neighbours]:
    """Each pair once, in pieces that name at most about ``keys`` items each (pairs of an item
    stay together), so verifying a piece reads a bounded number of local features."""
    pieces: list[Neighbours] = []
    piece: Neighbours = {}
    named: set[int] = set()
    seen: set[tuple[int, int]] = set()  # a pair may be on one side only (an item's cap kept it out)
    for a, others in neighbours.items():
        mine = {}
        for b, score in others.items():
            pair = (min(a, b), max(a, b))
            if pair not in seen:
                seen.add(pair)
                mine[b] = score
        if not mine:
            continue
        if piece and len(named) + 1 + len(mine) > keys:
            pieces.append(piece)
            piece, named = {}, set()
        piece[a] = mine
        named.update((a, *mine))
    return [*pieces, piece] if piece else pieces


def _exact_neighbours(keys: list[int], vectors: np.ndarray, scan: Scan) -> Neighbours:
    """Each item's best ``NEIGHBOURS`` pairs at or above the floor (all pairs scored, block by
    block)."""
    n = len(vectors)
    neighbours: Neighbours = {}
    depth = min(NEIGHBOURS + 1, n)  # + 1: the item itself is among its best
    for start in range(0, n, BLOCK):
        scores = vectors[start : start + BLOCK] @ vectors.T
        best = np.argpartition(-scores, depth - 1, axis=1)[:, :depth]
        for offset, row_scores in enumerate(scores):
            row = start + offset
            for other in best[offset]:
                score = float(row_scores[other])
                if other != row and score >= scan.min_score:
                    _link(neighbours, keys[row], keys[int(other)], score)
        scan.done = min(n, start + BLOCK)
    return neighbours


def _groups(keys: list[int], neighbours: Neighbours, regions: Regions | None = None) -> list[Group]:
    """Greedy groups in insertion order (module doc); extras best first, with where each matched
    its kept item (from ``regions``)."""
    regions = regions or {}
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
            groups.append(Group(key, extras, _kept_regions(key, extras, regions)))
    return groups


def _kept_regions(keep: int, extras: list[tuple[int, float]], regions: Regions) -> dict[int, MatchedRegion]:
    """Each extra's region seen from the kept item (``stored`` in the kept, ``query`` in the extra)."""
    found = {}
    for extra, _ in extras:
        region = regions.get((min(keep, extra), max(keep, extra)))
        if region is not None:
            found[extra] = region.swapped() if keep < extra else region
    return found

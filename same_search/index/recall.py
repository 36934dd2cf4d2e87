"""A library's recall, measured on its own items, and the search depth tuned until it holds.

Fixed ``ef`` and re-rank depths were chosen on one kind of data: on a catalogue of tight
clusters (colour and size variants of one photo) the same settings gave recall@10 0.952 where
the benchmark's generator gave 0.98, and nobody could see it. So each library measures itself:
a sample of its stored items is searched as queries, each query's own item left out of both
sides (no hit comes free), against exact search over every live item; unfiltered, and with the
library's most common tag as a filter. Then the depth (``ef``, and the re-ranked candidates of a
reduced index) is searched for the cheapest setting at which both reach the target.

The work is split so that the caller can run it without holding anyone up: :class:`Neighbours`
folds chunks of the library's vectors into the exact answer (numpy, any thread), and
:func:`hits` is one query (the index thread: hnswlib's ef is one setting per graph, so a
measurement must never walk the graph while a served search does).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from same_search.index import screen as screening
from same_search.index.library_index import LibraryIndex
from same_search.index.paging import SearchDepth

#: recall@K is measured.
K = 10
#: Stored items searched per measurement unless ``[index] recall_sample`` says otherwise: the
#: standard error of recall near 0.98 is then about 0.003.
SAMPLE = 200
#: Rows per chunk of the exact scan (read in the index thread: 4096 x 1280-d is 20 MB).
SCAN_CHUNK = 4096
#: ``run(fn, *args)`` somewhere (the index thread, a worker thread) and await its result.
Run = Callable[..., Awaitable[Any]]
#: A tag is measured as a filter when at least this share of the library carries it.
COMMON_TAG_SHARE = 0.01
#: Depths tried (cheapest first). A full-dimension graph has one knob, ef (its first tier is its
#: ef); a reduced graph's candidates are read from disk and re-ranked, its ef is a walk at the
#: reduced dimension, so both move along one ladder, then each is lowered alone while it holds.
EF_STEPS = (32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048)
CANDIDATE_STEPS = (25, 38, 50, 75, 100, 150, 200, 300, 400, 600, 800, 1200, 1600)
#: A reduced graph's deeper rungs (ef = candidates): their candidates are screened with an int8
#: copy of the native vectors in RAM, only the best re-ranked from disk (index/screen.py).
SCREENED_STEPS = (2400, 3200, 4800, 6400)
#: A reduced library whose best graph depth takes more than FLAT_FROM candidates (or that misses
#: the target on the graph) also tries these *flat* depths: candidates from a scan of every row's
#: int8 reduced vector (index/flat.py), screened and re-ranked as the deep rungs are; it keeps the
#: flat depth that reaches the target when the graph's does not, or when its searches measured
#: cheaper. 800: the 20k tight-cluster library tuned to 1,200 native candidates (3.6 ms of reads
#: alone), the shipped 1M libraries to 300 (they never try it).
FLAT_STEPS = (2400, 3200, 4800, 6400)
FLAT_FROM = 800
#: The flat depth replaces a graph depth that reaches the target only if its searches took at most
#: this share of the graph's time: near a tie, the measurement's noise must not flip the choice.
FLAT_MARGIN = 0.9


@dataclass(frozen=True)
class Tuning:
    """A library's measured recall and the depth chosen for it, as stored and shown."""

    #: What was measured: the index kind, the model and (reduced) the projection.
    kind: str
    fingerprint: str
    projection: str
    #: Live items when measured (a library measures itself again once it has doubled).
    items: int
    ef: int
    candidates: int
    #: recall@K of the chosen depth, unfiltered and with ``filter_tag`` (None: no common tag).
    recall: float
    recall_filtered: float | None
    filter_tag: int | None
    target: float
    queries: int
    measured_at: float
    #: Candidates from a flat scan of every row instead of the graph (index/flat.py).
    flat: bool = False
    #: Median milliseconds of one measured search at the chosen depth (None: measured before
    #: it was kept); what the graph and the flat scan were compared by.
    search_ms: float | None = None

    @property
    def depth(self) -> SearchDepth:
        """The depth the index searches with."""
        return SearchDepth(self.ef, self.candidates, self.flat)

    @property
    def met(self) -> bool:
        """Whether the chosen depth reached the target, filtered too."""
        return min(self.recall, self.recall_filtered or 1.0) >= self.target

    @property
    def screened(self) -> bool:
        """Whether the chosen depth screens its candidates with the in-RAM int8 copy."""
        return screens(self.depth)

    def to_json(self) -> dict[str, object]:
        """What the library's stats, /metrics and the console show."""
        return {**asdict(self), "k": K, "below_target": not self.met, "screened": self.screened}

    def fits(self, index: LibraryIndex, fingerprint: str) -> bool:
        """Whether this was measured on an index of the same kind, model and projection."""
        projection = getattr(index, "projection", None)
        return (
            self.kind == index.kind
            and self.fingerprint == fingerprint
            and self.projection == ("" if projection is None else projection.fingerprint)
        )


def screens(depth: SearchDepth) -> bool:
    """Whether a reduced index searching at ``depth`` screens its candidates (index/screen.py)."""
    return depth.candidates > screening.SCREEN_FROM


async def fill_screen(index: LibraryIndex, on_index: Run) -> None:
    """Give a reduced index its filled int8 screen, coding one chunk at a time ``on_index``
    (a search waits for at most one chunk: 4,096 native rows read and coded)."""
    rows = await on_index(index.begin_screen_now)
    for start in range(0, len(rows), SCAN_CHUNK):
        await on_index(index.fill_screen_now, rows[start : start + SCAN_CHUNK])
    await on_index(index.screen_filled_now)


def sample_rows(index: LibraryIndex, size: int, seed: int = 0) -> np.ndarray:
    """Up to ``size`` live rows spread at random over the library (the index thread)."""
    live = index.rows.live_rows()
    if len(live) <= size:
        return live
    return np.sort(np.random.default_rng(seed).choice(live, size, replace=False))


def common_tag(index: LibraryIndex) -> int | None:
    """The tag most items carry, if at least COMMON_TAG_SHARE of them do (the index thread)."""
    live = index.rows.live_rows()
    if not len(live):
        return None
    tags = index.tags.of(live)
    values, counts = np.unique(tags[tags != 0], return_counts=True)
    if not len(values) or counts.max() < COMMON_TAG_SHARE * len(live):
        return None
    return int(values[np.argmax(counts)])


class Neighbours:
    """The exact K nearest neighbours of some queries, folded from chunks of the library, each
    query's own item left out; with a filter's neighbours beside (rows whose ``allowed`` is set).
    """

    def __init__(self, keys: np.ndarray, vectors: np.ndarray) -> None:
        self.keys = np.asarray(keys, np.int64)
        self.queries = np.asarray(vectors, np.float32)
        n = len(self.keys)
        self._best = {f: (np.empty((n, 0), np.int64), np.empty((n, 0), np.float32)) for f in (False, True)}

    def add(self, keys: np.ndarray, vectors: np.ndarray, allowed: np.ndarray) -> None:
        """Fold in a chunk: ``keys`` (m,), ``vectors`` (m, dim), ``allowed`` (m,) bool."""
        scores = self.queries @ np.asarray(vectors, np.float32).T  # (n, m)
        scores[self.keys[:, None] == np.asarray(keys)[None, :]] = -np.inf  # its own item
        for filtered in (False, True):
            chunk_keys, chunk_scores = (keys[allowed], scores[:, allowed]) if filtered else (keys, scores)
            best_keys, best_scores = self._best[filtered]
            all_keys = np.concatenate([best_keys, np.broadcast_to(chunk_keys, chunk_scores.shape)], axis=1)
            all_scores = np.concatenate([best_scores, chunk_scores], axis=1)
            if all_scores.shape[1] > K:
                top = np.argpartition(-all_scores, K - 1, axis=1)[:, :K]
                all_keys = np.take_along_axis(all_keys, top, axis=1)
                all_scores = np.take_along_axis(all_scores, top, axis=1)
            self._best[filtered] = (all_keys, all_scores)

    def of(self, filtered: bool) -> list[set[int]]:
        """Each query's exact neighbours (fewer than K where fewer items can match)."""
        keys, scores = self._best[filtered]
        return [set(k[np.isfinite(s)].tolist()) for k, s in zip(keys, scores, strict=True)]


def hits(
    index: LibraryIndex,
    key: int,
    vector: np.ndarray,
    truth: set[int],
    tags: tuple[int, int] | None,
    depth: SearchDepth,
) -> int:
    """How many of ``truth`` one search at ``depth`` finds among its first K other items (the
    index thread)."""
    others = [k for k, _ in index._search(vector, K + 1, None, tags, False, depth) if k != key]
    return len(truth & set(others[:K]))


def timed_hits(*args: object) -> tuple[int, float]:
    """:func:`hits` and the seconds it took (timed in the thread that searched)."""
    started = time.perf_counter()
    found = hits(*args)
    return found, time.perf_counter() - started


@dataclass(frozen=True)
class Measured:
    """recall@K of one depth, unfiltered and filtered (None: no filter measured), and the median
    seconds of one of its searches."""

    recall: float
    filtered: float | None
    seconds: float = 0.0

    def worst(self) -> float:
        return min(self.recall, 1.0 if self.filtered is None else self.filtered)


Measure = Callable[[SearchDepth], Awaitable[Measured]]


async def tune(
    kind: str, measure: Measure, target: float, floor: SearchDepth | None = None
) -> tuple[SearchDepth, Measured]:
    """The cheapest depth found whose worst recall reaches ``target`` (the deepest tried when
    none does), and what it measured; never below ``floor`` (the depth ``[index]`` configures).

    Recall rises with depth, so the ladder is bisected: for a reduced index both knobs move
    together first (past 1,600 candidates, screened ones), then ef and candidates are each
    lowered alone while the target holds (ef never below the candidates: the walk is widened
    to them anyway).

    Why a floor: stored items searched as queries are easier than the queries a library serves.
    At 300,000 descriptor-like items a reduced library tuned itself down to 38 candidates on its
    own items (recall@10 0.981 there), where held-out photos searched by image found 0.830 of
    their true neighbours, edited copies of stored photos came first 0.683 of the time against
    0.830 for exact search, and a 1% tag filter (its scan of the matches re-ranks twice the candidates)
    kept 0.949 (bench/bench_daemon_million.py, docs/benchmarks.md). The configured depth is the
    one measured with held-out queries (0.982 at 1M); the measurement may only deepen it.
    """
    seen: dict[SearchDepth, Measured] = {}

    async def at(depth: SearchDepth) -> Measured:
        if depth not in seen:
            seen[depth] = await measure(depth)
        return seen[depth]

    low_ef, low_c = (floor.ef, floor.candidates) if floor is not None else (0, 0)
    if kind == "reduced":
        rungs = zip(EF_STEPS, CANDIDATE_STEPS, strict=True)
        ladder = [SearchDepth(max(ef, c, low_ef, low_c), max(c, low_c)) for ef, c in rungs]
        ladder += [SearchDepth(max(c, low_ef), c) for c in SCREENED_STEPS if c >= low_c]
    else:
        ladder = [SearchDepth(max(ef, low_ef), max(ef, low_ef)) for ef in EF_STEPS]
    ladder = list(dict.fromkeys(ladder))  # the rungs below the floor became the floor: once
    best = await _lowest(ladder, at, target)
    if best is not None and kind == "reduced":
        counts = sorted({low_c, *CANDIDATE_STEPS, *SCREENED_STEPS} - {0})
        fewer = [SearchDepth(best.ef, c) for c in counts if low_c <= c <= best.candidates]
        best = await _lowest(fewer, at, target) or best
        bottom = max(best.candidates, low_ef)
        efs = sorted({bottom, *(ef for ef in EF_STEPS if bottom < ef <= best.ef)})
        lower = [SearchDepth(ef, best.candidates) for ef in efs]
        best = await _lowest(lower, at, target) or best
    if kind == "reduced" and (best is None or best.candidates > FLAT_FROM):
        best = await _flat_if_cheaper(best, at, target, low_c)
    if best is None:
        return ladder[-1], await at(ladder[-1])
    return best, seen[best]


async def _flat_if_cheaper(
    graph: SearchDepth | None, at: Callable[[SearchDepth], Awaitable[Measured]], target: float, low_c: int
) -> SearchDepth | None:
    """The cheapest flat depth that reaches ``target`` if the graph's (``graph``; None: none
    reached it) is dearer by measured time per search, else ``graph``.

    Where the tuned depth is a large share of the library the walk costs more than reading
    every row: at 100k items of tight clusters, ef 4,800 over a graph of 256-d vectors against a
    scan of 100k int8 rows of 256 bytes (docs/benchmarks.md, "A catalogue of tight clusters at
    100k"). Which is cheaper depends on the library's size and the CPU, so it is measured here.
    """
    rungs = [SearchDepth(c, c, flat=True) for c in FLAT_STEPS if c >= low_c]
    flat = await _lowest(rungs, at, target) if rungs else None
    if flat is None:
        return graph
    if graph is None or (await at(flat)).seconds <= FLAT_MARGIN * (await at(graph)).seconds:
        return flat
    return graph


async def _lowest(
    ladder: list[SearchDepth], at: Callable[[SearchDepth], Awaitable[Measured]], target: float
) -> SearchDepth | None:
    """The first rung of an (ascending) ladder that reaches ``target``, by bisection; None if
    even the last does not (the last, the dearest to measure, is measured only then)."""
    low, high = 0, len(ladder) - 1
    while low < high:
        middle = (low + high) // 2
        if (await at(ladder[middle])).worst() >= target:
            high = middle
        else:
            low = middle + 1
    return ladder[low] if (await at(ladder[low])).worst() >= target else None


def tuning_of(
    index: LibraryIndex,
    fingerprint: str,
    depth: SearchDepth,
    measured: Measured,
    tag: int | None,
    target: float,
    queries: int,
) -> Tuning:
    """The record of a measurement of ``index``."""
    projection = getattr(index, "projection", None)
    return Tuning(
        kind=index.kind,
        fingerprint=fingerprint,
        projection="" if projection is None else projection.fingerprint,
        items=index.count(),
        ef=depth.ef,
        candidates=depth.candidates,
        recall=round(measured.recall, 4),
        recall_filtered=None if measured.filtered is None else round(measured.filtered, 4),
        filter_tag=tag,
        target=target,
        queries=queries,
        measured_at=time.time(),
        flat=depth.flat,
        search_ms=round(measured.seconds * 1000, 2),
    )


def starting_depth(index: LibraryIndex) -> SearchDepth:
    """The depth ``[index]`` gives a library of ``index``'s kind: where it starts, and the
    least the tuning may choose (:func:`tune`)."""
    cfg = index.cfg
    if index.kind == "reduced":
        return SearchDepth(cfg.reduced_ef_search, cfg.rerank_candidates)
    return SearchDepth(cfg.ef_search, cfg.ef_search)


def at_least(depth: SearchDepth, floor: SearchDepth) -> SearchDepth:
    """``depth`` raised to ``floor`` knob by knob (a depth stored before the tuning had a floor)."""
    return SearchDepth(max(depth.ef, floor.ef), max(depth.candidates, floor.candidates), depth.flat)


async def measure(
    index: LibraryIndex,
    fingerprint: str,
    target: float,
    on_index: Run,
    on_worker: Run,
    sample: int = SAMPLE,
) -> Tuning:
    """Measure ``index`` and choose its depth (module docstring): whatever touches the index
    (vectors, searches) runs ``on_index``, one query or one chunk at a time; the exact scan's
    arithmetic runs ``on_worker``. Nothing is applied: the caller serves and keeps the result."""
    rows = await on_index(sample_rows, index, sample)
    keys = index.rows.keys[rows].copy()
    queries = await on_index(index.row_vectors, rows)
    tag = await on_index(common_tag, index)
    tags = None if tag is None else (tag, 0)
    live = await on_index(index.rows.live_rows)
    allowed = np.ones(index.rows.used, bool) if tags is None else await on_index(index.tags.mask, tags, False)
    neighbours = Neighbours(keys, queries)
    for start in range(0, len(live), SCAN_CHUNK):
        chunk = live[start : start + SCAN_CHUNK]
        chunk = chunk[index.rows.live[chunk]]  # removed meanwhile: left out
        vectors = await on_index(index.row_vectors, chunk)
        await on_worker(neighbours.add, index.rows.keys[chunk], vectors, allowed[chunk])
    truths = {None: neighbours.of(False), **({tags: neighbours.of(True)} if tags is not None else {})}

    async def at(depth: SearchDepth) -> Measured:
        if screens(depth) and not getattr(index, "screen_ready", True):
            await fill_screen(index, on_index)
        found, seconds = {}, []
        for filtered, truth in truths.items():
            hit = 0
            for i, key in enumerate(keys.tolist()):
                one, took = await on_index(timed_hits, index, key, queries[i], truth[i], filtered, depth)
                hit += one
                seconds.append(took)
            found[filtered] = hit / max(sum(len(t) for t in truth), 1)
        return Measured(found[None], found.get(tags), float(np.median(seconds)) if seconds else 0.0)

    depth, measured = await tune(index.kind, at, target, starting_depth(index))
    return tuning_of(index, fingerprint, depth, measured, tag, target, len(keys))

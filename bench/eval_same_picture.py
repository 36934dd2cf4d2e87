"""The same-picture decision on a hard development protocol, against a bare score threshold.

"Is this query an edited copy of a stored picture, or merely a look-alike?" Library: a third of
each ``caltech101-dev`` class, ``--imagenet`` ImageNet photos, product shots on white made from
Caltech photos and repetitive textures (striped and checked fabrics, catalogue grids;
bench/hard_edits.py). Positives: strong edits of sampled library pictures (a 50% crop at half
size and JPEG 30, blur 3, rotation 20, a photo of a screen, a 30% sticker, a mirrored crop, a
logo, a screenshot; and the smallest and blurriest: a 70% crop at half size and JPEG 35, a 40%
crop at a quarter, blur 2 and 4). Negatives are look-alikes: the other photos of each Caltech
class (same class, different photo), product shots made from those photos (same class on
white), further ImageNet photos, another photo of each fabric and a grid of another photo of
each class; none of them is in the library.

Each query runs the daemon's own pipeline: the default embedder's vector, exact cosine search,
then :mod:`same_search.verify` on the top ``--depth`` candidates (the query's local features,
extracted as a search extracts them, against each candidate's stored ones, mirrored query
included). A query "says same picture" when at least one candidate is judged the same; it is
right when the judged hits are exactly its original. The previous query side (the stored form)
is always measured beside it, ``--variants`` adds the other query sides tried, and the
decision's inlier-ratio tier is refitted on half of the originals and reported on the other.

Vectors and local features (stored form, and each query side) are cached on disk per image
content, keyed by the model's fingerprint and the local-feature settings (``--cache-dir``), so a
second run only matches and scores again (a few minutes per query side).

Usage::

    nice -n 10 .venv/bin/python bench/eval_same_picture.py             # writes same_picture_results.md
    nice -n 10 .venv/bin/python bench/eval_same_picture.py --variants  # every query side tried
    .venv/bin/python bench/eval_same_picture.py --sample 0.2 --out ''  # quick run, no file
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import hashlib
import io
import pickle
import random
import sys
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
for _path in (REPO_ROOT, REPO_ROOT / "bench"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import catalogue_lookalikes  # noqa: E402
import common  # noqa: E402
import hard_edits  # noqa: E402

from same_search.config import ModelConfig  # noqa: E402
from same_search.embed.embedder import Embedder  # noqa: E402
from same_search.embed.images import ImageLimits, decode  # noqa: E402
from same_search.search import promotion  # noqa: E402
from same_search.verify import decision, local_features, matching, service  # noqa: E402

LIMITS = ImageLimits()
FULL_RES = 1 << 20
#: The development photos beside the repository (a worktree one level deeper finds them too).
_DATA_DIRS = (REPO_ROOT.parent / "shared" / "data", REPO_ROOT.parents[1] / "shared" / "data")
DATA_DIR = next((d for d in _DATA_DIRS if d.is_dir()), _DATA_DIRS[0])


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------


@dataclass
class Sets:
    """Pictures by key (JPEG bytes) and the ground truth of each query."""

    library: dict[str, bytes] = field(default_factory=dict)
    queries: dict[str, bytes] = field(default_factory=dict)
    #: query key -> library keys that are its picture (empty for a negative)
    truth: dict[str, frozenset[str]] = field(default_factory=dict)
    #: query key -> edit name (positives) or negative kind
    kind: dict[str, str] = field(default_factory=dict)


def jpeg_bytes(image, quality: int = 90) -> bytes:
    """A picture as a JPEG file."""
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def accepted(size: tuple[int, int]) -> bool:
    """Whether the daemon's default limits accept a picture of this size."""
    return min(size) >= LIMITS.min_side and max(size) <= LIMITS.max_side


def near_copy_families(path: Path) -> dict[str, str]:
    """Caltech photo ("class/name") -> a representative of its near-copy family (union-find)."""
    parent: dict[str, str] = {}

    def root(key: str) -> str:
        while parent.get(key, key) != key:
            key = parent[key]
        return key

    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            first, second = line.split()
            parent[root(first)] = root(second)
    return {key: root(key) for key in parent}


def family(key: str, families: dict[str, str]) -> str:
    """The picture a key shows: Caltech photos and product shots made from them share it."""
    source = key.split("/", 1)[1] if key.startswith(("caltech/", "product/")) else key
    return families.get(source, source)


def build_sets(data_dir: Path, args: argparse.Namespace) -> Sets:
    """Library, positives (strong edits of sampled library pictures) and look-alike negatives.

    Each Caltech class is split in three: photos 0, 3, 6, ... go to the library, 1, 4, 7, ... are
    same-class negatives, and 2, 5, 8, ... become product shots (alternately library and
    negative), so no product shot is made from a photo stored elsewhere.
    """
    sets = Sets()
    rng = random.Random(13)
    caltech_lib: list[str] = []
    products_lib: list[str] = []
    negatives: dict[str, str] = {}
    for class_dir in sorted(p for p in (data_dir / "caltech101-dev").iterdir() if p.is_dir()):
        paths = sorted(class_dir.glob("*.jpg"))
        for index, path in enumerate(paths):
            key = f"caltech/{class_dir.name}/{path.name}"
            if index % 3 == 0:
                sets.library[key] = path.read_bytes()
                caltech_lib.append(key)
            elif index % 3 == 1 and rng.random() < args.sample:
                sets.queries[key] = path.read_bytes()
                negatives[key] = "neg: same class"
        for number, path in enumerate(paths[2::3][: 2 * args.products]):
            picture = decode(path.read_bytes(), LIMITS, FULL_RES)
            shot = jpeg_bytes(hard_edits.product_shot(picture, seed=number), 92)
            key = f"product/{class_dir.name}/{path.name}"
            if number % 2 == 0:
                sets.library[key] = shot
                products_lib.append(key)
            else:
                sets.queries[key] = shot
                negatives[key] = "neg: product, same class"
    imagenet = sorted((data_dir / "imagenet-samples").glob("*.JPEG"))
    imagenet_lib = []
    for path in imagenet[: args.imagenet]:
        sets.library[f"imagenet/{path.name}"] = path.read_bytes()
        imagenet_lib.append(f"imagenet/{path.name}")
    for path in imagenet[args.imagenet : 2 * args.imagenet]:
        if rng.random() < args.sample:
            key = f"imagenet/{path.name}"
            sets.queries[key] = path.read_bytes()
            negatives[key] = "neg: other ImageNet"
    negatives.update(add_textures(sets, data_dir, args))
    for key, kind in negatives.items():
        sets.truth[key], sets.kind[key] = frozenset(), kind
    originals = (
        rng.sample(imagenet_lib, round(args.originals * args.sample))
        + rng.sample(caltech_lib, round(args.originals * args.sample))
        + rng.sample(products_lib, min(len(products_lib), round(args.originals * args.sample)))
    )
    for number, key in enumerate(originals):
        picture = decode(sets.library[key], LIMITS, FULL_RES)
        for edit_number, (edit, (function, quality)) in enumerate(hard_edits.STRONG_EDITS.items()):
            edited = function(picture, random.Random(number * 1009 + edit_number))
            if not accepted(edited.size):
                continue
            query = f"{key}#{edit}"
            sets.queries[query] = jpeg_bytes(edited, quality)
            sets.kind[query] = edit
    assign_truth(sets)
    return sets


def add_textures(sets: Sets, data_dir: Path, args: argparse.Namespace) -> dict[str, str]:
    """Repetitive textures: one photo of each fabric (and one catalogue grid per Caltech class)
    in the library, another photo of it (another grid, of another photo of the class) as a
    negative. Uses pictures nothing else uses, and its own random numbers, so the rest of the
    protocol is the same with or without them. Returns the negatives' kinds."""
    negatives = {}
    queries = round(args.textures * args.sample)
    for kind in hard_edits.TEXTURES:
        for number in range(args.textures):
            sets.library[f"texture/{kind}/{number}/shot0"] = jpeg_bytes(
                hard_edits.texture(kind, number, 0), 90
            )
            if number < queries:
                key = f"texture/{kind}/{number}/shot1"
                sets.queries[key] = jpeg_bytes(hard_edits.texture(kind, number, 1), 90)
                negatives[key] = f"neg: {kind}, same fabric"
    for number, class_dir in enumerate(
        sorted(p for p in (data_dir / "caltech101-dev").iterdir() if p.is_dir())
    ):
        unused = sorted(class_dir.glob("*.jpg"))[2::3][2 * args.products :][:2]
        if len(unused) < 2:
            continue
        grids = [
            hard_edits.catalogue_grid(decode(p.read_bytes(), LIMITS, FULL_RES), seed)
            for seed, p in enumerate(unused)
        ]
        sets.library[f"grid/{class_dir.name}/0"] = jpeg_bytes(grids[0], 90)
        if random.Random(number).random() < args.sample:
            key = f"grid/{class_dir.name}/1"
            sets.queries[key] = jpeg_bytes(grids[1], 90)
            negatives[key] = "neg: catalogue grid, same class"
    return negatives


def assign_truth(sets: Sets) -> None:
    """Each query's picture among the library's, by near-copy family (re-run on cached sets, so
    a corrected near-copy list needs no rebuild).

    A "negative" whose picture the library holds after all is a natural near-copy; banknotes of
    one design (and edits of them) are told apart from the rest. Both are reported separately.
    """
    families = near_copy_families(REPO_ROOT / "bench" / "caltech_near_copies.txt")
    by_family: dict[str, set[str]] = {}
    for key in sets.library:
        by_family.setdefault(family(key, families), set()).add(key)
    for query in sets.queries:
        source = query.split("#")[0]
        sets.truth[query] = frozenset(by_family.get(family(source, families), ()))
        kind = sets.kind[query]
        if "/dollar_bill/" in query:
            sets.kind[query] = kind if kind.startswith("banknote") else f"banknote ({kind})"
        elif kind.startswith("neg:") and sets.truth[query]:
            sets.kind[query] = "natural near-copy"


# --------------------------------------------------------------------------------------------
# Vectors and local features, cached by content
# --------------------------------------------------------------------------------------------


class CoarseCache:
    """The coarse keypoints of each picture (:func:`local_features.extract_coarse`, as the daemon
    finds them for a stored picture and a query alike), on disk by content: the vectors and
    working keypoints cached before them stay valid."""

    def __init__(self, cache_dir: Path | None) -> None:
        lf = local_features
        settings = f"{lf.COARSE_SIDE}-{lf.COARSE_KEYPOINTS}-{lf.COARSE_CONTRAST}"
        self.path = cache_dir / f"same_picture-coarse-{settings}.pkl" if cache_dir else None
        self.entries: dict[str, bytes] = {}
        if self.path and self.path.exists():
            self.entries = pickle.loads(self.path.read_bytes())
        self.added = 0

    def get(self, data: bytes) -> local_features.LocalFeatures:
        """The coarse keypoints of one picture, extracted on first use."""
        digest = hashlib.sha1(data).hexdigest()
        if digest not in self.entries:
            picture = decode(data, LIMITS, local_features.WORKING_SIDE)
            self.entries[digest] = local_features.extract_coarse(picture).to_bytes()
            self.added += 1
            if self.added % 500 == 0:
                log(f"  coarse keypoints: {self.added} extracted")
                self.save()
        return local_features.LocalFeatures.from_bytes(self.entries[digest])

    def attach(self, data: bytes, features: local_features.LocalFeatures) -> local_features.LocalFeatures:
        """``features`` of the picture ``data`` with its coarse keypoints."""
        return dataclasses.replace(features, coarse=self.get(data))

    def save(self) -> None:
        """Write the cache."""
        if self.path:
            self.path.with_suffix(".tmp").write_bytes(pickle.dumps(self.entries))
            self.path.with_suffix(".tmp").replace(self.path)


class FeatureCache:
    """Vector and local features of each picture, on disk by content (extraction timed in CPU
    time); the coarse keypoints come from their own cache (:class:`CoarseCache`)."""

    def __init__(self, embedder: Embedder, cache_dir: Path | None) -> None:
        self.embedder = embedder
        self.coarse = CoarseCache(cache_dir)
        settings = (
            f"{embedder.info.fingerprint}-lf{local_features.FORMAT_VERSION}-"
            f"{local_features.WORKING_SIDE}-{local_features.MAX_KEYPOINTS}"
        )
        self.path = cache_dir / f"same_picture-{settings}.pkl" if cache_dir else None
        self.entries: dict[str, tuple[np.ndarray, bytes, bytes]] = {}
        if self.path and self.path.exists():
            self.entries = pickle.loads(self.path.read_bytes())
        self.extract_s: list[float] = []

    def get(self, data: bytes) -> tuple[np.ndarray, local_features.LocalFeatures]:
        """(vector, local features) of one picture."""
        vector, stored = self.entries[hashlib.sha1(data).hexdigest()][:2]
        return vector, self.coarse.attach(data, local_features.LocalFeatures.from_bytes(stored))

    def stored(self, data: bytes) -> bytes:
        """The stored form of one picture's local features (coarse keypoints included)."""
        return self.get(data)[1].to_bytes()

    def ensure(self, images: dict[str, bytes], what: str) -> None:
        """Compute what is missing, in batches of 16, and save the cache."""
        missing = [k for k, v in images.items() if hashlib.sha1(v).hexdigest() not in self.entries]
        started = time.perf_counter()
        for start in range(0, len(missing), 16):
            chunk = missing[start : start + 16]
            pictures = [decode(images[k], LIMITS, FULL_RES) for k in chunk]
            batch = np.stack([self.embedder.preprocess(p) for p in pictures])
            vectors = self.embedder.embed(batch)
            for key, picture, vector in zip(chunk, pictures, vectors, strict=True):
                began = time.thread_time()
                stored = local_features.extract(picture).to_bytes()
                self.extract_s.append(time.thread_time() - began)
                self.entries[hashlib.sha1(images[key]).hexdigest()] = (vector, stored)
            done = start + len(chunk)
            if done % 320 == 0 or done == len(missing):
                log(f"  {what}: {done}/{len(missing)} ({done / (time.perf_counter() - started):.1f}/s)")
                self.save()

    def save(self) -> None:
        """Write the cache (a run cut short keeps what it computed)."""
        if self.path:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.with_suffix(".tmp").write_bytes(pickle.dumps(self.entries))
            self.path.with_suffix(".tmp").replace(self.path)


# --------------------------------------------------------------------------------------------
# Scoring
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class QueryVariant:
    """How a query's local features are extracted (the stored side never changes)."""

    name: str
    contrast: float | None = None  # SIFT's contrast threshold; None: OpenCV's 0.04, as stored
    max_keypoints: int = local_features.MAX_KEYPOINTS
    side: int = local_features.WORKING_SIDE
    daemon: bool = False  # exactly what the daemon does (local_features.extract_query)

    def settings(self) -> str:
        """Cache key of the variant's features."""
        if self.daemon:  # keyed by what extract_query uses, so a changed setting is extracted anew
            lf = local_features
            return f"daemon-c{lf.QUERY_CONTRAST}-k{lf.MAX_KEYPOINTS}-s{lf.WORKING_SIDE}"
        return f"c{self.contrast}-k{self.max_keypoints}-s{self.side}"

    def extract(self, data: bytes) -> local_features.LocalFeatures:
        """Decode (as the daemon does) and extract; positions in working-resolution units."""
        picture = decode(data, LIMITS, max(self.side, local_features.WORKING_SIDE))
        if self.daemon:
            return local_features.extract_query(picture)
        found = local_features.extract_pixels(
            local_features.working_picture(picture, self.side), self.max_keypoints, self.contrast
        )
        unit = local_features.WORKING_SIDE / self.side
        return local_features.LocalFeatures(
            round(found.width * unit), round(found.height * unit), found.points * unit, found.descriptors
        )


#: The daemon's query side, and the variants measured against it (``--variants``).
DAEMON_QUERY = QueryVariant(
    f"contrast {local_features.QUERY_CONTRAST} (the daemon's query side)", daemon=True
)
STORED_FORM = QueryVariant("as stored: contrast 0.04 (the previous query side)")
QUERY_VARIANTS = (
    STORED_FORM,
    DAEMON_QUERY,
    QueryVariant("contrast 0.01", contrast=0.01),
    QueryVariant("contrast 0.02, 500 keypoints", contrast=0.02, max_keypoints=500),
    QueryVariant("contrast 0.02, longer side 400", contrast=0.02, max_keypoints=400, side=400),
)


class QueryCache:
    """Query-side local features of one variant, on disk by content (CPU time per extraction)."""

    def __init__(self, variant: QueryVariant, cache: FeatureCache, cache_dir: Path | None) -> None:
        self.variant = variant
        self.stored = cache if variant is STORED_FORM else None
        self.coarse = cache.coarse
        fingerprint = cache.embedder.info.fingerprint
        name = f"same_picture-query-{fingerprint}-lf{local_features.FORMAT_VERSION}-{variant.settings()}.pkl"
        self.path = cache_dir / name if cache_dir else None
        self.entries: dict[str, tuple[bytes, float]] = {}
        if self.path and self.path.exists():
            self.entries = pickle.loads(self.path.read_bytes())

    def get(self, data: bytes) -> local_features.LocalFeatures:
        """The query features of one picture, extracted on first use."""
        if self.stored is not None:  # the stored form: already in the feature cache
            return local_features.LocalFeatures.from_bytes(self.stored.stored(data))
        digest = hashlib.sha1(data).hexdigest()
        if digest not in self.entries:
            began = time.thread_time()
            features = self.variant.extract(data)
            spent = time.thread_time() - began
            self.entries[digest] = (dataclasses.replace(features, coarse=None).to_bytes(), spent)
        found = local_features.LocalFeatures.from_bytes(self.entries[digest][0])
        return self.coarse.attach(data, found) if self.variant.daemon else found

    def extract_ms(self, queries: dict[str, bytes]) -> list[float]:
        """CPU milliseconds of each query's extraction (decode included)."""
        return [1000 * self.entries[hashlib.sha1(v).hexdigest()][1] for v in queries.values()]

    def save(self) -> None:
        """Write the cache (the stored form has none of its own)."""
        if self.path and self.stored is None:
            self.path.with_suffix(".tmp").write_bytes(pickle.dumps(self.entries))
            self.path.with_suffix(".tmp").replace(self.path)


@dataclass
class Candidate:
    """One of a query's top hits, with the evidence of the direct and the mirrored query."""

    key: str
    score: float
    direct: matching.Evidence
    mirror: matching.Evidence

    def same(self, rule=decision.is_same_picture) -> bool:
        """Judged the same picture by ``rule``: either way round will do, as in service.judge."""
        return rule(self.score, self.direct) or rule(self.score, self.mirror)

    @property
    def evidence(self) -> matching.Evidence:
        """The evidence the daemon reports (service.judge's choice)."""
        if decision.is_same_picture(self.score, self.direct):
            return self.direct
        if decision.is_same_picture(self.score, self.mirror) or self.mirror.inliers > self.direct.inliers:
            return self.mirror
        return self.direct


def verify_queries(
    sets: Sets, cache: FeatureCache, queries: QueryCache, depth: int
) -> dict[str, list[Candidate]]:
    """Top ``depth`` hits of every query by cosine, each with the direct and the mirrored query's
    evidence (the daemon skips the mirror when the direct check passes)."""
    lib_keys = list(sets.library)
    lib_vectors = np.stack([cache.get(sets.library[k])[0] for k in lib_keys])
    lib_features = {k: cache.get(sets.library[k])[1] for k in lib_keys}
    results: dict[str, list[Candidate]] = {}
    for number, (key, data) in enumerate(sets.queries.items()):
        vector = cache.get(data)[0]
        query = queries.get(data)
        flipped = query.mirrored()
        scores = lib_vectors @ vector
        results[key] = []
        for i in np.argsort(-scores)[:depth]:
            stored = lib_features[lib_keys[i]]
            direct = matching.verify(query, stored)
            mirror = matching.verify(flipped, stored, mirrored=True)
            results[key].append(Candidate(lib_keys[i], float(scores[i]), direct, mirror))
        if (number + 1) % 500 == 0:
            log(f"  {queries.variant.name}: verified {number + 1}/{len(sets.queries)} queries")
    queries.save()
    return results


def plain_rankings(sets: Sets, cache: FeatureCache, depth: int) -> dict[str, list[tuple[str, float]]]:
    """Every query's best ``depth`` library pictures by cosine: (key, score), best first."""
    lib_keys = list(sets.library)
    lib_vectors = np.stack([cache.get(sets.library[k])[0] for k in lib_keys])
    rankings = {}
    for key, data in sets.queries.items():
        scores = lib_vectors @ cache.get(data)[0]
        rankings[key] = [(lib_keys[i], float(scores[i])) for i in np.argsort(-scores)[:depth]]
    return rankings


@dataclass
class QueryCost:
    """CPU milliseconds of one query's same-picture work, every part timed on that same query."""

    extract: float  # decode + local features of the query (the daemon's query side)
    check: float  # service.judge over the first decision.DEPTH candidates
    deep: float | None  # service.judge under the deep floors, candidates down to DEEP_DEPTH (None: not run)

    @property
    def first_only(self) -> float:
        """The extraction and the check of the first candidates (what a search paid before
        ``same_picture`` screened deeper)."""
        return self.extract + self.check

    @property
    def searched(self) -> float:
        """What a ``same_picture`` or promoted search adds: the same, plus the deeper screen when
        it runs."""
        return self.first_only + (self.deep or 0.0)


def search_costs(
    sets: Sets, cache: FeatureCache, rankings: dict[str, list[tuple[str, float]]], count: int
) -> list[QueryCost]:
    """Per query, the CPU time of each part of the daemon's same-picture work, all on the same
    query, for ``count`` queries (positives and negatives alike): its extraction, done afresh
    exactly as search does it (decode, :func:`local_features.extract_query`), then
    :func:`service.judge` over its first candidates with those very features and, when none is
    confirmed, over the rest down to ``DEEP_DEPTH`` under the deep floors (promotion).
    Percentiles are taken of the per-query sums, never summed from the parts' percentiles."""
    keys = random.Random(5).sample(sorted(sets.queries), min(count, len(sets.queries)))
    costs = []
    for key in keys:
        began = time.thread_time()
        picture = decode(sets.queries[key], LIMITS, local_features.WORKING_SIDE)
        query = service.QueryFeatures(local_features.extract_query(picture))
        extracted = time.thread_time()
        first = rankings[key][: decision.DEPTH]
        verdicts = service.judge(query, first, {k: cache.stored(sets.library[k]) for k, _ in first})
        checked = time.thread_time()
        deep = None
        deeper = rankings[key][decision.DEPTH : decision.DEEP_DEPTH]
        if deeper and not any(v.same for v in verdicts):
            stored = {k: cache.stored(sets.library[k]) for k, _ in deeper}
            began_deep = time.thread_time()
            service.judge(query, deeper, stored, decision.DEEP)
            deep = 1000 * (time.thread_time() - began_deep)
        costs.append(QueryCost(1000 * (extracted - began), 1000 * (checked - extracted), deep))
    return costs


@dataclass
class Promotion:
    """One query searched with promotion as the daemon runs it (search/promotion.py)."""

    top_first: str | None  # first hit when only the first DEPTH candidates are checked
    top_deep: str | None  # first hit with the deeper screen (the default)
    confirmed_first: bool  # a candidate among the first DEPTH was confirmed
    confirmed_deep: bool  # ... or, with the deeper screen, one down to DEEP_DEPTH
    deep_ran: bool  # the deeper screen ran (none of the first DEPTH confirmed)
    deep_ms: float | None  # its CPU time
    by_score: bool  # a confirmed candidate was judged by the score fallback (too few keypoints)
    #: The candidates confirmed with the deeper screen: what a ``same_picture`` search answers.
    same: frozenset[str] = frozenset()


def promote_queries(
    sets: Sets, cache: FeatureCache, queries: QueryCache, rankings: dict[str, list[tuple[str, float]]]
) -> dict[str, Promotion]:
    """Every query through the daemon's promotion code: :func:`service.judge` over the plain
    ranking's first ``DEPTH`` candidates, and over the rest down to ``DEEP_DEPTH`` under the deep
    floors (:data:`decision.DEEP`) when none of those is confirmed; the confirmed ones moved to
    the top by :func:`same_search.search.promotion.promoted`. The query's features are the
    daemon's query side."""
    out = {}
    for number, (key, data) in enumerate(sets.queries.items()):
        query = service.QueryFeatures(queries.get(data))
        ranking = rankings[key]
        first, deeper = ranking[: decision.DEPTH], ranking[decision.DEPTH : decision.DEEP_DEPTH]
        stored = {k: cache.stored(sets.library[k]) for k, _ in ranking}
        confirmed = [v for v in service.judge(query, first, stored) if v.same]
        by_score = any(v.evidence is None for v in confirmed)
        top_first = promotion.promoted(ranking, confirmed)[0][0] if ranking else None
        deep_ms, deep_confirmed = None, confirmed
        if deeper and not confirmed:
            began = time.thread_time()
            verdicts = service.judge(query, deeper, stored, decision.DEEP)
            deep_ms = 1000 * (time.thread_time() - began)
            deep_confirmed = [v for v in verdicts if v.same]
        top_deep = promotion.promoted(ranking, deep_confirmed)[0][0] if ranking else None
        out[key] = Promotion(
            top_first,
            top_deep,
            bool(confirmed),
            bool(deep_confirmed),
            deep_ms is not None,
            deep_ms,
            by_score,
            frozenset(v.key for v in deep_confirmed),
        )
        if (number + 1) % 500 == 0:
            log(f"  promotion: {number + 1}/{len(sets.queries)} queries")
    return out


def promotion_section(sets: Sets, promoted: dict[str, Promotion], rankings, args) -> list[str]:
    """Recall@1 of the edited copies with promotion, first DEPTH only against screened to
    DEEP_DEPTH (the default), per edit; the look-alikes promoted; the deeper screen's cost."""
    positives, negatives = main_sets(sets)
    rows = []
    for edit in [*hard_edits.STRONG_EDITS, None]:
        members = [k for k in positives if edit is None or sets.kind[k] == edit]
        ceiling = np.mean([any(c in sets.truth[k] for c, _ in rankings[k]) for k in members])
        rows.append(
            [
                edit or "**all strong edits**",
                str(len(members)),
                f"{np.mean([rankings[k][0][0] in sets.truth[k] for k in members]):.3f}",
                f"{np.mean([promoted[k].top_first in sets.truth[k] for k in members]):.3f}",
                f"{np.mean([promoted[k].top_deep in sets.truth[k] for k in members]):.3f}",
                f"{ceiling:.3f}",
            ]
        )
    lookalikes_first = sum(promoted[k].confirmed_first for k in negatives)
    lookalikes_deep = sum(promoted[k].confirmed_deep for k in negatives)
    rows.append(
        [
            f"look-alike negatives with a hit promoted (of {len(negatives)})",
            str(len(negatives)),
            "-",
            f"{lookalikes_first} ({lookalikes_first / max(1, len(negatives)):.1%})",
            f"{lookalikes_deep} ({lookalikes_deep / max(1, len(negatives)):.1%})",
            "-",
        ]
    )
    measured = positives + negatives
    ran = [promoted[k].deep_ms for k in measured if promoted[k].deep_ran]
    fallback = [k for k in negatives if promoted[k].by_score]
    cost = (
        f"median {np.median(ran):.1f} ms, p95 {np.percentile(ran, 95):.1f} ms of CPU (one thread)"
        if ran
        else "never ran"
    )
    return [
        f"## Promotion as the daemon runs it: the first {decision.DEPTH} checked, then screened to "
        f"{decision.DEEP_DEPTH}",
        "",
        f"Every query through the daemon's code (`service.judge` over the plain ranking's first "
        f"{decision.DEPTH}, then `service.judge` under the deep floors over candidates "
        f"{decision.DEPTH + 1} to "
        f"{decision.DEEP_DEPTH} when none of those is confirmed; `promotion.promoted` orders the "
        "page), query side as the daemon extracts it. Recall@1 of the edited copy's original; the "
        f"last column is the ceiling: the original among the {decision.DEEP_DEPTH} best by score.",
        "",
        markdown_table(
            [
                "edit",
                "queries",
                "R@1 by score",
                f"promoted, first {decision.DEPTH} only",
                f"promoted, screened to {decision.DEEP_DEPTH} (the default)",
                f"original in top {decision.DEEP_DEPTH}",
            ],
            rows,
        ),
        "",
        f"- the deeper screen ran for {len(ran)} of {len(measured)} queries (those whose first "
        f"{decision.DEPTH} hold no confirmed copy): {cost}",
        f"- look-alikes promoted by the score fallback (a side with fewer than {decision.WEAK_INLIERS} "
        f"keypoints is judged by score >= {decision.FALLBACK_SCORE}, as the daemon does): {len(fallback)}"
        + (f" ({', '.join(sorted(fallback))})" if fallback else ""),
        "",
    ]


def outcome(sets: Sets, results: dict[str, list[Candidate]], judge) -> dict[str, tuple[bool, bool]]:
    """query -> (said same picture, right): right means every judged hit is the query's picture."""
    out = {}
    for key, candidates in results.items():
        judged = {c.key for c in candidates if judge(c)}
        out[key] = (bool(judged), bool(judged) and judged <= sets.truth[key])
    return out


def main_sets(sets: Sets) -> tuple[list[str], list[str]]:
    """Positives (edited copies) and negatives (look-alikes) of the headline figures."""
    positives = [k for k in sets.queries if sets.kind[k] in hard_edits.STRONG_EDITS]
    negatives = [k for k in sets.queries if sets.kind[k].startswith("neg:")]
    return positives, negatives


def halved(sets: Sets, said: dict[str, tuple[bool, bool]], which: int) -> tuple[float, float, int]:
    """:func:`precision_recall` over the queries of one :func:`half`."""
    return precision_recall(sets, said, which)


def precision_recall(
    sets: Sets, said: dict[str, tuple[bool, bool]], which: int | None = None
) -> tuple[float, float, int]:
    """Precision, recall and false positives over the edited copies and look-alike negatives (of
    one :func:`half` when ``which`` is given)."""
    positives, negatives = main_sets(sets)
    if which is not None:
        positives = [k for k in positives if half(k) == which]
        negatives = [k for k in negatives if half(k) == which]
    true_pos = sum(said[k][1] for k in positives)
    false_pos = sum(1 for k in positives + negatives if said[k][0] and not said[k][1])
    return true_pos / max(1, true_pos + false_pos), true_pos / max(1, len(positives)), false_pos


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub-flavoured markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join([":---"] + ["---:"] * (len(header) - 1)) + "|"]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def bare_score_rows(sets: Sets, results: dict[str, list[Candidate]]) -> list[list[str]]:
    """Precision and recall of "the best hit scores >= t" (min_score as a same-picture test)."""
    rows = []
    for threshold in (0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95):
        said = {
            k: (c[0].score >= threshold, c[0].score >= threshold and c[0].key in sets.truth[k])
            for k, c in results.items()
        }
        p, r, fp = precision_recall(sets, said)
        rows.append([f"{threshold:.2f}", f"{p:.3f}", f"{r:.3f}", str(fp)])
    return rows


def extraction_ms(images: dict[str, bytes], extractions: dict[str, Callable], count: int = 100) -> dict:
    """CPU milliseconds to decode a picture and extract its local features, for each way of
    extracting, taken in turn on the same pictures (so that load hits them alike)."""
    keys = random.Random(7).sample(sorted(images), min(count, len(images)))
    out: dict[str, list[float]] = {name: [] for name in extractions}
    for key in keys:
        for name, extract in extractions.items():
            began = time.thread_time()
            extract(decode(images[key], LIMITS, local_features.WORKING_SIDE))
            out[name].append(1000 * (time.thread_time() - began))
    return out


# --------------------------------------------------------------------------------------------
# Variants: query sides and rules, with the rule's fit on one half of the originals
# --------------------------------------------------------------------------------------------


def previous_rule(score: float, evidence: matching.Evidence) -> bool:
    """The rule before the inlier-ratio tier (2026-11-26 morning)."""
    if evidence.coverage < decision.MIN_COVERAGE:
        return False
    return evidence.inliers >= 15 or (evidence.inliers >= 8 and score >= 0.80)


def tiered_rule(inliers: int, ratio: float, coverage: float):
    """The daemon's rule with its inlier-ratio tier set to (inliers, ratio, coverage)."""

    def rule(score: float, evidence: matching.Evidence) -> bool:
        if evidence.coverage < decision.MIN_COVERAGE:
            return False
        if evidence.inliers >= decision.STRONG_INLIERS:
            return True
        if evidence.inliers >= decision.WEAK_INLIERS and score >= decision.WEAK_SCORE:
            return True
        clean = evidence.inliers >= ratio * evidence.matches and evidence.coverage >= coverage
        return evidence.inliers >= inliers and clean

    return rule


RULES = {
    "this rule (decision.py)": decision.is_same_picture,
    "previous rule: >= 15 inliers, or >= 8 with score >= 0.80": previous_rule,
    "inliers >= 12 alone": lambda _, e: e.coverage >= decision.MIN_COVERAGE and e.inliers >= 12,
}
#: The grid the inlier-ratio tier was chosen from: (inliers, ratio, coverage).
TIER_GRID = [(n, r, c) for n in (5, 6, 7, 8, 10) for r in (0.5, 0.6, 0.7, 0.8) for c in (0.05, 0.1)]
#: Recall on the fit half that the fitted tier may give up for a stricter setting.
FIT_TOLERANCE = 0.005
#: Edits reported by name in the variants table (the weakest before this rule).
WEAK_EDITS = ("blur3", "blur4", "crop40-quarter-q50", "sticker30")


def half(key: str) -> int:
    """0 or 1: the half of the originals (for edited copies) or of the negatives a query is in."""
    return zlib.crc32(key.split("#")[0].encode()) % 2


def scored(sets: Sets, results: dict[str, list[Candidate]], rule, which: int | None = None) -> dict:
    """Precision, recall, false positives and recall per edit of ``rule``, over one half or all."""
    chosen = {k: v for k, v in results.items() if which is None or half(k) == which}
    said = outcome(sets, chosen, lambda c: c.same(rule))
    positives, negatives = main_sets(sets)
    positives = [k for k in positives if k in chosen]
    true_pos = sum(said[k][1] for k in positives)
    false_pos = sum(
        1 for k in positives + [k for k in negatives if k in chosen] if said[k][0] and not said[k][1]
    )
    per_edit = {
        edit: float(np.mean([said[k][1] for k in positives if sets.kind[k] == edit]))
        for edit in hard_edits.STRONG_EDITS
        if any(sets.kind[k] == edit for k in positives)
    }
    return {
        "precision": true_pos / max(1, true_pos + false_pos),
        "recall": true_pos / max(1, len(positives)),
        "fp": false_pos,
        "edits": per_edit,
    }


def fit_tier(sets: Sets, results: dict[str, list[Candidate]]) -> list[list[str]]:
    """The inlier-ratio tier fitted on half 0, then reported on half 1; the daemon's beside it.

    Among the settings with no more false positives than the previous rule on half 0, the
    strictest (most inliers, then the highest ratio, then the most coverage) whose recall there is
    within :data:`FIT_TOLERANCE` of the best: a point of recall on the development photos is not
    worth a looser rule on photos nobody tuned for.
    """
    allowed = scored(sets, results, previous_rule, 0)["fp"]
    fits = {tier: scored(sets, results, tiered_rule(*tier), 0) for tier in TIER_GRID}
    fits = {tier: fit for tier, fit in fits.items() if fit["fp"] <= allowed}
    if not fits:  # the grid's tiers lack the region veto: on catalogue look-alikes none is as strict
        return [["none fitted", f"no setting has at most {allowed} false positives on half 0", "", ""]]
    best = max(fit["recall"] for fit in fits.values())
    close = sorted((t for t, fit in fits.items() if fit["recall"] >= best - FIT_TOLERANCE), reverse=True)
    by_recall = sorted(fits, key=lambda t: -fits[t]["recall"])
    chosen = (decision.WEAK_INLIERS, decision.MIN_INLIER_RATIO, decision.CLEAN_COVERAGE)
    rows = []
    shown = [("fitted (the strictest close to the best)", close[0]), ("the daemon's (decision.py)", chosen)]
    shown += [("highest recall on the fit half", t) for t in by_recall[:3]]
    for label, tier in shown:
        fit, held = scored(sets, results, tiered_rule(*tier), 0), scored(sets, results, tiered_rule(*tier), 1)
        rows.append(
            [
                label,
                f"inliers >= {tier[0]}, ratio >= {tier[1]}, coverage >= {tier[2]}",
                f"{fit['precision']:.3f} / {fit['recall']:.3f} / {fit['fp']}",
                f"{held['precision']:.3f} / {held['recall']:.3f} / {held['fp']}",
            ]
        )
    previous = [scored(sets, results, previous_rule, which) for which in (0, 1)]
    rows.append(
        ["previous rule", "-"] + [f"{p['precision']:.3f} / {p['recall']:.3f} / {p['fp']}" for p in previous]
    )
    return rows


def variant_section(sets: Sets, variants: dict[QueryVariant, dict[str, list[Candidate]]], args) -> list[str]:
    """Every query side measured, under each rule; then the rule's fit on half the originals."""
    rows = []
    for variant, results in variants.items():
        for name, rule in RULES.items():
            every = scored(sets, results, rule)
            held = scored(sets, results, rule, 1)
            worst = min(every["edits"], key=every["edits"].get)
            rows.append(
                [variant.name, name, f"{every['precision']:.3f}", f"{every['recall']:.3f}", str(every["fp"])]
                + [f"{held['precision']:.3f} / {held['recall']:.3f}"]
                + [f"{every['edits'].get(e, float('nan')):.3f}" for e in WEAK_EDITS]
                + [f"{worst} {every['edits'][worst]:.3f}"]
            )
    header = [
        "query side",
        "rule",
        "precision",
        "recall",
        "FP",
        "held-out half P / R",
        *WEAK_EDITS,
        "worst edit",
    ]
    return [
        "## Variants: the query's local features and the rule",
        "",
        "Every query side against the same stored features (extracted as always). Held-out half: the "
        "queries whose original (or, for negatives, whose own name) hashes to half 1; the rule's "
        "inlier-ratio tier was fitted on half 0 only (next table).",
        "",
        markdown_table(header, rows),
        "",
        "### The inlier-ratio tier, fitted on one half of the originals",
        "",
        f"Grid: {len(TIER_GRID)} settings of (inliers, ratio, coverage). Among those with no more false "
        "positives than the previous rule on half 0, the strictest whose recall there is within "
        f"{FIT_TOLERANCE} of the best. Precision / recall / false positives:",
        "",
        markdown_table(
            ["tier", "setting", "fit half (0)", "held-out half (1)"], fit_tier(sets, variants[DAEMON_QUERY])
        ),
        "",
    ]


def rank_one(sets: Sets, results: dict[str, list[Candidate]], promote: bool) -> dict[str, bool]:
    """Positive query -> whether its original is the top hit: by score alone, or (``promote``)
    with the candidates the same-picture check confirms moved ahead of the rest (best score
    first among them), as search would do if it promoted verified hits."""
    positives, _ = main_sets(sets)
    top = {}
    for key in positives:
        candidates = results[key]
        if promote:
            confirmed = [c for c in candidates if c.same()]
            candidates = confirmed + [c for c in candidates if c not in confirmed]
        top[key] = bool(candidates) and candidates[0].key in sets.truth[key]
    return top


def rank_one_rows(sets: Sets, results: dict[str, list[Candidate]]) -> list[list[str]]:
    """Recall@1 per strong edit, by score and with verified candidates promoted."""
    positives, _ = main_sets(sets)
    plain, promoted = rank_one(sets, results, False), rank_one(sets, results, True)
    rows = []
    for edit in [*hard_edits.STRONG_EDITS, None]:
        members = [k for k in positives if edit is None or sets.kind[k] == edit]
        in_depth = np.mean([any(c.key in sets.truth[k] for c in results[k]) for k in members])
        rows.append(
            [
                edit or "**all strong edits**",
                str(len(members)),
                f"{np.mean([plain[k] for k in members]):.3f}",
                f"{np.mean([promoted[k] for k in members]):.3f}",
                f"{in_depth:.3f}",
            ]
        )
    return rows


#: Near-duplicate floors measured with the same-picture check behind them.
FLOORS = (0.95, 0.90, 0.85, 0.80, 0.70, 0.60, 0.50)


def floor_rows(sets: Sets, results: dict[str, list[Candidate]]) -> list[list[str]]:
    """The near-duplicate policy on add at each floor: a candidate is a near-duplicate when its
    score reaches the floor and the same-picture check confirms it (the policy's rule), over the
    verified candidates; precision and recall as for same_picture."""
    rows = []
    for floor in FLOORS:
        judge = lambda c, f=floor: c.score >= f and c.same()  # noqa: E731
        precision, recall, false_pos = precision_recall(sets, outcome(sets, results, judge))
        bare = lambda c, f=floor: c.score >= f  # noqa: E731
        b_precision, b_recall, b_false = precision_recall(sets, outcome(sets, results, bare))
        rows.append(
            [
                f"{floor:.2f}",
                f"{precision:.3f}",
                f"{recall:.3f}",
                str(false_pos),
                f"{b_precision:.3f} / {b_recall:.3f} / {b_false}",
            ]
        )
    return rows


def report(
    sets: Sets,
    variants: dict[QueryVariant, dict[str, list[Candidate]]],
    cache: FeatureCache,
    queries: QueryCache,
    args,
    started: float,
) -> str:
    """The markdown report."""
    results = variants[DAEMON_QUERY]
    positives, negatives = main_sets(sets)
    said = outcome(sets, results, Candidate.same)
    rankings = plain_rankings(sets, cache, decision.DEEP_DEPTH)
    promoted = promote_queries(sets, cache, queries, rankings)
    answered = {k: (bool(p.same), bool(p.same) and p.same <= sets.truth[k]) for k, p in promoted.items()}
    precision, recall, false_pos = precision_recall(sets, answered)
    first_only = precision_recall(sets, said)
    lines = [
        "# Same picture: verification against a bare score threshold (harder protocol)",
        "",
        f"- date: {dt.datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"- machine: {common.machine()} (at the end of the run)",
        f"- command: `{' '.join(['.venv/bin/python', 'bench/eval_same_picture.py', *sys.argv[1:]])}`",
        f"- model: efficientnet_lite0 ({cache.embedder.info.fingerprint}), forward passes in "
        f'{cache.embedder.plan.precision} (`precision = "auto"` on this machine; another choice '
        "moves the vectors slightly, and the figures with them)",
        f"- library: {len(sets.library)} pictures; queries: {len(positives)} edited copies, "
        f"{len(negatives)} look-alike negatives (sample {args.sample:g}); {args.depth} candidates verified",
        f"- local features: RootSIFT, longer side {local_features.WORKING_SIDE} px, at most "
        f"{local_features.MAX_KEYPOINTS} keypoints (stored: SIFT contrast threshold 0.04; queries: "
        f"{local_features.QUERY_CONTRAST}); run time RUN_TIME",
        "",
        "## The decision at its operating point",
        "",
        f"`same_picture` as the daemon answers it (`service.judge` over the first {decision.DEPTH} "
        f"candidates, the coarse keypoints ({local_features.COARSE_SIDE} px) matched where the "
        f"working ones do not confirm; when none is confirmed, over candidates {decision.DEPTH + 1}-"
        f"{decision.DEEP_DEPTH} under the deep floors; a side with too few keypoints judged by its "
        f"score): **precision {precision:.3f}, recall {recall:.3f}** ({false_pos} false positives; "
        f"rule: {decision.RULE}). Before (the working keypoints of the first {decision.DEPTH} "
        f"only, no score fallback): precision {first_only[0]:.3f}, recall {first_only[1]:.3f} "
        f"({first_only[2]} false positives).",
        "",
        "By half of the originals (and of the negatives; `half()`): "
        + "; ".join(
            "half {}: P {:.3f}, R {:.3f}, FP {}".format(which, *halved(sets, answered, which))
            for which in (0, 1)
        ),
        "",
    ]
    rows = []
    for edit in hard_edits.STRONG_EDITS:
        members = [k for k in positives if sets.kind[k] == edit]
        rows.append(
            [
                edit,
                f"recall {np.mean([said[k][1] for k in members]):.3f} ({len(members)})",
                f"recall {np.mean([answered[k][1] for k in members]):.3f}",
            ]
        )
    kinds = dict.fromkeys(sets.kind[k] for k in sets.queries if sets.kind[k] not in hard_edits.STRONG_EDITS)
    for kind in kinds:
        members = [k for k in sets.queries if sets.kind[k] == kind]
        rows.append(
            [
                kind,
                f"{sum(said[k][0] for k in members)} of {len(members)} said same",
                f"{sum(answered[k][0] for k in members)} said same",
            ]
        )
    header = [
        "edit / negative kind",
        f"before: working keypoints, first {decision.DEPTH} only",
        f"the daemon: coarse look, then screened to {decision.DEEP_DEPTH}",
    ]
    lines += [markdown_table(header, rows), ""]
    lines += [
        "## Near-duplicate recall@1: score alone, and verified candidates promoted to the top",
        "",
        f"Recall@1 of the edited copies (the original is the first hit). Promoted: the candidates among "
        f"the {args.depth} best that the same-picture check confirms come first. The last column is the "
        f"ceiling: the original is among the {args.depth} candidates at all.",
        "",
        markdown_table(
            ["edit", "queries", "R@1 by score", "R@1 promoted", f"original in top {args.depth}"],
            rank_one_rows(sets, results),
        ),
        "",
    ]
    lines += [
        "## Near-duplicate floor on add, with the same-picture check behind it",
        "",
        f"Over the {args.depth} best candidates (the policy looks at 32; a floor below the 10th score "
        "could find a few more in the daemon).",
        "",
        markdown_table(
            ["dup_min_score", "precision", "recall", "false positives", "floor alone: P / R / FP"],
            floor_rows(sets, results),
        ),
        "",
    ]
    lines += ["## Bare score of the best hit, for comparison", ""]
    header = ["min_score", "precision", "recall", "false positives"]
    lines += [markdown_table(header, bare_score_rows(sets, results)), ""]
    on_add = extraction_ms(
        sets.library, {"before": local_features.extract, "stored": local_features.extract_stored}
    )
    on_query = extraction_ms(
        sets.queries, {"previous query": local_features.extract, "query": local_features.extract_query}
    )
    costs = search_costs(sets, cache, rankings, args.cost_queries)
    sizes = [len(cache.stored(v)) for v in sets.library.values()]
    lines += variant_section(sets, variants, args)
    lines += promotion_section(sets, promoted, rankings, args)

    def spread(values: Sequence[float]) -> list[str]:
        return [f"{np.median(values):.1f}", f"{np.percentile(values, 95):.1f}", f"{max(values):.1f}"]

    deep = [c.deep for c in costs if c.deep is not None]
    rows = [
        [
            "decode + local features of the query (the daemon's query side)",
            *spread([c.extract for c in costs]),
        ],
        [
            f"check of the first {decision.DEPTH} candidates (`service.judge`, mirror where needed)",
            *spread([c.check for c in costs]),
        ],
        [
            f"extraction + check of the first {decision.DEPTH} only, summed per query",
            *spread([c.first_only for c in costs]),
        ],
        [
            f"screen of candidates {decision.DEPTH + 1}-{decision.DEEP_DEPTH} "
            "(`service.judge` under the deep floors), "
            f"where it ran ({len(deep)} of {len(costs)} queries)",
            *(spread(deep) if deep else ["-", "-", "-"]),
        ],
        [
            "**extra per `same_picture` or promoted search: extraction + check + screen where it "
            "ran, summed per query**",
            *spread([c.searched for c in costs]),
        ],
    ]
    lines += [
        "## Cost (CPU time of one thread)",
        "",
        f"{len(costs)} queries (edited copies and look-alikes alike), each part timed on the same query "
        "in turn, so every percentile of a sum is a percentile of the per-query sums. CPU time of the "
        "thread, not wall time: other load on the machine inflates it less, though not to nothing "
        "(the machine line above gives the load).",
        "",
        markdown_table(["ms of CPU per query", "median", "p95", "max"], rows),
        "",
        f"- decode + local features of a picture on add (working and coarse keypoints), taken in "
        f"turn with the working ones alone (what an add extracted before) on the same "
        f"{len(on_add['stored'])} pictures: median {np.median(on_add['stored']):.1f} against "
        f"{np.median(on_add['before']):.1f} ms, p95 {np.percentile(on_add['stored'], 95):.1f} against "
        f"{np.percentile(on_add['before'], 95):.1f} ms",
        f"- the query side against the previous one (the stored form), taken in turn on the same "
        f"{len(on_query['query'])} pictures: median {np.median(on_query['query']):.1f} against "
        f"{np.median(on_query['previous query']):.1f} ms, p95 {np.percentile(on_query['query'], 95):.1f} "
        f"against {np.percentile(on_query['previous query'], 95):.1f} ms",
        f"- stored per item: mean {np.mean(sizes) / 1024:.1f} KiB, max {max(sizes) / 1024:.1f} KiB",
        "",
        "## Highest-scoring negatives (check the ground truth before counting them)",
        "",
    ]
    worst = sorted(negatives, key=lambda k: -results[k][0].score)[:12]
    rows = [
        [
            k,
            results[k][0].key,
            f"{results[k][0].score:.3f}",
            str(results[k][0].evidence.inliers),
            str(said[k][0]),
        ]
        for k in worst
    ]
    lines += [markdown_table(["negative", "best hit", "score", "inliers", "said same"], rows), ""]
    return "\n".join(lines).replace("RUN_TIME", f"{(time.perf_counter() - started) / 60:.1f} min", 1)


def log(message: str) -> None:
    """Progress on stderr."""
    print(message, file=sys.stderr, flush=True)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=DATA_DIR)
    parser.add_argument(
        "--imagenet", type=int, default=300, help="ImageNet photos in the library (and as negatives)"
    )
    parser.add_argument("--products", type=int, default=4, help="product shots per class in the library")
    parser.add_argument("--originals", type=int, default=60, help="edited originals per source (x sample)")
    parser.add_argument(
        "--textures",
        type=int,
        default=40,
        help="fabrics of each texture kind in the library (and as negatives)",
    )
    parser.add_argument(
        "--catalogue",
        type=int,
        default=25,
        help="catalogue look-alike families of each kind (label, print, logo, studio); 0: none",
    )
    parser.add_argument(
        "--catalogue-originals",
        type=int,
        default=10,
        help="catalogue families per kind whose stored shot is edited",
    )
    parser.add_argument("--sample", type=float, default=1.0, help="fraction of queries to use")
    parser.add_argument("--depth", type=int, default=decision.DEPTH, help="candidates verified per query")
    parser.add_argument("--cache-dir", type=Path, default=Path("/tmp/same_search-eval-cache"))
    parser.add_argument(
        "--variants", action="store_true", help="also measure the query-side variants that were not chosen"
    )
    parser.add_argument(
        "--cost-queries", type=int, default=300, help="queries whose same-picture work is timed part by part"
    )
    parser.add_argument("--records", type=Path, default=None, help="pickle the per-candidate evidence here")
    parser.add_argument("--out", default=str(REPO_ROOT / "bench" / "same_picture_results.md"))
    return parser.parse_args(argv)


class _SetsUnpickler(pickle.Unpickler):
    """Reads a cached :class:`Sets` whichever script pickled it (run as ``__main__`` or imported)."""

    def find_class(self, module: str, name: str) -> type:
        return Sets if name == "Sets" else super().find_class(module, name)


def cached_sets(data_dir: Path, args: argparse.Namespace) -> Sets:
    """The protocol's sets, from the cache when an earlier run built them with these settings."""
    parts = (
        f"{args.sample:g}",
        args.imagenet,
        args.products,
        args.originals,
        args.textures,
        hard_edits.VERSION,
    )
    settings = "-".join(map(str, parts))
    sets_path = args.cache_dir / f"same_picture-sets-{settings}.pkl" if args.cache_dir else None
    if sets_path and sets_path.exists():
        sets = _SetsUnpickler(io.BytesIO(sets_path.read_bytes())).load()
        assign_truth(sets)
    else:
        sets = build_sets(data_dir, args)
        if sets_path:
            sets_path.parent.mkdir(parents=True, exist_ok=True)
            sets_path.write_bytes(pickle.dumps(sets))
    if args.catalogue:
        add_catalogue(sets, cached_catalogue(data_dir, args))
    return sets


def cached_catalogue(data_dir: Path, args: argparse.Namespace) -> Sets:
    """The catalogue look-alikes (:func:`build_catalogue`), from the cache when built before."""
    parts = (f"{args.sample:g}", args.catalogue, args.catalogue_originals, catalogue_lookalikes.VERSION)
    path = (
        args.cache_dir / f"same_picture-catalogue-{'-'.join(map(str, parts))}.pkl" if args.cache_dir else None
    )
    if path and path.exists():
        return _SetsUnpickler(io.BytesIO(path.read_bytes())).load()
    catalogue = build_catalogue(data_dir, args)
    if path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(pickle.dumps(catalogue))
    return catalogue


#: ImageNet photos from this one on are the catalogue's (the rest of the protocol uses the first
#: 2 x ``--imagenet``, 600 by default).
CATALOGUE_PHOTOS = 600


def build_catalogue(data_dir: Path, args: argparse.Namespace) -> Sets:
    """Catalogue look-alikes (bench/catalogue_lookalikes.py): ``--catalogue`` families of each
    kind, their stored members in the library and the others as negatives (the sampled share of
    them), and the strong edits of the first stored member of the first
    ``--catalogue-originals`` families of each kind as positives."""
    photos = sorted((data_dir / "imagenet-samples").glob("*.JPEG"))[CATALOGUE_PHOTOS:]
    sets, rng = Sets(), random.Random(29)
    for fam in catalogue_lookalikes.families(photos, args.catalogue):
        name = f"catalogue/{fam.kind}/{fam.number}"
        for number, picture in enumerate(fam.stored):
            sets.library[f"{name}/stored{number}"] = jpeg_bytes(picture, 92)
        for number, picture in enumerate(fam.asked):
            if rng.random() < args.sample:
                key = f"{name}/asked{number}"
                sets.queries[key] = jpeg_bytes(picture, 92)
                sets.kind[key] = f"neg: catalogue {fam.kind}"
        if fam.number < round(args.catalogue_originals * args.sample):
            original = decode(sets.library[f"{name}/stored0"], LIMITS, FULL_RES)
            for edit_number, (edit, (function, quality)) in enumerate(hard_edits.STRONG_EDITS.items()):
                edited = function(original, random.Random(fam.number * 7919 + edit_number))
                if accepted(edited.size):
                    key = f"{name}/stored0#{edit}"
                    sets.queries[key] = jpeg_bytes(edited, quality)
                    sets.kind[key] = edit
    return sets


def add_catalogue(sets: Sets, catalogue: Sets) -> None:
    """Merge the catalogue look-alikes into the protocol's sets (an edit's truth is its original;
    a catalogue negative's is nothing: no picture of its family is an edit of another)."""
    sets.library.update(catalogue.library)
    sets.queries.update(catalogue.queries)
    sets.kind.update(catalogue.kind)
    for key in catalogue.queries:
        sets.truth[key] = frozenset([key.split("#")[0]]) if "#" in key else frozenset()


def main(argv: Sequence[str] | None = None) -> int:
    """Build the sets, embed and extract (cached), verify, report."""
    args = parse_args(argv)
    data_dir = args.data_dir.resolve()
    if not (data_dir / "caltech101-dev").is_dir() or not (data_dir / "imagenet-samples").is_dir():
        print(f"skipping: reference data not found under {data_dir}")
        return 0
    started = time.perf_counter()
    import torch

    torch.set_num_threads(1)
    embedder = Embedder(ModelConfig(name="efficientnet_lite0"))
    sets = cached_sets(data_dir, args)
    log(f"library {len(sets.library)}, queries {len(sets.queries)} ({time.perf_counter() - started:.0f}s)")
    cache = FeatureCache(embedder, args.cache_dir)
    cache.ensure(sets.library, "library")
    cache.ensure(sets.queries, "queries")
    measured = QUERY_VARIANTS if args.variants else (STORED_FORM, DAEMON_QUERY)
    variants, daemon_queries = {}, None
    for variant in measured:
        queries = QueryCache(variant, cache, args.cache_dir)
        variants[variant] = verify_queries(sets, cache, queries, args.depth)
        cache.coarse.save()
        daemon_queries = queries if variant is DAEMON_QUERY else daemon_queries
    if args.records:
        args.records.write_bytes(pickle.dumps((sets.truth, sets.kind, variants)))
    text = report(sets, variants, cache, daemon_queries, args, started)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

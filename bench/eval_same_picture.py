"""The same-picture decision on a hard development protocol, against a bare score threshold.

"Is this query an edited copy of a stored picture, or merely a look-alike?" Library: half of
each ``caltech101-dev`` class, ``--imagenet`` ImageNet photos and product shots on white made
from Caltech photos (bench/hard_edits.py). Positives: strong edits of sampled library pictures
(a 50% crop at half size and JPEG 30, blur 3, rotation 20, a photo of a screen, a 30% sticker, a
mirrored crop, a logo, a screenshot). Negatives are look-alikes: the other photos of each
Caltech class (same class, different photo), product shots made from those photos (same class on
white), and further ImageNet photos; none of them is in the library.

Each query runs the daemon's own pipeline: the default embedder's vector, exact cosine search,
then :mod:`same_search.verify` on the top ``--depth`` candidates (the query's local features
against each candidate's, mirrored query included). A query "says same picture" when at least
one candidate is judged the same; it is right when the judged hits are exactly its original.

Vectors and local features are cached on disk per image content, keyed by the model's
fingerprint and the local-feature settings (``--cache-dir``), so a second run only re-scores.

Usage::

    nice -n 10 .venv/bin/python bench/eval_same_picture.py             # writes same_picture_results.md
    .venv/bin/python bench/eval_same_picture.py --sample 0.2 --out ''  # quick run, no file
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import io
import pickle
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
for _path in (REPO_ROOT, REPO_ROOT / "bench"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import hard_edits  # noqa: E402

from same_search.config import ModelConfig  # noqa: E402
from same_search.embed.embedder import Embedder  # noqa: E402
from same_search.embed.images import ImageLimits, decode  # noqa: E402
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


class FeatureCache:
    """Vector and local features of each picture, on disk by content (extraction timed in CPU time)."""

    def __init__(self, embedder: Embedder, cache_dir: Path | None) -> None:
        self.embedder = embedder
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
        return vector, local_features.LocalFeatures.from_bytes(stored)

    def stored(self, data: bytes) -> bytes:
        """The stored form of one picture's local features."""
        return self.entries[hashlib.sha1(data).hexdigest()][1]

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


@dataclass
class Candidate:
    """One of a query's top hits, with the verification's evidence."""

    key: str
    score: float
    evidence: matching.Evidence


def verify_queries(sets: Sets, cache: FeatureCache, depth: int) -> dict[str, list[Candidate]]:
    """Top ``depth`` hits of every query by cosine, each with the better of the direct and the
    mirrored query's evidence (the daemon skips the mirror when the direct check passes)."""
    lib_keys = list(sets.library)
    lib_vectors = np.stack([cache.get(sets.library[k])[0] for k in lib_keys])
    lib_features = {k: cache.get(sets.library[k])[1] for k in lib_keys}
    results: dict[str, list[Candidate]] = {}
    for number, (key, data) in enumerate(sets.queries.items()):
        vector, query = cache.get(data)
        scores = lib_vectors @ vector
        results[key] = [
            Candidate(lib_keys[i], float(scores[i]), matching.best_evidence(query, lib_features[lib_keys[i]]))
            for i in np.argsort(-scores)[:depth]
        ]
        if (number + 1) % 500 == 0:
            log(f"  verified {number + 1}/{len(sets.queries)} queries")
    return results


def judge_cost(
    sets: Sets, cache: FeatureCache, results: dict[str, list[Candidate]], count: int
) -> list[float]:
    """CPU seconds of the daemon's verification step (service.judge over the top candidates) for
    ``count`` queries, positives and negatives alike."""
    keys = random.Random(5).sample(list(results), min(count, len(results)))
    seconds = []
    for key in keys:
        query = service.QueryFeatures(cache.get(sets.queries[key])[1])
        candidates = [(c.key, c.score) for c in results[key]]
        stored = {c.key: cache.stored(sets.library[c.key]) for c in results[key]}
        began = time.thread_time()
        service.judge(query, candidates, stored)
        seconds.append(time.thread_time() - began)
    return seconds


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


def precision_recall(sets: Sets, said: dict[str, tuple[bool, bool]]) -> tuple[float, float, int]:
    """Precision, recall and false positives over the edited copies and look-alike negatives."""
    positives, negatives = main_sets(sets)
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


def extraction_ms(sets: Sets, count: int = 60) -> list[float]:
    """CPU milliseconds to decode a library picture and extract its local features."""
    keys = list(sets.library)[:: max(1, len(sets.library) // count)][:count]
    out = []
    for key in keys:
        began = time.thread_time()
        local_features.extract(decode(sets.library[key], LIMITS, local_features.WORKING_SIDE))
        out.append(1000 * (time.thread_time() - began))
    return out


def rank_one(sets: Sets, results: dict[str, list[Candidate]], promote: bool) -> dict[str, bool]:
    """Positive query -> whether its original is the top hit: by score alone, or (``promote``)
    with the candidates the same-picture check confirms moved ahead of the rest (best score
    first among them), as search would do if it promoted verified hits."""
    positives, _ = main_sets(sets)
    top = {}
    for key in positives:
        candidates = results[key]
        if promote:
            confirmed = [c for c in candidates if decision.is_same_picture(c.score, c.evidence)]
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
        judge = lambda c, f=floor: c.score >= f and decision.is_same_picture(c.score, c.evidence)  # noqa: E731
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


def report(sets: Sets, results: dict[str, list[Candidate]], cache: FeatureCache, args, elapsed: float) -> str:
    """The markdown report."""
    positives, negatives = main_sets(sets)
    judge = lambda c: decision.is_same_picture(c.score, c.evidence)  # noqa: E731
    said = outcome(sets, results, judge)
    precision, recall, false_pos = precision_recall(sets, said)
    lines = [
        "# Same picture: verification against a bare score threshold (harder protocol)",
        "",
        f"- date: {dt.datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"- library: {len(sets.library)} pictures; queries: {len(positives)} edited copies, "
        f"{len(negatives)} look-alike negatives (sample {args.sample:g}); {args.depth} candidates verified",
        f"- local features: RootSIFT, longer side {local_features.WORKING_SIDE} px, at most "
        f"{local_features.MAX_KEYPOINTS} keypoints; run time {elapsed / 60:.1f} min",
        "",
        "## The decision at its operating point",
        "",
        f"**precision {precision:.3f}, recall {recall:.3f}** ({false_pos} false positives; "
        f"rule: {decision.RULE})",
        "",
    ]
    rows = []
    for edit in hard_edits.STRONG_EDITS:
        members = [k for k in positives if sets.kind[k] == edit]
        rows.append([edit, f"recall {np.mean([said[k][1] for k in members]):.3f} ({len(members)})"])
    kinds = dict.fromkeys(sets.kind[k] for k in sets.queries if sets.kind[k] not in hard_edits.STRONG_EDITS)
    for kind in kinds:
        members = [k for k in sets.queries if sets.kind[k] == kind]
        rows.append([kind, f"{sum(said[k][0] for k in members)} of {len(members)} said same"])
    lines += [markdown_table(["edit / negative kind", "result"], rows), ""]
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
    extract = extraction_ms(sets)
    judging = [1000 * t for t in judge_cost(sets, cache, results, 300)]
    per_search = np.median(extract) + np.asarray(judging)
    sizes = [len(cache.stored(v)) for v in sets.library.values()]
    lines += [
        "## Cost (CPU time of one thread, so other load on the machine does not inflate it)",
        "",
        f"- decode + local features of one picture (on add, and per same_picture query): median "
        f"{np.median(extract):.1f} ms, p95 {np.percentile(extract, 95):.1f} ms",
        f"- verifying the {args.depth} candidates of one query (mirror tried where the direct check "
        f"fails): median {np.median(judging):.1f} ms, p95 {np.percentile(judging, 95):.1f} ms",
        f"- extra per same_picture search: median {np.median(per_search):.1f} ms, "
        f"p95 {np.percentile(per_search, 95):.1f} ms",
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
    return "\n".join(lines)


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
    parser.add_argument("--sample", type=float, default=1.0, help="fraction of queries to use")
    parser.add_argument("--depth", type=int, default=decision.DEPTH, help="candidates verified per query")
    parser.add_argument("--cache-dir", type=Path, default=Path("/tmp/same_search-eval-cache"))
    parser.add_argument("--records", type=Path, default=None, help="pickle the per-candidate evidence here")
    parser.add_argument("--out", default=str(REPO_ROOT / "bench" / "same_picture_results.md"))
    return parser.parse_args(argv)


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
    settings = "-".join(
        map(
            str,
            (
                f"{args.sample:g}",
                args.imagenet,
                args.products,
                args.originals,
                args.textures,
                hard_edits.VERSION,
            ),
        )
    )
    sets_path = args.cache_dir / f"same_picture-sets-{settings}.pkl" if args.cache_dir else None
    if sets_path and sets_path.exists():
        sets = pickle.loads(sets_path.read_bytes())
        assign_truth(sets)
    else:
        sets = build_sets(data_dir, args)
        if sets_path:
            sets_path.parent.mkdir(parents=True, exist_ok=True)
            sets_path.write_bytes(pickle.dumps(sets))
    log(f"library {len(sets.library)}, queries {len(sets.queries)} ({time.perf_counter() - started:.0f}s)")
    cache = FeatureCache(embedder, args.cache_dir)
    cache.ensure(sets.library, "library")
    cache.ensure(sets.queries, "queries")
    results = verify_queries(sets, cache, args.depth)
    if args.records:
        args.records.write_bytes(pickle.dumps((sets.truth, sets.kind, results)))
    text = report(sets, results, cache, args, time.perf_counter() - started)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

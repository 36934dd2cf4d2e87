"""The quality a client sees, measured from outside: the real daemon, over HTTP, in both rankings.

The other evaluations score the daemon's code in-process (fast, cached); this one starts
``python -m same_search`` with an empty config (every default) and asks it over HTTP, the way a
client written from the spec would, so what it reports is what a library delivers end to end in
each of its two rankings: the spec's order (the default) and re-ranked (the operator's choice,
``PUT /api/libraries/{appid}/ranking {"order": "reranked"}``), measured on one library whose
ranking is switched between the two passes.

- **Category** (``--category``): every ``caltech101-dev`` photo and the 1,000
  ``imagenet-samples`` photos are added; each Caltech photo searches by image (``rn`` 101, the
  photo's own stored copy dropped). P@10, mAP@100 and R@100 (relevant = same Caltech class).
- **Same picture** (``--same-picture``): the sets of ``bench/eval_same_picture.py`` (library with
  look-alikes; strong edits as positives; look-alikes that are not stored as negatives, built or
  read from its cache). Per query: a search in each ranking (recall@1 of the edited copy's
  original, per edit) and a ``same_picture: 1`` search (precision and recall of the decision).

Usage::

    nice -n 10 .venv/bin/python bench/eval_daemon.py            # both parts, prints the tables
"""

from __future__ import annotations

import argparse
import base64
import itertools
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import common  # puts the worktree's package first on sys.path
import eval_same_picture as same_picture
import numpy as np
from common import SHARED_DATA
from daemon import Daemon

APPID = "eval"
#: The two rankings a library can answer in, as the management API names them.
RANKINGS = {"score": "score (the default: descending score)", "reranked": "reranked (the library's choice)"}


def rank_by(daemon: Daemon, order: str) -> None:
    """Switch the library's ranking (``score`` or ``reranked``)."""
    answer = daemon.post("admin", f"/api/libraries/{APPID}/ranking", {"order": order})
    assert answer["err_no"] == 0, answer


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def key(contsign: dict) -> tuple[int, int]:
    return contsign["sign1"], contsign["sign2"]


def add_all(daemon: Daemon, pictures: dict[str, bytes], clients: int) -> dict[tuple[int, int], str]:
    """Add every picture (brief = its name); returns contsign -> name (duplicates share one)."""
    assert daemon.rts("signup", appid=APPID)["err_no"] == 0

    def add(item: tuple[str, bytes]) -> tuple[str, dict]:
        name, data = item
        brief = {"fea_id": 1000, "fea_data": b64(name.encode()[:200])}
        return name, daemon.rts("add", appid=APPID, image=b64(data), features=[brief])

    stored = {}
    with ThreadPoolExecutor(clients) as pool:
        for name, body in pool.map(add, pictures.items()):
            if body["err_no"] == 0:
                stored[key(body["contsign"])] = name
            elif body["err_no"] == 101:  # the same bytes twice: the first name stands
                continue
            else:
                print(f"  add {name}: {body}", file=sys.stderr)
    return stored


def search_all(
    daemon: Daemon, queries: dict[str, bytes], clients: int, **fields
) -> tuple[dict[str, list[tuple[tuple[int, int], float]]], list[float]]:
    """Every query searched by image with ``fields``; hits (contsign, score) per query, and the
    wall time of each request."""

    def search(item: tuple[str, bytes]) -> tuple[str, list, float]:
        name, data = item
        began = time.perf_counter()
        body = daemon.rts("search", appid=APPID, image=b64(data), **fields)
        elapsed = time.perf_counter() - began
        assert body["err_no"] == 0, (name, body)
        return name, [(key(hit["contsign"]), hit["score"]) for hit in body.get("data_items", [])], elapsed

    hits, times = {}, []
    with ThreadPoolExecutor(clients) as pool:
        for name, found, elapsed in pool.map(search, queries.items()):
            hits[name] = found
            times.append(elapsed)
    return hits, times


def category_metrics(ranked: list[list[str]], labels: list[str], n_relevant: list[int]) -> dict[str, float]:
    """P@10, mAP@100 and recall@100 of ranked label lists."""
    p10, ap, recall = [], [], []
    for names, label, total in zip(ranked, labels, n_relevant, strict=True):
        relevant = np.array([n == label for n in names[:100]], dtype=float)
        precision_at = np.cumsum(relevant) / np.arange(1, len(relevant) + 1)
        p10.append(relevant[:10].mean() if len(relevant) else 0.0)
        ap.append(float((precision_at * relevant).sum()) / min(total, 100))
        recall.append(relevant.sum() / total)
    return {"P@10": float(np.mean(p10)), "mAP@100": float(np.mean(ap)), "R@100": float(np.mean(recall))}


def category(daemon: Daemon, data: Path, clients: int) -> list[str]:
    """The category protocol over HTTP, in both rankings."""
    caltech = sorted((data / "caltech101-dev").glob("*/*.jpg"))
    imagenet = sorted((data / "imagenet-samples").glob("*.JPEG"))
    pictures = {f"{p.parent.name}/{p.name}": p.read_bytes() for p in caltech}
    pictures.update({f"imagenet/{p.name}": p.read_bytes() for p in imagenet})
    began = time.perf_counter()
    stored = add_all(daemon, pictures, clients)
    print(f"category: {len(stored)} added in {time.perf_counter() - began:.0f} s", flush=True)
    queries = {name: pictures[name] for name in pictures if not name.startswith("imagenet/")}
    label = {name: name.split("/")[0] for name in pictures}
    per_class = defaultdict(int)
    for name in stored.values():
        per_class[label[name]] += 1
    rows, readers = [], []
    for order, title in RANKINGS.items():
        rank_by(daemon, order)
        hits, times = search_all(daemon, queries, clients, rn=101)
        ranked = [[label[stored[c]] for c, _ in hits[q] if stored.get(c) != q][:100] for q in queries]
        labels = [label[q] for q in queries]
        m = category_metrics(ranked, labels, [per_class[x] - 1 for x in labels])
        rows.append(
            f"| {title} | {m['P@10']:.3f} | {m['mAP@100']:.3f} | {m['R@100']:.3f} | "
            f"{1000 * statistics.median(times):.0f} |"
        )
        readers.append(threshold_reader(title, [[score for _, score in hits[q]] for q in queries]))
        print(rows[-1], flush=True)
    return [
        f"Category: {len(queries)} Caltech queries by image, library {len(stored)} "
        f"({len(imagenet)} ImageNet distractors), rn 101, own copy dropped",
        "",
        "| ranking | P@10 | mAP@100 | R@100 | median ms per search |",
        "|:---|---:|---:|---:|---:|",
        *rows,
        "",
        "A spec client reading each answer until the first score below t (the spec's sample descends):",
        "",
        "| ranking | first pages (rn 10) where a score rises | hits >= 0.35 it loses | >= 0.4 | >= 0.5 |",
        "|:---|---:|---:|---:|---:|",
        *readers,
    ]


def threshold_reader(title: str, answers: list[list[float]]) -> str:
    """What a client that reads an answer until its first score below t loses, per ranking: the
    share of first pages whose scores rise somewhere, and of the hits at or above t it never sees."""
    rising = np.mean([any(b > a for a, b in itertools.pairwise(scores[:10])) for scores in answers])
    lost = []
    for t in (0.35, 0.4, 0.5):
        above = read = 0
        for scores in answers:
            above += sum(score >= t for score in scores)
            read += next((i for i, score in enumerate(scores) if score < t), len(scores))
        lost.append(1 - read / above if above else 0.0)
    return f"| {title} | {rising:.0%} | " + " | ".join(f"{x:.0%}" for x in lost) + " |"


def same_picture_part(
    daemon: Daemon, data: Path, cache_dir: Path, clients: int, decision_only: bool = False
) -> list[str]:
    """Recall@1 per edit in both rankings (unless ``decision_only``), and the same_picture
    decision, over HTTP: precision, recall, recall per edit and the negatives said the same
    picture per kind (the catalogue look-alikes among them)."""
    args = same_picture.parse_args(["--data-dir", str(data), "--cache-dir", str(cache_dir)])
    sets = same_picture.cached_sets(data, args)
    began = time.perf_counter()
    stored = add_all(daemon, sets.library, clients)
    print(f"same picture: {len(stored)} added in {time.perf_counter() - began:.0f} s", flush=True)
    positives, negatives = same_picture.main_sets(sets)
    queries = {q: sets.queries[q] for q in positives + negatives}
    by_edit = defaultdict(list)
    for q in positives:
        by_edit[sets.kind[q]].append(q)
    lines = [
        f"Same picture: library {len(stored)}, {len(positives)} edited copies, {len(negatives)} look-alikes",
        "",
    ]
    if not decision_only:
        lines += ranking_rows(daemon, sets, stored, positives, by_edit, clients)
    judged, judged_times = search_all(daemon, queries, clients, rn=10, same_picture=1)
    said = {q: {stored.get(c) for c, _ in judged[q]} for q in queries}
    true_pos = sum(1 for q in positives if said[q] and said[q] <= sets.truth[q])
    false_pos = sum(1 for q in queries if said[q] and not said[q] <= sets.truth[q])
    precision = true_pos / max(1, true_pos + false_pos)
    lines += [
        "",
        f"`same_picture: 1`: precision {precision:.3f}, recall {true_pos / len(positives):.3f}, "
        f"{false_pos} false positives; median ms per same_picture search "
        f"{1000 * statistics.median(judged_times):.0f}",
        "",
        "| edit / negative kind | same_picture |",
        "|:---|---:|",
    ]
    for edit, names in sorted(by_edit.items()):
        recall = np.mean([bool(said[q]) and said[q] <= sets.truth[q] for q in names])
        lines.append(f"| {edit} | recall {recall:.3f} ({len(names)}) |")
    by_kind = defaultdict(list)
    for q in negatives:
        by_kind[sets.kind[q]].append(q)
    for kind, names in sorted(by_kind.items()):
        lines.append(f"| {kind} | {sum(bool(said[q]) for q in names)} of {len(names)} said same |")
    return lines


def ranking_rows(
    daemon: Daemon,
    sets,
    stored: dict[tuple[int, int], str],
    positives: list[str],
    by_edit: dict[str, list[str]],
    clients: int,
) -> list[str]:
    """Recall@1 of the edited copies' originals per edit, in the spec's order and re-ranked."""
    rank_by(daemon, "score")
    plain, times = search_all(daemon, {q: sets.queries[q] for q in positives}, clients, rn=10)
    rank_by(daemon, "reranked")
    found, reranked_times = search_all(daemon, {q: sets.queries[q] for q in positives}, clients, rn=10)
    rank_by(daemon, "score")

    def first_is_original(hits: dict[str, list]) -> Callable[[str], bool]:
        return lambda q: bool(hits[q]) and stored.get(hits[q][0][0]) in sets.truth[q]

    default_hit, plain_hit = first_is_original(found), first_is_original(plain)
    lines = ["| edit | recall@1, score order (default) | recall@1, reranked |", "|:---|---:|---:|"]
    for edit, names in sorted(by_edit.items()):
        lines.append(
            f"| {edit} | {np.mean([plain_hit(q) for q in names]):.3f} | "
            f"{np.mean([default_hit(q) for q in names]):.3f} |"
        )
    lines.append(
        f"| **all** | {np.mean([plain_hit(q) for q in positives]):.3f} | "
        f"{np.mean([default_hit(q) for q in positives]):.3f} |"
    )
    lines.append(
        f"\nmedian ms per search: score order {1000 * statistics.median(times):.0f}, "
        f"reranked {1000 * statistics.median(reranked_times):.0f}"
    )
    return lines


#: The daemon's config per backend: every default, or Milvus in file mode (milvus-lite inside it).
BACKENDS = {
    "local": lambda tmp: "",
    "milvus": lambda tmp: f'[storage]\nbackend = "milvus"\nuri = "{Path(tmp) / "lite.db"}"\n',
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=SHARED_DATA)
    parser.add_argument("--cache-dir", type=Path, default=Path("/tmp/same_search-eval-cache"))
    parser.add_argument("--clients", type=int, default=3)
    parser.add_argument("--category", action="store_true", help="only the category part")
    parser.add_argument("--same-picture", action="store_true", help="only the same-picture part")
    parser.add_argument(
        "--decision-only",
        action="store_true",
        help="same-picture part: only the same_picture searches, not the recall@1 of both rankings",
    )
    parser.add_argument("--backend", choices=sorted(BACKENDS), default="local", help="where libraries live")
    args = parser.parse_args(argv)
    if not (args.data_dir / "caltech101-dev").is_dir():
        print(f"skipping: reference data not found under {args.data_dir}")
        return 0
    both = not (args.category or args.same_picture)
    out = [
        f"# The daemon in both rankings, over HTTP ({time.strftime('%Y-%m-%d %H:%M')} UTC, "
        f"{args.backend} backend)",
        "",
        f"- machine: {common.machine()}",
        "",
    ]
    for wanted, part in ((args.category, "category"), (args.same_picture, "same")):
        if not (wanted or both):
            continue
        with tempfile.TemporaryDirectory(prefix="eval-daemon-") as tmp:
            daemon = Daemon(Path(tmp), BACKENDS[args.backend](tmp))
            daemon.start()
            try:
                if part == "category":
                    out += [*category(daemon, args.data_dir, args.clients), ""]
                else:
                    part_lines = same_picture_part(
                        daemon, args.data_dir, args.cache_dir, args.clients, args.decision_only
                    )
                    out += [*part_lines, ""]
            finally:
                daemon.stop()
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The client commands that ask a running daemon one thing and print the answer as text."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from same_search.cli.common import EXIT_FAILED, EXIT_USAGE, client_for
from same_search.config import Config
from same_search.files import write_atomically


def cmd_search(args: argparse.Namespace, cfg: Config, token: str | None) -> int:
    """Print the best matches of an image as a table."""
    image = Path(args.image).read_bytes()
    override = {"score": (0, False), "reranked": (2, True)}.get(args.order or "", (None, None))
    try:
        region = _region(args.region, args.fraction)
    except ValueError as exc:
        print(f"same_search: --region: {exc}", file=sys.stderr)
        return EXIT_USAGE
    hits = client_for(cfg, token, args.appid).search(
        image=image,
        rn=args.rn,
        min_score=args.min_score,
        region=region,
        query_expansion=override[0],
        promote_same_picture=override[1],
    )
    if hits.ranking != "score":
        print("re-ranked (query expansion, confirmed copies first): not in score order; * = same picture")
    print(f"{'rank':>4}  {'score':>6}  {'contsign':<21}  brief")
    for rank, hit in enumerate(hits, 1):
        brief = hit.brief_text.replace("\n", " ")
        mark = "*" if hit.same_picture else " "
        print(f"{rank:>4}  {hit.score:>6.4f}{mark} {hit.contsign!s:<21}  {brief}")
    if hits.has_more:
        print(f"(more results beyond {len(hits)}: raise --rn)")
    return 0


def _region(text: str | None, fraction: bool) -> dict[str, float | str] | None:
    """``X,Y,W,H`` as the wire's region (the daemon checks that the box fits the picture)."""
    if text is None:
        return None
    parts = text.split(",")
    if len(parts) != 4:
        raise ValueError(f"expected X,Y,W,H, got {text!r}")
    x, y, w, h = (float(part) for part in parts)
    region: dict[str, float | str] = {"x": x, "y": y, "w": w, "h": h}
    if fraction:
        region["unit"] = "fraction"
    return region


def cmd_ranking(args: argparse.Namespace, cfg: Config, token: str | None) -> int:
    """Show, or choose, a library's ranking."""
    client = client_for(cfg, token)
    if args.order is None and args.query_expansion is None and args.promote is None:
        stats = client.library(args.appid)
    else:
        stats = client.set_ranking(
            args.appid,
            args.order,
            query_expansion=args.query_expansion,
            promote_same_picture=args.promote,
        )
    ranking = stats["ranking"]
    what = {"score": "descending score (the spec's order)", "reranked": "re-ranked"}[ranking["order"]]
    print(
        f"{args.appid}: {what}; query_expansion {ranking['query_expansion']}, "
        f"promote_same_picture {'on' if ranking['promote_same_picture'] else 'off'}"
    )
    return 0


def cmd_space(args: argparse.Namespace, cfg: Config, token: str | None) -> int:
    """Show, or choose, the space a library ranks in."""
    client = client_for(cfg, token)
    if args.space is None:
        stats = client.library(args.appid)
    else:
        stats = client.set_space(args.appid, args.space, wait=args.wait)
    print(f"{args.appid}: {space_line(stats['space'])}")
    return 0


def when(seconds: object) -> str:
    """An epoch time as UTC words (stats carry seconds)."""
    if not isinstance(seconds, (int, float)):
        return str(seconds)
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(seconds))


def space_line(space: dict) -> str:
    """A library's ``space`` stats in words."""
    if space["ranks_in"] == "learned":
        return (
            f"ranks in its learned space ({space['dim']} dims, weight {space['weight']}, "
            f"fitted on {space['fitted_items']} items, {when(space['fitted_at'])})"
        )
    if space["chosen"] == "learned":
        return f"learned space chosen; native cosine until it has {space['min_items']} items or the move ends"
    return "native cosine"


def cmd_libraries(args: argparse.Namespace, cfg: Config, token: str | None) -> int:
    """Print every library with its size and model."""
    libraries = client_for(cfg, token).libraries()
    width = max([len("appid"), *(len(lib["appid"]) for lib in libraries)])
    print(f"{'appid':<{width}}  {'items':>9}  {'search':<6}  model")
    for lib in libraries:
        profile = f" [{lib['model_name']}]" if lib.get("model_name") else ""
        model = f"{lib.get('model')}{profile} (dim {lib.get('dim')})"
        print(f"{lib['appid']:<{width}}  {lib['items']:>9}  {lib.get('search', ''):<6}  {model}")
    return 0


def cmd_snapshot(args: argparse.Namespace, cfg: Config, token: str | None) -> int:
    """Print the library's snapshot block, one ``key value`` per line."""
    for key, value in client_for(cfg, token, args.appid).snapshot().items():
        print(f"{key} {value}")
    return 0


def cmd_export(args: argparse.Namespace, cfg: Config, token: str | None) -> int:
    """Write the library's export ZIP; through a temp file, so a failure leaves no half file."""
    data = client_for(cfg, token).export_library(
        args.appid, vectors=args.vectors, originals=not getattr(args, "no_originals", False)
    )
    out = Path(args.out)
    write_atomically(out, data)
    print(f"wrote {out} ({len(data)} bytes)")
    if not args.vectors:
        print(
            f"same_search: warning: {out} has no vectors, so 'same_search import' cannot load it; "
            "export with --vectors to move the library to another daemon",
            file=sys.stderr,
        )
    return 0


# ---------------------------------------------------------------------------------------- duplicates

#: Seconds between progress polls of a duplicates scan.
SCAN_POLL_S = 0.5


def cmd_duplicates(args: argparse.Namespace, cfg: Config, token: str | None) -> int:
    """Scan a library for near-duplicate groups, print them, and remove the extras when asked."""
    client = client_for(cfg, token)
    scan = client.start_duplicates(args.appid, args.min_score)
    while scan["status"] == "running":
        print(f"scanning: {scan['done']}/{scan['total']} items", file=sys.stderr)
        time.sleep(SCAN_POLL_S)
        scan = client.duplicates(args.appid, scan["id"], limit=0)
    if scan["status"] != "done":
        print(f"same_search: scan {scan['status']}: {scan['message']}", file=sys.stderr)
        return EXIT_FAILED
    print(
        f"{args.appid}: {scan['total']} items scanned ({scan['method']}, min_score {scan['min_score']:g}): "
        f"{scan['groups_total']} groups, {scan['extras_total']} extras"
    )
    number = 0
    for offset in range(0, scan["groups_total"], 500):
        page = client.duplicates(args.appid, scan["id"], offset=offset, limit=500)
        for group in page["groups"]:
            number += 1
            keep = group["keep"]
            print(f"group {number}: keep {keep['key']:<21}  {_brief(keep)}")
            for extra in group["extras"]:
                print(f"  {extra['score']:.4f}  {extra['key']:<21}  {_brief(extra)}")
    if args.remove_extras and scan["extras_total"]:
        removed = client.remove_duplicate_extras(args.appid, scan["id"])
        print(f"removed {removed} extras")
    return 0


# ------------------------------------------------------------------------------------------- reembed

#: Seconds between progress polls of a re-embed job.
REEMBED_POLL_S = 1.0


def cmd_reembed(args: argparse.Namespace, cfg: Config, token: str | None) -> int:
    """Start, watch or cancel a library's re-embed job; exit 0 once it is done (or cancelled on request)."""
    client = client_for(cfg, token)
    if args.cancel is not None:
        job = client.cancel_reembed(args.appid, args.cancel)
        print(f"re-embed job {job['id']} {job['status']} at {job['done']}/{job['total']}: {job['message']}")
        return 0
    job = (
        client.start_reembed(args.appid, args.model)
        if args.model
        else client.reembed(args.appid, args.status)
    )
    print(f"re-embed job {job['id']}: {args.appid} -> model {job['model']} ({job['total']} items)")
    if args.no_wait:
        return 0
    try:
        while job["status"] == "running":
            print(f"re-embedding: {job['done']}/{job['total']} items", file=sys.stderr)
            time.sleep(REEMBED_POLL_S)
            job = client.reembed(args.appid, job["id"])
    except KeyboardInterrupt:
        print(
            f"\nstopped watching; the job goes on (same_search reembed --appid {args.appid} "
            f"--cancel {job['id']} to stop it)",
            file=sys.stderr,
        )
        return EXIT_FAILED
    if job["status"] != "done":
        print(f"same_search: re-embed {job['status']}: {job['message']}", file=sys.stderr)
        return EXIT_FAILED
    print(f"{args.appid} now serves model {job['model']} ({job['done']} items)")
    return 0


def _brief(card: dict) -> str:
    text = card.get("brief_text")
    return "(binary brief)" if text is None else text.replace("\n", " ")

"""Client commands that mirror the management API: create and delete libraries, remove items,
and start, watch and cancel the daemon's import jobs."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from same_search.cli.common import EXIT_FAILED, EXIT_USAGE, client_for
from same_search.client import Client, ContSign
from same_search.client_values import as_contsign
from same_search.config import Config

#: Seconds between progress polls of a job being watched.
JOB_POLL_S = 0.5
#: Contsigns per ``remove`` request (the spec's remove takes a list).
REMOVE_BATCH = 100


def cmd_signup(args: argparse.Namespace, cfg: Config, token: str | None) -> int:
    """Create a library (err_no 104, exit 1, when it exists)."""
    client = client_for(cfg, token)
    stats = client.create_library(args.appid, args.model)
    print(f"created library {args.appid} (model {stats.get('model')}, dim {stats.get('dim')})")
    return 0


def cmd_delete_library(args: argparse.Namespace, cfg: Config, token: str | None) -> int:
    """Delete a library; ``--yes`` is required, as the API requires ``?confirm=<appid>``."""
    if not args.yes:
        print(f"same_search: deleting {args.appid} removes all its items; add --yes", file=sys.stderr)
        return EXIT_USAGE
    items = client_for(cfg, token).delete_library(args.appid)
    print(f"deleted library {args.appid} ({items} items)")
    return 0


def cmd_remove(args: argparse.Namespace, cfg: Config, token: str | None) -> int:
    """Remove the items named by contsign, image file or brief; prints how many were stored."""
    try:
        signs = _named_contsigns(args)
    except ValueError as exc:
        print(f"same_search: {exc}", file=sys.stderr)
        return EXIT_USAGE
    client = client_for(cfg, token, args.appid)
    if args.briefs_file:
        wanted = set(Path(args.briefs_file).read_text(encoding="utf-8").splitlines()) - {""}
        matched = [item.contsign for item in client.iter_items(args.appid) if item.brief_text in wanted]
        print(f"{len(matched)} items have one of the {len(wanted)} briefs", file=sys.stderr)
        signs += matched
    if not signs:
        print("same_search: nothing to remove: give contsigns, --image, or a file", file=sys.stderr)
        return EXIT_USAGE
    unique = list(dict.fromkeys(signs))
    removed = sum(
        client.remove(contsigns=unique[start : start + REMOVE_BATCH])
        for start in range(0, len(unique), REMOVE_BATCH)
    )
    print(f"removed {removed} of {len(unique)} items from {args.appid}")
    return 0


def _named_contsigns(args: argparse.Namespace) -> list[ContSign]:
    """The contsigns given on the command line, in a file, and of the image files."""
    texts = list(args.contsigns)
    if args.contsigns_file:
        texts += [line.strip() for line in Path(args.contsigns_file).read_text().splitlines() if line.strip()]
    signs = []
    for text in texts:
        try:
            signs.append(as_contsign(text))
        except ValueError:
            raise ValueError(f"{text!r} is not a contsign (SIGN1,SIGN2)") from None
    return signs + [ContSign.of_image(Path(path).read_bytes()) for path in args.image]


# ---------------------------------------------------------------------------------------------- jobs


def cmd_jobs(args: argparse.Namespace, cfg: Config, token: str | None) -> int:
    """``jobs [list|start|show|cancel]``."""
    client = client_for(cfg, token)
    action = args.jobs_command or "list"
    if action == "list":
        _print_jobs(client.jobs())
        return 0
    if action == "start":
        policy = {"dup_policy": args.dup_policy, "dup_min_score": args.dup_min_score}
        where = {"directory": args.dir, "manifest": args.manifest, "sync": args.sync}
        absolute = {key: str(Path(value).resolve()) for key, value in where.items() if value}
        job = client.create_job(args.appid, **absolute, remove_missing=args.remove_missing, **policy)
        print(f"job {job['id']} {job['status']}: {job['kind']} {job['source']} into {job['appid']}")
    elif action == "cancel":
        job = client.cancel_job(args.job)
        print(f"job {job['id']} {job['status']} at {job['position']}/{job['total']}")
        return 0
    else:
        job = client.job(args.job)
    if args.wait:
        job = watch_job(client, job)
    print_job(job)
    return 0 if job["status"] in ("done", "queued", "running") else EXIT_FAILED


def watch_job(client: Client, job: dict[str, Any]) -> dict[str, Any]:
    """Poll a job until it ends, a progress line on stderr per poll (``jobs`` and ``sync run``)."""
    while job["status"] in ("queued", "running"):
        print(f"job {job['id']} {job['status']}: {_counts(job)}", file=sys.stderr)
        time.sleep(JOB_POLL_S)
        job = client.job(job["id"])
    return job


def _counts(job: dict[str, Any]) -> str:
    rate = f", {job['images_per_s']} images/s" if job.get("images_per_s") else ""
    eta = f", ETA {job['eta_s']:.0f}s" if job.get("eta_s") is not None else ""
    if job["kind"] == "sync":
        changes = f"{job['updated']} updated, {job['removed']} removed, {job['duplicates']} unchanged"
    else:
        changes = f"{job['duplicates']} duplicates"
    return (
        f"{job['position']}/{job['total']} done, {job['done']} added, {changes}, "
        f"{job['failed']} failed{rate}{eta}"
    )


def print_job(job: dict[str, Any]) -> None:
    print(f"job {job['id']} {job['status']}: {job['kind']} {job['source']} into {job['appid']}")
    print(f"  {_counts(job)}")
    if job.get("message"):
        print(f"  {job['message']}")
    for error in job.get("errors", []):
        print(f"  failed: {error['file']}: err_no {error['err_no']}: {error['reason']}")


def _print_jobs(jobs: Iterable[dict[str, Any]]) -> None:
    print(f"{'id':>5}  {'status':<9}  {'appid':<16}  {'progress':>13}  {'failed':>6}  source")
    for job in jobs:
        progress = f"{job['position']}/{job['total']}"
        print(
            f"{job['id']:>5}  {job['status']:<9}  {job['appid']:<16}  {progress:>13}  "
            f"{job['failed']:>6}  {job['kind']} {job['source']}"
        )

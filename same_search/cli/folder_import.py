"""``same_search import``: a directory tree added image by image, or an export ZIP loaded whole.

The files are chosen and read as a server folder job chooses and reads them, and a retry follows
the same rule, so the CLI and the job agree on what a folder holds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from same_search.cli.common import EXIT_FAILED, EXIT_UNREACHABLE, EXIT_USAGE, client_for
from same_search.client import (
    AlreadySignedUp,
    AsyncClient,
    Duplicate,
    NotSignedUp,
    SameSearchError,
    TransportError,
    contsign_of,
)
from same_search.config import Config
from same_search.contsign import ContSign
from same_search.imports.finder import EntryError, SourceError, find_images, read_regular_file
from same_search.imports.retry import CLI_ATTEMPTS, backoff_s, retryable


@dataclass
class ImportStats:
    """Counts of one import run, and what the progress line shows."""

    total: int
    added: int = 0
    duplicates: int = 0
    failed: int = 0
    #: Near-duplicates of stored images: not stored (policy reject), or stored anyway (warn).
    near_rejected: int = 0
    near_stored: int = 0
    #: Whether a near-duplicate policy was asked for (the summary then reports the counts).
    near_policy: bool = False
    failures: list[tuple[str, str]] = field(default_factory=list)
    #: Set when the daemon stopped answering: the remaining files are not tried.
    unreachable: str | None = None
    started: float = field(default_factory=time.monotonic)

    @property
    def processed(self) -> int:
        return self.added + self.duplicates + self.failed + self.near_rejected

    @property
    def elapsed(self) -> float:
        return max(time.monotonic() - self.started, 1e-6)

    def progress(self) -> str:
        """``done/total, failed, duplicates, images/s, ETA``."""
        rate = self.processed / self.elapsed
        left = self.total - self.processed
        eta = f"{left / rate:.0f}s" if rate > 0 else "?"
        return (
            f"import: {self.processed}/{self.total} done, {self.added} added, {self.duplicates} duplicates, "
            f"{self.failed} failed, {rate:.1f} images/s, ETA {eta}"
        )

    def summary(self) -> str:
        near = ""
        if self.near_policy or self.near_rejected or self.near_stored:
            near = (
                f"{self.near_rejected} near-duplicates not stored, "
                f"{self.near_stored} added with near-duplicates, "
            )
        return (
            f"{self.total} files: {self.added} added, {self.duplicates} already stored, {near}"
            f"{self.failed} failed in {self.elapsed:.1f}s ({self.processed / self.elapsed:.1f} images/s)"
        )


class Progress:
    """The progress line on stderr: rewritten in place on a terminal, a line every few seconds in logs."""

    def __init__(self, stats: ImportStats, stream: TextIO | None) -> None:
        self.stats = stats
        self.stream = stream
        self.tty = stream is not None and stream.isatty()
        self.interval = 0.5 if self.tty else 5.0

    def show(self, final: bool = False) -> None:
        if self.stream is None:  # a library caller that asked for no progress line
            return
        line = self.stats.progress()
        if self.tty:
            self.stream.write("\r\x1b[K" + line + ("\n" if final else ""))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            self.show()


async def _add_one(
    client: AsyncClient,
    path: Path,
    brief: str,
    max_bytes: int,
    stats: ImportStats,
    seen: set,
    policy: dict | None = None,
) -> None:
    """Add one file, retrying when the daemon says "not now"; a duplicate counts as done.

    The file is read as a server job reads it: a regular file within ``limits.max_image_bytes``.
    """
    try:
        image = await asyncio.to_thread(read_regular_file, path, max_bytes)
    except EntryError as exc:
        return _failed(stats, brief, str(exc))
    contsign = contsign_of(image)
    if contsign in seen:  # the same picture twice in the tree: stored once
        stats.duplicates += 1
        return None
    seen.add(contsign)
    last = CLI_ATTEMPTS - 1
    for attempt in range(CLI_ATTEMPTS):
        try:
            await add_with_policy(client, image, brief, policy or {}, stats)
            return None
        except Duplicate as exc:
            if not _same_image(exc, contsign):
                stats.near_rejected += 1
            else:
                stats.duplicates += 1
            return None
        except SameSearchError as exc:
            if not retryable(exc.err_no) or attempt == last:
                return _failed(stats, brief, f"err_no {exc.err_no}: {exc.err_msg}")
        except TransportError as exc:
            if attempt == last:
                stats.unreachable = str(exc)
                return _failed(stats, brief, str(exc))
        await asyncio.sleep(backoff_s(attempt))
    return None


async def add_with_policy(
    client: AsyncClient, image: bytes, brief: str, policy: dict, stats: ImportStats
) -> None:
    """``add`` with the near-duplicate policy fields (none: the library's default applies);
    counts a stored image, and whether the daemon reported near-duplicates of it (``warn``)."""
    reply = await client.add_with_policy(image, brief, **policy)
    stats.added += 1
    if reply.get("data_items"):
        stats.near_stored += 1


def _same_image(exc: Duplicate, contsign: ContSign) -> bool:
    """Whether a 101 is about the very same bytes (the spec's duplicate) or a near-duplicate."""
    items = exc.body.get("data_items") or [{"contsign": contsign.to_json()}]
    return any(item.get("contsign") == contsign.to_json() for item in items)


def _failed(stats: ImportStats, brief: str, reason: str) -> None:
    stats.failed += 1
    stats.failures.append((brief, reason))


async def _ensure_library(client: AsyncClient, appid: str, signup: bool) -> str | None:
    """``None`` when the library exists (created first with ``--signup``), else why not."""
    try:
        await client.snapshot(appid=appid)
        return None
    except NotSignedUp:
        if not signup:
            return f"library {appid!r} does not exist; add --signup (signup=True) to create it"
    with contextlib.suppress(AlreadySignedUp):  # created meanwhile by someone else: fine
        await client.signup(appid=appid)
    return None


def _work(root: Path, names: list[str]) -> Iterator[tuple[Path, str]]:
    for name in names:
        yield root / name, name


async def import_directory(
    client: AsyncClient,
    root: Path,
    appid: str,
    signup: bool,
    concurrency: int,
    stream: TextIO | None,
    max_bytes: int,
    policy: dict | None = None,
) -> ImportStats | str:
    """Add every image under ``root`` (the files a server folder job takes, see
    :func:`find_images`) with ``concurrency`` adds in flight; a string says why not.

    Each file's brief is its path relative to ``root``. Serves the CLI's ``import`` and the
    clients' ``add_folder`` (``stream`` None: no progress line)."""
    problem = await _ensure_library(client, appid, signup)
    if problem is not None:
        return problem
    try:
        names = await asyncio.to_thread(find_images, root)
    except SourceError as exc:
        return str(exc)
    stats = ImportStats(total=len(names))
    progress = Progress(stats, stream)
    work = _work(root, names)
    seen: set = set()
    stats.near_policy = bool(policy)
    fields = {"appid": appid, **(policy or {})}  # the adds name the library, whatever the client's

    async def worker() -> None:
        for path, brief in work:
            if stats.unreachable:
                return
            await _add_one(client, path, brief, max_bytes, stats, seen, fields)

    ticker = asyncio.create_task(progress.run())
    try:
        await asyncio.gather(*(worker() for _ in range(max(1, concurrency))))
    finally:
        ticker.cancel()
    progress.show(final=True)
    return stats


def cmd_import(args: argparse.Namespace, cfg: Config, token: str | None) -> int:
    """Import a directory tree (exit 1 when any file failed, listed on stderr) or an export ZIP."""
    root = Path(args.directory)
    if root.is_file() and root.suffix.lower() == ".zip":
        return cmd_import_export(args, cfg, token, root)
    if not root.is_dir():
        print(f"same_search: {root} is not a directory", file=sys.stderr)
        return EXIT_USAGE
    result = asyncio.run(_import(args, cfg, token, root))
    if isinstance(result, str):
        print(f"same_search: {result}", file=sys.stderr)
        return EXIT_FAILED
    for brief, reason in result.failures:
        print(f"failed: {brief}: {reason}", file=sys.stderr)
    print(result.summary())
    if result.unreachable:
        print(f"same_search: stopped, the daemon does not answer: {result.unreachable}", file=sys.stderr)
        return EXIT_UNREACHABLE
    return EXIT_FAILED if result.failed else 0


def cmd_import_export(args: argparse.Namespace, cfg: Config, token: str | None, path: Path) -> int:
    """Load an export ZIP (with vectors) into ``--appid``, created when missing; nothing is embedded.

    A ZIP without vectors is refused here, naming the flag that writes one, before it is sent."""
    if not _has_vectors(path):
        print(
            f"same_search: {path} has no vectors.npy, so it cannot be imported: write it again with "
            "'same_search export --appid APPID --vectors --out FILE'",
            file=sys.stderr,
        )
        return EXIT_FAILED
    answer = client_for(cfg, token).import_library(args.appid, path.read_bytes())
    print(f"imported {answer['imported']} items into {args.appid} ({answer['duplicates']} already stored)")
    return 0


def _has_vectors(path: Path) -> bool:
    """Whether an export ZIP holds vectors (a file that is no ZIP is left to the daemon to refuse)."""
    try:
        with zipfile.ZipFile(path) as archive:
            return "vectors.npy" in archive.namelist()
    except zipfile.BadZipFile:
        return True


async def _import(args: argparse.Namespace, cfg: Config, token: str | None, root: Path) -> ImportStats | str:
    async with AsyncClient.from_config(cfg, token=token, appid=args.appid) as client:
        return await import_directory(
            client,
            root,
            args.appid,
            args.signup,
            args.concurrency,
            sys.stderr,
            cfg.limits.max_image_bytes,
            _policy_fields(args),
        )


def _policy_fields(args: argparse.Namespace) -> dict:
    """The ``dup_policy``/``dup_min_score`` fields the import's adds carry (empty: the library's)."""
    fields: dict = {}
    if args.dup_policy is not None:
        fields["dup_policy"] = args.dup_policy
    if args.dup_min_score is not None:
        fields["dup_min_score"] = args.dup_min_score
    return fields

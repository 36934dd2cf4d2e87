"""Command line: the daemon (no command, or ``serve``) and client commands that talk to a running one.

Both sides read the same ``config.toml`` and the same flags, so a client command on the daemon's
host finds the daemon without being told where it is. The daemon's modules (torch among them) are
imported only when the daemon starts: client commands stay quick to launch.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import sqlite3
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from same_search import __version__
from same_search.client import (
    AlreadySignedUp,
    AsyncClient,
    Client,
    Duplicate,
    NotSignedUp,
    SameSearchError,
    TransportError,
    contsign_of,
)
from same_search.config import Config, ConfigError, load, override
from same_search.contsign import ContSign
from same_search.files import write_atomically
from same_search.imports.finder import EntryError, SourceError, find_images, read_regular_file
from same_search.imports.retry import CLI_ATTEMPTS, backoff_s, retryable

log = logging.getLogger("same_search")

DEFAULT_CONFIG = Path("config.toml")
#: Exit codes of the client commands (the daemon keeps its own: 2 config, 3 model, 4 OS error,
#: 5 the data dir is held by another daemon, 6 the storage backend cannot be reached).
EXIT_FAILED, EXIT_USAGE, EXIT_UNREACHABLE = 1, 2, 3

EPILOG = """\
Without a COMMAND the daemon runs (as with 'serve'). 'same_search COMMAND --help' tells more.
Client commands find the daemon through the same config file and flags as the daemon itself.
Their exit codes: 0 success, 1 the daemon refused or some files failed, 2 usage or configuration,
3 the daemon could not be reached.
"""


# --------------------------------------------------------------------------------------- arguments


def _common_flags(suppress: bool) -> argparse.ArgumentParser:
    """Where the daemon is: shared by the daemon and every client command."""
    default = argparse.SUPPRESS if suppress else None
    parser = argparse.ArgumentParser(add_help=False, argument_default=default)
    parser.add_argument(
        "--config", help="config file (default: ./config.toml when present, else built-in defaults)"
    )
    parser.add_argument("--host", help="address of the feature and retrieval services (default 127.0.0.1)")
    parser.add_argument("--feature-port", type=int, help="feature service port (default 8120)")
    parser.add_argument("--search-port", type=int, help="retrieval service port (default 8025)")
    parser.add_argument("--admin-port", type=int, help="management port (default 8103)")
    parser.add_argument(
        "--admin-host",
        help="address of the management port: where the daemon binds it and where client commands "
        "find it (default: [server] admin_host)",
    )
    return parser


def _daemon_flags(suppress: bool) -> argparse.ArgumentParser:
    default = argparse.SUPPRESS if suppress else None
    parser = argparse.ArgumentParser(add_help=False, argument_default=default)
    parser.add_argument("--data-dir", help="where libraries and indexes are stored (default ./data)")
    parser.add_argument("--log-level", help="DEBUG, INFO, WARNING or ERROR")
    return parser


def _client_flags(suppress: bool) -> argparse.ArgumentParser:
    default = argparse.SUPPRESS if suppress else None
    parser = argparse.ArgumentParser(add_help=False, argument_default=default)
    parser.add_argument(
        "--token", help="token sent as X-Same-Token (default: $SAME_SEARCH_TOKEN, else [auth] tokens '*')"
    )
    return parser


def _add_commands(parser: argparse.ArgumentParser) -> None:
    """The subcommands; their copies of the shared flags default to SUPPRESS so that a flag given
    before the command is not reset by the subparser."""
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    client = [_common_flags(True), _client_flags(True)]
    commands.add_parser("serve", parents=[_common_flags(True), _daemon_flags(True)], help="run the daemon")

    imp = commands.add_parser(
        "import", parents=client, help="add every image under a directory, or load an export ZIP"
    )
    imp.add_argument(
        "directory",
        metavar="DIR|EXPORT.zip",
        help="directory searched recursively for images, or a ZIP written by 'export --vectors' "
        "(stored as it is, without embedding again: how a library moves between daemons or backends)",
    )
    imp.add_argument("--appid", required=True, help="library to add to")
    imp.add_argument("--signup", action="store_true", help="create the library when it does not exist")
    imp.add_argument("-j", "--concurrency", type=int, default=8, help="adds in flight (default 8)")
    imp.add_argument(
        "--dup-policy",
        choices=("off", "warn", "reject"),
        help="near-duplicate policy for these adds (default: the library's): warn stores and counts "
        "them, reject does not store them",
    )
    imp.add_argument(
        "--dup-min-score", type=float, help="score floor of a near-duplicate (default: the library's)"
    )

    search = commands.add_parser("search", parents=client, help="find images similar to one")
    search.add_argument("image", metavar="IMAGE", help="query image file")
    search.add_argument("--appid", required=True, help="library to search")
    search.add_argument("--rn", type=int, default=10, help="number of results (default 10)")
    search.add_argument("--min-score", type=float, help="only hits scoring at least this (-1 to 1)")
    search.add_argument(
        "--order",
        choices=("score", "reranked"),
        help="override the library's ranking for this search: score (descending score, the spec's "
        "order) or reranked (query expansion 2 and confirmed copies first)",
    )

    ranking = commands.add_parser(
        "ranking",
        parents=client,
        help="show or choose how a library ranks searches by image",
        description="A library answers searches by image in the spec's order (descending score) "
        "unless its operator chooses re-ranking: query expansion and confirmed copies first, "
        "better on the measured protocols (docs/quality.md) but not in score order. Without ORDER "
        "or a flag, shows the library's ranking.",
    )
    ranking.add_argument("--appid", required=True, help="library")
    ranking.add_argument("order", nargs="?", choices=("score", "reranked"), help="the ranking to choose")
    ranking.add_argument("--query-expansion", type=int, metavar="N", help="hits that expand the query (0-10)")
    ranking.add_argument(
        "--promote",
        action=argparse.BooleanOptionalAction,
        help="move confirmed copies of the query to the top (--no-promote: do not)",
    )

    commands.add_parser("libraries", parents=client, help="list the libraries")

    export = commands.add_parser("export", parents=client, help="write a library to a ZIP file")
    export.add_argument("--appid", required=True, help="library to export")
    export.add_argument("--out", required=True, help="ZIP file to write")
    export.add_argument("--vectors", action="store_true", help="include the stored vectors")
    export.add_argument(
        "--no-originals",
        action="store_true",
        help="leave the kept originals out (smaller, cannot be re-embedded)",
    )

    dup = commands.add_parser(
        "duplicates", parents=client, help="list the groups of near-duplicates in a library"
    )
    dup.add_argument("--appid", required=True, help="library to scan")
    dup.add_argument(
        "--min-score",
        type=float,
        help="score floor of a near-duplicate, for every pair (default: the library's near-duplicate "
        "floors: 0.6 for a pair the same-picture check confirms, 0.95 for one it cannot look at)",
    )
    dup.add_argument(
        "--remove-extras",
        action="store_true",
        help="then remove every extra, keeping the oldest copy of each picture",
    )

    snap = commands.add_parser("snapshot", parents=client, help="show a library's snapshot block")
    snap.add_argument("--appid", required=True, help="library")

    reembed = commands.add_parser(
        "reembed",
        parents=client,
        help="move a library to another model profile, rebuilt from its kept originals",
        description="Re-embed a library with another model profile from its kept originals "
        "([storage] keep_originals): it keeps serving and taking writes with its old model until "
        "the switch. Waits and shows progress; Ctrl-C stops watching, not the job.",
    )
    reembed.add_argument("--appid", required=True, help="library")
    what = reembed.add_mutually_exclusive_group(required=True)
    what.add_argument("--model", help='model profile to move to ("default" or a [models.<name>] name)')
    what.add_argument("--status", type=int, metavar="JOB", help="watch a job already started")
    what.add_argument("--cancel", type=int, metavar="JOB", help="cancel a job; the library keeps its model")
    reembed.add_argument("--no-wait", action="store_true", help="start (or show) the job and return")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Flags and, when given, the command (``args.command`` is ``None`` for the daemon)."""
    parser = argparse.ArgumentParser(
        prog="same_search",
        description="Similar-image search daemon, and client commands for a running one.",
        parents=[_common_flags(False), _daemon_flags(False), _client_flags(False)],
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"same_search {__version__}")
    _add_commands(parser)
    return parser.parse_args(argv)


def build_config(args: argparse.Namespace) -> Config:
    """The config file (explicit, or ./config.toml if present) with CLI flags applied."""
    path = args.config or (DEFAULT_CONFIG if DEFAULT_CONFIG.exists() else None)
    cfg = load(path)
    cfg = override(
        cfg,
        "server",
        host=args.host,
        admin_host=args.admin_host,
        feature_port=args.feature_port,
        search_port=args.search_port,
        admin_port=args.admin_port,
        log_level=args.log_level,
    )
    return override(cfg, "storage", data_dir=args.data_dir)


# ------------------------------------------------------------------------------------------ daemon


def run_daemon(cfg: Config) -> int:
    """Run the daemon until it is told to stop; the exit code says why it could not start."""
    # Imported here: they pull in torch, which client commands do not need.
    from same_search.datadir import DataDirInUse
    from same_search.embed.models import ModelUnavailable
    from same_search.logs import configure as configure_logging
    from same_search.records import BackendUnavailable
    from same_search.server import ListenError, serve

    configure_logging(cfg.server.log_level, cfg.server.log_format)
    log.info("same_search %s starting; data dir %s", __version__, cfg.data_path.resolve())
    try:
        asyncio.run(serve(cfg))
    except ModelUnavailable as exc:
        log.error("cannot start: %s", exc)
        return 3
    except BackendUnavailable as exc:
        log.error("cannot start: %s", exc)
        return 6
    except ConfigError as exc:  # settings only checkable against the machine, e.g. fp16 on a CPU
        log.error("cannot start: %s", exc)
        return 2
    except DataDirInUse as exc:
        log.error("cannot start: %s", exc)
        return 5
    except ListenError as exc:  # its own message: the data dir and the disk have nothing to do with it
        log.error("cannot start: %s", exc)
        return 4
    except (OSError, sqlite3.Error) as exc:
        log.error("cannot start: %s (check that the data dir is writable and the disk has space)", exc)
        return 4
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m same_search [COMMAND]``."""
    args = parse_args(argv)
    try:
        cfg = build_config(args)
    except ConfigError as exc:
        print(f"same_search: {exc}", file=sys.stderr)
        return 2
    if args.command in (None, "serve"):
        return run_daemon(cfg)
    return run_client_command(args, cfg)


# ---------------------------------------------------------------------------------- client commands


def run_client_command(args: argparse.Namespace, cfg: Config) -> int:
    """Run one client command, turning client errors into a message and an exit code."""
    token = args.token or os.environ.get("SAME_SEARCH_TOKEN") or None
    command: Callable[[argparse.Namespace, Config, str | None], int] = COMMANDS[args.command]
    try:
        return command(args, cfg, token)
    except TransportError as exc:
        print(f"same_search: cannot reach the daemon: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except SameSearchError as exc:
        print(f"same_search: the daemon refused: err_no {exc.err_no}: {exc.err_msg}", file=sys.stderr)
        return EXIT_FAILED
    except OSError as exc:
        print(f"same_search: {exc}", file=sys.stderr)
        return EXIT_FAILED


def _client(cfg: Config, token: str | None, appid: str | None = None) -> Client:
    return Client.from_config(cfg, token=token, appid=appid)


def cmd_search(args: argparse.Namespace, cfg: Config, token: str | None) -> int:
    """Print the best matches of an image as a table."""
    image = Path(args.image).read_bytes()
    override = {"score": (0, False), "reranked": (2, True)}.get(args.order or "", (None, None))
    hits = _client(cfg, token, args.appid).search(
        image=image,
        rn=args.rn,
        min_score=args.min_score,
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


def cmd_ranking(args: argparse.Namespace, cfg: Config, token: str | None) -> int:
    """Show, or choose, a library's ranking."""
    client = _client(cfg, token)
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


def cmd_libraries(args: argparse.Namespace, cfg: Config, token: str | None) -> int:
    """Print every library with its size and model."""
    libraries = _client(cfg, token).libraries()
    width = max([len("appid"), *(len(lib["appid"]) for lib in libraries)])
    print(f"{'appid':<{width}}  {'items':>9}  {'search':<6}  model")
    for lib in libraries:
        profile = f" [{lib['model_name']}]" if lib.get("model_name") else ""
        model = f"{lib.get('model')}{profile} (dim {lib.get('dim')})"
        print(f"{lib['appid']:<{width}}  {lib['items']:>9}  {lib.get('search', ''):<6}  {model}")
    return 0


def cmd_snapshot(args: argparse.Namespace, cfg: Config, token: str | None) -> int:
    """Print the library's snapshot block, one ``key value`` per line."""
    for key, value in _client(cfg, token, args.appid).snapshot().items():
        print(f"{key} {value}")
    return 0


def cmd_export(args: argparse.Namespace, cfg: Config, token: str | None) -> int:
    """Write the library's export ZIP; through a temp file, so a failure leaves no half file."""
    data = _client(cfg, token).export_library(
        args.appid, vectors=args.vectors, originals=not getattr(args, "no_originals", False)
    )
    out = Path(args.out)
    write_atomically(out, data)
    print(f"wrote {out} ({len(data)} bytes)")
    return 0


# -------------------------------------------------------------------------------------------- import


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

    def __init__(self, stats: ImportStats, stream: TextIO) -> None:
        self.stats = stats
        self.stream = stream
        self.tty = stream.isatty()
        self.interval = 0.5 if self.tty else 5.0

    def show(self, final: bool = False) -> None:
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
        await client.snapshot()
        return None
    except NotSignedUp:
        if not signup:
            return f"library {appid!r} does not exist; add --signup to create it"
    with contextlib.suppress(AlreadySignedUp):  # created meanwhile by someone else: fine
        await client.signup()
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
    stream: TextIO,
    max_bytes: int,
    policy: dict | None = None,
) -> ImportStats | str:
    """Add every image under ``root`` (the files a server folder job takes, see
    :func:`find_images`) with ``concurrency`` adds in flight; a string says why not."""
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

    async def worker() -> None:
        for path, brief in work:
            if stats.unreachable:
                return
            await _add_one(client, path, brief, max_bytes, stats, seen, policy)

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
    """Load an export ZIP (with vectors) into ``--appid``, created when missing; nothing is embedded."""
    answer = _client(cfg, token).import_library(args.appid, path.read_bytes())
    print(f"imported {answer['imported']} items into {args.appid} ({answer['duplicates']} already stored)")
    return 0


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


# ---------------------------------------------------------------------------------------- duplicates

#: Seconds between progress polls of a duplicates scan.
SCAN_POLL_S = 0.5


def cmd_duplicates(args: argparse.Namespace, cfg: Config, token: str | None) -> int:
    """Scan a library for near-duplicate groups, print them, and remove the extras when asked."""
    client = _client(cfg, token)
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
    client = _client(cfg, token)
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


COMMANDS: dict[str, Callable[[argparse.Namespace, Config, str | None], int]] = {
    "import": cmd_import,
    "search": cmd_search,
    "ranking": cmd_ranking,
    "libraries": cmd_libraries,
    "export": cmd_export,
    "snapshot": cmd_snapshot,
    "duplicates": cmd_duplicates,
    "reembed": cmd_reembed,
}

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

log = logging.getLogger("same_search")

DEFAULT_CONFIG = Path("config.toml")
IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".jpe", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff", ".mpo", ".ico", ".ppm"}
)
#: err_no worth retrying: queue full (99), embedder timeout (2) or briefly unavailable (5).
RETRYABLE = frozenset({2, 5, 99})
RETRIES = 5
#: Exit codes of the client commands (the daemon keeps its own: 2 config, 3 model, 4 OS error,
#: 5 the data dir is held by another daemon).
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
    parser.add_argument("--admin-host", help="address of the management port (default: [server] admin_host)")
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

    imp = commands.add_parser("import", parents=client, help="add every image under a directory")
    imp.add_argument("directory", metavar="DIR", help="directory searched recursively for images")
    imp.add_argument("--appid", required=True, help="library to add to")
    imp.add_argument("--signup", action="store_true", help="create the library when it does not exist")
    imp.add_argument("-j", "--concurrency", type=int, default=8, help="adds in flight (default 8)")

    search = commands.add_parser("search", parents=client, help="find images similar to one")
    search.add_argument("image", metavar="IMAGE", help="query image file")
    search.add_argument("--appid", required=True, help="library to search")
    search.add_argument("--rn", type=int, default=10, help="number of results (default 10)")

    commands.add_parser("libraries", parents=client, help="list the libraries")

    export = commands.add_parser("export", parents=client, help="write a library to a ZIP file")
    export.add_argument("--appid", required=True, help="library to export")
    export.add_argument("--out", required=True, help="ZIP file to write")
    export.add_argument("--vectors", action="store_true", help="include the stored vectors")

    snap = commands.add_parser("snapshot", parents=client, help="show a library's snapshot block")
    snap.add_argument("--appid", required=True, help="library")


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
    from same_search.libraries import ModelMismatch
    from same_search.logs import configure as configure_logging
    from same_search.server import ListenError, serve

    configure_logging(cfg.server.log_level, cfg.server.log_format)
    log.info("same_search %s starting; data dir %s", __version__, cfg.data_path.resolve())
    try:
        asyncio.run(serve(cfg))
    except (ModelUnavailable, ModelMismatch) as exc:
        log.error("cannot start: %s", exc)
        return 3
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
    cfg = override(cfg, "server", admin_host=args.admin_host)
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
    hits = _client(cfg, token, args.appid).search(image=image, rn=args.rn)
    print(f"{'rank':>4}  {'score':>6}  {'contsign':<21}  brief")
    for rank, hit in enumerate(hits, 1):
        brief = hit.brief_text.replace("\n", " ")
        print(f"{rank:>4}  {hit.score:>6.4f}  {hit.contsign!s:<21}  {brief}")
    if hits.has_more:
        print(f"(more results beyond {len(hits)}: raise --rn)")
    return 0


def cmd_libraries(args: argparse.Namespace, cfg: Config, token: str | None) -> int:
    """Print every library with its size and model."""
    libraries = _client(cfg, token).libraries()
    width = max([len("appid"), *(len(lib["appid"]) for lib in libraries)])
    print(f"{'appid':<{width}}  {'items':>9}  {'search':<6}  model")
    for lib in libraries:
        model = f"{lib.get('model')} (dim {lib.get('dim')})"
        print(f"{lib['appid']:<{width}}  {lib['items']:>9}  {lib.get('search', ''):<6}  {model}")
    return 0


def cmd_snapshot(args: argparse.Namespace, cfg: Config, token: str | None) -> int:
    """Print the library's snapshot block, one ``key value`` per line."""
    for key, value in _client(cfg, token, args.appid).snapshot().items():
        print(f"{key} {value}")
    return 0


def cmd_export(args: argparse.Namespace, cfg: Config, token: str | None) -> int:
    """Write the library's export ZIP; through a temp file, so a failure leaves no half file."""
    data = _client(cfg, token).export_library(args.appid, vectors=args.vectors)
    out = Path(args.out)
    partial = out.with_name(out.name + ".partial")
    partial.write_bytes(data)
    partial.replace(out)
    print(f"wrote {out} ({len(data)} bytes)")
    return 0


# -------------------------------------------------------------------------------------------- import


def find_images(root: Path) -> list[Path]:
    """Image files under ``root`` by extension, in a stable order; hidden files and folders skipped."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if not name.startswith(".") and Path(name).suffix.lower() in IMAGE_SUFFIXES:
                found.append(Path(dirpath) / name)
    return found


@dataclass
class ImportStats:
    """Counts of one import run, and what the progress line shows."""

    total: int
    added: int = 0
    duplicates: int = 0
    failed: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)
    #: Set when the daemon stopped answering: the remaining files are not tried.
    unreachable: str | None = None
    started: float = field(default_factory=time.monotonic)

    @property
    def processed(self) -> int:
        return self.added + self.duplicates + self.failed

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
        return (
            f"{self.total} files: {self.added} added, {self.duplicates} already stored, "
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


async def _add_one(client: AsyncClient, path: Path, brief: str, stats: ImportStats, seen: set) -> None:
    """Add one file, retrying when the daemon is busy; a duplicate counts as done."""
    try:
        image = await asyncio.to_thread(path.read_bytes)
    except OSError as exc:
        return _failed(stats, brief, f"cannot read: {exc}")
    contsign = contsign_of(image)
    if contsign in seen:  # the same picture twice in the tree: stored once
        stats.duplicates += 1
        return None
    seen.add(contsign)
    for attempt in range(RETRIES + 1):
        try:
            await client.add(image, brief)
            stats.added += 1
            return None
        except Duplicate:
            stats.duplicates += 1
            return None
        except SameSearchError as exc:
            if exc.err_no not in RETRYABLE or attempt == RETRIES:
                return _failed(stats, brief, f"err_no {exc.err_no}: {exc.err_msg}")
        except TransportError as exc:
            if attempt == RETRIES:
                stats.unreachable = str(exc)
                return _failed(stats, brief, str(exc))
        await asyncio.sleep(min(0.2 * 2**attempt, 5.0))
    return None


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


def _work(root: Path, files: list[Path]) -> Iterator[tuple[Path, str]]:
    for path in files:
        yield path, path.relative_to(root).as_posix()


async def import_directory(
    client: AsyncClient, root: Path, appid: str, signup: bool, concurrency: int, stream: TextIO
) -> ImportStats | str:
    """Add every image under ``root`` with ``concurrency`` adds in flight; a string says why not."""
    problem = await _ensure_library(client, appid, signup)
    if problem is not None:
        return problem
    files = find_images(root)
    stats = ImportStats(total=len(files))
    progress = Progress(stats, stream)
    work = _work(root, files)
    seen: set = set()

    async def worker() -> None:
        for path, brief in work:
            if stats.unreachable:
                return
            await _add_one(client, path, brief, stats, seen)

    ticker = asyncio.create_task(progress.run())
    try:
        await asyncio.gather(*(worker() for _ in range(max(1, concurrency))))
    finally:
        ticker.cancel()
    progress.show(final=True)
    return stats


def cmd_import(args: argparse.Namespace, cfg: Config, token: str | None) -> int:
    """Import a directory tree; exit 1 when any file failed (listed on stderr)."""
    root = Path(args.directory)
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


async def _import(args: argparse.Namespace, cfg: Config, token: str | None, root: Path) -> ImportStats | str:
    async with AsyncClient.from_config(cfg, token=token, appid=args.appid) as client:
        return await import_directory(client, root, args.appid, args.signup, args.concurrency, sys.stderr)


COMMANDS: dict[str, Callable[[argparse.Namespace, Config, str | None], int]] = {
    "import": cmd_import,
    "search": cmd_search,
    "libraries": cmd_libraries,
    "export": cmd_export,
    "snapshot": cmd_snapshot,
}

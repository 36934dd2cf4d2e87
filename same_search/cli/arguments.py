"""The command line's flags and subcommands: one parser for the daemon and the client commands.

The shared flags are declared once and copied into every subcommand, so a flag works before or
after the command name.
"""

from __future__ import annotations

import argparse

from same_search import __version__
from same_search.cli.folder_sync import add_sync_command

EPILOG = """\
Without a COMMAND the daemon runs (as with 'serve'). 'same_search COMMAND --help' tells more.
Client commands find the daemon through the same config file and flags as the daemon itself.
Their exit codes: 0 success, 1 the daemon refused or some files failed, 2 usage or configuration,
3 the daemon could not be reached.
"""


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
        "--region",
        metavar="X,Y,W,H",
        help="search with that box of the image only: pixels, or fractions of its width and height "
        "with --fraction (x, y: the top-left corner)",
    )
    search.add_argument("--fraction", action="store_true", help="--region is in fractions (0 to 1)")
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

    space = commands.add_parser(
        "space",
        parents=client,
        help="show or choose the space a library ranks and scores in",
        description="Every library ranks in native cosine until its operator moves it into its "
        "learned space, fitted on its own items: better category precision, a few edited copies "
        "lose their place (docs/quality.md). The move is a background rebuild while the library "
        "serves. Without SPACE, shows the library's space.",
    )
    space.add_argument("--appid", required=True, help="library")
    space.add_argument("space", nargs="?", choices=("native", "learned"), help="the space to move it into")
    space.add_argument("--wait", action="store_true", help="return once the move has ended")

    commands.add_parser("libraries", parents=client, help="list the libraries")

    export = commands.add_parser("export", parents=client, help="write a library to a ZIP file")
    export.add_argument("--appid", required=True, help="library to export")
    export.add_argument("--out", required=True, help="ZIP file to write")
    export.add_argument(
        "--vectors",
        action="store_true",
        help="include the stored vectors: needed to load the ZIP with 'import' (without them it is "
        "a listing of briefs, thumbnails and originals)",
    )
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
    _add_management_commands(commands, client)
    add_sync_command(commands, client)
    for action in commands._choices_actions:  # every command's --help opens with what it does
        chosen = commands.choices[action.dest]
        if chosen.description is None and action.help:
            chosen.description = action.help[0].upper() + action.help[1:] + "."


def _add_management_commands(commands: argparse._SubParsersAction, client: list) -> None:
    """Commands that mirror the management API: libraries, items, import jobs."""
    signup = commands.add_parser("signup", parents=client, help="create a library")
    signup.add_argument("--appid", required=True, help="library to create")
    signup.add_argument("--model", help='model profile ("default" or a [models.<name>] name)')

    delete = commands.add_parser(
        "delete-library", parents=client, help="delete a library and every item it holds"
    )
    delete.add_argument("--appid", required=True, help="library to delete")
    delete.add_argument("--yes", action="store_true", help="really delete (required)")

    remove = commands.add_parser("remove", parents=client, help="remove items from a library")
    remove.description = (
        "Remove items named by contsign, by image file, or by brief (the library is listed to find "
        "the items whose brief is one of those given). Removing an item that is not stored is not "
        "an error; the summary says how many were stored."
    )
    remove.add_argument("--appid", required=True, help="library")
    remove.add_argument("contsigns", nargs="*", metavar="SIGN1,SIGN2", help="contsigns of items")
    remove.add_argument("--image", action="append", default=[], metavar="FILE", help="an image file's item")
    remove.add_argument(
        "--contsigns-file", metavar="FILE", help="a file of contsigns, one SIGN1,SIGN2 per line"
    )
    remove.add_argument(
        "--briefs-file",
        metavar="FILE",
        help="a file of briefs, one per line: the items whose brief is one of them (an import's "
        "briefs are paths relative to its folder)",
    )

    jobs = commands.add_parser(
        "jobs", parents=client, help="list, start, show or cancel server-side import jobs"
    )
    jobs.description = (
        "Import jobs run inside the daemon and read a folder or manifest on the daemon's host; "
        "they survive restarts. Without a subcommand, lists them."
    )
    actions = jobs.add_subparsers(dest="jobs_command", metavar="ACTION")
    actions.add_parser("list", parents=client, help="every job, newest first", description="Every job.")
    start = actions.add_parser(
        "start", parents=client, help="start importing a folder or manifest on the daemon's host"
    )
    start.description = (
        "Start an import job: a folder (every image under it) or a manifest (CSV or JSONL) on the "
        "daemon's host; a relative path is made absolute here."
    )
    start.add_argument("--appid", required=True, help="library to add to")
    source = start.add_mutually_exclusive_group(required=True)
    source.add_argument("--dir", help="folder on the daemon's host")
    source.add_argument("--manifest", help="manifest file on the daemon's host")
    source.add_argument(
        "--sync",
        metavar="DIR",
        help="make the library follow this folder on the daemon's host: add new files, replace "
        "changed ones (an item's brief is its file's relative path); run again to sync again",
    )
    start.add_argument(
        "--remove-missing", action="store_true", help="with --sync: remove the items whose file is gone"
    )
    start.add_argument(
        "--dup-policy", choices=("off", "warn", "reject"), help="the job's near-duplicate policy"
    )
    start.add_argument("--dup-min-score", type=float, help="score floor of a near-duplicate")
    start.add_argument("--wait", action="store_true", help="show progress until the job ends")
    for name, what in (("show", "one job's progress and first errors"), ("cancel", "stop a job")):
        action = actions.add_parser(
            name, parents=client, help=what, description=what[0].upper() + what[1:] + "."
        )
        action.add_argument("job", type=int, metavar="JOB", help="job id")
        if name == "show":
            action.add_argument("--wait", action="store_true", help="show progress until the job ends")


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

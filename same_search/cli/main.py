"""``python -m same_search [COMMAND]``: the config with the flags applied, then the daemon or a
client command.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from same_search.cli.arguments import parse_args
from same_search.cli.commands import (
    cmd_duplicates,
    cmd_export,
    cmd_libraries,
    cmd_ranking,
    cmd_reembed,
    cmd_search,
    cmd_snapshot,
    cmd_space,
)
from same_search.cli.common import EXIT_FAILED, EXIT_UNREACHABLE, Command
from same_search.cli.daemon import run_daemon
from same_search.cli.folder_import import cmd_import
from same_search.cli.folder_sync import cmd_sync
from same_search.cli.management import cmd_delete_library, cmd_jobs, cmd_remove, cmd_signup
from same_search.client import (
    SameSearchError,
    TransportError,
)
from same_search.config import Config, ConfigError, load, override

DEFAULT_CONFIG = Path("config.toml")


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
    command = COMMANDS[args.command]
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


COMMANDS: dict[str, Command] = {
    "import": cmd_import,
    "search": cmd_search,
    "ranking": cmd_ranking,
    "space": cmd_space,
    "libraries": cmd_libraries,
    "export": cmd_export,
    "snapshot": cmd_snapshot,
    "duplicates": cmd_duplicates,
    "reembed": cmd_reembed,
    "signup": cmd_signup,
    "delete-library": cmd_delete_library,
    "remove": cmd_remove,
    "jobs": cmd_jobs,
    "sync": cmd_sync,
}

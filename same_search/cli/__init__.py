"""Command line: the daemon (no command, or ``serve``) and client commands that talk to a running one.

Both sides read the same ``config.toml`` and the same flags, so a client command on the daemon's
host finds the daemon without being told where it is. ``arguments`` declares the flags,
``daemon`` starts the daemon, ``commands`` and ``folder_import`` are the client commands.
"""

from same_search.cli.arguments import parse_args
from same_search.cli.common import EXIT_FAILED, EXIT_UNREACHABLE, EXIT_USAGE
from same_search.cli.main import build_config, main

__all__ = ["EXIT_FAILED", "EXIT_UNREACHABLE", "EXIT_USAGE", "build_config", "main", "parse_args"]

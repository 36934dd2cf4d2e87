"""What every client command shares: its exit codes and how it reaches the daemon."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from same_search.client import (
    Client,
)
from same_search.config import Config

#: Exit codes of the client commands (the daemon keeps its own: 2 config, 3 model, 4 OS error,
#: 5 the data dir is held by another daemon, 6 the storage backend cannot be reached).
EXIT_FAILED, EXIT_USAGE, EXIT_UNREACHABLE = 1, 2, 3


Command = Callable[[argparse.Namespace, Config, str | None], int]


def client_for(cfg: Config, token: str | None, appid: str | None = None) -> Client:
    """A client for the daemon the config (and the flags applied to it) names."""
    return Client.from_config(cfg, token=token, appid=appid)

"""Start the daemon from the command line: its modules (torch among them) are imported only here,
so the client commands stay quick to launch; each reason it cannot start has its own exit code.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3

from same_search import __version__
from same_search.config import Config, ConfigError

log = logging.getLogger("same_search")


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

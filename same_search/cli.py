"""Command line: config file, then flags on top, then run the daemon."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

from same_search import __version__
from same_search.config import Config, ConfigError, load, override
from same_search.embed.models import ModelUnavailable
from same_search.libraries import ModelMismatch
from same_search.server import serve

log = logging.getLogger("same_search")

DEFAULT_CONFIG = Path("config.toml")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="same_search", description="Similar-image search daemon.")
    parser.add_argument(
        "--config", help="config file (default: ./config.toml when present, else built-in defaults)"
    )
    parser.add_argument("--data-dir", help="where libraries and indexes are stored (default ./data)")
    parser.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--feature-port", type=int, help="feature service port (default 8120)")
    parser.add_argument("--search-port", type=int, help="retrieval service port (default 8025)")
    parser.add_argument("--admin-port", type=int, help="management port (default 8103)")
    parser.add_argument("--log-level", help="DEBUG, INFO, WARNING or ERROR")
    parser.add_argument("--version", action="version", version=f"same_search {__version__}")
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


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        cfg = build_config(args)
    except ConfigError as exc:
        print(f"same_search: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=cfg.server.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    log.info("same_search %s starting; data dir %s", __version__, cfg.data_path.resolve())
    try:
        asyncio.run(serve(cfg))
    except (ModelUnavailable, ModelMismatch) as exc:
        log.error("cannot start: %s", exc)
        return 3
    except OSError as exc:
        log.error("cannot start: %s", exc)
        return 4
    return 0

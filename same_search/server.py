"""Run the application on its three ports until SIGTERM or SIGINT, then shut down cleanly.

Shutdown order: stop accepting, let in-flight requests finish (bounded by
``shutdown_grace_s``), then the cleanup context saves indexes and closes the database.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import signal

from aiohttp import web

from same_search.app import ADMIN, FEATURE, PORT_SERVICES, SEARCH, create_app
from same_search.config import Config
from same_search.services import SERVICES

log = logging.getLogger(__name__)

#: The flag that moves each service's port, for the message when the port is taken.
PORT_FLAGS = {FEATURE: "--feature-port", SEARCH: "--search-port", ADMIN: "--admin-port"}


class ListenError(Exception):
    """A port could not be opened (in use, not permitted, address not on this machine)."""


def listen_error(service: str, host: str, port: int, exc: OSError) -> ListenError:
    """What the operator should read when ``host:port`` cannot be bound."""
    flag = PORT_FLAGS[service]
    if exc.errno == errno.EADDRINUSE:
        return ListenError(
            f"port {port} ({service} service, {host}) is already in use by another program; "
            f"choose another with {flag} or stop it"
        )
    if exc.errno == errno.EACCES:
        return ListenError(
            f"not permitted to listen on port {port} ({service} service); choose another with {flag}"
        )
    if exc.errno == errno.EADDRNOTAVAIL:
        return ListenError(
            f"cannot listen on {host}:{port} ({service} service): {host} is not an address of this machine"
        )
    return ListenError(f"cannot listen on {host}:{port} ({service} service): {exc}")


def is_loopback(host: str) -> bool:
    """Whether ``host`` only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


async def serve(cfg: Config, stop: asyncio.Event | None = None) -> None:
    """Start, serve until ``stop`` is set (or a signal arrives), and stop."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    app = create_app(cfg)
    runner = web.AppRunner(
        app,
        handle_signals=False,
        access_log=None,
        shutdown_timeout=cfg.server.shutdown_grace_s,
        # aiohttp closes a connection whose request headers are not complete when this runs out
        # (it is armed from the connection's start and after each response): the header timeout.
        keepalive_timeout=cfg.server.header_timeout_s,
    )
    await runner.setup()  # loads the model, opens the database and the indexes
    try:
        for service, host, port in (
            (FEATURE, cfg.server.host, cfg.server.feature_port),
            (SEARCH, cfg.server.host, cfg.server.search_port),
            (ADMIN, cfg.server.admin_host, cfg.server.admin_port),
        ):
            bound_before = set(runner.addresses)
            try:
                await web.TCPSite(runner, host, port, reuse_address=True).start()
            except OSError as exc:
                raise listen_error(service, host, port, exc) from exc
            # The sockets this site added (port 0 binds a free port: record the real one).
            for address in set(runner.addresses) - bound_before:
                app[PORT_SERVICES][address[1]] = service
            log.info("%s service listening on http://%s:%d", service, host, port)
            if not is_loopback(host) and not cfg.auth.enabled:
                log.warning(
                    "%s port is bound to %s, reachable from other machines, and [auth] tokens are not set: "
                    "anyone who can reach it can read and change every library",
                    service,
                    host,
                )
        log.info("same_search ready")
        await stop.wait()
        app[SERVICES].ready = False
        log.info("shutting down: finishing in-flight requests (up to %.0fs)", cfg.server.shutdown_grace_s)
    finally:
        await runner.cleanup()
        log.info("same_search stopped")

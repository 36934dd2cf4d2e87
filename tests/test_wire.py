"""The wire vocabulary is the daemon's, and both clients are derived from one description."""

from __future__ import annotations

import inspect
import subprocess
import sys

from same_search import wire
from same_search.app import create_app
from same_search.client import AsyncClient, Client
from same_search.config import Config, ServerConfig

#: Every route path wire.py names, as the daemon must register it.
WIRE_PATHS = [
    wire.CLASSIFY,
    *(wire.rts(route) for route in wire.RTS_ROUTES),
    wire.HEALTHZ,
    wire.READYZ,
    wire.METRICS,
    wire.LIBRARIES,
    wire.LIBRARY,
    wire.ITEMS,
    wire.ITEM,
    wire.THUMBNAIL,
    wire.SAVE,
    wire.REBUILD,
    wire.COMPACT,
    wire.EXPORT,
    wire.IMPORT,
    wire.JOBS,
    wire.JOB_UPLOAD,
    wire.JOB,
    wire.JOB_CANCEL,
]


def test_every_wire_path_is_a_route_of_the_daemon():
    app = create_app(Config())  # routes only; nothing opens until a runner starts it
    served = {resource.canonical for resource in app.router.resources()}
    assert [path for path in WIRE_PATHS if path not in served] == []


def test_default_ports_are_the_wire_ports():
    server = ServerConfig()
    client = Client()
    assert (server.feature_port, server.search_port, server.admin_port) == (
        wire.FEATURE_PORT,
        wire.SEARCH_PORT,
        wire.ADMIN_PORT,
    )
    assert (client.endpoints.feature_port, client.endpoints.search_port, client.endpoints.admin_port) == (
        wire.FEATURE_PORT,
        wire.SEARCH_PORT,
        wire.ADMIN_PORT,
    )


def _requests(cls: type) -> dict[str, object]:
    return {name: getattr(cls, name) for name in dir(cls) if not name.startswith("_")}


def test_both_clients_offer_the_same_requests_with_the_same_words():
    sync, aio = _requests(Client), _requests(AsyncClient)
    assert sorted(sync) == sorted(aio)
    for name, method in sync.items():
        if name in ("close", "from_config"):  # their own lifecycles
            continue
        other = aio[name]
        assert method.__doc__ and method.__doc__ == other.__doc__, name
        if name == "iter_items":  # a generator and an async generator, written out in each client
            continue
        assert inspect.signature(method) == inspect.signature(other), name
        assert inspect.iscoroutinefunction(other) and not inspect.iscoroutinefunction(method), name


def test_a_request_method_reads_like_a_written_one():
    assert Client.item.__name__ == "item" and AsyncClient.job.__qualname__ == "AsyncClient.job"
    assert str(inspect.signature(Client.add)) == (
        "(self, image: 'bytes', brief: 'bytes | str', tags: 'Tags | None' = None, *, "
        "appid: 'str | None' = None) -> 'ContSign'"
    )
    assert list(inspect.signature(Client().delete_item).parameters) == ["appid", "contsign"]


def test_the_client_imports_neither_torch_nor_the_daemon():
    code = (
        "import sys, same_search.client; "
        "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith(('same_search.routes', "
        "'same_search.embed', 'same_search.libraries', 'aiohttp.web'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"

"""Shared fixtures: one real embedder for the session, a real app on a temp data dir per test.

The app runs on the ``local`` backend unless the test module lists more in ``BACKENDS``: the
contract tests (retrieval and management API, export/import) set ``BACKENDS = ("local",
"milvus")`` and run once per backend. Milvus is milvus-lite, started once per session by the
tests themselves on a loopback port, each test in a database of its own. A test that only means
something on one backend is marked ``@pytest.mark.local_only``.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import sys
import threading
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import pytest
import torch
from aiohttp.test_utils import TestClient

sys.path.insert(0, str(Path(__file__).parent))

from same_search.app import create_app
from same_search.config import Config, IndexConfig, ModelConfig, StorageConfig
from same_search.embed.embedder import Embedder

Api = Callable[..., Awaitable[dict[str, Any]]]

#: Recall measurements in tests that are not about recall search 40 stored items, not 200: the
#: measurement still runs and tunes (every graph library's does) at a fifth of the cost.
TEST_RECALL_SAMPLE = 40


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def brief(text: str) -> dict[str, Any]:
    """A features entry holding a brief."""
    return {"fea_id": 1000, "fea_data": b64(text.encode())}


class RememberingEmbedder(Embedder):
    """The real embedder, which runs the network once per distinct picture in a test session.

    The suite embeds the same few dozen Pillow-made pictures over a thousand times (1,256 forward
    images, 74 distinct ones, in four modules), and those forward passes were most of the CPU
    of the in-process tests. Every vector still comes from the real network, the first time its
    pixels (and precision) were seen; a batch computes only the pictures not seen before. Tests
    of the embedder itself (batching, padding, golden vector) use a plain :class:`Embedder`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._seen: dict[bytes, np.ndarray] = {}
        self._seen_lock = threading.Lock()

    def _forward(self, pixels: torch.Tensor, count: int, precision: str | None) -> np.ndarray:
        if pixels.device.type != "cpu":
            return super()._forward(pixels, count, precision)
        mode = (precision or self.plan.precision).encode()
        keys = [
            hashlib.blake2b(pixels[i].numpy().tobytes(), digest_size=16, key=mode).digest()
            for i in range(count)
        ]
        with self._seen_lock:
            new = [i for i, key in enumerate(keys) if key not in self._seen]
        if new:
            vectors = super()._forward(pixels[new], len(new), precision)
            with self._seen_lock:
                self._seen.update((keys[i], vector) for i, vector in zip(new, vectors, strict=True))
        with self._seen_lock:
            return np.stack([self._seen[key] for key in keys])


@pytest.fixture(scope="session")
def embedder() -> Embedder:
    """The real Lite0 embedder, loaded once (the daemon's own fallback model), in fp32: the
    golden vectors are fp32's, and "auto" may pick bf16 on a CPU that has it."""
    return RememberingEmbedder(ModelConfig(name="efficientnet_lite0", precision="fp32"))


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "local_only: runs on the local backend only, even in a contract module"
    )
    config.addinivalue_line("markers", "reranked_default: new libraries are re-ranked ([search] config)")
    config.addinivalue_line(
        "markers", "heavy: takes tens of seconds of a worker (kill -9 cycles, big libraries); runs first"
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Heavy tests first, each module's others in their own order after them: xdist hands tests
    out in this order, so a long test never starts last and leaves the other workers idle while
    it ends (the suite's wall time is its longest worker's). Only tests with per-test daemons are
    marked: a module-scoped fixture would be set up twice."""
    items.sort(key=lambda item: item.get_closest_marker("heavy") is None)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Run a contract module's tests once per backend it lists in ``BACKENDS``."""
    if "backend" not in metafunc.fixturenames:
        return
    backends = getattr(metafunc.module, "BACKENDS", ("local",))
    if metafunc.definition.get_closest_marker("local_only"):
        backends = ("local",)
    metafunc.parametrize("backend", backends)


@pytest.fixture
def backend() -> str:
    """The library backend of the test's app (parametrized by ``pytest_generate_tests``)."""
    return "local"


@pytest.fixture(scope="session")
def milvus_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A milvus-lite server in this process (a gRPC server on a free loopback port)."""
    import grpc
    from milvus_lite import server_manager_instance

    path = str(tmp_path_factory.mktemp("milvus") / "lite.db")
    # pymilvus pings every 10 s even while idle; milvus-lite's gRPC server keeps grpc's default
    # ping policy and answers a session's idle stretches with GOAWAY "too many pings", after which
    # the next connect can fail. A real Milvus allows those pings: let this test server allow them.
    real_server = grpc.server

    def server_allowing_pings(*args, options=(), **kwargs):
        allow = [
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
            ("grpc.http2.max_ping_strikes", 0),
        ]
        return real_server(*args, options=[*options, *allow], **kwargs)

    with mock.patch.object(grpc, "server", server_allowing_pings):
        uri = server_manager_instance.start_and_get_uri(path)
    assert uri is not None, "milvus-lite did not start"
    yield uri
    server_manager_instance.release_server(path)


_DATABASES = itertools.count()


def storage_for(backend: str, data_dir: Path, request: pytest.FixtureRequest) -> StorageConfig:
    """Storage settings for ``backend``; Milvus gets a fresh database per call."""
    if backend == "local":
        return StorageConfig(data_dir=str(data_dir))
    uri = request.getfixturevalue("milvus_uri")
    return StorageConfig(data_dir=str(data_dir), backend="milvus", uri=uri, db_name=f"t{next(_DATABASES)}")


@pytest.fixture
def config(tmp_path: Path, backend: str, request: pytest.FixtureRequest) -> Config:
    """Defaults, with the data dir in a temp folder, the model the tests load, and the backend."""
    return Config(
        storage=storage_for(backend, tmp_path / "data", request),
        model=ModelConfig(name="efficientnet_lite0"),
        index=IndexConfig(recall_sample=TEST_RECALL_SAMPLE),
    )


@pytest.fixture
async def client(aiohttp_client, config: Config, embedder: Embedder) -> TestClient:
    """The real application (real SQLite file, real indexes) behind a test server."""
    return await aiohttp_client(create_app(config, embedder))


@pytest.fixture
def api(client: TestClient) -> Api:
    """POST a JSON body to a route; assert the HTTP 200 + JSON envelope; return the body."""

    async def call(route: str, **body: Any) -> dict[str, Any]:
        body.setdefault("from", "pytest")
        response = await client.post(route, json=body)
        assert response.status == 200, await response.text()
        data = await response.json()
        assert isinstance(data["err_no"], int) and isinstance(data["err_msg"], str)
        return data

    return call

"""Shared fixtures: one real embedder for the session, a real app on a temp data dir per test."""

from __future__ import annotations

import base64
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

sys.path.insert(0, str(Path(__file__).parent))

from same_search.app import create_app
from same_search.config import Config, ModelConfig, StorageConfig
from same_search.embed.embedder import Embedder

Api = Callable[..., Awaitable[dict[str, Any]]]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def brief(text: str) -> dict[str, Any]:
    """A features entry holding a brief."""
    return {"fea_id": 1000, "fea_data": b64(text.encode())}


@pytest.fixture(scope="session")
def embedder() -> Embedder:
    """The real Lite0 embedder, loaded once (the daemon's own fallback model), in fp32: the
    golden vectors are fp32's, and "auto" may pick bf16 on a CPU that has it."""
    return Embedder(ModelConfig(name="efficientnet_lite0", precision="fp32"))


@pytest.fixture
def config(tmp_path: Path) -> Config:
    """Defaults, with the data dir in a temp folder and the model the tests load."""
    return Config(
        storage=StorageConfig(data_dir=str(tmp_path / "data")), model=ModelConfig(name="efficientnet_lite0")
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

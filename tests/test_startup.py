"""Start-up that fails half-way releases what it had already opened."""

from __future__ import annotations

import threading

import pytest

from same_search.config import Config
from same_search.embed.embedder import Embedder
from same_search.services import open_services


def _embedder_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name.startswith(("infer", "decode")) and t.is_alive()}


async def test_failed_warm_up_closes_the_embedder_thread_pools(
    config: Config, embedder: Embedder, monkeypatch: pytest.MonkeyPatch
):
    def broken_warm_up() -> None:
        raise RuntimeError("CUDA error: out of memory")

    monkeypatch.setattr(embedder, "warm_up", broken_warm_up)
    before = _embedder_threads()
    with pytest.raises(RuntimeError, match="out of memory") as failure:
        async with open_services(config, embedder):
            pass
    # ``failure`` keeps the traceback (and so the half-built service) alive: only closing frees the threads.
    assert failure.value is not None
    assert _embedder_threads() - before == set()

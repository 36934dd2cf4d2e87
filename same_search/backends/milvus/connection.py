"""The pymilvus client and the threads it runs in: pymilvus is synchronous, so every call runs in
a small pool and the event loop never blocks; against milvus-lite every write goes through one
thread of its own (the package docstring says why); Milvus errors become the contract's."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from same_search.backends.base import LibraryGone, StorageError
from same_search.config import StorageConfig

log = logging.getLogger(__name__)

T = TypeVar("T")
#: Tries to reach Milvus at start (0.5 s, then 1 s, between them).
CONNECT_ATTEMPTS = 3
#: pymilvus error code of "collection not found".
COLLECTION_NOT_FOUND = 100
#: How milvus-lite names itself in ``get_server_version``.
LITE_VERSION_PREFIX = "milvus_lite"


def is_lite(client: Any) -> bool:
    """Whether the server ``client`` reached is milvus-lite (a server started on its own)."""
    try:
        return str(client.get_server_version()).startswith(LITE_VERSION_PREFIX)
    except Exception:  # an old server without the call is not milvus-lite 3
        return False


class Connection:
    """One MilvusClient, its reader pool and its writer thread."""

    def __init__(self, storage: StorageConfig) -> None:
        self.storage = storage
        self.client: Any = None
        self._pool = ThreadPoolExecutor(8, thread_name_prefix="milvus")
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="milvus-write")
        #: Whether the server is milvus-lite (file mode, or a server saying so): writes serialised.
        self.lite = storage.milvus_file_mode
        #: Where the milvus-lite this daemon started listens (file mode only).
        self.server_address: str | None = None

    async def read(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a pymilvus call that changes nothing, in the pool."""
        return await self._call(self._pool, fn, *args, **kwargs)

    async def write(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a pymilvus call that changes anything: against milvus-lite in the one writer
        thread, so no two writes reach its engine at once."""
        return await self._call(self._writer if self.lite else self._pool, fn, *args, **kwargs)

    async def _call(self, pool: ThreadPoolExecutor, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """A missing collection is :class:`LibraryGone`, any other Milvus failure
        :class:`StorageError` (the API answers it, nothing half-done)."""
        from pymilvus.exceptions import MilvusException

        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(pool, lambda: fn(*args, **kwargs))
        except MilvusException as exc:
            if exc.code == COLLECTION_NOT_FOUND or "not exist" in str(exc.message):
                raise LibraryGone(str(exc.message)) from exc
            raise StorageError(f"milvus: {exc.message}") from exc

    async def open(self, attempts: int = CONNECT_ATTEMPTS) -> None:
        """Connect, retrying a few times: a Milvus that is restarting, or a gRPC channel the server
        just closed (GOAWAY), fails the first attempt and serves the next."""
        for attempt in range(attempts):
            try:
                await asyncio.get_running_loop().run_in_executor(self._pool, self._connect)
                return
            except Exception as exc:
                if attempt == attempts - 1:
                    raise
                log.warning("milvus at %s not reachable (%s); retrying", self.storage.uri, exc)
                await asyncio.sleep(0.5 * 2**attempt)

    def _connect(self) -> None:
        from pymilvus import MilvusClient

        storage = self.storage
        uri = storage.uri
        if storage.milvus_file_mode:  # started here (pymilvus would do the same), to name its port
            from milvus_lite import server_manager_instance

            uri = server_manager_instance.start_and_get_uri(storage.uri) or storage.uri
            self.server_address = uri
        client = MilvusClient(uri=uri, token=storage.token)
        self.lite = self.lite or is_lite(client)
        if storage.db_name:
            if storage.db_name not in client.list_databases():
                try:
                    client.create_database(storage.db_name)
                except Exception:
                    if storage.db_name not in client.list_databases():  # not a daemon starting beside us
                        raise
            client.use_database(storage.db_name)
        self.client = client

    async def close(self) -> None:
        if self.client is not None:
            await self.read(self.client.close)
        self._pool.shutdown(wait=True)
        self._writer.shutdown(wait=True)

"""What only some backends can do: one small interface each, beside the contract (``base``).

A backend that can do one of these also derives from its interface; the library service asks
with ``isinstance`` before it calls, and does without otherwise:

- :class:`SharedLibraries`: other daemons create and delete libraries too (Milvus);
- :class:`LocalFeatures`: items keep their pictures' local features (same-picture checks);
- :class:`KeyedSearch`: a search by a stored item reads its vector and searches in one call (Milvus);
- :class:`RefilledFeatures`: items without them get them back from kept originals;
- :class:`KeptOriginals`: items keep the bytes they were added with;
- :class:`Reembedding`: a library moves to another model in place (needs kept originals);
- :class:`ReducedIndexes`: large libraries move to a reduced index by a rebuild;
- :class:`LearnedSpaces`: a library ranks in a space fitted on its own items (index/space.py).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

import numpy as np

from same_search.backends.base import Library, SearchResult, TagFilter
from same_search.index.space import LearnedSpace
from same_search.records import LibraryRow, ReembedJobRow

__all__ = [
    "KeptOriginals",
    "KeyedSearch",
    "LearnedSpaces",
    "LocalFeatures",
    "ReducedIndexes",
    "ReembedLedger",
    "Reembedding",
    "RefilledFeatures",
    "SharedLibraries",
]


class SharedLibraries(ABC):
    """Libraries that other daemons create and delete too (Milvus). The service then looks up
    an appid it does not know before answering 103, and refreshes its list when asked for all."""

    @abstractmethod
    async def find_library(self, appid: str) -> Library | None:
        """A library this daemon has not loaded yet (created by another daemon), or None."""


class KeyedSearch(ABC):
    """A search by a stored item's key in one call to the backend: on a backend whose every read
    is a round trip through a thread (Milvus), reading the vector and searching with it as two
    calls costs a second hand-over to and from that thread. The library reads fall back to
    :meth:`~same_search.backends.base.Backend.vector` then ``search`` elsewhere."""

    @abstractmethod
    async def search_by_key(
        self, lib: Library, key: int, k: int, tag_filter: TagFilter | None
    ) -> tuple[np.ndarray, SearchResult] | None:
        """The stored vector of ``key`` and what ``search`` answers for it (the item itself
        among the hits); None when ``key`` is not stored."""


class LocalFeatures(ABC):
    """Items keep the local features of their picture (same-picture checks). The service extracts
    them on add only for such a backend; items of any other are judged by the strict score
    fallback of :func:`same_search.verify.decision.is_same_picture`."""

    @abstractmethod
    async def local_features(self, lib: Library, keys: Sequence[int]) -> dict[int, bytes]:
        """Stored local features by key; items without any are left out."""

    @abstractmethod
    async def items_without_local_features(self, lib: Library) -> int:
        """Items stored without local features (judged by the score fallback)."""


class KeptOriginals(ABC):
    """Items keep the bytes they were added with (``[storage] keep_originals``), by sha256."""

    @abstractmethod
    async def items_without_original(self, lib: Library) -> int:
        """Items with no kept original (they cannot be re-embedded)."""

    @abstractmethod
    async def read_original(self, sha256: str) -> bytes:
        """A kept original's bytes; :class:`StorageError` when its file cannot be read."""


class RefilledFeatures(LocalFeatures, KeptOriginals):
    """Items without local features get them back from their kept originals (a refill)."""

    @abstractmethod
    async def features_pending(
        self, lib: Library, limit: int, after_seq: int = 0
    ) -> list[tuple[int, str, int]]:
        """(key, kept original sha256, seq) of items without local features whose original is
        kept, oldest first from ``after_seq`` on: what a refill can give features back to."""

    @abstractmethod
    async def save_local_features(self, lib: Library, features: Sequence[tuple[int, bytes]]) -> None:
        """Store the local features of stored items (an item removed meanwhile is skipped)."""


class ReembedLedger(Protocol):
    """Where re-embed jobs are recorded (``same_search.store.reembeds.ReembedStore``)."""

    async def create_reembed_job(
        self, row: LibraryRow, model_name: str, model_id: str, dim: int, fingerprint: str, total: int
    ) -> int:
        """A running job for ``row``; returns its id."""

    async def reembed_jobs(self, job_id: int | None = None, status: str | None = None) -> list[ReembedJobRow]:
        """Re-embed jobs, newest first (one by id, or those with a status)."""

    async def save_reembed_job(self, job: ReembedJobRow) -> None:
        """Persist a job's status, counters and message."""

    async def reembed_done(self, lib_id: int) -> int:
        """Items of a library that have their new vector."""


class Reembedding(KeptOriginals):
    """A library can move to another model in place, embedded again from its kept originals."""

    @property
    @abstractmethod
    def reembed_ledger(self) -> ReembedLedger:
        """Where re-embed jobs are recorded."""

    @abstractmethod
    async def reembed_pending(
        self, lib: Library, limit: int, after_seq: int = 0
    ) -> list[tuple[int, str | None, int]]:
        """(key, original sha256, seq) of items without a vector of the new model yet, oldest
        first, from ``after_seq`` on."""

    @abstractmethod
    async def save_reembedded(self, lib: Library, vectors: Sequence[tuple[int, np.ndarray]]) -> None:
        """Keep new-model vectors beside the serving ones until the switch."""

    @abstractmethod
    async def switch_model(
        self, lib: Library, job: ReembedJobRow, catch_up: Callable[[Library], Awaitable[None]]
    ) -> None:
        """Move ``lib`` to the job's model at once: writes wait while ``catch_up(lib)`` embeds the
        items added since the last pass, the stored vectors and model switch in one transaction,
        and the search structure is built for the new vectors before the library serves them."""


class RecallTuned(ABC):
    """Libraries measure their recall on their own items and tune their search depth to
    ``[index] target_recall`` (``same_search.index.recall``)."""

    @abstractmethod
    def wants_tuning(self, lib: Library) -> bool:
        """Whether the library's index was not measured yet, or has doubled since."""

    @abstractmethod
    async def tune(self, lib: Library) -> object:
        """Measure, choose the depth, serve and keep it (the library's stats show it)."""


class ReducedIndexes(ABC):
    """Large libraries move to a reduced index (``same_search.index.reduced``) by a rebuild."""

    @abstractmethod
    def wants_reduction(self, lib: Library) -> bool:
        """Whether the library has grown enough to adopt a reduced index it does not have yet."""


class LearnedSpaces(ABC):
    """A library may rank in its learned space (``same_search.index.space``), moved there by a
    rebuild; the index maps vectors, so every reader sees that space's scores."""

    @abstractmethod
    async def choose_space(self, lib: Library, learned: bool) -> None:
        """Record the library's space; a rebuild then moves it (the caller starts one)."""

    @abstractmethod
    async def adopt_space(self, lib: Library, space: LearnedSpace) -> None:
        """Store ``space`` as the library's chosen and fitted space (an import's); a rebuild moves it."""

    @abstractmethod
    def space_of(self, lib: Library) -> LearnedSpace | None:
        """The space the library's index ranks in now (None: native cosine)."""

    @abstractmethod
    def space_state(self, lib: Library) -> dict[str, object]:
        """What the library's stats show: the space chosen, the one it ranks in, when fitted."""

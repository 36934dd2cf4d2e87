"""The contract every library backend keeps: where a library's items, vectors and search live.

The library service (``same_search.libraries``) is the only caller. It owns the API's rules
(101/102/103/104, paging, ``min_score``, embedding); a backend owns persistence and search:

- ``local``: SQLite (the source of truth) plus an in-memory hnswlib graph per library with
  on-disk snapshots; one daemon per data directory.
- ``milvus``: every library in a Milvus collection; no library state on the daemon's disk, so
  several daemons can serve the same libraries.

:class:`Backend` is what every backend does. What only some can do is a small interface of its
own (``same_search.backends.capabilities``), which such a backend also derives from and the
service asks for with ``isinstance``.

Keys are ContSigns as signed 64-bit integers (:attr:`ContSign.key`), which is also what Milvus
stores as its INT64 primary key. Vectors are L2-normalised float32 rows; scores are inner
products (cosine similarity). A backend's methods may be called concurrently from the event
loop; each keeps its own writes ordered. The records and failures named here come from
:mod:`same_search.records` (re-exported for the service's convenience).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

import numpy as np

from same_search.backends.ledger import JobLedger
from same_search.records import (
    AlreadyExists,
    BackendUnavailable,
    BadRows,
    ItemRow,
    JobRow,
    Library,
    LibraryGone,
    LibraryRow,
    LibrarySettings,
    NewItem,
    NewLibrary,
    ReembedIncomplete,
    ReembedJobRow,
    SearchResult,
    StorageError,
    TagFilter,
    Tags,
    TooManyItems,
    Unavailable,
)

__all__ = [
    "AlreadyExists",
    "Backend",
    "BackendUnavailable",
    "BadRows",
    "Figures",
    "IndexingFailed",
    "ItemRow",
    "JobLedger",
    "JobRow",
    "Library",
    "LibraryFull",
    "LibraryGone",
    "LibraryRow",
    "LibrarySettings",
    "ModelChanged",
    "NewItem",
    "NewLibrary",
    "RebuildProgress",
    "ReembedIncomplete",
    "ReembedJobRow",
    "SearchResult",
    "StorageError",
    "TagFilter",
    "Tags",
    "TooManyItems",
    "Unavailable",
]

#: Backend-specific figures for library stats (``search``, ``index_slots``, ``last_index_save``...).
Figures = dict[str, str | int | float | None]


@dataclass
class RebuildProgress:
    """How far a running rebuild got: the backend moves it along, the service shows it on 8103.

    ``phase`` is ``building`` (the fresh structure from the rows stored when it started),
    ``catching up`` (the writes that came meanwhile) or ``saving`` (the new snapshot).
    """

    phase: str = "building"
    done: int = 0
    total: int = 0


class LibraryFull(Exception):
    """The library already holds the configured ``library_capacity`` items."""


class IndexingFailed(Exception):
    """Rows were committed but could not be indexed: the library no longer matches its rows."""

    def __init__(self, row: LibraryRow, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.row = row
        self.cause = cause


class ModelChanged(Exception):
    """The library's model changed between embedding an item and storing it: embed it again."""


class Backend(ABC):
    """Libraries, their items and their search, behind one interface."""

    #: "local" or "milvus"; shown by /healthz and in library stats.
    name: str

    # ---- lifecycle -------------------------------------------------------------------------------

    @abstractmethod
    async def open(self) -> None:
        """Connect or open files. Raises if the storage cannot be reached."""

    @abstractmethod
    async def close(self) -> None:
        """Persist what needs persisting (local: index snapshots) and disconnect."""

    @property
    @abstractmethod
    def jobs(self) -> JobLedger:
        """The daemon's import-job ledger (always on the local disk, see :class:`JobLedger`)."""

    # ---- libraries -------------------------------------------------------------------------------

    @abstractmethod
    async def load_libraries(self) -> list[Library | Unavailable]:
        """Every library, ready to serve (local: snapshot loaded and replayed, or rebuilt), or
        :class:`Unavailable` with the reason when its rows cannot be loaded: one library's rows
        never stop the others from serving."""

    @abstractmethod
    async def load_library(self, row: LibraryRow) -> Library:
        """Load one library again (after a repair); raises when its rows still cannot be loaded."""

    @abstractmethod
    async def create_library(self, new: NewLibrary) -> Library:
        """A new empty library with its settings; :class:`AlreadyExists` if the appid is taken."""

    @abstractmethod
    async def delete_library(self, lib: Library | Unavailable) -> None:
        """Drop a library (served or set aside) and everything it holds."""

    @abstractmethod
    async def save_settings(self, lib: Library, settings: LibrarySettings) -> None:
        """Persist a library's operator settings (near-duplicate policy, ranking)."""

    @abstractmethod
    async def import_items(
        self, target: Library | NewLibrary, batches: AsyncIterator[Sequence[NewItem]], capacity: int = 0
    ) -> tuple[Library, int, int]:
        """Store checked items with their vectors; (library, imported, duplicates).

        ``target`` is a served library, or a :class:`NewLibrary` the import creates. Keys already
        stored count as duplicates and are left as they were. Raises :class:`TooManyItems` past
        ``capacity`` (nothing stored), :class:`AlreadyExists` if a created library's appid is
        taken, :class:`LibraryGone` if a served one was deleted meanwhile,
        :class:`IndexingFailed` if the rows were stored but could not be indexed.
        """

    # ---- repairs (also of a library set aside: no index needed) ---------------------------------

    @abstractmethod
    async def stored_count(self, row: LibraryRow) -> int:
        """Items stored for a library."""

    @abstractmethod
    async def bad_rows(self, row: LibraryRow) -> list[tuple[int, str]]:
        """(key, problem) of every stored row that cannot be loaded or served (a repair's scan)."""

    @abstractmethod
    async def drop_rows(self, row: LibraryRow, keys: Sequence[int]) -> None:
        """Delete rows of a library that is set aside (no index to keep in step)."""

    # ---- items -----------------------------------------------------------------------------------

    @abstractmethod
    async def count(self, lib: Library) -> int:
        """Stored items."""

    @abstractmethod
    async def add_items(self, lib: Library, items: Sequence[NewItem], capacity: int = 0) -> list[bool]:
        """Store items (durably, then searchable at once); one flag per item: False = key was stored.

        Args:
            items: distinct keys.
            capacity: when non-zero, :class:`LibraryFull` if the library already holds that many.
        Returns:
            True for each item stored by this call, False for each whose key was already stored
            (that item is left as it was).
        Raises:
            :class:`LibraryGone` if the library was deleted meanwhile; :class:`ModelChanged` if
            an item's fingerprint is no longer the library's.
        """

    @abstractmethod
    async def update_item(self, lib: Library, key: int, brief: bytes | None, tags: Tags | None) -> bool:
        """Replace the brief and/or tags of a stored item; False if it is not stored."""

    @abstractmethod
    async def remove_items(self, lib: Library, keys: Sequence[int]) -> list[int]:
        """Delete the stored ones among ``keys``; returns the keys removed."""

    @abstractmethod
    async def get_items(self, lib: Library, keys: Sequence[int]) -> dict[int, ItemRow]:
        """Items by key (missing keys are absent from the result)."""

    @abstractmethod
    async def vector(self, lib: Library, key: int) -> np.ndarray | None:
        """The stored vector of an item, or None if it is not stored."""

    @abstractmethod
    async def search(
        self, lib: Library, vector: np.ndarray, k: int, tag_filter: TagFilter | None, stored: bool = False
    ) -> SearchResult:
        """Up to ``k`` (key, score) best first, among items passing ``tag_filter`` when active.

        Never returns fewer than ``k`` while more matching items are stored. A backend whose
        search can return the items' rows in the same call (Milvus) puts them in ``rows``, so
        the page needs no second round trip; the service fetches whatever is missing.
        ``stored``: ``vector`` is a stored item's (a search by contsign); a graph walks deeper
        for any other (``[index] new_vector_depth``).
        """

    @abstractmethod
    async def page_items(self, lib: Library, offset: int, limit: int) -> list[ItemRow]:
        """Items in insertion order, for browsing."""

    @abstractmethod
    async def thumbnail(self, lib: Library, key: int) -> bytes | None:
        """The stored thumbnail JPEG of an item, if any."""

    @abstractmethod
    def export_items(self, lib: Library) -> AsyncIterator[list[tuple[ItemRow, np.ndarray]]]:
        """Every item with its vector, in insertion order, in chunks."""

    # ---- maintenance -----------------------------------------------------------------------------

    @abstractmethod
    async def save(self, libs: Sequence[Library], only_dirty: bool = True) -> int:
        """Make caches durable (local: index snapshots; milvus: flush); returns libraries saved."""

    @abstractmethod
    async def rebuild(self, lib: Library, progress: RebuildProgress | None = None) -> None:
        """Rebuild the search structure from the stored items, dropping deleted slots.

        The library keeps serving searches and writes meanwhile; ``progress`` is updated as the
        work goes on. Cancelling it leaves the current structure serving, unchanged.
        """

    @abstractmethod
    def describe(self, lib: Library) -> Figures:
        """Backend-specific figures for library stats: ``search``, ``index_slots``, ``last_index_save``."""

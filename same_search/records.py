"""The records and failures that libraries are stored and read as, whatever the backend.

Neutral ground: the library service, every backend (``same_search.backends``) and the SQLite
store (``same_search.store``) speak these, and none of them has to import another to do so.
Keys are ContSigns as signed 64-bit integers; vectors are L2-normalised float32 rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

#: An item's two tags (0 is "no tag" in the wire format).
Tags = tuple[int, int]


# ---- libraries ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LibrarySettings:
    """A library's operator settings: its near-duplicate policy on add and its ranking."""

    #: The library's default near-duplicate policy on add: off | warn | reject.
    dup_policy: str = "off"
    #: Its score floor; None means the built-in floors (``verify.decision``).
    dup_min_score: float | None = None
    #: How many best hits expand a search by image (0: off) and whether confirmed copies of the
    #: query move to the top. 0 / False: the spec's order.
    query_expansion: int = 0
    promote_same_picture: bool = False


@dataclass(frozen=True)
class LibraryRow:
    """A signed-up library and the model its vectors were made with."""

    id: int
    appid: str
    model_id: str
    dim: int
    fingerprint: str
    created_at: float
    #: The operator's settings, as :class:`LibrarySettings` describes them.
    dup_policy: str = "off"
    dup_min_score: float | None = None
    query_expansion: int = 0
    promote_same_picture: bool = False

    @property
    def settings(self) -> LibrarySettings:
        """What the operator chose for this library (see :class:`LibrarySettings`)."""
        return LibrarySettings(
            self.dup_policy, self.dup_min_score, self.query_expansion, self.promote_same_picture
        )


@dataclass(frozen=True)
class NewLibrary:
    """A library to create (by a signup, or by the import that brings its first items)."""

    appid: str
    model_id: str
    dim: int
    fingerprint: str
    settings: LibrarySettings = LibrarySettings()


# ---- items ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ItemRow:
    """One stored image, without its vector."""

    key: int
    brief: bytes
    tags: Tags | None
    created_at: float
    updated_at: float
    #: sha256 of the kept original (``[storage] keep_originals``), or None.
    original: str | None = None


@dataclass(frozen=True)
class NewItem:
    """An item about to be stored, with its computed (or imported) vector: one add, one row of
    an import job's batch, one line of an export being imported."""

    key: int
    brief: bytes
    tags: Tags | None
    #: The float32 vector, of the library's dimension.
    vector: np.ndarray
    thumbnail: bytes | None = None
    #: Stored form of the picture's local features (same_search/verify), when the backend keeps them.
    local_features: bytes | None = None
    #: The picture's bytes, kept as the item's original (``[storage] keep_originals``), or None.
    original: bytes | None = None
    #: Fingerprint of the model that made ``vector``: an add is refused (``ModelChanged``) when the
    #: library moved to another model meanwhile (a re-embed switched while this add embedded).
    fingerprint: str | None = None


@dataclass(frozen=True)
class RawItem:
    """A row as the database holds it, nothing converted: what a repair inspects."""

    key: int
    brief: object
    tag1: object
    tag2: object
    vector: object


# ---- jobs -----------------------------------------------------------------------------------------


@dataclass
class JobRow:
    """A bulk import job and its progress."""

    id: int
    appid: str
    kind: str
    source: str
    status: str
    position: int
    total: int
    done: int
    failed: int
    duplicates: int
    message: str
    created_at: float
    updated_at: float
    #: The job's own near-duplicate policy; None: the library's when the job runs.
    dup_policy: str | None = None
    dup_min_score: float | None = None
    #: Images that had near-duplicates in the library (rejected, or stored with a warning).
    near_duplicates: int = 0
    #: A sync job's items replaced (changed content) or renamed, and removed (file gone).
    updated: int = 0
    removed: int = 0
    #: Whether a sync job removes the items whose file is gone.
    remove_missing: bool = False


@dataclass
class SyncScheduleRow:
    """A library's folder-sync schedule: what it follows, how often, and its last run."""

    appid: str
    folder: str
    remove_missing: bool
    interval_s: int
    created_at: float
    updated_at: float
    #: When the next run is due (epoch seconds).
    next_run_at: float
    last_run_at: float | None = None
    #: The sync job the last run started (its status and counters are the run's result).
    last_job_id: int | None = None
    #: Why the last due run started no job (empty once a run starts one).
    last_message: str = ""


@dataclass
class ReembedJobRow:
    """A re-embed job: a library built again with another model, and its progress."""

    id: int
    lib_id: int
    appid: str
    model_name: str
    model_id: str
    dim: int
    fingerprint: str
    status: str
    total: int
    done: int
    resumed: int
    resumed_at: int
    message: str
    created_at: float
    updated_at: float


# ---- failures -------------------------------------------------------------------------------------


class AlreadyExists(Exception):
    """The row being created is already there (an appid taken, a key stored)."""


class LibraryGone(Exception):
    """The library was deleted while in use: by another request of this daemon (an add that
    raced the deletion), or by another daemon sharing the backend."""


class StorageError(Exception):
    """The storage refused a write (disk full, read-only file system, I/O error, server error)."""


class TooManyItems(Exception):
    """A bulk insert would take a library past its capacity; nothing was written."""


class ReembedIncomplete(Exception):
    """Items of the library have no vector of the new model yet (added since the last pass)."""


class BadRows(Exception):
    """Stored rows that cannot be loaded into an index; ``rows`` holds (key, problem) pairs."""

    def __init__(self, rows: Sequence[tuple[int, str]]) -> None:
        self.rows = list(rows)
        shown = "; ".join(f"key {key}: {problem}" for key, problem in self.rows[:3])
        more = f" (and {len(self.rows) - 3} more in the same chunk)" if len(self.rows) > 3 else ""
        super().__init__(f"rows that cannot be loaded: {shown}{more}")


@dataclass(frozen=True)
class TagFilter:
    """Search only items carrying all (``match_all``) or any of the non-zero ``tags``."""

    tags: Tags
    match_all: bool

    @property
    def active(self) -> bool:
        return any(self.tags)

    @property
    def wanted(self) -> list[int]:
        """The non-zero tags (zero means "no tag" in the wire format)."""
        return [t for t in self.tags if t != 0]


@dataclass(frozen=True)
class SearchResult:
    """What a backend search found: (key, score) best first, and any rows it read on the way."""

    found: list[tuple[int, float]]
    rows: dict[int, ItemRow] = field(default_factory=dict)


@dataclass
class Library:
    """A signed-up library: its row and what the backend keeps for it (``handle``: the local
    backend's index, the Milvus collection's name); only the backend that made it reads it."""

    row: LibraryRow
    handle: object = field(default=None, repr=False)


@dataclass(frozen=True)
class Unavailable:
    """A library whose rows could not be loaded (at start, or after an import that could not be
    indexed): set aside, named, not served, until repaired or deleted."""

    row: LibraryRow
    reason: str


class BackendUnavailable(RuntimeError):
    """The backend cannot be reached at start (Milvus down, wrong uri or token)."""

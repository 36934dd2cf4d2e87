"""What the parts of the local backend share: its store, its index folder and threads, and the
per-library state that writes, saves and rebuilds coordinate through."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from same_search.backends.base import Library
from same_search.config import Config
from same_search.index.library_index import LibraryIndex
from same_search.index.recall import Tuning
from same_search.store.db import Store


def index_of(lib: Library) -> LibraryIndex:
    """The index the local backend keeps for ``lib``."""
    index = lib.handle
    assert isinstance(index, LibraryIndex), f"library {lib.row.appid!r} is not the local backend's"
    return index


def live_keys(index: LibraryIndex, keys: Sequence[int] | np.ndarray) -> list[int]:
    """The ``keys`` live in ``index``, from its row map (both kinds keep one: a reduced index's
    graph is labelled by row, not key, so asking the graph would be wrong for it)."""
    keys = np.asarray(keys, np.int64).reshape(-1)
    return keys[index.rows.rows_of(keys) >= 0].tolist()


def tag_pair(tags: Sequence[int | None] | None) -> np.ndarray:
    """(1, 2) uint32 tags for the index (None, a missing tag, reads as 0: no tag)."""
    pair = [int(t or 0) for t in (tags or (0, 0))][:2]
    return np.array([pair + [0] * (2 - len(pair))], np.uint32)


class LocalState:
    """The state every part of the local backend works on (set up here, once)."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.store = Store(cfg.data_path / "same_search.sqlite3", cfg.storage.max_db_bytes)
        self.index_dir = cfg.data_path / "indexes"
        #: Every library's per-vector index work, one thread: hnswlib never sees two writers.
        self._index_pool = ThreadPoolExecutor(1, thread_name_prefix="index")
        #: Snapshots, one at a time, so two saves never write a library's files together.
        self._save_pool = ThreadPoolExecutor(1, thread_name_prefix="index-save")
        #: Held for a whole snapshot, capture to disk: saves of a library's serving and rebuilt
        #: index never write its files together (the write lock is held only for the capture).
        self._saving = asyncio.Lock()
        #: One write lock per library (by row id), kept across rebuilds that swap its index.
        self._locks: dict[int, asyncio.Lock] = {}
        #: Snapshots written per library (by row id): a rebuild saves its index before the swap
        #: and must know whether the serving one was saved over it meanwhile.
        self._saves: dict[int, int] = {}
        #: Per library being rebuilt (by row id): keys whose tags changed while it ran. Tag
        #: updates carry no seq; the rebuild re-reads these rows before its swap.
        self._retagged: dict[int, set[int]] = {}
        #: Whether each library (by row id) chose its learned space, as last read from the store.
        self.spaces_chosen: dict[int, bool] = {}
        #: Each library's last recall measurement (by row id), and those being measured now.
        self._tunings: dict[int, Tuning] = {}
        self._measuring: set[int] = set()

    def write_lock(self, lib: Library) -> asyncio.Lock:
        """The library's write lock: held by every write, a save and a rebuild."""
        return self._locks.setdefault(lib.row.id, asyncio.Lock())

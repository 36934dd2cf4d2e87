"""The local backend: SQLite as the source of truth, an hnswlib index per library in memory.

Built from two parts that keep their own folders: ``same_search.store`` (the single-writer
SQLite store) and ``same_search.index`` (graph, exact matrix, snapshot files). This package joins
them, one concern a module, each class deriving from the one before:

- ``state``: what the parts share (store, index folder and threads, per-library write locks);
- ``feed``: the one loop that puts stored rows into an index (replay, build, catch-up);
- ``tuning``: each library's recall measured on its own items, its search depth tuned and kept;
- ``indexes``: an index of the right kind made, loaded from its snapshot and replayed, saved;
- ``rebuilds``: online rebuilds beside the serving index, and the switch to another model;
- ``writes``: writes, to SQLite first and to the index after the commit;
- ``backend``: :class:`LocalBackend`, the contract's reads and lifecycle.
"""

from same_search.backends.local.backend import LocalBackend

__all__ = ["LocalBackend"]

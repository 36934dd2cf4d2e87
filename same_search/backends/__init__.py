"""Where libraries live: one interface (``base.Backend``, with the optional ``capabilities``), and
a module or package per backend.

``local``: SQLite + hnswlib on this box (the ``local`` package, built from ``same_search.store``
and ``same_search.index``). ``milvus``: a Milvus server or cluster, shared by any number of daemons
(``milvus/``; needs ``pymilvus``). ``[storage] backend`` in config.toml picks one.
"""

from __future__ import annotations

from same_search.backends.base import Backend
from same_search.config import Config

BACKENDS = ("local", "milvus")


def create_backend(cfg: Config) -> Backend:
    """The backend ``cfg.storage.backend`` names (imported only when chosen)."""
    if cfg.storage.backend == "milvus":
        from same_search.backends.milvus import MilvusBackend

        return MilvusBackend(cfg)
    from same_search.backends.local import LocalBackend

    return LocalBackend(cfg)

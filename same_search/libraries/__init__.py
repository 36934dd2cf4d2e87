"""The library service: the layer between the routes and the embedder and the library backend.

The only caller of a backend (``same_search.backends``): routes, the management API, import jobs,
export/import, metrics and the console go through :class:`LibraryService`, and none of them
knows whether libraries live in SQLite + hnswlib on this box or in a Milvus cluster shared by
several daemons. The API's rules (err_no 101/102/103/104, paging, ``min_score``) are decided
here, once, for every backend. One module per area:

- ``registry``: which libraries exist, the model serving each, set-aside libraries, signup;
- ``reads``: items, vectors, thumbnails, local features, originals;
- ``writes``: add (with the near-duplicate policy), update, remove;
- ``imports``: bulk writes (export imports, import-job batches);
- ``maintenance``: rebuilds, the reduced index, snapshots, repair, deletion;
- ``stats``: what the management API, the spec's snapshot and /metrics show;
- ``reembedding``: a library moved to another model in place;
- search itself is :mod:`same_search.search`, reading through ``reads``.
"""

from same_search.backends.base import Library, TagFilter, Unavailable
from same_search.libraries.records import AddResult, Hit, Item, SearchPage
from same_search.libraries.service import LibraryService
from same_search.libraries.writes import DuplicateAdd, NearDuplicateAdd

__all__ = [
    "AddResult",
    "DuplicateAdd",
    "Hit",
    "Item",
    "Library",
    "LibraryService",
    "NearDuplicateAdd",
    "SearchPage",
    "TagFilter",
    "Unavailable",
]

"""SQLite storage, one module per table family, all over one core (``database``).

- ``database``: connections, the single writer and its lock, transactions, migrations.
- ``items``: libraries, items, the removals log, thumbnails, local features.
- ``originals``: kept originals, the files and their rows.
- ``vectors``: the items as an index reads them (in write order, by key).
- ``projections``: each large library's learned reduction.
- ``reembeds``: the re-embed ledger.  ``jobs``: the import-job ledger.
- ``db``: :class:`Store`, every family joined: the local backend's database.
"""

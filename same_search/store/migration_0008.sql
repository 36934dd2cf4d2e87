-- Version 8: a library's measured recall and the search depth tuned for it
-- (same_search/index/recall.py). Measured on the library's own items when its index is built or
-- adopted and again each time it doubles; kept here so that a restart serves the tuned depth at
-- once instead of measuring again. `kind`, `fingerprint` and `projection` say which index it was
-- measured on (another kind, model or projection measures again). A new table: nothing stored
-- before this version changes.
CREATE TABLE index_tuning (
    lib_id          INTEGER PRIMARY KEY REFERENCES libraries(id) ON DELETE CASCADE,
    kind            TEXT NOT NULL,
    fingerprint     TEXT NOT NULL,
    projection      TEXT NOT NULL,
    items           INTEGER NOT NULL,
    ef              INTEGER NOT NULL,
    candidates      INTEGER NOT NULL,
    recall          REAL NOT NULL,
    recall_filtered REAL,
    filter_tag      INTEGER,
    target          REAL NOT NULL,
    queries         INTEGER NOT NULL,
    measured_at     REAL NOT NULL
);

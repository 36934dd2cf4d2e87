-- same_search storage schema. SQLite is the source of truth: indexes are caches rebuilt from it.
-- Version 1. Later versions are store/migration_NNNN.sql, applied in order by store/db.py; never edit a shipped one.

CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

-- One row per signed-up appid (appid already joined with sub_lib).
CREATE TABLE IF NOT EXISTS libraries (
    id          INTEGER PRIMARY KEY,
    appid       TEXT NOT NULL UNIQUE,
    model_id    TEXT NOT NULL,
    dim         INTEGER NOT NULL,
    fingerprint TEXT NOT NULL,
    created_at  REAL NOT NULL
);

-- One row per stored image. `key` is the ContSign as a signed 64-bit integer.
-- `seq` is the global write sequence of the vector's insertion: an index snapshot records the
-- highest seq it contains, and start-up replays only rows and removals above it.
-- A rowid table with a UNIQUE (lib_id, key), not WITHOUT ROWID: a 5 KB vector row of a clustered
-- (WITHOUT ROWID) table keeps at most ~1 KB in its 4 KB leaf page and spills the rest into an
-- overflow page of its own, 8 KB per row (the file was 1.7x the raw vectors at 1M items); a
-- rowid table fills its overflow pages (about 1.05x). Databases created before keep the old
-- layout; every statement works on both.
CREATE TABLE IF NOT EXISTS items (
    lib_id     INTEGER NOT NULL REFERENCES libraries(id) ON DELETE CASCADE,
    key        INTEGER NOT NULL,
    brief      BLOB NOT NULL,
    tag1       INTEGER,
    tag2       INTEGER,
    vector     BLOB NOT NULL,
    seq        INTEGER NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    UNIQUE (lib_id, key)
);

CREATE INDEX IF NOT EXISTS items_by_seq ON items (lib_id, seq);
CREATE INDEX IF NOT EXISTS items_by_tag1 ON items (lib_id, tag1);
CREATE INDEX IF NOT EXISTS items_by_tag2 ON items (lib_id, tag2);

-- Removals since the item's insertion, so a snapshot older than the removal can be corrected.
CREATE TABLE IF NOT EXISTS removals (
    lib_id INTEGER NOT NULL REFERENCES libraries(id) ON DELETE CASCADE,
    key    INTEGER NOT NULL,
    seq    INTEGER NOT NULL,
    PRIMARY KEY (lib_id, key)
) WITHOUT ROWID;

CREATE INDEX IF NOT EXISTS removals_by_seq ON removals (lib_id, seq);

-- A small JPEG per item, so results can be shown (management port, web console).
CREATE TABLE IF NOT EXISTS thumbnails (
    lib_id INTEGER NOT NULL,
    key    INTEGER NOT NULL,
    jpeg   BLOB NOT NULL,
    PRIMARY KEY (lib_id, key),
    FOREIGN KEY (lib_id, key) REFERENCES items(lib_id, key) ON DELETE CASCADE
) WITHOUT ROWID;

-- Bulk import jobs: one row per job, its progress persisted after every chunk so a restart resumes.
CREATE TABLE IF NOT EXISTS jobs (
    id          INTEGER PRIMARY KEY,
    appid       TEXT NOT NULL,
    kind        TEXT NOT NULL,           -- dir | manifest | zip
    source      TEXT NOT NULL,           -- a path on the server
    status      TEXT NOT NULL,           -- queued | running | done | failed | cancelled
    position    INTEGER NOT NULL DEFAULT 0,
    total       INTEGER NOT NULL DEFAULT 0,
    done        INTEGER NOT NULL DEFAULT 0,
    failed      INTEGER NOT NULL DEFAULT 0,
    duplicates  INTEGER NOT NULL DEFAULT 0,
    message     TEXT NOT NULL DEFAULT '',
    created_at  REAL NOT NULL,
    updated_at  REAL NOT NULL
);

-- Per-item failures of a job (file, err_no, reason).
CREATE TABLE IF NOT EXISTS job_errors (
    job_id INTEGER NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    file   TEXT NOT NULL,
    err_no INTEGER NOT NULL,
    reason TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS job_errors_by_job ON job_errors (job_id);

-- Version 5: a model per library, kept originals, re-embedding in place.
-- (Version 4 belongs to the index engine; the runner applies whichever files exist, in order.)
-- An item's kept original: the sha256 (hex) of the uploaded bytes, a file under
-- <data_dir>/originals/ab/cdef... ([storage] keep_originals); NULL when none was kept.
ALTER TABLE items ADD COLUMN original TEXT;
CREATE INDEX items_by_original ON items (original) WHERE original IS NOT NULL;
-- One row per kept file and its size (the disk-full check counts them). Two items, in one library
-- or two, may share a file; it is deleted with the last item that references it.
CREATE TABLE originals (
    sha256 TEXT PRIMARY KEY,
    size   INTEGER NOT NULL
) WITHOUT ROWID;
-- Re-embed jobs (POST /api/libraries/{appid}/reembed): a library built again with another model.
-- Progress is the rows of reembed_vectors, so a restart resumes where it stopped.
CREATE TABLE reembed_jobs (
    id          INTEGER PRIMARY KEY,
    lib_id      INTEGER NOT NULL,
    appid       TEXT NOT NULL,
    model_name  TEXT NOT NULL,           -- the [models.<name>] profile (or "default")
    model_id    TEXT NOT NULL,
    dim         INTEGER NOT NULL,
    fingerprint TEXT NOT NULL,
    status      TEXT NOT NULL,           -- running | done | failed | cancelled
    total       INTEGER NOT NULL DEFAULT 0,
    done        INTEGER NOT NULL DEFAULT 0,
    resumed     INTEGER NOT NULL DEFAULT 0, -- times it resumed after a restart
    resumed_at  INTEGER NOT NULL DEFAULT 0, -- items already done when it last resumed
    message     TEXT NOT NULL DEFAULT '',
    created_at  REAL NOT NULL,
    updated_at  REAL NOT NULL
);
CREATE INDEX reembed_jobs_by_lib ON reembed_jobs (lib_id, status);
-- The new model's vectors while a job runs; the switch copies them into items in one transaction.
-- A rowid table: 5 KB rows spill into overflow pages either way (see items in schema.sql).
CREATE TABLE reembed_vectors (
    lib_id INTEGER NOT NULL,
    key    INTEGER NOT NULL,
    vector BLOB NOT NULL,
    UNIQUE (lib_id, key)
);

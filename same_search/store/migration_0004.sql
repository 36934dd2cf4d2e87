-- Version 4: a library's learned reduction (same_search/index/projection.py). Large libraries
-- search a graph of reduced vectors and re-rank with the native ones; the projection is learned
-- once from a sample of the library and kept here, so a restart loads it instead of learning it
-- again. `model_fingerprint` ties it to the model whose vectors it was learned on; `fingerprint`
-- (sha256 over that, the mean and the components) is what an index snapshot records.
CREATE TABLE projections (
    lib_id            INTEGER PRIMARY KEY REFERENCES libraries(id) ON DELETE CASCADE,
    model_fingerprint TEXT NOT NULL,
    fingerprint       TEXT NOT NULL,
    native_dim        INTEGER NOT NULL,
    dim               INTEGER NOT NULL,
    mean              BLOB NOT NULL,
    components        BLOB NOT NULL,
    sample_size       INTEGER NOT NULL,
    created_at        REAL NOT NULL
);

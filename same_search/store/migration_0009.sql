-- Version 9: a library's learned space (same_search/index/space.py). A row means the operator
-- moved the library into its learned space; the projection columns stay NULL until the library
-- is large enough to fit one (it ranks in native cosine meanwhile). A new table: nothing stored
-- before this version changes, and every library keeps native cosine.
CREATE TABLE learned_spaces (
    lib_id            INTEGER PRIMARY KEY REFERENCES libraries(id) ON DELETE CASCADE,
    chosen_at         REAL NOT NULL,
    weight            REAL NOT NULL,
    model_fingerprint TEXT,
    fingerprint       TEXT,
    native_dim        INTEGER,
    dim               INTEGER,
    mean              BLOB,
    components        BLOB,
    items             INTEGER,
    fitted_at         REAL
);

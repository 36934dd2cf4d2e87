-- Version 3: local features of an item (same_search/verify/local_features.py: RootSIFT keypoints,
-- about 35 KB), for the same-picture check of search's `same_picture`. Items stored before
-- version 3, or imported as bare vectors, have none (the check then falls back to a strict
-- score). A rowid table: a row this size spills into overflow pages either way.
CREATE TABLE local_features (
    lib_id INTEGER NOT NULL,
    key    INTEGER NOT NULL,
    data   BLOB NOT NULL,
    UNIQUE (lib_id, key),
    FOREIGN KEY (lib_id, key) REFERENCES items(lib_id, key) ON DELETE CASCADE
);

-- Version 12: a library's tuned depth may take its candidates from a flat scan of every item's
-- reduced vector instead of the graph (same_search/index/flat.py), and the measurement keeps
-- the median time of one search at the chosen depth (what the graph and the scan were compared
-- by). Rows stored before keep the graph (flat 0) and no time.
ALTER TABLE index_tuning ADD COLUMN flat INTEGER NOT NULL DEFAULT 0;
ALTER TABLE index_tuning ADD COLUMN search_ms REAL;

-- Version 2: the near-duplicate policy on add (docs/api.md, "near-duplicate policy").
-- A library's default policy, settable on port 8103; NULL dup_min_score means the built-in floor.
ALTER TABLE libraries ADD COLUMN dup_policy TEXT NOT NULL DEFAULT 'off';
ALTER TABLE libraries ADD COLUMN dup_min_score REAL;
-- An import job's own policy (NULL: the library's at the time the job runs), and how many of its
-- images had near-duplicates in the library (rejected, or stored with a warning).
ALTER TABLE jobs ADD COLUMN dup_policy TEXT;
ALTER TABLE jobs ADD COLUMN dup_min_score REAL;
ALTER TABLE jobs ADD COLUMN near_duplicates INTEGER NOT NULL DEFAULT 0;

-- Version 6: a library's ranking, chosen by the operator like its near-duplicate policy.
-- 0 / 0 is the spec's order (nearest neighbours by descending score); every library stored
-- before this version keeps it. query_expansion: how many best hits expand a search by image
-- (0 = off); promote_same_picture: 1 moves confirmed copies of the query to the top.
ALTER TABLE libraries ADD COLUMN query_expansion INTEGER NOT NULL DEFAULT 0;
ALTER TABLE libraries ADD COLUMN promote_same_picture INTEGER NOT NULL DEFAULT 0;

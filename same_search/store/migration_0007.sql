-- Version 7: folder sync jobs (kind "sync"): a library that follows a folder. A sync job counts
-- the items it replaced or renamed (updated) and the items it removed because their file is gone
-- (removed, only when the job was asked to: remove_missing = 1).
ALTER TABLE jobs ADD COLUMN updated INTEGER NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN removed INTEGER NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN remove_missing INTEGER NOT NULL DEFAULT 0;

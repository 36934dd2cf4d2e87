-- Version 10: scheduled folder sync. A library may follow a folder on a schedule: every
-- `interval_s` seconds the daemon starts a sync job (kind "sync") of `folder`, removing the items
-- whose file is gone when `remove_missing` = 1. Kept in the job ledger beside the jobs it starts
-- (daemon state: the folder is on this box), one row per library, so it survives restarts.
-- `next_run_at` is when the next run is due; `last_job_id` the job the last run started (its
-- status and counters are that run's result); `last_message` why the last due run started no job
-- (a sync of the library still running, the folder gone), empty once a run starts one.
CREATE TABLE sync_schedules (
    appid           TEXT PRIMARY KEY,
    folder          TEXT NOT NULL,
    remove_missing  INTEGER NOT NULL DEFAULT 0,
    interval_s      INTEGER NOT NULL,
    created_at      REAL NOT NULL,
    updated_at      REAL NOT NULL,
    next_run_at     REAL NOT NULL,
    last_run_at     REAL,
    last_job_id     INTEGER,
    last_message    TEXT NOT NULL DEFAULT ''
);

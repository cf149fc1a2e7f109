-- Triggers: scheduler (cron), lifecycle and webhook documents, and every fire they made.
--
-- `next_fire` is the compare-and-set value of schedulers: a fire moves it from the tick it
-- fired to the next one in the same transaction as the fire record and the run it created,
-- so a tick fires once whatever crashes or races. `token_hash` is the sha256 (hex) of a
-- webhook's token; the token itself is never stored.
CREATE TABLE triggers (
    project    TEXT NOT NULL REFERENCES projects (name) ON DELETE CASCADE,
    name       TEXT NOT NULL,
    kind       TEXT NOT NULL,
    spec       TEXT NOT NULL,
    labels     TEXT NOT NULL,
    paused     INTEGER NOT NULL DEFAULT 0,
    next_fire  TEXT,
    token_hash TEXT,
    created    TEXT NOT NULL,
    updated    TEXT NOT NULL,
    created_by TEXT NOT NULL,
    PRIMARY KEY (project, name)
) STRICT;

-- `dedup_key` is unique per trigger: the tick (scheduler), the event id (lifecycle), the
-- delivery id (webhook). `run_id` is not a foreign key: a deleted run leaves its fire.
CREATE TABLE trigger_fires (
    id            TEXT PRIMARY KEY NOT NULL,
    project       TEXT NOT NULL,
    trigger_name  TEXT NOT NULL,
    dedup_key     TEXT NOT NULL,
    at            TEXT NOT NULL,
    scheduled_for TEXT,
    run_id        TEXT,
    error         TEXT,
    FOREIGN KEY (project, trigger_name) REFERENCES triggers (project, name) ON DELETE CASCADE,
    UNIQUE (project, trigger_name, dedup_key)
) STRICT;

CREATE INDEX trigger_fires_by_trigger ON trigger_fires (project, trigger_name, at);

-- Positions of durable readers of the event log (the lifecycle triggers' reader).
CREATE TABLE cursors (
    name     TEXT PRIMARY KEY NOT NULL,
    position INTEGER NOT NULL
) STRICT;

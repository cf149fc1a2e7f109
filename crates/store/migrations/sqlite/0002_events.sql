-- The event log: one row per entity change, appended in the same transaction as the change,
-- read by `GET /api/v1/events`. `id` is AUTOINCREMENT so that an id is never reused, even after
-- the newest rows are deleted: a client resuming from an id never skips a later event that
-- happens to reuse it. SQLite has one writer at a time, so ids become visible in order.
CREATE TABLE events (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    at      TEXT NOT NULL,
    project TEXT NOT NULL,
    kind    TEXT NOT NULL,
    data    TEXT NOT NULL
) STRICT;

CREATE INDEX events_project ON events (project, id);

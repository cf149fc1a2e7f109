-- runplane's state on SQLite.
--
-- Timestamps are TEXT in RFC 3339 UTC with exactly nine fractional digits
-- ("2024-05-01T12:00:00.123456789Z"): fixed width, so text order is time order and
-- range filters can compare them directly, and they round-trip without loss.
-- JSON documents (specs, labels, results) are TEXT holding serde_json output.

CREATE TABLE projects (
    name       TEXT PRIMARY KEY NOT NULL,
    created    TEXT NOT NULL,
    created_by TEXT NOT NULL
) STRICT;

-- One immutable version per row. `seq` grows with every insert and is never reused
-- (AUTOINCREMENT), so the highest seq of a (project, name) is its latest version.
CREATE TABLE function_versions (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    project     TEXT NOT NULL REFERENCES projects (name) ON DELETE CASCADE,
    name        TEXT NOT NULL,
    version     TEXT NOT NULL,
    kind        TEXT NOT NULL,
    hash        TEXT NOT NULL,
    key         TEXT NOT NULL,
    spec        TEXT NOT NULL,
    labels      TEXT NOT NULL,
    description TEXT,
    created     TEXT NOT NULL,
    created_by  TEXT NOT NULL,
    UNIQUE (project, name, hash),
    UNIQUE (project, name, version)
) STRICT;

CREATE INDEX function_versions_latest ON function_versions (project, name, seq);

CREATE TABLE tasks (
    project    TEXT NOT NULL REFERENCES projects (name) ON DELETE CASCADE,
    name       TEXT NOT NULL,
    kind       TEXT NOT NULL,
    spec       TEXT NOT NULL,
    labels     TEXT NOT NULL,
    created    TEXT NOT NULL,
    updated    TEXT NOT NULL,
    created_by TEXT NOT NULL,
    PRIMARY KEY (project, name)
) STRICT;

-- `id` is a UUIDv7 string: ordering by id is ordering by creation time, which is what
-- listings (newest first) and the dispatcher queue (oldest first) page on.
-- `function_name` and `task` are copied out of `spec` so that they can be filtered and
-- grouped on; `spec` stays the authoritative snapshot.
CREATE TABLE runs (
    id              TEXT PRIMARY KEY NOT NULL,
    project         TEXT NOT NULL REFERENCES projects (name) ON DELETE CASCADE,
    kind            TEXT NOT NULL,
    function_name   TEXT NOT NULL,
    task            TEXT,
    state           TEXT NOT NULL,
    attempt         INTEGER NOT NULL,
    reason          TEXT,
    message         TEXT,
    results         TEXT,
    rerun_of        TEXT,
    labels          TEXT NOT NULL,
    spec            TEXT NOT NULL,
    created         TEXT NOT NULL,
    updated         TEXT NOT NULL,
    created_by      TEXT NOT NULL,
    idempotency_key TEXT,
    request_hash    TEXT
) STRICT;

-- NULL keys never collide: runs without an Idempotency-Key are unconstrained.
CREATE UNIQUE INDEX runs_idempotency ON runs (project, idempotency_key);
CREATE INDEX runs_project ON runs (project, id);
CREATE INDEX runs_project_function ON runs (project, function_name, id);
CREATE INDEX runs_project_state ON runs (project, state, id);
CREATE INDEX runs_state ON runs (state, id);

-- The labels of `runs.labels`, one row each, for label filters.
CREATE TABLE run_labels (
    run_id TEXT NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    key    TEXT NOT NULL,
    value  TEXT NOT NULL,
    PRIMARY KEY (run_id, key)
) STRICT;

CREATE INDEX run_labels_lookup ON run_labels (key, value, run_id);

CREATE TABLE run_transitions (
    run_id     TEXT NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    seq        INTEGER NOT NULL,
    from_state TEXT,
    to_state   TEXT NOT NULL,
    attempt    INTEGER NOT NULL,
    reason     TEXT,
    message    TEXT,
    at         TEXT NOT NULL,
    PRIMARY KEY (run_id, seq)
) STRICT;

CREATE TABLE run_attempts (
    run_id     TEXT NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    number     INTEGER NOT NULL,
    framework  TEXT NOT NULL,
    dispatched TEXT NOT NULL,
    started    TEXT,
    ended      TEXT,
    exit_code  INTEGER,
    signal     INTEGER,
    reason     TEXT,
    PRIMARY KEY (run_id, number)
) STRICT;

-- runplane's state on PostgreSQL: the whole schema of migrations/sqlite/0001..0007 in one
-- file. Later changes come as new files here, in step with the SQLite ones.
--
-- Types:
-- * Timestamps are TIMESTAMPTZ (microseconds, the precision every store keeps).
-- * JSON documents (specs, labels, results, status documents, event data) are TEXT holding
--   serde_json output, as in SQLite: they read back byte for byte (JSONB would reorder keys
--   and normalize numbers), and no query looks inside them.
-- * Names, ids and keys that are sorted or compared with < are COLLATE "C": byte order, as in
--   SQLite, whatever the database's default collation (listings by name, run ids that are
--   UUIDv7 strings paged with `id < cursor`).
-- * Counters and positions are BIGINT; exit codes and signals INTEGER.
--
-- Concurrency (several server processes may write at once; see src/postgres/mod.rs):
-- compare-and-sets are guarded UPDATEs (a writer that waited on the row lock re-checks its
-- WHERE clause on the committed row), "at most once" is a UNIQUE constraint, and event ids
-- commit in order because events are inserted only under one transaction-level advisory lock.

CREATE TABLE projects (
    name       TEXT COLLATE "C" PRIMARY KEY,
    created    TIMESTAMPTZ NOT NULL,
    created_by TEXT NOT NULL
);

-- One immutable version per row. `seq` grows with every insert and is never reused, so the
-- highest seq of a (project, name) is its latest version.
CREATE TABLE function_versions (
    seq         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    project     TEXT COLLATE "C" NOT NULL REFERENCES projects (name) ON DELETE CASCADE,
    name        TEXT COLLATE "C" NOT NULL,
    version     TEXT COLLATE "C" NOT NULL,
    kind        TEXT NOT NULL,
    hash        TEXT COLLATE "C" NOT NULL,
    key         TEXT NOT NULL,
    spec        TEXT NOT NULL,
    labels      TEXT NOT NULL,
    description TEXT,
    created     TIMESTAMPTZ NOT NULL,
    created_by  TEXT NOT NULL,
    UNIQUE (project, name, hash),
    UNIQUE (project, name, version)
);

CREATE INDEX function_versions_latest ON function_versions (project, name, seq);

CREATE TABLE tasks (
    project    TEXT COLLATE "C" NOT NULL REFERENCES projects (name) ON DELETE CASCADE,
    name       TEXT COLLATE "C" NOT NULL,
    kind       TEXT NOT NULL,
    spec       TEXT NOT NULL,
    labels     TEXT NOT NULL,
    created    TIMESTAMPTZ NOT NULL,
    updated    TIMESTAMPTZ NOT NULL,
    created_by TEXT NOT NULL,
    PRIMARY KEY (project, name)
);

-- `id` is a UUIDv7 string: ordering by id is ordering by creation time, which is what
-- listings (newest first) and the dispatcher queue (oldest first) page on.
-- `function_name` and `task` are copied out of `spec` so that they can be filtered and
-- grouped on; `spec` stays the authoritative snapshot.
-- `service` is `status.service` (ServiceStatus), `workflow` `status.workflow`
-- (WorkflowStatus), `artifacts` `status.artifacts` (name → key), all JSON, NULL when absent.
-- `step_of` is the workflow run that started this run for one of its nodes and `step` the
-- whole StepOf link (JSON); `produced_by` is the key of the trigger that created the run.
-- Like `services.run_id`, `step_of` and `rerun_of` are not foreign keys.
CREATE TABLE runs (
    id              TEXT COLLATE "C" PRIMARY KEY,
    project         TEXT COLLATE "C" NOT NULL REFERENCES projects (name) ON DELETE CASCADE,
    kind            TEXT NOT NULL,
    function_name   TEXT COLLATE "C" NOT NULL,
    task            TEXT COLLATE "C",
    state           TEXT NOT NULL,
    attempt         BIGINT NOT NULL,
    reason          TEXT,
    message         TEXT,
    results         TEXT,
    rerun_of        TEXT,
    service         TEXT,
    step_of         TEXT COLLATE "C",
    step            TEXT,
    produced_by     TEXT,
    workflow        TEXT,
    artifacts       TEXT,
    labels          TEXT NOT NULL,
    spec            TEXT NOT NULL,
    created         TIMESTAMPTZ NOT NULL,
    updated         TIMESTAMPTZ NOT NULL,
    created_by      TEXT NOT NULL,
    idempotency_key TEXT,
    request_hash    TEXT
);

-- NULL keys never collide: runs without an Idempotency-Key are unconstrained. create_run
-- inserts with ON CONFLICT on this index, so concurrent retries of one request make one run.
CREATE UNIQUE INDEX runs_idempotency ON runs (project, idempotency_key);
CREATE INDEX runs_project ON runs (project, id);
CREATE INDEX runs_project_function ON runs (project, function_name, id);
CREATE INDEX runs_project_state ON runs (project, state, id);
CREATE INDEX runs_state ON runs (state, id);
CREATE INDEX runs_step_of ON runs (step_of, id);

-- The labels of `runs.labels`, one row each, for label filters.
CREATE TABLE run_labels (
    run_id TEXT COLLATE "C" NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    key    TEXT NOT NULL,
    value  TEXT NOT NULL,
    PRIMARY KEY (run_id, key)
);

CREATE INDEX run_labels_lookup ON run_labels (key, value, run_id);

CREATE TABLE run_transitions (
    run_id     TEXT COLLATE "C" NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    seq        BIGINT NOT NULL,
    from_state TEXT,
    to_state   TEXT NOT NULL,
    attempt    BIGINT NOT NULL,
    reason     TEXT,
    message    TEXT,
    at         TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (run_id, seq)
);

CREATE TABLE run_attempts (
    run_id     TEXT COLLATE "C" NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    number     BIGINT NOT NULL,
    framework  TEXT NOT NULL,
    dispatched TIMESTAMPTZ NOT NULL,
    started    TIMESTAMPTZ,
    ended      TIMESTAMPTZ,
    exit_code  INTEGER,
    signal     INTEGER,
    reason     TEXT,
    PRIMARY KEY (run_id, number)
);

-- The event log: one row per entity change, appended in the same transaction as the change,
-- read by `GET /api/v1/events`. Ids come from an identity sequence: never reused, even after
-- a rollback (which leaves a gap) or a deletion. A sequence alone would let ids become
-- visible out of order (a transaction that drew id 10 may commit after the one that drew 11);
-- the store therefore inserts events only at the very end of a transaction, under the
-- transaction-level advisory lock EVENT_LOG_LOCK (src/postgres/mod.rs), so that transactions
-- draw event ids in the order they commit. The sequence keeps CACHE 1 (the default): a
-- per-session cache would hand out ids that do not follow the lock's order.
CREATE TABLE events (
    id      BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at      TIMESTAMPTZ NOT NULL,
    project TEXT COLLATE "C" NOT NULL,
    kind    TEXT NOT NULL,
    data    TEXT NOT NULL
);

CREATE INDEX events_project ON events (project, id);

-- Services: a stable name (project, name) that points at the run currently backing it.
-- `run_id` is deliberately not a foreign key to `runs` (see migrations/sqlite/0003): readers
-- must expect a run_id whose run no longer exists.
CREATE TABLE services (
    project TEXT COLLATE "C" NOT NULL REFERENCES projects (name) ON DELETE CASCADE,
    name    TEXT COLLATE "C" NOT NULL,
    run_id  TEXT COLLATE "C" NOT NULL,
    created TIMESTAMPTZ NOT NULL,
    updated TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (project, name)
);

-- Secrets: a project's named values, stored only as the server encrypted them (opaque bytes,
-- nonce and tag included).
CREATE TABLE secrets (
    project    TEXT COLLATE "C" NOT NULL REFERENCES projects (name) ON DELETE CASCADE,
    name       TEXT COLLATE "C" NOT NULL,
    value      BYTEA NOT NULL,
    created    TIMESTAMPTZ NOT NULL,
    updated    TIMESTAMPTZ NOT NULL,
    created_by TEXT NOT NULL,
    PRIMARY KEY (project, name)
);

-- Triggers. `next_fire` is the compare-and-set value of schedulers: a fire moves it from the
-- tick it fired to the next one in the same transaction as the fire record and the run it
-- created. `token_hash` is the sha256 (hex) of a webhook's token; the token is never stored.
CREATE TABLE triggers (
    project    TEXT COLLATE "C" NOT NULL REFERENCES projects (name) ON DELETE CASCADE,
    name       TEXT COLLATE "C" NOT NULL,
    kind       TEXT NOT NULL,
    spec       TEXT NOT NULL,
    labels     TEXT NOT NULL,
    paused     BOOLEAN NOT NULL DEFAULT FALSE,
    next_fire  TIMESTAMPTZ,
    token_hash TEXT,
    created    TIMESTAMPTZ NOT NULL,
    updated    TIMESTAMPTZ NOT NULL,
    created_by TEXT NOT NULL,
    PRIMARY KEY (project, name)
);

-- `dedup_key` is unique per trigger: the tick (scheduler), the event id (lifecycle), the
-- delivery id (webhook). `run_id` is not a foreign key: a deleted run leaves its fire.
CREATE TABLE trigger_fires (
    id            TEXT COLLATE "C" PRIMARY KEY,
    project       TEXT COLLATE "C" NOT NULL,
    trigger_name  TEXT COLLATE "C" NOT NULL,
    dedup_key     TEXT COLLATE "C" NOT NULL,
    at            TIMESTAMPTZ NOT NULL,
    scheduled_for TIMESTAMPTZ,
    run_id        TEXT,
    error         TEXT,
    FOREIGN KEY (project, trigger_name) REFERENCES triggers (project, name) ON DELETE CASCADE,
    UNIQUE (project, trigger_name, dedup_key)
);

CREATE INDEX trigger_fires_by_trigger ON trigger_fires (project, trigger_name, at);

-- Positions of durable readers of the event log (the lifecycle triggers' reader).
CREATE TABLE cursors (
    name     TEXT COLLATE "C" PRIMARY KEY,
    position BIGINT NOT NULL
);

-- Artifacts: one row per version; `body` is the whole Artifact document (JSON), the other
-- columns are what queries filter or order on. `seq` orders versions newest first.
-- (project, name, hash) is unique: logging the same bytes again finds the existing row.
-- `produced_by` is a run id, not a foreign key: deleting the run keeps the lineage record.
CREATE TABLE artifacts (
    seq         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    project     TEXT COLLATE "C" NOT NULL REFERENCES projects (name) ON DELETE CASCADE,
    name        TEXT COLLATE "C" NOT NULL,
    version     TEXT COLLATE "C" NOT NULL,
    hash        TEXT COLLATE "C" NOT NULL,
    key         TEXT COLLATE "C" NOT NULL,
    produced_by TEXT COLLATE "C",
    created     TIMESTAMPTZ NOT NULL,
    body        TEXT NOT NULL,
    UNIQUE (project, name, version),
    UNIQUE (project, name, hash)
);

CREATE INDEX artifacts_produced_by ON artifacts (project, produced_by);
CREATE INDEX artifacts_key ON artifacts (key);

-- Lineage `consumes`: the artifact versions (keys) a run received as inputs. Not foreign
-- keys either: lineage outlives deletions.
CREATE TABLE run_inputs (
    project TEXT COLLATE "C" NOT NULL,
    run_id  TEXT COLLATE "C" NOT NULL,
    param   TEXT COLLATE "C" NOT NULL,
    key     TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (run_id, param)
);

CREATE INDEX run_inputs_key ON run_inputs (key, run_id);

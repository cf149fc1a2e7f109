-- Artifacts: versions of files or folders that runs logged, and which runs consumed which.
--
-- One row per version; `body` is the whole `Artifact` document (serde_json), the other columns
-- are what queries filter or order on. `seq` orders versions newest first (timestamps can tie).
-- A version is its content: (project, name, hash) is unique, so logging the same bytes again
-- finds the existing row. `produced_by` is a run id, not a foreign key: deleting the run keeps
-- the lineage record.
CREATE TABLE artifacts (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    project     TEXT NOT NULL REFERENCES projects (name) ON DELETE CASCADE,
    name        TEXT NOT NULL,
    version     TEXT NOT NULL,
    hash        TEXT NOT NULL,
    key         TEXT NOT NULL,
    produced_by TEXT,
    created     TEXT NOT NULL,
    body        TEXT NOT NULL,
    UNIQUE (project, name, version),
    UNIQUE (project, name, hash)
) STRICT;

CREATE INDEX artifacts_produced_by ON artifacts (project, produced_by);
CREATE INDEX artifacts_key ON artifacts (key);

-- Lineage `consumes`: the artifact versions (keys) a run received as inputs, recorded when the
-- run is created. Not foreign keys either: lineage outlives deletions.
CREATE TABLE run_inputs (
    project TEXT NOT NULL,
    run_id  TEXT NOT NULL,
    param   TEXT NOT NULL,
    key     TEXT NOT NULL,
    PRIMARY KEY (run_id, param)
) STRICT;

CREATE INDEX run_inputs_key ON run_inputs (key, run_id);

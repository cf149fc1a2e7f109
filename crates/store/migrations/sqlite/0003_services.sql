-- Services: a stable name (project, name) that points at the run currently backing it, and
-- the replicas a service run last reported. Timestamps and JSON follow 0001_init.sql.

-- `run_id` is deliberately not a foreign key to `runs`: when a service run is deleted, its
-- id may stay here, pointing at nothing, until the controller points the name at another run
-- or removes it with `delete_service(project, name, that id)`. A foreign key would either
-- refuse the run's deletion or (ON DELETE CASCADE / SET NULL) drop the name behind the
-- controller's back, so that it could never tell "the name was released" from "the run is
-- gone". Readers must expect a run_id whose run no longer exists.
-- The row goes with its project, like everything else.
CREATE TABLE services (
    project TEXT NOT NULL REFERENCES projects (name) ON DELETE CASCADE,
    name    TEXT NOT NULL,
    run_id  TEXT NOT NULL,
    created TEXT NOT NULL,
    updated TEXT NOT NULL,
    PRIMARY KEY (project, name)
) STRICT;

-- `status.service` of a service run (serde_json of `ServiceStatus`), NULL for other runs.
-- A column of the run row rather than a table of replicas: listings read it with the row,
-- at no extra query, and it is replaced whole on every report.
ALTER TABLE runs ADD COLUMN service TEXT;

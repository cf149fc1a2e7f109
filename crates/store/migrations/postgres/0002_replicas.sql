-- Several server replicas on one store: the replica that follows each active run (set when it
-- claims the run, moved when another adopts it), and each replica's lease.
ALTER TABLE runs ADD COLUMN owner TEXT;
CREATE INDEX runs_owner ON runs (owner, state);

CREATE TABLE replicas (
    id          TEXT PRIMARY KEY,
    lease_until TIMESTAMPTZ NOT NULL
);

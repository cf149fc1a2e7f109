-- Secrets: a project's named values, stored only as the server encrypted them. The store
-- never sees a plaintext; `value` is whatever opaque bytes the server's cipher produced
-- (nonce and tag included). Timestamps follow 0001_init.sql.
CREATE TABLE secrets (
    project    TEXT NOT NULL REFERENCES projects (name) ON DELETE CASCADE,
    name       TEXT NOT NULL,
    value      BLOB NOT NULL,
    created    TEXT NOT NULL,
    updated    TEXT NOT NULL,
    created_by TEXT NOT NULL,
    PRIMARY KEY (project, name)
) STRICT;

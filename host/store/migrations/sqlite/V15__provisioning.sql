-- Provisioning engine (capstan-provisioning). An instance is a provisioner
-- plugin's spec applied to one cluster; every spec revision is kept. The
-- inventory is the JSON list of set members the engine applied, with the
-- UIDs it saw (prune deletes only those, with a UID precondition). A plan
-- is stored as JSON with its verdicts, diffs and the live resourceVersions
-- it was computed against. A job is an apply or destroy of one instance:
-- its journal ('done', JSON list of finished steps) is written after each
-- step, so a replica that takes over the lease resumes it.
CREATE TABLE provisions (
    name             TEXT PRIMARY KEY,
    project          TEXT NOT NULL,
    plugin           TEXT NOT NULL,
    cluster          TEXT NOT NULL,
    revision         INTEGER NOT NULL,
    state            TEXT NOT NULL,
    drift            TEXT NOT NULL,
    detail           TEXT NOT NULL,
    inventory        TEXT NOT NULL,
    created_by       TEXT NOT NULL,
    created_ms       INTEGER NOT NULL,
    updated_ms       INTEGER NOT NULL,
    drift_checked_ms INTEGER NOT NULL
);
CREATE TABLE provision_specs (
    name       TEXT NOT NULL,
    revision   INTEGER NOT NULL,
    spec       TEXT NOT NULL,
    created_by TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    PRIMARY KEY (name, revision)
);
CREATE TABLE provision_plans (
    id         TEXT PRIMARY KEY,
    name       TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    plan       TEXT NOT NULL
);
CREATE INDEX provision_plans_by_name ON provision_plans (name, created_ms);
CREATE TABLE provision_jobs (
    id         TEXT PRIMARY KEY,
    name       TEXT NOT NULL,
    kind       TEXT NOT NULL,
    plan_id    TEXT NOT NULL,
    options    TEXT NOT NULL,
    state      TEXT NOT NULL,
    done       TEXT NOT NULL,
    progress   TEXT NOT NULL,
    result     TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL
);
CREATE INDEX provision_jobs_by_state ON provision_jobs (state);

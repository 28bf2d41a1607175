CREATE TABLE projects (
    name        TEXT PRIMARY KEY,
    description TEXT NOT NULL DEFAULT '',
    created_at  INTEGER NOT NULL,
    created_by  TEXT NOT NULL
);
INSERT INTO projects (name, description, created_at, created_by)
    VALUES ('default', 'Plugins that name no project', strftime('%s','now'), 'migration');
CREATE TABLE plugin_owners (
    name        TEXT PRIMARY KEY,
    project     TEXT NOT NULL REFERENCES projects (name),
    created_at  INTEGER NOT NULL
);
INSERT INTO plugin_owners (name, project, created_at)
    SELECT DISTINCT name, 'default', strftime('%s','now') FROM plugin_versions;
CREATE TABLE ceilings (
    project     TEXT NOT NULL,
    plugin      TEXT NOT NULL DEFAULT '',
    body        TEXT NOT NULL,
    source      TEXT NOT NULL,
    updated_at  INTEGER NOT NULL,
    updated_by  TEXT NOT NULL,
    PRIMARY KEY (project, plugin)
);
CREATE TABLE approvals (
    id            TEXT PRIMARY KEY,
    kind          TEXT NOT NULL,
    subject       TEXT NOT NULL,
    project       TEXT NOT NULL,
    requested_by  TEXT NOT NULL,
    approver_role TEXT NOT NULL,
    approver_scope TEXT NOT NULL,
    required      INTEGER NOT NULL,
    reasons       TEXT NOT NULL,
    detail        TEXT NOT NULL,
    state         TEXT NOT NULL,
    created_at    INTEGER NOT NULL,
    decided_at    INTEGER
);
CREATE INDEX approvals_by_subject ON approvals (kind, subject);
CREATE TABLE approval_votes (
    approval_id TEXT NOT NULL REFERENCES approvals (id),
    voter       TEXT NOT NULL,
    decision    TEXT NOT NULL,
    comment     TEXT NOT NULL,
    at          INTEGER NOT NULL,
    PRIMARY KEY (approval_id, voter)
);
CREATE TABLE api_tokens_v2 (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    name        TEXT NOT NULL,
    role        TEXT CHECK (role IN ('viewer', 'operator', 'admin')),
    projects    TEXT NOT NULL DEFAULT '{}',
    hash        TEXT NOT NULL UNIQUE,
    created_at  INTEGER NOT NULL,
    created_by  TEXT NOT NULL DEFAULT '',
    revoked_at  INTEGER
);
INSERT INTO api_tokens_v2 (id, name, role, hash, created_at, created_by, revoked_at)
    SELECT id, name, role, hash, created_at, created_by, revoked_at FROM api_tokens;
DROP TABLE api_tokens;
ALTER TABLE api_tokens_v2 RENAME TO api_tokens;
CREATE UNIQUE INDEX api_tokens_active_name ON api_tokens (name) WHERE revoked_at IS NULL;

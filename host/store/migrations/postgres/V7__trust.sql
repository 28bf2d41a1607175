CREATE TABLE projects (
    name        TEXT PRIMARY KEY,
    description TEXT NOT NULL DEFAULT '',
    created_at  BIGINT NOT NULL,
    created_by  TEXT NOT NULL
);
INSERT INTO projects (name, description, created_at, created_by)
    VALUES ('default', 'Plugins that name no project', CAST(EXTRACT(EPOCH FROM now()) AS BIGINT), 'migration');
CREATE TABLE plugin_owners (
    name        TEXT PRIMARY KEY,
    project     TEXT NOT NULL REFERENCES projects (name),
    created_at  BIGINT NOT NULL
);
CREATE TABLE ceilings (
    project     TEXT NOT NULL,
    plugin      TEXT NOT NULL DEFAULT '',
    body        TEXT NOT NULL,
    source      TEXT NOT NULL,
    updated_at  BIGINT NOT NULL,
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
    required      BIGINT NOT NULL,
    reasons       TEXT NOT NULL,
    detail        TEXT NOT NULL,
    state         TEXT NOT NULL,
    created_at    BIGINT NOT NULL,
    decided_at    BIGINT
);
CREATE INDEX approvals_by_subject ON approvals (kind, subject);
CREATE TABLE approval_votes (
    approval_id TEXT NOT NULL REFERENCES approvals (id),
    voter       TEXT NOT NULL,
    decision    TEXT NOT NULL,
    comment     TEXT NOT NULL,
    at          BIGINT NOT NULL,
    PRIMARY KEY (approval_id, voter)
);
ALTER TABLE api_tokens ALTER COLUMN role DROP NOT NULL;
ALTER TABLE api_tokens ADD COLUMN projects TEXT NOT NULL DEFAULT '{}';

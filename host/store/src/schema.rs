//! The whole schema, in one place: every table of every layer, as one
//! ordered list of migrations. A migration's position is its version
//! (`PRAGMA user_version`): append only, never edit or reorder, so that a
//! data directory of any earlier release upgrades in place.

/// One migration: what it is for, and its SQL.
pub struct Migration {
    /// Short name, for messages.
    pub name: &'static str,
    /// The SQL, run in one transaction.
    pub sql: &'static str,
}

/// Every migration, oldest first.
pub const MIGRATIONS: &[Migration] = &[
    // Plugin versions, the active version of each plugin, and their history.
    Migration {
        name: "core",
        sql: r#"
CREATE TABLE plugin_versions (
    name        TEXT NOT NULL,
    version     TEXT NOT NULL,
    digest      TEXT NOT NULL,
    manifest    TEXT NOT NULL,
    role        TEXT NOT NULL,
    source      TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (name, version)
);
CREATE TABLE plugins (
    name            TEXT PRIMARY KEY,
    active_version  TEXT NOT NULL,
    updated_at      INTEGER NOT NULL
);
CREATE TABLE history (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    name     TEXT NOT NULL,
    version  TEXT NOT NULL,
    action   TEXT NOT NULL,
    detail   TEXT NOT NULL DEFAULT '',
    at       INTEGER NOT NULL
);
CREATE INDEX history_by_name ON history (name, id);
"#,
    },
    // Table of audit records.
    Migration {
        name: "audit",
        sql: r#"
CREATE TABLE audit (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    at_ms       INTEGER NOT NULL,
    actor       TEXT NOT NULL,
    plugin      TEXT,
    version     TEXT,
    invocation  TEXT,
    capability  TEXT NOT NULL,
    target      TEXT NOT NULL,
    verb        TEXT NOT NULL,
    allowed     INTEGER NOT NULL,
    outcome     TEXT NOT NULL
);
CREATE INDEX audit_by_plugin ON audit (plugin, id);
"#,
    },
    // Table of kv entries.
    Migration {
        name: "kv",
        sql: r#"
CREATE TABLE kv (
    plugin  TEXT NOT NULL,
    key     TEXT NOT NULL,
    value   BLOB NOT NULL,
    PRIMARY KEY (plugin, key)
);
"#,
    },
    // Table of encrypted secrets.
    Migration {
        name: "secrets",
        sql: r#"
CREATE TABLE secrets (
    name        TEXT PRIMARY KEY,
    nonce       BLOB NOT NULL,
    ciphertext  BLOB NOT NULL,
    updated_at  INTEGER NOT NULL
);
"#,
    },
    // Table of API tokens. Only the SHA-256 of a token is stored. A name is
    // unique among tokens that are not revoked; revoked rows stay for the record.
    Migration {
        name: "api_tokens",
        sql: r#"
CREATE TABLE api_tokens (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    name        TEXT NOT NULL,
    role        TEXT NOT NULL CHECK (role IN ('viewer', 'operator', 'admin')),
    hash        TEXT NOT NULL UNIQUE,
    created_at  INTEGER NOT NULL,
    created_by  TEXT NOT NULL DEFAULT '',
    revoked_at  INTEGER
);
CREATE UNIQUE INDEX api_tokens_active_name ON api_tokens (name) WHERE revoked_at IS NULL;
"#,
    },
    // Adds what a mutation changed, as JSON text (`''` for capability uses).
    Migration {
        name: "audit_detail",
        sql: r#"
ALTER TABLE audit ADD COLUMN detail TEXT NOT NULL DEFAULT '';
"#,
    },
    // Tables of the trust model (projects, ownership, ceilings, approvals).
    Migration {
        name: "trust",
        sql: r#"
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
"#,
    },
    // Binds ciphertexts to their secret's name (`format`: 0 = written before,
    // without associated data; 1 = bound to the name) and stores a value
    // encrypted under the current key, so a wrong key is refused at startup.
    Migration {
        name: "secrets_bound",
        sql: r#"
ALTER TABLE secrets ADD COLUMN format INTEGER NOT NULL DEFAULT 0;
CREATE TABLE secrets_key_check (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    nonce       BLOB NOT NULL,
    ciphertext  BLOB NOT NULL
);
"#,
    },
    // The lease table.
    Migration {
        name: "leases",
        sql: r#"
CREATE TABLE leases (
    name           TEXT PRIMARY KEY,
    holder         TEXT NOT NULL,
    token          INTEGER NOT NULL,
    expires_at_ms  INTEGER NOT NULL
);
"#,
    },
];

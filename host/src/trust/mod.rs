//! The trust model: who may grant what.
//!
//! * [`Role`]: viewer < operator < admin, held globally or per project.
//! * [`projects`]: projects own plugins; only members publish to them.
//! * [`ceilings`]: what administrators allow to be granted at all.
//! * [`approvals`]: the one approval gate, shared by every engine.
//! * [`diff`]: how the grants of two versions differ, and whether they widen.
//!
//! Nothing here knows HTTP: the API turns a bearer token into an
//! [`Authority`], and the registry decides with it.

pub mod approvals;
pub mod ceilings;
pub mod diff;
pub mod projects;

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// Tables of the trust model (projects, ownership, ceilings, approvals).
pub const SCHEMA: &str = r#"
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
"#;

/// The project of plugins whose manifest names none.
pub const DEFAULT_PROJECT: &str = "default";

/// What a token may do, globally or in one project. Ordered: each role
/// includes the ones below it.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Read.
    Viewer,
    /// Read, plus invoke, upload, activate and roll back plugins.
    Operator,
    /// Everything in its scope (globally: tokens, secrets, ceilings, approvals).
    Admin,
}

impl Role {
    /// The lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "viewer" => Ok(Role::Viewer),
            "operator" => Ok(Role::Operator),
            "admin" => Ok(Role::Admin),
            other => Err(format!(
                "unknown role `{other}`; expected viewer, operator or admin"
            )),
        }
    }
}

/// Who asks for a change, with the roles that decide what it may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authority {
    /// The audit actor: `token:<name>`, `directory`, `bundled`.
    pub actor: String,
    /// Role over every project, if any.
    pub global: Option<Role>,
    /// Roles in single projects.
    pub projects: BTreeMap<String, Role>,
}

impl Authority {
    /// The server itself (bundled plugins, the plugins directory, whose
    /// files only the server's administrators can write).
    pub fn system(actor: &str) -> Authority {
        Authority {
            actor: actor.into(),
            global: Some(Role::Admin),
            projects: BTreeMap::new(),
        }
    }

    /// The role in `project`: the higher of the global and the project role.
    pub fn role_in(&self, project: &str) -> Option<Role> {
        self.global.max(self.projects.get(project).copied())
    }

    /// The highest role anywhere.
    pub fn best_role(&self) -> Option<Role> {
        self.global.max(self.projects.values().copied().max())
    }

    /// Whether this is a global administrator.
    pub fn is_admin(&self) -> bool {
        self.global == Some(Role::Admin)
    }

    /// Whether `project`'s resources are visible.
    pub fn can_view(&self, project: &str) -> bool {
        self.role_in(project).is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn project_roles_do_not_leak_into_other_projects() {
        let a = Authority {
            actor: "token:a".into(),
            global: None,
            projects: [("team-a".to_string(), Role::Operator)].into(),
        };
        assert_eq!(a.role_in("team-a"), Some(Role::Operator));
        assert_eq!(a.role_in("team-b"), None);
        assert_eq!(a.best_role(), Some(Role::Operator));
        assert!(!a.is_admin());
        let v = Authority {
            global: Some(Role::Viewer),
            ..a
        };
        assert_eq!(v.role_in("team-b"), Some(Role::Viewer));
        assert_eq!(v.role_in("team-a"), Some(Role::Operator));
    }
}

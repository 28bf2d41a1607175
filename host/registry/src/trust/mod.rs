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
#[schema(as = AccessRole)]
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

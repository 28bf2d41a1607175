//! Projects, plugin ownership and stored ceilings.
//!
//! A project is a team's unit (as a KubeSphere workspace project). The first
//! version of a plugin fixes its owning project; later versions must name
//! the same one, and only members of it may publish them.

use std::sync::Arc;

use crate::store::args;
use crate::store::sql::{DbError, FromValue, Row, Value};
use serde::{Deserialize, Serialize};

use super::DEFAULT_PROJECT;
use super::ceilings::{Ceiling, ScopedCeiling};
use crate::store::Store;

/// Why a project or ceiling operation failed.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    /// Bad name or body.
    #[error("{0}")]
    Invalid(String),
    /// No such project or ceiling.
    #[error("{0}")]
    NotFound(String),
    /// It exists, or is still in use.
    #[error("{0}")]
    Conflict(String),
    /// Storage failed.
    #[error("trust storage: {0}")]
    Db(#[from] DbError),
}

/// A project.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Project {
    /// Name: a DNS label.
    pub name: String,
    /// What it is for.
    #[serde(default)]
    pub description: String,
    /// Unix seconds.
    #[serde(default)]
    pub created_at: i64,
    /// Who created it.
    #[serde(default)]
    pub created_by: String,
}

use crate::store::unix_secs as now;

/// Checks a project name: a DNS label (`[a-z0-9-]{1,63}`).
pub fn validate_project_name(name: &str) -> Result<(), TrustError> {
    crate::manifest::validate_name(name).map_err(|_| {
        TrustError::Invalid(format!(
            "project name `{name}` must be 1-63 characters of a-z, 0-9 and `-`, not starting or ending with `-`"
        ))
    })
}

/// Projects, owners and ceilings in the store.
pub struct Projects {
    store: Arc<Store>,
}

impl Projects {
    /// Over `store`.
    pub fn new(store: Arc<Store>) -> Projects {
        Projects { store }
    }

    fn rows(&self, sql: &str, args: &[Value]) -> Result<Vec<Row>, DbError> {
        self.store.with(|c| c.rows(sql, args))
    }

    fn exec(&self, sql: &str, args: &[Value]) -> Result<u64, DbError> {
        self.store.with(|c| c.exec(sql, args))
    }

    /// The first column of the first row, if any.
    fn first<T: FromValue>(&self, sql: &str, args: &[Value]) -> Result<Option<T>, DbError> {
        self.store
            .with(|c| c.row(sql, args))?
            .map(|r| r.get(0))
            .transpose()
    }

    /// Every project, by name.
    pub fn list(&self) -> Result<Vec<Project>, TrustError> {
        let rows = self.rows(
            "SELECT name, description, created_at, created_by FROM projects ORDER BY name",
            args![],
        )?;
        let project = |r: &Row| {
            Ok(Project {
                name: r.get(0)?,
                description: r.get(1)?,
                created_at: r.get(2)?,
                created_by: r.get(3)?,
            })
        };
        rows.iter().map(project).collect()
    }

    /// Whether `name` exists.
    pub fn exists(&self, name: &str) -> Result<bool, TrustError> {
        Ok(self
            .first::<i64>("SELECT 1 FROM projects WHERE name = ?1", args![name])?
            .is_some())
    }

    /// Creates a project.
    pub fn create(&self, name: &str, description: &str, by: &str) -> Result<Project, TrustError> {
        validate_project_name(name)?;
        let at = now();
        let n = self.exec(
            "INSERT INTO projects (name, description, created_at, created_by) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT DO NOTHING",
            args![name, description, at, by],
        )?;
        if n == 0 {
            return Err(TrustError::Conflict(format!(
                "project `{name}` already exists"
            )));
        }
        Ok(Project {
            name: name.into(),
            description: description.into(),
            created_at: at,
            created_by: by.into(),
        })
    }

    /// Deletes a project that owns no plugin.
    pub fn delete(&self, name: &str) -> Result<(), TrustError> {
        if name == DEFAULT_PROJECT {
            return Err(TrustError::Conflict(format!(
                "`{DEFAULT_PROJECT}` cannot be deleted"
            )));
        }
        self.store.with(|c| {
            c.tx(|tx| {
                let owned: i64 = tx.value(
                    "SELECT COUNT(*) FROM plugin_owners WHERE project = ?1",
                    args![name],
                )?;
                if owned > 0 {
                    return Err(TrustError::Conflict(format!(
                        "project `{name}` still owns {owned} plugin(s); delete them first"
                    )));
                }
                if tx.exec("DELETE FROM projects WHERE name = ?1", args![name])? == 0 {
                    return Err(TrustError::NotFound(format!("no project named `{name}`")));
                }
                tx.exec("DELETE FROM ceilings WHERE project = ?1", args![name])?;
                Ok(())
            })
        })
    }

    /// The project owning `plugin`, if it was ever published.
    pub fn owner(&self, plugin: &str) -> Result<Option<String>, TrustError> {
        Ok(self.first(
            "SELECT project FROM plugin_owners WHERE name = ?1",
            args![plugin],
        )?)
    }

    /// Every (plugin, project) pair.
    pub fn owners(&self) -> Result<Vec<(String, String)>, TrustError> {
        let rows = self.rows("SELECT name, project FROM plugin_owners", args![])?;
        rows.iter().map(|r| Ok((r.get(0)?, r.get(1)?))).collect()
    }

    /// Records `project` as the owner of `plugin` unless it has one.
    pub fn claim(&self, plugin: &str, project: &str) -> Result<(), TrustError> {
        self.exec(
            "INSERT INTO plugin_owners (name, project, created_at) VALUES (?1, ?2, ?3)
             ON CONFLICT DO NOTHING",
            args![plugin, project, now()],
        )?;
        Ok(())
    }

    /// Forgets the owner of a deleted plugin.
    pub fn release(&self, plugin: &str) -> Result<(), TrustError> {
        self.exec("DELETE FROM plugin_owners WHERE name = ?1", args![plugin])?;
        Ok(())
    }

    /// Every stored ceiling.
    pub fn ceilings(&self) -> Result<Vec<ScopedCeiling>, TrustError> {
        let rows = self.rows(
            "SELECT project, plugin, body FROM ceilings ORDER BY project, plugin",
            args![],
        )?;
        let mut out = Vec::new();
        for row in rows {
            let (project, plugin, body): (String, String, String) =
                (row.get(0)?, row.get(1)?, row.get(2)?);
            let ceiling: Ceiling = serde_json::from_str(&body).map_err(|e| {
                TrustError::Invalid(format!("stored ceiling of {project}/{plugin}: {e}"))
            })?;
            out.push(ScopedCeiling {
                project,
                plugin: (!plugin.is_empty()).then_some(plugin),
                ceiling,
            });
        }
        Ok(out)
    }

    /// Sets a ceiling; returns the one it replaced.
    pub fn put_ceiling(
        &self,
        c: &ScopedCeiling,
        source: &str,
        by: &str,
    ) -> Result<Option<Ceiling>, TrustError> {
        c.ceiling.validate().map_err(TrustError::Invalid)?;
        if c.project != "*" {
            validate_project_name(&c.project)?;
            if !self.exists(&c.project)? {
                return Err(TrustError::NotFound(format!(
                    "no project named `{}`; create it first",
                    c.project
                )));
            }
        }
        let plugin = c.plugin.clone().unwrap_or_default();
        let old = self.ceiling(&c.project, &plugin)?;
        self.exec(
            "INSERT INTO ceilings (project, plugin, body, source, updated_at, updated_by)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT (project, plugin) DO UPDATE SET body = ?3, source = ?4, updated_at = ?5, updated_by = ?6",
            args![
                c.project,
                plugin,
                serde_json::to_string(&c.ceiling).unwrap_or_default(),
                source,
                now(),
                by
            ],
        )?;
        Ok(old)
    }

    /// Removes a ceiling; returns it.
    pub fn delete_ceiling(&self, project: &str, plugin: &str) -> Result<Ceiling, TrustError> {
        let old = self.ceiling(project, plugin)?.ok_or_else(|| {
            TrustError::NotFound(format!("no ceiling for `{project}` `{plugin}`"))
        })?;
        self.exec(
            "DELETE FROM ceilings WHERE project = ?1 AND plugin = ?2",
            args![project, plugin],
        )?;
        Ok(old)
    }

    fn ceiling(&self, project: &str, plugin: &str) -> Result<Option<Ceiling>, TrustError> {
        let body: Option<String> = self.first(
            "SELECT body FROM ceilings WHERE project = ?1 AND plugin = ?2",
            args![project, plugin],
        )?;
        Ok(body.and_then(|b| serde_json::from_str(&b).ok()))
    }

    /// Config-file ceilings become stored ones where none is stored yet
    /// (so changes made through the API win over the file). Projects they
    /// name are created.
    pub fn seed(&self, defaults: &[ScopedCeiling]) -> Result<Vec<ScopedCeiling>, TrustError> {
        let mut seeded = Vec::new();
        for c in defaults {
            if c.project != "*" && !self.exists(&c.project)? {
                self.create(&c.project, "from the config file", "config")?;
            }
            let plugin = c.plugin.clone().unwrap_or_default();
            if self.ceiling(&c.project, &plugin)?.is_none() {
                self.put_ceiling(c, "config", "config")?;
                seeded.push(c.clone());
            }
        }
        Ok(seeded)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secrets(project: &str, names: &[&str]) -> ScopedCeiling {
        ScopedCeiling {
            project: project.into(),
            plugin: None,
            ceiling: Ceiling {
                secrets: names.iter().map(|s| s.to_string()).collect(),
                ..Ceiling::default()
            },
        }
    }

    #[test]
    fn projects_own_plugins_and_keep_ceilings_until_deleted() {
        for t in crate::store::testing::backends() {
            projects_owners_ceilings(Projects::new(t.store.clone()), t.backend());
        }
    }

    fn projects_owners_ceilings(p: Projects, b: crate::store::sql::Backend) {
        for name in ["web", "a-team", "db"] {
            p.create(name, "", "token:admin").unwrap();
        }
        assert!(
            matches!(p.create("web", "", "x"), Err(TrustError::Conflict(_))),
            "{b:?}"
        );
        let names: Vec<String> = p.list().unwrap().into_iter().map(|p| p.name).collect();
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(names, sorted, "{b:?}: listed by name");
        assert!(
            ["web", "a-team", "db", DEFAULT_PROJECT]
                .iter()
                .all(|n| names.iter().any(|m| m == n)),
            "{b:?}: {names:?}"
        );

        // The first claim fixes the owner.
        p.claim("hello", "web").unwrap();
        p.claim("hello", "db").unwrap();
        assert_eq!(p.owner("hello").unwrap().as_deref(), Some("web"), "{b:?}");
        assert!(
            matches!(p.delete("web"), Err(TrustError::Conflict(_))),
            "{b:?}: web still owns hello"
        );

        // A second put replaces the ceiling and returns the first.
        assert_eq!(
            p.put_ceiling(&secrets("web", &["web-*"]), "api", "t")
                .unwrap(),
            None,
            "{b:?}"
        );
        let old = p
            .put_ceiling(&secrets("web", &["web-db"]), "api", "t")
            .unwrap();
        assert_eq!(old, Some(secrets("web", &["web-*"]).ceiling), "{b:?}");
        assert_eq!(
            p.ceilings().unwrap(),
            [secrets("web", &["web-db"])],
            "{b:?}"
        );
        assert!(
            matches!(
                p.put_ceiling(&secrets("nope", &["x"]), "api", "t"),
                Err(TrustError::NotFound(_))
            ),
            "{b:?}"
        );

        // Once its plugin is gone the project goes, and its ceiling with it.
        p.release("hello").unwrap();
        assert_eq!(p.owner("hello").unwrap(), None, "{b:?}");
        p.delete("web").unwrap();
        assert!(!p.exists("web").unwrap(), "{b:?}");
        assert!(p.ceilings().unwrap().is_empty(), "{b:?}");
        assert!(
            matches!(p.delete("web"), Err(TrustError::NotFound(_))),
            "{b:?}"
        );
    }
}

//! The SQLite database: schema, migrations, and plugin-version queries.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use rusqlite::{Connection, OptionalExtension, params};

use super::StoreError;

/// One stored plugin version.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct VersionRecord {
    /// Plugin name.
    pub name: String,
    /// Version.
    pub version: String,
    /// sha256 of the component, hex.
    pub digest: String,
    /// The manifest as TOML.
    pub manifest: String,
    /// Role.
    pub role: String,
    /// Where it came from: `api`, `directory` or `bundled`.
    pub source: String,
    /// Unix seconds.
    pub created_at: i64,
}

/// One entry of a plugin's history.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct HistoryEntry {
    /// Version concerned.
    pub version: String,
    /// `upload`, `activate`, `rollback`, `replace`, `load-failed`, `delete-version`.
    pub action: String,
    /// Extra information (e.g. the load error).
    pub detail: String,
    /// Unix seconds.
    pub at: i64,
}

/// The server's durable state.
pub struct Store {
    pub(super) root: PathBuf,
    db: Mutex<Connection>,
}

pub(super) use super::unix_secs as now;

impl Store {
    /// Opens (creating if needed) the store under `root`.
    pub fn open(root: &Path) -> Result<Store, StoreError> {
        std::fs::create_dir_all(root).map_err(|source| StoreError::Io {
            what: "create data directory",
            path: root.display().to_string(),
            source,
        })?;
        let conn = Connection::open(root.join("capstan.db"))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        migrate(&conn)?;
        Ok(Store {
            root: root.to_path_buf(),
            db: Mutex::new(conn),
        })
    }

    /// The data directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Locks the connection for capability modules that keep their own tables.
    pub fn conn(&self) -> MutexGuard<'_, Connection> {
        self.db.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records a version. The same (name, version) with another digest is a
    /// conflict unless `replace` is set (the plugins directory's dev loop).
    /// Returns whether anything changed.
    pub fn insert_version(&self, rec: &VersionRecord, replace: bool) -> Result<bool, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let existing: Option<(String, String)> = tx
            .query_row(
                "SELECT digest, manifest FROM plugin_versions WHERE name = ?1 AND version = ?2",
                params![rec.name, rec.version],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        let action = match existing {
            Some((d, m)) if d == rec.digest && m == rec.manifest => return Ok(false),
            Some((d, _)) if !replace => {
                return Err(StoreError::Conflict(format!(
                    "{} {} already exists with different content (digest {}); publish it under a new version",
                    rec.name,
                    rec.version,
                    &d[..12]
                )));
            }
            Some(_) => "replace",
            None => "upload",
        };
        tx.execute(
            "INSERT OR REPLACE INTO plugin_versions (name, version, digest, manifest, role, source, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![rec.name, rec.version, rec.digest, rec.manifest, rec.role, rec.source, rec.created_at],
        )?;
        history(&tx, &rec.name, &rec.version, action, &rec.digest)?;
        tx.commit()?;
        Ok(true)
    }

    /// One version.
    pub fn version(&self, name: &str, version: &str) -> Result<Option<VersionRecord>, StoreError> {
        Ok(self
            .conn()
            .query_row(
                "SELECT name, version, digest, manifest, role, source, created_at
                 FROM plugin_versions WHERE name = ?1 AND version = ?2",
                params![name, version],
                row_to_version,
            )
            .optional()?)
    }

    /// All versions of a plugin, oldest first.
    pub fn versions(&self, name: &str) -> Result<Vec<VersionRecord>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT name, version, digest, manifest, role, source, created_at
             FROM plugin_versions WHERE name = ?1 ORDER BY created_at, rowid",
        )?;
        let rows = stmt.query_map(params![name], row_to_version)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Every plugin with its active version.
    pub fn active_versions(&self) -> Result<Vec<(String, String)>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare("SELECT name, active_version FROM plugins ORDER BY name")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The active version of `name`, if any.
    pub fn active_version(&self, name: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .conn()
            .query_row(
                "SELECT active_version FROM plugins WHERE name = ?1",
                params![name],
                |r| r.get(0),
            )
            .optional()?)
    }

    /// Makes `version` the active one; `action` is `activate` or `rollback`.
    pub fn set_active(&self, name: &str, version: &str, action: &str) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        tx.execute(
            "INSERT INTO plugins (name, active_version, updated_at) VALUES (?1, ?2, ?3)
             ON CONFLICT(name) DO UPDATE SET active_version = ?2, updated_at = ?3",
            params![name, version, now()],
        )?;
        history(&tx, name, version, action, "")?;
        tx.commit()?;
        Ok(())
    }

    /// Appends a history entry without changing anything else.
    pub fn note(
        &self,
        name: &str,
        version: &str,
        action: &str,
        detail: &str,
    ) -> Result<(), StoreError> {
        history(&self.conn(), name, version, action, detail)?;
        Ok(())
    }

    /// A plugin's history, oldest first.
    pub fn history(&self, name: &str) -> Result<Vec<HistoryEntry>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT version, action, detail, at FROM history WHERE name = ?1 ORDER BY id",
        )?;
        let rows = stmt.query_map(params![name], |r| {
            Ok(HistoryEntry {
                version: r.get(0)?,
                action: r.get(1)?,
                detail: r.get(2)?,
                at: r.get(3)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The version a rollback returns to: activations form a stack that each
    /// rollback pops, so repeated rollbacks walk further back in time.
    pub fn rollback_target(&self, name: &str) -> Result<Option<String>, StoreError> {
        let mut stack: Vec<String> = Vec::new();
        for h in self.history(name)? {
            match h.action.as_str() {
                "activate" if stack.last() != Some(&h.version) => stack.push(h.version),
                "rollback" => {
                    stack.pop();
                }
                "delete-version" => stack.retain(|v| *v != h.version),
                _ => {}
            }
        }
        Ok(stack.len().checked_sub(2).map(|i| stack[i].clone()))
    }

    /// Removes a version that is not active.
    pub fn delete_version(&self, name: &str, version: &str) -> Result<(), StoreError> {
        if self.active_version(name)?.as_deref() == Some(version) {
            return Err(StoreError::Conflict(format!(
                "{name} {version} is the active version; activate another version first"
            )));
        }
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let n = tx.execute(
            "DELETE FROM plugin_versions WHERE name = ?1 AND version = ?2",
            params![name, version],
        )?;
        if n == 0 {
            return Err(StoreError::NotFound(format!(
                "{name} has no version {version}"
            )));
        }
        history(&tx, name, version, "delete-version", "")?;
        tx.commit()?;
        Ok(())
    }

    /// Removes a plugin with all its versions and history.
    pub fn delete_plugin(&self, name: &str) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let n = tx.execute("DELETE FROM plugin_versions WHERE name = ?1", params![name])?;
        tx.execute("DELETE FROM plugins WHERE name = ?1", params![name])?;
        tx.execute("DELETE FROM history WHERE name = ?1", params![name])?;
        if n == 0 {
            return Err(StoreError::NotFound(format!("no plugin named {name}")));
        }
        tx.commit()?;
        Ok(())
    }
}

fn history(
    conn: &Connection,
    name: &str,
    version: &str,
    action: &str,
    detail: &str,
) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT INTO history (name, version, action, detail, at) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![name, version, action, detail, now()],
    )?;
    Ok(())
}

fn row_to_version(r: &rusqlite::Row<'_>) -> rusqlite::Result<VersionRecord> {
    Ok(VersionRecord {
        name: r.get(0)?,
        version: r.get(1)?,
        digest: r.get(2)?,
        manifest: r.get(3)?,
        role: r.get(4)?,
        source: r.get(5)?,
        created_at: r.get(6)?,
    })
}

/// Extra migrations registered by capability modules run after the core ones.
pub(crate) fn migrate(conn: &Connection) -> rusqlite::Result<()> {
    let all: Vec<&str> = super::schema::MIGRATIONS.iter().map(|m| m.sql).collect();
    let current: usize =
        conn.pragma_query_value(None, "user_version", |r| r.get::<_, i64>(0))? as usize;
    for (i, sql) in all.iter().enumerate().skip(current) {
        conn.execute_batch(&format!(
            "BEGIN; {sql}; PRAGMA user_version = {}; COMMIT;",
            i + 1
        ))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(version: &str, digest: &str) -> VersionRecord {
        VersionRecord {
            name: "p".into(),
            version: version.into(),
            digest: digest.into(),
            manifest: "m".into(),
            role: "deploy-step".into(),
            source: "api".into(),
            created_at: now(),
        }
    }

    #[test]
    fn rollback_walks_back_through_activations() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        for v in ["1.0.0", "1.1.0", "1.2.0"] {
            s.insert_version(&rec(v, &format!("{v:0>64}")), false)
                .unwrap();
            s.set_active("p", v, "activate").unwrap();
        }
        assert_eq!(s.rollback_target("p").unwrap().as_deref(), Some("1.1.0"));
        s.set_active("p", "1.1.0", "rollback").unwrap();
        assert_eq!(s.rollback_target("p").unwrap().as_deref(), Some("1.0.0"));
        s.set_active("p", "1.0.0", "rollback").unwrap();
        assert_eq!(s.rollback_target("p").unwrap(), None);
        assert_eq!(s.active_version("p").unwrap().as_deref(), Some("1.0.0"));
    }

    #[test]
    fn same_version_other_content_is_a_conflict() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        assert!(
            s.insert_version(&rec("1.0.0", &"a".repeat(64)), false)
                .unwrap()
        );
        assert!(
            !s.insert_version(&rec("1.0.0", &"a".repeat(64)), false)
                .unwrap()
        );
        let e = s
            .insert_version(&rec("1.0.0", &"b".repeat(64)), false)
            .unwrap_err();
        assert!(e.to_string().contains("new version"), "{e}");
        assert!(
            s.insert_version(&rec("1.0.0", &"b".repeat(64)), true)
                .unwrap()
        );
    }

    #[test]
    fn reopening_keeps_everything() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = Store::open(dir.path()).unwrap();
            s.insert_version(&rec("1.0.0", &"a".repeat(64)), false)
                .unwrap();
            s.set_active("p", "1.0.0", "activate").unwrap();
        }
        let s = Store::open(dir.path()).unwrap();
        assert_eq!(
            s.active_versions().unwrap(),
            vec![("p".into(), "1.0.0".into())]
        );
    }
}

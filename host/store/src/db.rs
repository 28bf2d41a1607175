//! The store: a pool of database connections (SQLite or PostgreSQL), and
//! the plugin-version queries.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::StoreError;
use crate::args;
use crate::changes::{Change, announce};
use crate::sql::{Backend, Conn, Database, DbError, Pool, Row, migrate};

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
    pool: Arc<Pool>,
}

pub(super) use super::unix_secs as now;

const VERSION_COLUMNS: &str = "name, version, digest, manifest, role, source, created_at";

impl Store {
    /// Opens (creating if needed) the store under `root`, with the embedded
    /// SQLite database `root/capstan.db`.
    pub fn open(root: &Path) -> Result<Store, StoreError> {
        Store::open_with(root, Database::Sqlite(root.join("capstan.db")))
    }

    /// Opens the store under `root` (blobs and artifacts) with its tables in
    /// `db`, migrating the schema to this build's version.
    pub fn open_with(root: &Path, db: Database) -> Result<Store, StoreError> {
        std::fs::create_dir_all(root).map_err(|source| StoreError::Io {
            what: "create data directory",
            path: root.display().to_string(),
            source,
        })?;
        let size = match db.backend() {
            Backend::Sqlite => 4,
            Backend::Postgres => 8,
        };
        let pool = blocking(|| {
            let pool = Pool::open(db, size)?;
            migrate(&mut *pool.get()?)?;
            Ok::<_, StoreError>(pool)
        })?;
        Ok(Store {
            root: root.to_path_buf(),
            pool: Arc::new(pool),
        })
    }

    /// The data directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Which database backs the store.
    pub fn backend(&self) -> Backend {
        self.pool.database().backend()
    }

    /// The database (its URL without password for messages).
    pub fn database(&self) -> &Database {
        self.pool.database()
    }

    /// Runs blocking database work on a pooled connection. Prefer
    /// [`Store::run`] from async code; called on an async worker anyway, the
    /// work runs off the runtime (see [`blocking`]).
    pub fn with<T: Send, E: From<DbError> + Send>(
        &self,
        f: impl FnOnce(&mut Conn) -> Result<T, E> + Send,
    ) -> Result<T, E> {
        blocking(|| f(&mut *self.pool.get()?))
    }

    /// Runs database work on a blocking thread, so that a slow or locked
    /// database never stalls an async worker.
    pub async fn run<T, E>(
        &self,
        f: impl FnOnce(&mut Conn) -> Result<T, E> + Send + 'static,
    ) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<DbError> + Send + 'static,
    {
        let pool = self.pool.clone();
        match tokio::task::spawn_blocking(move || f(&mut *pool.get()?)).await {
            Ok(r) => r,
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }

    /// Records a version. The same (name, version) with another digest is a
    /// conflict unless `replace` is set (the plugins directory's dev loop).
    /// Returns whether anything changed.
    pub fn insert_version(&self, rec: &VersionRecord, replace: bool) -> Result<bool, StoreError> {
        self.with(|c| c.tx(|c| insert_version(c, rec, replace)))
    }

    /// One version.
    pub fn version(&self, name: &str, version: &str) -> Result<Option<VersionRecord>, StoreError> {
        self.with(|c| {
            c.row(
                &format!(
                    "SELECT {VERSION_COLUMNS} FROM plugin_versions WHERE name = ?1 AND version = ?2"
                ),
                args![name, version],
            )?
            .map(|r| row_to_version(&r))
            .transpose()
        })
    }

    /// All versions of a plugin, oldest first.
    pub fn versions(&self, name: &str) -> Result<Vec<VersionRecord>, StoreError> {
        self.with(|c| {
            c.rows(
                &format!("SELECT {VERSION_COLUMNS} FROM plugin_versions WHERE name = ?1 ORDER BY created_at, seq"),
                args![name],
            )?
            .iter()
            .map(row_to_version)
            .collect()
        })
    }

    /// Every plugin with its active version.
    pub fn active_versions(&self) -> Result<Vec<(String, String)>, StoreError> {
        self.with(|c| {
            c.rows(
                "SELECT name, active_version FROM plugins ORDER BY name",
                args![],
            )?
            .iter()
            .map(|r| Ok((r.get(0)?, r.get(1)?)))
            .collect()
        })
    }

    /// The version and digest each of `wanted` resolves to, in one read:
    /// the version given, or the active one when `None`; `None` where the
    /// plugin has no such version (or no active one).
    pub fn resolve_versions(
        &self,
        wanted: &[(String, Option<String>)],
    ) -> Result<Vec<Option<(String, String)>>, StoreError> {
        self.with(|c| {
            wanted
                .iter()
                .map(|(name, version)| {
                    let version = match version {
                        Some(v) => Some(v.clone()),
                        None => active_version(c, name)?,
                    };
                    let Some(version) = version else {
                        return Ok(None);
                    };
                    let digest: Option<String> = match c.row(
                        "SELECT digest FROM plugin_versions WHERE name = ?1 AND version = ?2",
                        args![name, &version],
                    )? {
                        Some(r) => Some(r.get(0)?),
                        None => None,
                    };
                    Ok(digest.map(|d| (version, d)))
                })
                .collect()
        })
    }

    /// The active version of `name`, if any.
    pub fn active_version(&self, name: &str) -> Result<Option<String>, StoreError> {
        self.with(|c| active_version(c, name))
    }

    /// Makes `version` the active one; `action` is `activate` or `rollback`.
    pub fn set_active(&self, name: &str, version: &str, action: &str) -> Result<(), StoreError> {
        self.with(|c| {
            c.tx(|c| {
                c.exec(
                    "INSERT INTO plugins (name, active_version, updated_at) VALUES (?1, ?2, ?3)
                     ON CONFLICT(name) DO UPDATE SET active_version = ?2, updated_at = ?3",
                    args![name, version, now()],
                )?;
                announce(c, &Change::Plugin(name.into()))?;
                history(c, name, version, action, "")
            })
        })
    }

    /// Appends a history entry without changing anything else.
    pub fn note(
        &self,
        name: &str,
        version: &str,
        action: &str,
        detail: &str,
    ) -> Result<(), StoreError> {
        self.with(|c| history(c, name, version, action, detail))
    }

    /// A plugin's history, oldest first.
    pub fn history(&self, name: &str) -> Result<Vec<HistoryEntry>, StoreError> {
        self.with(|c| {
            c.rows(
                "SELECT version, action, detail, at FROM history WHERE name = ?1 ORDER BY id",
                args![name],
            )?
            .iter()
            .map(|r| {
                Ok(HistoryEntry {
                    version: r.get(0)?,
                    action: r.get(1)?,
                    detail: r.get(2)?,
                    at: r.get(3)?,
                })
            })
            .collect()
        })
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
        self.with(|c| {
            c.tx(|c| {
                if active_version(c, name)?.as_deref() == Some(version) {
                    return Err(StoreError::Conflict(format!(
                        "{name} {version} is the active version; activate another version first"
                    )));
                }
                let n = c.exec(
                    "DELETE FROM plugin_versions WHERE name = ?1 AND version = ?2",
                    args![name, version],
                )?;
                if n == 0 {
                    return Err(StoreError::NotFound(format!(
                        "{name} has no version {version}"
                    )));
                }
                history(c, name, version, "delete-version", "")
            })
        })
    }

    /// Removes a plugin with all its versions and history.
    pub fn delete_plugin(&self, name: &str) -> Result<(), StoreError> {
        self.with(|c| {
            c.tx(|c| {
                let n = c.exec("DELETE FROM plugin_versions WHERE name = ?1", args![name])?;
                c.exec("DELETE FROM plugins WHERE name = ?1", args![name])?;
                c.exec("DELETE FROM history WHERE name = ?1", args![name])?;
                announce(c, &Change::Plugin(name.into()))?;
                if n == 0 {
                    return Err(StoreError::NotFound(format!("no plugin named {name}")));
                }
                Ok(())
            })
        })
    }
}

/// Runs blocking work off the async runtime: under `block_in_place` on a
/// multi-thread runtime's worker, on a scoped thread of its own on a
/// current-thread runtime (the PostgreSQL client must not run inside a
/// runtime, and must not stall the only worker), directly elsewhere.
pub fn blocking<T: Send>(call: impl FnOnce() -> T + Send) -> T {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(RuntimeFlavor::MultiThread) => tokio::task::block_in_place(call),
        Ok(_) => std::thread::scope(|s| {
            s.spawn(call)
                .join()
                .unwrap_or_else(|p| std::panic::resume_unwind(p))
        }),
        Err(_) => call(),
    }
}

fn insert_version(c: &mut Conn, rec: &VersionRecord, replace: bool) -> Result<bool, StoreError> {
    let existing = c.row(
        "SELECT digest, manifest FROM plugin_versions WHERE name = ?1 AND version = ?2",
        args![rec.name, rec.version],
    )?;
    let existing: Option<(String, String)> = match existing {
        Some(r) => Some((r.get(0)?, r.get(1)?)),
        None => None,
    };
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
    c.exec(
        "INSERT INTO plugin_versions (name, version, digest, manifest, role, source, created_at, seq)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, (SELECT COALESCE(MAX(seq), 0) + 1 FROM plugin_versions))
         ON CONFLICT (name, version) DO UPDATE SET digest = ?3, manifest = ?4, role = ?5,
             source = ?6, created_at = ?7",
        args![rec.name, rec.version, rec.digest, rec.manifest, rec.role, rec.source, rec.created_at],
    )?;
    history(c, &rec.name, &rec.version, action, &rec.digest)?;
    Ok(true)
}

fn active_version(c: &mut Conn, name: &str) -> Result<Option<String>, StoreError> {
    match c.row(
        "SELECT active_version FROM plugins WHERE name = ?1",
        args![name],
    )? {
        Some(r) => Ok(Some(r.get(0)?)),
        None => Ok(None),
    }
}

fn history(
    c: &mut Conn,
    name: &str,
    version: &str,
    action: &str,
    detail: &str,
) -> Result<(), StoreError> {
    c.exec(
        "INSERT INTO history (name, version, action, detail, at) VALUES (?1, ?2, ?3, ?4, ?5)",
        args![name, version, action, detail, now()],
    )?;
    Ok(())
}

fn row_to_version(r: &Row) -> Result<VersionRecord, StoreError> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest_of;

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
        for t in crate::testing::backends() {
            rollback_walks_back(&t.store);
        }
    }

    fn rollback_walks_back(s: &Store) {
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
        for t in crate::testing::backends() {
            same_version_conflict(&t.store);
        }
    }

    fn same_version_conflict(s: &Store) {
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
        for t in crate::testing::backends() {
            t.store
                .insert_version(&rec("1.0.0", &"a".repeat(64)), false)
                .unwrap();
            t.store.set_active("p", "1.0.0", "activate").unwrap();
            t.store
                .insert_version(&rec("1.1.0", &"b".repeat(64)), false)
                .unwrap();
            let s = t.reopen();
            assert_eq!(
                s.active_versions().unwrap(),
                vec![("p".into(), "1.0.0".into())]
            );
            let versions: Vec<_> = s
                .versions("p")
                .unwrap()
                .into_iter()
                .map(|v| v.version)
                .collect();
            assert_eq!(versions, ["1.0.0", "1.1.0"], "{:?}", t.backend());
        }
    }

    #[test]
    fn blobs_round_trip_and_are_shared_by_replicas() {
        for t in crate::testing::backends() {
            let d = t.store.put_blob(b"component bytes").unwrap();
            assert_eq!(d, digest_of(b"component bytes"));
            assert_eq!(t.store.put_blob(b"component bytes").unwrap(), d);
            assert_eq!(t.reopen().blob(&d).unwrap(), b"component bytes");
            assert!(t.store.blob(&"0".repeat(64)).is_err());
        }
    }

    #[test]
    fn a_database_of_the_previous_release_is_adopted_and_upgraded() {
        // Migrations 1..=9 as the previous release ran them, with its
        // `PRAGMA user_version` bookkeeping and a row in each core table.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("capstan.db");
        {
            let c = rusqlite::Connection::open(&path).unwrap();
            for v in 1..=9 {
                let file =
                    std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/sqlite"))
                        .unwrap()
                        .map(|e| e.unwrap().path())
                        .find(|p| {
                            p.file_name()
                                .unwrap()
                                .to_string_lossy()
                                .starts_with(&format!("V{v}__"))
                        })
                        .unwrap();
                c.execute_batch(&std::fs::read_to_string(file).unwrap())
                    .unwrap();
            }
            c.execute_batch(
                "INSERT INTO plugin_versions VALUES ('p', '1.0.0', 'd', 'm', 'deploy-step', 'api', 1);
                 INSERT INTO plugins VALUES ('p', '1.0.0', 1);
                 PRAGMA user_version = 9;",
            )
            .unwrap();
        }
        let s = Store::open(dir.path()).unwrap();
        assert_eq!(s.active_version("p").unwrap().as_deref(), Some("1.0.0"));
        assert_eq!(s.versions("p").unwrap()[0].digest, "d");
        // The new migration ran: blobs table and version order exist.
        s.insert_version(&rec("1.1.0", &"c".repeat(64)), false)
            .unwrap();
        let order: Vec<_> = s
            .versions("p")
            .unwrap()
            .into_iter()
            .map(|v| v.version)
            .collect();
        assert_eq!(order, ["1.0.0", "1.1.0"]);
        drop(s);
        // Opening again applies nothing twice.
        Store::open(dir.path()).unwrap();
    }
}

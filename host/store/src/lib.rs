//! Durable state, the bottom layer of Capstan: content-addressed blobs,
//! precompiled artifacts (a per-replica cache), and the database ([`sql`]:
//! SQLite by default, PostgreSQL for replicas) with the one schema of every
//! layer (`migrations/`, versioned), plugin versions and history, and
//! [`leases`]. Every write is atomic, so a `kill -9` at any point loses
//! nothing committed.
//!
//! Depends on no other Capstan crate; every other crate may depend on it.

mod blobs;
pub mod changes;
mod db;
pub mod ids;
pub mod leases;
pub mod sql;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

use std::io::Write;
use std::path::Path;

pub use blobs::digest_of;
pub use db::{HistoryEntry, Store, VersionRecord, blocking};
pub use leases::{Lease, LeaseKeeper};

/// Now, in Unix seconds (the time every stored record carries).
pub fn unix_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

/// Now, in Unix milliseconds.
pub fn unix_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A filesystem operation failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The path involved.
        path: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The database failed.
    #[error("database: {0}")]
    Db(#[from] sql::DbError),
    /// Something referenced does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The write would contradict what is stored.
    #[error("{0}")]
    Conflict(String),
}

/// An exclusive hold on a data directory (an OS lock on
/// `<data_dir>/capstan.lock`): one server, or one offline command such as
/// `capstan secrets rotate-key`, at a time. Released when dropped or when
/// the process dies, `kill -9` included.
#[derive(Debug)]
pub struct DataDirLock(#[allow(dead_code)] std::fs::File);

impl DataDirLock {
    /// Takes the lock, or fails at once if another process holds it.
    pub fn acquire(root: &Path) -> Result<DataDirLock, StoreError> {
        let path = root.join("capstan.lock");
        let io = |what, source| StoreError::Io {
            what,
            path: path.display().to_string(),
            source,
        };
        std::fs::create_dir_all(root).map_err(|e| io("create data directory for", e))?;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| io("open", e))?;
        match file.try_lock() {
            Ok(()) => Ok(DataDirLock(file)),
            Err(std::fs::TryLockError::WouldBlock) => Err(StoreError::Conflict(format!(
                "data directory {} is in use by another capstan process (it holds {}); stop that server first",
                root.display(),
                path.display()
            ))),
            Err(std::fs::TryLockError::Error(e)) => Err(io("lock", e)),
        }
    }
}

/// Writes `bytes` to `path` so that readers see the old file or the new one,
/// never a torn one: write a temporary sibling, fsync, rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let mut tmp = tempfile_in(dir)?;
    let written = tmp
        .1
        .write_all(bytes)
        .and_then(|()| tmp.1.sync_all())
        .and_then(|()| std::fs::rename(&tmp.0, path));
    if let Err(e) = written {
        // A full disk must not leave half-written `.tmp-*` files behind.
        let _ = std::fs::remove_file(&tmp.0);
        return Err(e);
    }
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

fn tempfile_in(dir: &Path) -> std::io::Result<(std::path::PathBuf, std::fs::File)> {
    for attempt in 0..100u32 {
        let name = format!(
            ".tmp-{}-{}-{attempt}",
            std::process::id(),
            rand::random::<u32>()
        );
        let path = dir.join(name);
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
        {
            Ok(f) => return Ok((path, f)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(std::io::Error::other("could not create a temporary file"))
}

//! Which database to use, and a small blocking pool of connections to it.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use super::checkpoint::{Checkpointer, WRITER_BACKSTOP_PAGES};
use super::conn::WriteGate;
use super::{Backend, Conn, DbError};

/// How long a caller waits for a free connection before `Unavailable`.
const CHECKOUT_TIMEOUT: Duration = Duration::from_secs(10);
/// SQLite's busy timeout and PostgreSQL's `lock_timeout`: how long a
/// statement waits for a lock held by someone else.
pub(super) const LOCK_TIMEOUT: Duration = Duration::from_secs(5);

/// Prepared statements kept per SQLite connection.
const STATEMENT_CACHE: usize = 256;

/// Where the state lives.
#[derive(Clone, PartialEq, Eq)]
pub enum Database {
    /// An SQLite file (the embedded default: `<data_dir>/capstan.db`).
    Sqlite(PathBuf),
    /// A PostgreSQL URL (`postgres://user:password@host:port/db`).
    Postgres(String),
}

impl Database {
    /// Parses `--database`: empty or `sqlite` for the embedded default,
    /// `sqlite:PATH`, or a `postgres://` / `postgresql://` URL.
    pub fn parse(spec: &str, data_dir: &Path) -> Result<Database, DbError> {
        let spec = spec.trim();
        if spec.is_empty() || spec == "sqlite" {
            return Ok(Database::Sqlite(data_dir.join("capstan.db")));
        }
        if let Some(path) = spec.strip_prefix("sqlite:") {
            return Ok(Database::Sqlite(PathBuf::from(path)));
        }
        if spec.starts_with("postgres://") || spec.starts_with("postgresql://") {
            spec.parse::<postgres::Config>()
                .map_err(|e| DbError::Unavailable(format!("database URL: {e}")))?;
            return Ok(Database::Postgres(spec.to_owned()));
        }
        Err(DbError::Unavailable(format!(
            "database {:?}: expected `sqlite`, `sqlite:PATH` or a postgres:// URL",
            redact(spec)
        )))
    }

    /// The backend.
    pub fn backend(&self) -> Backend {
        match self {
            Database::Sqlite(_) => Backend::Sqlite,
            Database::Postgres(_) => Backend::Postgres,
        }
    }

    /// Opens one new connection.
    pub fn connect(&self) -> Result<Conn, DbError> {
        match self {
            Database::Sqlite(path) => {
                let c = rusqlite::Connection::open(path)?;
                c.pragma_update(None, "journal_mode", "WAL")?;
                c.pragma_update(None, "synchronous", "FULL")?;
                // The pool's checkpoint thread keeps the WAL short.
                c.pragma_update(None, "wal_autocheckpoint", WRITER_BACKSTOP_PAGES)?;
                c.pragma_update(None, "foreign_keys", "ON")?;
                c.busy_timeout(LOCK_TIMEOUT)?;
                // Every engine shares the pool's connections; rusqlite's
                // default of 16 cached statements made them evict each other.
                c.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
                Ok(Conn::sqlite(c))
            }
            Database::Postgres(url) => {
                let mut cfg: postgres::Config = url
                    .parse()
                    .map_err(|e| DbError::Unavailable(format!("database URL: {e}")))?;
                cfg.connect_timeout(Duration::from_secs(5))
                    .application_name("capstan")
                    .options(&format!("-c lock_timeout={}", LOCK_TIMEOUT.as_millis()));
                let client = cfg.connect(postgres::NoTls).map_err(|e| {
                    DbError::Unavailable(format!("connecting to {}: {e}", redact(url)))
                })?;
                Ok(Conn::pg(client))
            }
        }
    }
}

impl std::fmt::Debug for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_string())
    }
}

impl std::fmt::Display for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Database::Sqlite(p) => write!(f, "sqlite:{}", p.display()),
            Database::Postgres(url) => f.write_str(&redact(url)),
        }
    }
}

/// The URL without its password.
fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    match rest.split_once('@') {
        Some((user, host)) => {
            let user = user.split(':').next().unwrap_or_default();
            format!("{scheme}://{user}:***@{host}")
        }
        None => url.to_owned(),
    }
}

/// A fixed-size pool of blocking connections.
pub struct Pool {
    db: Database,
    size: usize,
    state: Mutex<State>,
    freed: Condvar,
    /// SQLite only: checkpoints the WAL in the background.
    checkpointer: Option<Checkpointer>,
    /// SQLite only: one transaction at a time, in turn.
    gate: Option<Arc<WriteGate>>,
}

struct State {
    idle: Vec<Conn>,
    open: usize,
}

impl Pool {
    /// A pool of at most `size` connections; opens one now to fail early.
    pub fn open(db: Database, size: usize) -> Result<Pool, DbError> {
        let gate = match db.backend() {
            Backend::Sqlite => Some(Arc::new(WriteGate::new(()))),
            Backend::Postgres => None,
        };
        let first = gated(db.connect()?, &gate);
        let checkpointer = match &db {
            Database::Sqlite(path) => Some(Checkpointer::start(path.clone())),
            Database::Postgres(_) => None,
        };
        Ok(Pool {
            checkpointer,
            gate,
            db,
            size: size.max(1),
            state: Mutex::new(State {
                idle: vec![first],
                open: 1,
            }),
            freed: Condvar::new(),
        })
    }

    /// The database.
    pub fn database(&self) -> &Database {
        &self.db
    }

    /// SQLite: the last background checkpoint's (frames in the WAL, frames
    /// of them copied into the database); `None` on PostgreSQL.
    pub fn last_checkpoint(&self) -> Option<(i64, i64)> {
        self.checkpointer.as_ref().map(Checkpointer::last)
    }

    /// Takes a connection, opening one if the pool is not full, waiting for
    /// one otherwise.
    pub fn get(&self) -> Result<PoolConn<'_>, DbError> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let deadline = std::time::Instant::now() + CHECKOUT_TIMEOUT;
        loop {
            if let Some(conn) = st.idle.pop() {
                return Ok(PoolConn {
                    pool: self,
                    conn: Some(conn),
                });
            }
            if st.open < self.size {
                st.open += 1;
                drop(st);
                return match self.db.connect() {
                    Ok(conn) => Ok(PoolConn {
                        pool: self,
                        conn: Some(gated(conn, &self.gate)),
                    }),
                    Err(e) => {
                        self.forget();
                        Err(e)
                    }
                };
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return Err(DbError::Unavailable(format!(
                    "all {} database connections stayed busy for {}s",
                    self.size,
                    CHECKOUT_TIMEOUT.as_secs()
                )));
            }
            st = self
                .freed
                .wait_timeout(st, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    fn forget(&self) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.open -= 1;
        self.freed.notify_one();
    }
}

fn gated(conn: Conn, gate: &Option<Arc<WriteGate>>) -> Conn {
    match gate {
        Some(g) => conn.with_gate(g.clone()),
        None => conn,
    }
}

/// A connection borrowed from a [`Pool`], returned on drop (or closed if it
/// broke).
pub struct PoolConn<'a> {
    pool: &'a Pool,
    conn: Option<Conn>,
}

impl std::ops::Deref for PoolConn<'_> {
    type Target = Conn;
    fn deref(&self) -> &Conn {
        self.conn.as_ref().expect("present until drop")
    }
}

impl std::ops::DerefMut for PoolConn<'_> {
    fn deref_mut(&mut self) -> &mut Conn {
        self.conn.as_mut().expect("present until drop")
    }
}

impl Drop for PoolConn<'_> {
    fn drop(&mut self) {
        let Some(conn) = self.conn.take() else { return };
        if conn.is_broken() {
            self.pool.forget();
            return;
        }
        let mut st = self.pool.state.lock().unwrap_or_else(|e| e.into_inner());
        st.idle.push(conn);
        self.pool.freed.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_and_passwords_never_print() {
        let dir = Path::new("/data");
        assert_eq!(
            Database::parse("", dir).unwrap(),
            Database::Sqlite(dir.join("capstan.db"))
        );
        let pg = Database::parse("postgres://capstan:s3cret@db:5432/capstan", dir).unwrap();
        assert_eq!(pg.backend(), Backend::Postgres);
        assert_eq!(pg.to_string(), "postgres://capstan:***@db:5432/capstan");
        let e = Database::parse("mysql://u:hunter2@x/y", dir).unwrap_err();
        assert!(!e.to_string().contains("hunter2"), "{e}");
    }

    #[test]
    fn sqlite_commits_leave_checkpoints_to_the_background_thread() {
        let dir = tempfile::tempdir().unwrap();
        let pool = Pool::open(Database::Sqlite(dir.path().join("t.db")), 2).unwrap();
        let mut c = pool.get().unwrap();
        let backstop: i64 = c
            .as_sqlite()
            .unwrap()
            .pragma_query_value(None, "wal_autocheckpoint", |r| r.get(0))
            .unwrap();
        assert_eq!(backstop, WRITER_BACKSTOP_PAGES);
        c.batch("CREATE TABLE t (v BLOB)").unwrap();
        // 4 MiB: four times SQLite's default auto-checkpoint point.
        let blob = vec![7u8; 64 * 1024];
        for _ in 0..64 {
            let sql = c.as_sqlite().unwrap();
            sql.execute("INSERT INTO t (v) VALUES (?1)", [&blob])
                .unwrap();
        }
        drop(c);
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            // Copied into the database file, by no writer (their backstop
            // is 64 MiB away).
            let (log, done) = pool.last_checkpoint().unwrap();
            let size = std::fs::metadata(dir.path().join("t.db")).unwrap().len();
            if size >= 4 * 1024 * 1024 && done == log {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the WAL was not checkpointed in the background: database {size} bytes, WAL {log} frames, {done} copied"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    #[test]
    fn a_writer_kept_out_past_the_lock_timeout_gets_a_busy_error() {
        use crate::sql::ErrorKind;
        let dir = tempfile::tempdir().unwrap();
        let pool = Pool::open(Database::Sqlite(dir.path().join("t.db")), 2).unwrap();
        pool.get()
            .unwrap()
            .batch("CREATE TABLE t (v INTEGER)")
            .unwrap();
        let (held, release) = (std::sync::Barrier::new(2), std::sync::Barrier::new(2));
        std::thread::scope(|s| {
            s.spawn(|| {
                let mut a = pool.get().unwrap();
                a.tx(|a| {
                    a.exec("INSERT INTO t (v) VALUES (1)", &[])?;
                    held.wait();
                    release.wait();
                    Ok::<_, DbError>(())
                })
                .unwrap();
            });
            held.wait();
            let mut b = pool.get().unwrap();
            let e = b
                .tx(|b| b.exec("INSERT INTO t (v) VALUES (2)", &[]))
                .unwrap_err();
            release.wait();
            assert_eq!(e.kind(), ErrorKind::Busy, "{e}");
            assert!(e.to_string().contains("another writer"), "{e}");
        });
        // The first writer's row is there; the refused one changed nothing.
        let n: i64 = pool
            .get()
            .unwrap()
            .value("SELECT COUNT(*) FROM t", &[])
            .unwrap();
        assert_eq!(n, 1);
    }
}

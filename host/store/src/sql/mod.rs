//! The database layer shared by every table of every crate: a pool of
//! connections to SQLite (the embedded default) or PostgreSQL (replicas),
//! the versioned migrations of both, and errors classified the same way for
//! both (busy, full, unique violation).
//!
//! Database work is blocking; async callers go through [`crate::Store::run`],
//! which runs it on a blocking thread, never on an async worker.

mod checkpoint;
mod conn;
mod migrate;
mod pool;
mod value;

pub use conn::{Backend, Conn};
pub use migrate::migrate;
pub use pool::{Database, Pool};
pub use value::{FromValue, Row, Value, value_of};

/// A database failure.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// SQLite failed.
    #[error("{0}")]
    Sqlite(#[from] rusqlite::Error),
    /// PostgreSQL failed.
    #[error("{}", pg_message(.0))]
    Pg(#[from] postgres::Error),
    /// A stored value does not have the expected type.
    #[error("stored value: {0}")]
    Decode(String),
    /// No connection became free in time, or the server cannot be reached.
    #[error("{0}")]
    Unavailable(String),
    /// Migrating the schema failed.
    #[error("migrating the schema: {0}")]
    Migrate(String),
}

/// What kind of failure a [`DbError`] is, for the API's status mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Locked, busy or unreachable: try again later (503).
    Busy,
    /// The disk (or the server's) is full (507).
    Full,
    /// A unique constraint was violated.
    Unique,
    /// Anything else (500).
    Other,
}

impl DbError {
    /// Classifies the failure.
    pub fn kind(&self) -> ErrorKind {
        match self {
            DbError::Sqlite(rusqlite::Error::SqliteFailure(e, _)) => {
                use rusqlite::ErrorCode::*;
                match e.code {
                    DatabaseBusy | DatabaseLocked => ErrorKind::Busy,
                    DiskFull => ErrorKind::Full,
                    ConstraintViolation => ErrorKind::Unique,
                    _ => ErrorKind::Other,
                }
            }
            DbError::Pg(e) => pg_kind(e),
            DbError::Unavailable(_) => ErrorKind::Busy,
            _ => ErrorKind::Other,
        }
    }
}

fn pg_kind(e: &postgres::Error) -> ErrorKind {
    use postgres::error::SqlState;
    if e.is_closed() {
        return ErrorKind::Busy;
    }
    let Some(code) = e.code() else {
        // No SQLSTATE: the connection or the socket failed.
        return ErrorKind::Busy;
    };
    match code {
        c if *c == SqlState::UNIQUE_VIOLATION => ErrorKind::Unique,
        c if *c == SqlState::DISK_FULL || *c == SqlState::OUT_OF_MEMORY => ErrorKind::Full,
        c if *c == SqlState::T_R_SERIALIZATION_FAILURE
            || *c == SqlState::T_R_DEADLOCK_DETECTED
            || *c == SqlState::LOCK_NOT_AVAILABLE
            || *c == SqlState::QUERY_CANCELED
            || *c == SqlState::ADMIN_SHUTDOWN
            || *c == SqlState::CANNOT_CONNECT_NOW
            || *c == SqlState::TOO_MANY_CONNECTIONS
            || *c == SqlState::READ_ONLY_SQL_TRANSACTION =>
        {
            ErrorKind::Busy
        }
        _ => ErrorKind::Other,
    }
}

fn pg_message(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("postgresql: {} ({})", db.message(), db.code().code()),
        None => format!("postgresql: {e}"),
    }
}

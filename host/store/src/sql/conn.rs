//! One database connection, SQLite or PostgreSQL, behind one small API:
//! `exec`, `rows`, `row`, `tx`. SQL is written once, with `?N`
//! placeholders and the common dialect of both (`ON CONFLICT`, `RETURNING`,
//! `CAST`); on PostgreSQL the placeholders become `$N`.

use std::collections::HashMap;
use std::sync::Arc;

use postgres::types::{IsNull, ToSql, Type, to_sql_checked};

use super::{DbError, Row, Value};

/// Which database a connection talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// The embedded SQLite file.
    Sqlite,
    /// A PostgreSQL server shared by replicas.
    Postgres,
}

/// An open connection.
pub struct Conn {
    inner: Inner,
    in_tx: bool,
    /// SQLite: the pool's write gate, held for each transaction.
    gate: Option<Arc<WriteGate>>,
}

/// One writer at a time per SQLite database. SQLite allows one writer
/// anyway; without the gate the others poll for its lock with sleeps of up
/// to 100 ms, so under load a writer could lose the race for a second or
/// more. Waiters park on the lock instead and are handed it in turn
/// (parking_lot's lock is eventually fair).
pub(crate) type WriteGate = parking_lot::Mutex<()>;

enum Inner {
    Sqlite(rusqlite::Connection),
    Pg {
        client: Box<postgres::Client>,
        statements: HashMap<String, postgres::Statement>,
    },
    /// Only while dropping.
    Closed,
}

impl Conn {
    pub(crate) fn sqlite(c: rusqlite::Connection) -> Conn {
        Conn {
            inner: Inner::Sqlite(c),
            in_tx: false,
            gate: None,
        }
    }

    /// Makes this connection's transactions pass `gate` first.
    pub(crate) fn with_gate(mut self, gate: Arc<WriteGate>) -> Conn {
        self.gate = Some(gate);
        self
    }

    pub(crate) fn pg(client: postgres::Client) -> Conn {
        Conn {
            inner: Inner::Pg {
                client: Box::new(client),
                statements: HashMap::new(),
            },
            in_tx: false,
            gate: None,
        }
    }

    /// The backend.
    pub fn backend(&self) -> Backend {
        match self.inner {
            Inner::Sqlite(_) => Backend::Sqlite,
            Inner::Pg { .. } | Inner::Closed => Backend::Postgres,
        }
    }

    /// Whether the connection is unusable (a PostgreSQL server went away).
    pub(crate) fn is_broken(&self) -> bool {
        match &self.inner {
            Inner::Sqlite(_) => false,
            Inner::Closed => true,
            Inner::Pg { client, .. } => client.is_closed(),
        }
    }

    /// Runs a statement; returns the number of rows changed.
    pub fn exec(&mut self, sql: &str, args: &[Value]) -> Result<u64, DbError> {
        match &mut self.inner {
            Inner::Sqlite(c) => {
                let mut stmt = c.prepare_cached(sql)?;
                Ok(stmt.execute(rusqlite::params_from_iter(args.iter()))? as u64)
            }
            Inner::Pg { client, statements } => {
                let stmt = prepare(client, statements, sql)?;
                Ok(client.execute(&stmt, &pg_args(args))?)
            }
            Inner::Closed => Err(closed()),
        }
    }

    /// Runs a query; returns every row.
    pub fn rows(&mut self, sql: &str, args: &[Value]) -> Result<Vec<Row>, DbError> {
        match &mut self.inner {
            Inner::Sqlite(c) => {
                let mut stmt = c.prepare_cached(sql)?;
                let n = stmt.column_count();
                let mut rows = stmt.query(rusqlite::params_from_iter(args.iter()))?;
                let mut out = Vec::new();
                while let Some(r) = rows.next()? {
                    out.push(Row((0..n)
                        .map(|i| sqlite_value(r, i))
                        .collect::<Result<_, _>>()?));
                }
                Ok(out)
            }
            Inner::Pg { client, statements } => {
                let stmt = prepare(client, statements, sql)?;
                let rows = client.query(&stmt, &pg_args(args))?;
                rows.iter().map(pg_row).collect()
            }
            Inner::Closed => Err(closed()),
        }
    }

    /// Runs a query; returns its first row, if any.
    pub fn row(&mut self, sql: &str, args: &[Value]) -> Result<Option<Row>, DbError> {
        Ok(self.rows(sql, args)?.into_iter().next())
    }

    /// Runs a query that returns one value (`SELECT COUNT(*) …`).
    pub fn value<T: super::FromValue>(&mut self, sql: &str, args: &[Value]) -> Result<T, DbError> {
        match self.row(sql, args)? {
            Some(r) => r.get(0),
            None => Err(DbError::Decode(format!("no row from {sql}"))),
        }
    }

    /// Runs several statements without parameters.
    pub fn batch(&mut self, sql: &str) -> Result<(), DbError> {
        match &mut self.inner {
            Inner::Sqlite(c) => Ok(c.execute_batch(sql)?),
            Inner::Pg { client, .. } => Ok(client.batch_execute(sql)?),
            Inner::Closed => Err(closed()),
        }
    }

    /// Runs `f` in a transaction: committed if it returns `Ok`, rolled back
    /// otherwise. SQLite takes the write lock at the start (`BEGIN
    /// IMMEDIATE`), so a transaction never fails halfway for a busy lock.
    /// Nested calls join the outer transaction.
    pub fn tx<T, E: From<DbError>>(
        &mut self,
        f: impl FnOnce(&mut Conn) -> Result<T, E>,
    ) -> Result<T, E> {
        if self.in_tx {
            return f(self);
        }
        let begin = match self.backend() {
            Backend::Sqlite => "BEGIN IMMEDIATE",
            Backend::Postgres => "BEGIN",
        };
        let gate = self.gate.clone();
        let _turn = match &gate {
            Some(g) => Some(
                g.try_lock_for(super::pool::LOCK_TIMEOUT)
                    .ok_or_else(gate_busy)?,
            ),
            None => None,
        };
        self.batch(begin)?;
        self.in_tx = true;
        let result = f(self);
        self.in_tx = false;
        match result {
            Ok(v) => {
                if let Err(e) = self.batch("COMMIT") {
                    let _ = self.batch("ROLLBACK");
                    return Err(e.into());
                }
                Ok(v)
            }
            Err(e) => {
                let _ = self.batch("ROLLBACK");
                Err(e)
            }
        }
    }

    /// The SQLite connection, for SQLite-only maintenance (tests, pragmas).
    pub fn as_sqlite(&mut self) -> Option<&mut rusqlite::Connection> {
        match &mut self.inner {
            Inner::Sqlite(c) => Some(c),
            Inner::Pg { .. } | Inner::Closed => None,
        }
    }

    /// The PostgreSQL client (LISTEN/NOTIFY, migrations).
    pub fn as_pg(&mut self) -> Option<&mut postgres::Client> {
        match &mut self.inner {
            Inner::Pg { client, .. } => Some(client),
            Inner::Sqlite(_) | Inner::Closed => None,
        }
    }
}

/// The gate stayed shut for the whole lock timeout: reported as SQLite
/// reports a lock it waited on in vain.
fn gate_busy() -> DbError {
    DbError::Sqlite(rusqlite::Error::SqliteFailure(
        rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_BUSY),
        Some(format!(
            "another writer held the database for {} s",
            super::pool::LOCK_TIMEOUT.as_secs()
        )),
    ))
}

fn closed() -> DbError {
    DbError::Unavailable("the database connection is closed".into())
}

impl Drop for Conn {
    /// A PostgreSQL client says goodbye to the server with a blocking call,
    /// which must not run on an async worker: drop it off the runtime.
    fn drop(&mut self) {
        let inner = std::mem::replace(&mut self.inner, Inner::Closed);
        if let Inner::Pg { client, statements } = inner {
            crate::blocking(move || drop((statements, client)));
        }
    }
}

fn prepare(
    client: &mut postgres::Client,
    cache: &mut HashMap<String, postgres::Statement>,
    sql: &str,
) -> Result<postgres::Statement, DbError> {
    if let Some(s) = cache.get(sql) {
        return Ok(s.clone());
    }
    let stmt = client.prepare(&pg_placeholders(sql))?;
    if cache.len() > 512 {
        cache.clear();
    }
    cache.insert(sql.to_owned(), stmt.clone());
    Ok(stmt)
}

/// `?1` (or `?`) becomes `$1`, outside string literals.
pub(crate) fn pg_placeholders(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len() + 8);
    let mut chars = sql.chars().peekable();
    let (mut quoted, mut next) = (false, 1);
    while let Some(c) = chars.next() {
        if c == '\'' {
            quoted = !quoted;
        }
        if c != '?' || quoted {
            out.push(c);
            continue;
        }
        let mut digits = String::new();
        while let Some(d) = chars.peek().filter(|d| d.is_ascii_digit()) {
            digits.push(*d);
            chars.next();
        }
        if digits.is_empty() {
            digits = next.to_string();
            next += 1;
        }
        out.push('$');
        out.push_str(&digits);
    }
    out
}

fn pg_args(args: &[Value]) -> Vec<&(dyn ToSql + Sync)> {
    args.iter().map(|a| a as &(dyn ToSql + Sync)).collect()
}

impl rusqlite::ToSql for Value {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::{ToSqlOutput, ValueRef};
        Ok(ToSqlOutput::Borrowed(match self {
            Value::Null => ValueRef::Null,
            Value::Int(i) => ValueRef::Integer(*i),
            Value::Real(f) => ValueRef::Real(*f),
            Value::Text(s) => ValueRef::Text(s.as_bytes()),
            Value::Blob(b) => ValueRef::Blob(b),
        }))
    }
}

type BoxError = Box<dyn std::error::Error + Sync + Send>;

impl ToSql for Value {
    fn to_sql(&self, ty: &Type, out: &mut bytes::BytesMut) -> Result<IsNull, BoxError> {
        match self {
            Value::Null => Ok(IsNull::Yes),
            Value::Int(i) => match *ty {
                Type::INT2 => i16::try_from(*i)?.to_sql(ty, out),
                Type::INT4 => i32::try_from(*i)?.to_sql(ty, out),
                Type::BOOL => (*i != 0).to_sql(ty, out),
                Type::FLOAT8 => (*i as f64).to_sql(ty, out),
                Type::TEXT | Type::VARCHAR => i.to_string().to_sql(ty, out),
                _ => i.to_sql(ty, out),
            },
            Value::Real(f) => match *ty {
                Type::FLOAT4 => (*f as f32).to_sql(ty, out),
                _ => f.to_sql(ty, out),
            },
            Value::Text(s) => match *ty {
                Type::BYTEA => s.as_bytes().to_sql(ty, out),
                _ => s.as_str().to_sql(ty, out),
            },
            Value::Blob(b) => b.as_slice().to_sql(ty, out),
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

fn sqlite_value(r: &rusqlite::Row<'_>, i: usize) -> Result<Value, DbError> {
    use rusqlite::types::ValueRef;
    Ok(match r.get_ref(i)? {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(n) => Value::Int(n),
        ValueRef::Real(f) => Value::Real(f),
        ValueRef::Text(t) => Value::Text(String::from_utf8_lossy(t).into_owned()),
        ValueRef::Blob(b) => Value::Blob(b.to_vec()),
    })
}

fn pg_row(r: &postgres::Row) -> Result<Row, DbError> {
    let mut out = Vec::with_capacity(r.len());
    for (i, col) in r.columns().iter().enumerate() {
        let v = match *col.type_() {
            Type::INT2 => r
                .try_get::<_, Option<i16>>(i)?
                .map(|n| Value::Int(n.into())),
            Type::INT4 => r
                .try_get::<_, Option<i32>>(i)?
                .map(|n| Value::Int(n.into())),
            Type::INT8 => r.try_get::<_, Option<i64>>(i)?.map(Value::Int),
            Type::OID => r
                .try_get::<_, Option<u32>>(i)?
                .map(|n| Value::Int(n.into())),
            Type::BOOL => r.try_get::<_, Option<bool>>(i)?.map(Value::from),
            Type::FLOAT4 => r
                .try_get::<_, Option<f32>>(i)?
                .map(|f| Value::Real(f.into())),
            Type::FLOAT8 => r.try_get::<_, Option<f64>>(i)?.map(Value::Real),
            Type::BYTEA => r.try_get::<_, Option<Vec<u8>>>(i)?.map(Value::Blob),
            Type::VOID => None,
            _ => r.try_get::<_, Option<String>>(i)?.map(Value::Text),
        };
        out.push(v.unwrap_or(Value::Null));
    }
    Ok(Row(out))
}

#[cfg(test)]
mod tests {
    use super::pg_placeholders;

    #[test]
    fn placeholders_become_dollars_outside_literals() {
        assert_eq!(
            pg_placeholders("SELECT a FROM t WHERE b = ?1 AND c = '?2' AND d = ?12"),
            "SELECT a FROM t WHERE b = $1 AND c = '?2' AND d = $12"
        );
        assert_eq!(pg_placeholders("VALUES (?, ?)"), "VALUES ($1, $2)");
    }
}

//! Versioned migrations (refinery): `migrations/sqlite/V<n>__<name>.sql`
//! and `migrations/postgres/V<n>__<name>.sql`, the same versions for both
//! backends. Files never change once released; a change is a new version.
//! Applied versions are recorded in `refinery_schema_history`.
//!
//! Data directories of releases before refinery recorded their version in
//! SQLite's `PRAGMA user_version` (migrations 1..=9, the same SQL as
//! `V1`..`V9`); [`migrate`] adopts them into refinery's history first.

use super::{Conn, DbError};

mod sqlite {
    refinery::embed_migrations!("migrations/sqlite");
}
mod postgres {
    refinery::embed_migrations!("migrations/postgres");
}

const HISTORY: &str = "refinery_schema_history";

/// Brings the schema up to date. On PostgreSQL an advisory lock makes
/// replicas starting together migrate one at a time.
pub fn migrate(conn: &mut Conn) -> Result<(), DbError> {
    let err = |e: refinery::Error| DbError::Migrate(e.to_string());
    if let Some(c) = conn.as_sqlite() {
        adopt_user_version(c)?;
        sqlite::migrations::runner().run(c).map_err(err)?;
        return Ok(());
    }
    let c = conn.as_pg().expect("one of the two backends");
    c.batch_execute("SELECT pg_advisory_lock(7243531)")?;
    let result = postgres::migrations::runner().run(c).map_err(err);
    c.batch_execute("SELECT pg_advisory_unlock(7243531)")?;
    result.map(drop)
}

fn adopt_user_version(c: &mut rusqlite::Connection) -> Result<(), DbError> {
    let has_history: bool = c.query_row(
        "SELECT COUNT(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = ?1",
        [HISTORY],
        |r| r.get(0),
    )?;
    let legacy: i64 = c.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if has_history || legacy == 0 {
        return Ok(());
    }
    let runner = sqlite::migrations::runner();
    let known = runner.get_migrations();
    if legacy as usize > known.len() {
        return Err(DbError::Migrate(format!(
            "the database is at legacy version {legacy}, newer than this build knows; use a newer capstan"
        )));
    }
    let tx = c.transaction()?;
    tx.execute_batch(&format!(
        "CREATE TABLE {HISTORY} (version int4 PRIMARY KEY, name VARCHAR(255), applied_on VARCHAR(255), checksum VARCHAR(255))"
    ))?;
    let now = rfc3339(crate::unix_secs());
    for m in known.iter().filter(|m| i64::from(m.version()) <= legacy) {
        tx.execute(
            &format!("INSERT INTO {HISTORY} (version, name, applied_on, checksum) VALUES (?1, ?2, ?3, ?4)"),
            rusqlite::params![m.version(), m.name(), now, m.checksum().to_string()],
        )?;
    }
    tx.execute_batch("PRAGMA user_version = 0")?;
    tx.commit()?;
    tracing::info!(
        legacy,
        "adopted the legacy schema version into refinery's history"
    );
    Ok(())
}

/// `YYYY-MM-DDTHH:MM:SSZ` for Unix seconds (civil-from-days, H. Hinnant).
fn rfc3339(secs: i64) -> String {
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_795_000_000), "2026-11-18T11:06:40Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn both_backends_have_the_same_versions() {
        let names = |ms: &[refinery::Migration]| {
            ms.iter()
                .map(|m| (m.version(), m.name().to_owned()))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            names(sqlite::migrations::runner().get_migrations()),
            names(postgres::migrations::runner().get_migrations())
        );
    }
}

//! Stores for tests, on every backend: SQLite in a temporary directory, and
//! PostgreSQL in a fresh database of the server at `CAPSTAN_TEST_PG` (a URL
//! whose role may create databases; `tests/run.sh` starts one). Without
//! `CAPSTAN_TEST_PG` only SQLite runs, and a notice says so; with
//! `CAPSTAN_REQUIRE_PG=1` (CI) its absence fails the test.

use std::sync::Arc;

use crate::Store;
use crate::sql::{Backend, Database};

/// Env var with the PostgreSQL URL for tests.
pub const PG_ENV: &str = "CAPSTAN_TEST_PG";

/// A store for one test; its database is dropped with it.
pub struct TestStore {
    /// The store.
    pub store: Arc<Store>,
    /// Its data directory (blobs, artifacts, the SQLite file).
    pub dir: tempfile::TempDir,
    pg: Option<PgDatabase>,
}

impl TestStore {
    /// The backend, for assertion messages.
    pub fn backend(&self) -> Backend {
        self.store.backend()
    }

    /// Opens a second store on the same database and directory (a restart,
    /// or another replica).
    pub fn reopen(&self) -> Store {
        let db = match &self.pg {
            Some(pg) => Database::Postgres(pg.url.clone()),
            None => Database::Sqlite(self.dir.path().join("capstan.db")),
        };
        Store::open_with(self.dir.path(), db).expect("reopen the test store")
    }
}

/// One store per backend available: SQLite always, PostgreSQL when
/// `CAPSTAN_TEST_PG` is set.
pub fn backends() -> Vec<TestStore> {
    let mut out = vec![sqlite()];
    match pg() {
        Some(t) => out.push(t),
        None if std::env::var("CAPSTAN_REQUIRE_PG").as_deref() == Ok("1") => {
            panic!("CAPSTAN_REQUIRE_PG=1 but {PG_ENV} is not set")
        }
        None => eprintln!("note: {PG_ENV} is not set; this test ran on SQLite only"),
    }
    out
}

/// A store on SQLite.
pub fn sqlite() -> TestStore {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Arc::new(Store::open(dir.path()).expect("open SQLite store"));
    TestStore {
        store,
        dir,
        pg: None,
    }
}

/// A store on a fresh PostgreSQL database, if `CAPSTAN_TEST_PG` is set.
pub fn pg() -> Option<TestStore> {
    let pg = PgDatabase::create()?;
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Store::open_with(dir.path(), Database::Postgres(pg.url.clone()))
        .expect("open PostgreSQL store");
    Some(TestStore {
        store: Arc::new(store),
        dir,
        pg: Some(pg),
    })
}

/// A fresh PostgreSQL database (dropped on drop) and its URL, if
/// `CAPSTAN_TEST_PG` is set.
pub struct PgDatabase {
    /// The database's URL.
    pub url: String,
    admin: String,
    name: String,
}

impl PgDatabase {
    /// Creates a database named `capstan_t_<random>`.
    pub fn create() -> Option<PgDatabase> {
        let admin = std::env::var(PG_ENV).ok().filter(|u| !u.is_empty())?;
        let name = format!("capstan_t_{}", crate::ids::new_id().replace('-', ""));
        crate::blocking(|| {
            let mut c = postgres::Client::connect(&admin, postgres::NoTls)
                .unwrap_or_else(|e| panic!("{PG_ENV}: connecting: {e}"));
            c.batch_execute(&format!("CREATE DATABASE {name}"))
                .unwrap_or_else(|e| panic!("creating database {name}: {e}"));
        });
        let base = admin.rsplit_once('/').map_or(admin.as_str(), |(b, _)| b);
        Some(PgDatabase {
            url: format!("{base}/{name}"),
            admin,
            name,
        })
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        crate::blocking(|| {
            if let Ok(mut c) = postgres::Client::connect(&self.admin, postgres::NoTls) {
                let _ = c.batch_execute(&format!(
                    "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                    self.name
                ));
            }
        });
    }
}

//! Ledgers of either backend for tests that state what every backend must do.
//!
//! [`Place::new`] gives a fresh, empty ledger: a temporary state directory (SQLite), or a
//! fresh database on the PostgreSQL named by `TOLLGATE_TEST_PG_URL` (which `scripts/test`
//! starts and exports), dropped when the `Place` is. Without that variable a PostgreSQL test
//! prints `SKIPPED: ...` and returns early, unless `TOLLGATE_REQUIRE_PEERS=1`, where it fails.

use std::path::Path;
use std::sync::Arc;

use tollgate::ledger::{Ledger, LedgerConfig};

/// The environment variable naming the test PostgreSQL (a superuser URL, no password).
pub const PG_URL: &str = "TOLLGATE_TEST_PG_URL";

/// Which ledger backend a test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Where one test's ledger lives: a state directory always (SQLite's file, tollgate's other
/// state), and a database of its own for PostgreSQL.
pub struct Place {
    pub dir: tempfile::TempDir,
    pub backend: Backend,
    /// The ledger URL (PostgreSQL only).
    pub url: Option<String>,
    db: Option<String>,
}

impl Place {
    /// A fresh ledger place, or `None` (after saying why) when PostgreSQL is not available
    /// and peers are not required.
    pub fn new(backend: Backend) -> Option<Place> {
        let dir = tempfile::tempdir().unwrap();
        match backend {
            Backend::Sqlite => Some(Place {
                dir,
                backend,
                url: None,
                db: None,
            }),
            Backend::Postgres => {
                let admin = admin_url()?;
                let db = format!("tollgate_test_{}", hex::encode(rand::random::<[u8; 6]>()));
                admin_sql(&admin, &format!("CREATE DATABASE {db}"));
                let url = with_database(&admin, &db);
                Some(Place {
                    dir,
                    backend,
                    url: Some(url),
                    db: Some(db),
                })
            }
        }
    }

    /// The state directory.
    pub fn state(&self) -> &Path {
        self.dir.path()
    }

    /// What `[ledger]` would say for this place.
    pub fn config(&self) -> LedgerConfig {
        LedgerConfig {
            url: self.url.clone(),
            pool_size: 4,
        }
    }

    /// Points the tollgate config at `config` to this place's ledger: for PostgreSQL, appends
    /// `[ledger] url` (the test server needs no password, so the URL may sit in the file);
    /// for SQLite, leaves it as it is (its `state_dir` holds the ledger).
    pub fn configure(&self, config: &Path) {
        if let Some(url) = &self.url {
            let mut text = std::fs::read_to_string(config).unwrap();
            text.push_str(&format!("\n[ledger]\nurl = \"{url}\"\n"));
            std::fs::write(config, text).unwrap();
        }
    }

    /// Asserts that the processes of a test used this place's backend: with PostgreSQL, no
    /// SQLite ledger appeared in `state_dir`.
    pub fn assert_used_by(&self, state_dir: &Path) {
        let file = state_dir.join(tollgate::ledger::FILE_NAME);
        match self.backend {
            Backend::Postgres => assert!(
                !file.exists(),
                "{} was written: a process did not use the PostgreSQL ledger",
                file.display()
            ),
            Backend::Sqlite => assert!(file.exists(), "no ledger at {}", file.display()),
        }
    }

    /// Opens this place's ledger as a tollgate whose state directory is `state_dir` would.
    pub fn open_at(&self, state_dir: &Path) -> Arc<Ledger> {
        Ledger::open_with(state_dir, &self.config()).unwrap()
    }

    /// Opens the ledger (a new connection or pool each time, as another process would).
    pub fn open(&self) -> Arc<Ledger> {
        Ledger::open_with(self.state(), &self.config()).unwrap()
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        if let (Some(db), Some(admin)) = (&self.db, std::env::var(PG_URL).ok()) {
            admin_sql(
                &admin,
                &format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"),
            );
        }
    }
}

/// Opens the ledger a child process was told about (`dir`, and `url` for PostgreSQL).
pub fn open_in_child(dir: &Path, url: Option<String>) -> Arc<Ledger> {
    Ledger::open_with(dir, &LedgerConfig { url, pool_size: 4 }).unwrap()
}

/// The test server's URL, or `None` after saying why (panics when peers are required).
pub fn admin_url() -> Option<String> {
    match std::env::var(PG_URL) {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            let reason = format!(
                "{PG_URL} is not set: no PostgreSQL to test the shared ledger against \
                 (scripts/test starts one)"
            );
            if std::env::var_os("TOLLGATE_REQUIRE_PEERS").is_some_and(|v| v == "1") {
                panic!("peer missing: {reason}");
            }
            eprintln!("SKIPPED: {reason}");
            None
        }
    }
}

/// `url` with its database replaced by `db`.
pub fn with_database(url: &str, db: &str) -> String {
    let mut parsed = url::Url::parse(url).unwrap();
    parsed.set_path(&format!("/{db}"));
    parsed.to_string()
}

/// Runs one statement on the test server, as its superuser. On a thread of its own, so it
/// works from async tests too.
pub fn admin_sql(admin: &str, sql: &str) {
    admin_query(admin, sql);
}

/// Runs one query on the test server, as its superuser; the first column of its first row.
pub fn admin_query(admin: &str, sql: &str) -> Option<String> {
    let (admin, sql) = (admin.to_owned(), sql.to_owned());
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let (client, connection) = tokio_postgres::connect(&admin, tokio_postgres::NoTls)
                .await
                .unwrap_or_else(|e| panic!("cannot reach the test PostgreSQL: {e}"));
            let driver = tokio::spawn(connection);
            let messages = client
                .simple_query(&sql)
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e}"));
            drop(client);
            let _ = driver.await;
            messages.into_iter().find_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0).map(str::to_owned),
                _ => None,
            })
        })
    })
    .join()
    .unwrap()
}

/// The test server's CA certificate (`scripts/postgres` turns TLS on when openssl is there),
/// or `None` after saying why (panics when peers are required).
pub fn ca_file() -> Option<String> {
    match std::env::var("TOLLGATE_TEST_PG_CA") {
        Ok(path) if std::path::Path::new(&path).is_file() => Some(path),
        _ => {
            let reason = "TOLLGATE_TEST_PG_CA names no CA file: the test PostgreSQL has no TLS \
                          (scripts/test turns it on with openssl)";
            if std::env::var_os("TOLLGATE_REQUIRE_PEERS").is_some_and(|v| v == "1") {
                panic!("peer missing: {reason}");
            }
            eprintln!("SKIPPED: {reason}");
            None
        }
    }
}

/// Instantiates each named spec `fn name(backend: Backend)` as a `#[test]` per backend:
/// `sqlite::name` and `postgres::name`.
#[macro_export]
macro_rules! for_each_backend {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $( #[test] fn $name() { super::$name($crate::support::ledgers::Backend::Sqlite) } )*
        }
        mod postgres {
            $( #[test] fn $name() { super::$name($crate::support::ledgers::Backend::Postgres) } )*
        }
    };
}

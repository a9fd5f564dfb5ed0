//! Running a test on SQLite and on PostgreSQL: [`both_databases!`] makes `<case>::sqlite`
//! and `<case>::postgres` of each `async fn case(db: Dialect)`; the case opens what it
//! needs on `db` ([`TestStore::open`], or `TestServer::builder().on(db)`).
//!
//! PostgreSQL: a throw-away database on the server named by `SLIPWAY_TEST_POSTGRES_URL`
//! (default `postgres://slipway:slipway@127.0.0.1:5432/postgres`, see `.ci/postgres.sh`),
//! dropped when its guard is, a failing test included. Run one side with
//! `cargo nextest run -p server --test it sqlite`.

use std::ops::Deref;

use server::store::{Dialect, Store};
use sqlx::{Connection, Executor};

/// `<case>::sqlite` and `<case>::postgres` for each `async fn <case>(db: Dialect)`.
macro_rules! both_databases {
    ($($case:ident),* $(,)?) => {$(
        mod $case {
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn sqlite() {
                super::$case(server::store::Dialect::Sqlite).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn postgres() {
                super::$case(server::store::Dialect::Postgres).await
            }
        }
    )*};
}
pub(crate) use both_databases;

const DEFAULT_SERVER: &str = "postgres://slipway:slipway@127.0.0.1:5432/postgres";

/// A database created for one test on the PostgreSQL server; dropped with this guard.
pub struct PgDatabase {
    server: String,
    name: String,
    pub url: String,
}

/// The PostgreSQL server tests create their databases on (the URL of a database there,
/// whose role may `CREATE DATABASE`).
pub fn pg_server() -> String {
    std::env::var("SLIPWAY_TEST_POSTGRES_URL").unwrap_or_else(|_| DEFAULT_SERVER.into())
}

impl PgDatabase {
    pub async fn create() -> PgDatabase {
        PgDatabase::create_in(None).await
    }

    /// [`PgDatabase::create`] with its tables in `tablespace` (which the role may use).
    pub async fn create_in(tablespace: Option<&str>) -> PgDatabase {
        let server = pg_server();
        let mut admin = sqlx::PgConnection::connect(&server)
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "PostgreSQL is unreachable at {server} ({e}); start it with `bash .ci/postgres.sh` \
                     or point SLIPWAY_TEST_POSTGRES_URL at a server whose role may CREATE DATABASE"
                )
            });
        let name = format!("slipway_test_{:016x}", rand::random::<u64>());
        let place = tablespace
            .map(|t| format!(" TABLESPACE {t}"))
            .unwrap_or_default();
        admin
            .execute(format!("CREATE DATABASE {name}{place}").as_str())
            .await
            .unwrap();
        let url = database_url(&server, &name);
        PgDatabase { server, name, url }
    }
}

impl Drop for PgDatabase {
    /// Drop cannot await, and may run on a runtime's worker: the `DROP DATABASE` goes
    /// through a runtime of its own on a thread of its own.
    fn drop(&mut self) {
        let (server, name) = (self.server.clone(), self.name.clone());
        let dropped = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async {
                let mut admin = sqlx::PgConnection::connect(&server).await?;
                let drop = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
                // DROP DATABASE asks for a checkpoint, which fails cluster-wide while a
                // full-disk test holds its tablespace full: bounded retries outlast it.
                for attempt in 1.. {
                    match admin.execute(drop.as_str()).await {
                        Ok(_) => break,
                        Err(e) if attempt < 40 && e.to_string().contains("checkpoint") => {
                            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                        }
                        Err(e) => return Err(e.into()),
                    }
                }
                anyhow::Ok(())
            })
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            // Not a second panic while a failing test unwinds: the database just stays.
            eprintln!("could not drop test database {}: {dropped:?}", self.name);
        }
    }
}

/// `postgres://u:p@host:port/db?x` with the database replaced by `name`.
pub fn database_url(server: &str, name: &str) -> String {
    let (base, query) = server.split_once('?').unwrap_or((server, ""));
    let authority_end = base.find("://").map_or(0, |i| i + 3);
    let base = match base[authority_end..].find('/') {
        Some(i) => &base[..authority_end + i],
        None => base,
    };
    match query {
        "" => format!("{base}/{name}"),
        q => format!("{base}/{name}?{q}"),
    }
}

/// Where a test's database lives: a file in a temp dir, or a throw-away PostgreSQL one.
pub enum TestDatabase {
    Sqlite(tempfile::TempDir),
    Postgres(PgDatabase),
}

impl TestDatabase {
    pub async fn create(db: Dialect) -> TestDatabase {
        match db {
            Dialect::Sqlite => TestDatabase::Sqlite(tempfile::tempdir().unwrap()),
            Dialect::Postgres => TestDatabase::Postgres(PgDatabase::create().await),
        }
    }

    /// A file database, so that WAL and locking are real.
    pub fn url(&self) -> String {
        match self {
            TestDatabase::Sqlite(dir) => format!(
                "sqlite://{}?mode=rwc",
                dir.path().join("slipway.db").display()
            ),
            TestDatabase::Postgres(pg) => pg.url.clone(),
        }
    }
}

/// A migrated [`Store`] on a database of its own.
pub struct TestStore {
    store: Store,
    _db: TestDatabase,
}

impl TestStore {
    pub async fn open(db: Dialect) -> TestStore {
        let database = TestDatabase::create(db).await;
        let store = Store::connect(&database.url()).await.unwrap();
        assert_eq!(store.dialect(), db);
        store.migrate().await.unwrap();
        TestStore {
            store,
            _db: database,
        }
    }
}

impl Deref for TestStore {
    type Target = Store;

    fn deref(&self) -> &Store {
        &self.store
    }
}

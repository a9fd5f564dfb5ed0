//! The storage layer: one [`Store`] API with SQLite and PostgreSQL behind it.
//!
//! # Design
//!
//! * **One code path, `sqlx::AnyPool`.** Every query is written once in SQL that both
//!   dialects accept: `$1`-style parameters (SQLite reads `$N` as parameter N),
//!   `INSERT … ON CONFLICT`, `RETURNING`, `TRUE`/`FALSE`. The few places where the
//!   dialects must differ ask [`Dialect`] for a clause (`FOR UPDATE`, `SKIP LOCKED`, the
//!   PostgreSQL advisory lock). The alternative, an enum of `SqlitePool`/`PgPool`, would
//!   have written every query twice or hidden it behind generic bounds that sqlx makes
//!   unreadable.
//! * **What the Any driver costs.** Rows are decoded by hand ([`row`]): the Any driver
//!   cannot read a SQLite column declared `BOOLEAN`, so SQLite stores booleans as
//!   `INTEGER` 0/1 and [`row::RowExt::flag`] accepts either a boolean or an integer.
//!   Enums are stored as their snake_case names in `TEXT` columns guarded by `CHECK`.
//! * **Portable values.** Timestamps are `i64` unix milliseconds, JSON is `TEXT`,
//!   secrets are opaque bytes encrypted by the caller.
//! * **Never a half-written row.** Every change that touches more than one row runs in
//!   one transaction ([`Store::begin`]).
//! * **SQLite writers are serialised in-process.** A file database gets two pools: a
//!   reader pool and a writer pool of exactly one connection. Every write transaction
//!   goes through the writer (and starts with `BEGIN IMMEDIATE`, so it holds the write
//!   lock from its first statement), so concurrent writers queue on the pool instead of
//!   failing with `SQLITE_BUSY`; WAL lets readers run beside the writer. `busy_timeout`
//!   covers other processes (`slipway migrate`) touching the same file.
//! * **PostgreSQL serialises per row.** A run's state changes lock the run row first
//!   (`SELECT … FOR UPDATE`), then its stages: one lock order everywhere, so cancel,
//!   finish, expiry and reconcile never deadlock. Leasing picks a stage with
//!   `FOR UPDATE SKIP LOCKED`, so replicas never hand out one stage twice and never
//!   wait on rows another transaction is changing; it also takes a transaction-scoped
//!   advisory lock because the concurrency limits are counts, and two READ COMMITTED
//!   transactions could otherwise both see "one slot left".
//! * **Run numbers** come from `repos.next_run_number`, bumped by an `UPDATE … RETURNING`
//!   inside the transaction that inserts the run: the row lock makes numbers dense and
//!   unique per repository.

mod artifacts;
pub mod audit;
pub mod blobs;
pub mod deployments;
pub mod environments;
mod events;
mod gates;
mod lease;
mod migrations;
pub mod oauth;
mod people;
mod probe;
mod queue;
mod records;
mod repo_scope;
mod repos;
mod results;
pub mod rollouts;
mod row;
mod run_state;
mod runs;
pub mod sessions;
mod types;
mod votes;

pub use audit::{AuditEntry, NewAudit};
pub use deployments::{Decision, DeployedImage, Deployment, Vote};
pub use environments::{Environment, EnvironmentUpdate};
pub use people::{Identity, Role, RoleBinding, User, UserToken};
pub use queue::RUNNER_LOST;
pub use repo_scope::RepoScope;
pub use results::{
    ImageRecord, MAX_FINDINGS, MAX_OUTPUT_BYTES, MAX_OUTPUTS, OUTPUT_DIGEST, OUTPUT_IMAGE,
    RunOutput, StageResults, StoredFinding, digest_hex,
};
pub use sessions::Session;
pub use types::*;
pub use votes::NewVote;

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::any::{AnyPoolOptions, AnyQueryResult};
use sqlx::{Any, AnyPool, Executor, Transaction};

pub(crate) use crate::clock::duration_ms;
use crate::clock::{Clock, SystemClock};

/// Errors of the storage layer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The row asked for (or a row it refers to) does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// The change clashes with stored data (a duplicate name, a run already finished …).
    #[error("conflict: {0}")]
    Conflict(String),
    /// The caller passed something the store refuses (an unknown `needs`, a cycle …).
    #[error("invalid: {0}")]
    Invalid(String),
    /// The caller may not do this (not eligible to approve, voted already …); the
    /// refusal is on the record.
    #[error("refused: {0}")]
    Refused(String),
    /// The stage lease token no longer matches: the lease expired, was re-leased or the
    /// stage was finished. The runner must stop working on the stage.
    #[error("lease lost: the stage is no longer leased with this token")]
    LeaseLost,
    /// A stored value could not be read back (a bad enum name, broken JSON).
    #[error("corrupt row: {0}")]
    Corrupt(String),
    #[error("database error: {0}")]
    Database(#[source] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

/// The storage layer's result.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// True for transient failures worth retrying the whole operation: pool time-outs,
    /// lost connections, PostgreSQL serialisation failures and deadlocks, SQLite
    /// `BUSY`/`LOCKED`.
    pub fn is_retryable(&self) -> bool {
        let Error::Database(e) = self else {
            return false;
        };
        match e {
            sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) => true,
            sqlx::Error::Database(db) => {
                let code = db.code().unwrap_or_default();
                // PostgreSQL SQLSTATEs: serialization_failure, deadlock_detected,
                // lock_not_available, admin shutdown / cannot connect now.
                matches!(&*code, "40001" | "40P01" | "55P03" | "57P01" | "57P03")
                    // SQLite extended result codes: the primary code is the low byte.
                    || code.parse::<i64>().is_ok_and(|c| matches!(c & 0xff, 5 | 6))
            }
            _ => false,
        }
    }
}

impl Error {
    /// True when the database refused a write because its disk is full: SQLite's
    /// `SQLITE_FULL` ("database or disk is full", primary code 13) or PostgreSQL's
    /// `disk_full` (SQLSTATE 53100, "could not extend file"). Nothing of the
    /// transaction was kept; the same write succeeds once there is space again.
    pub fn is_disk_full(&self) -> bool {
        let Error::Database(sqlx::Error::Database(db)) = self else {
            return false;
        };
        let code = db.code().unwrap_or_default();
        code == "53100" || code.parse::<i64>().is_ok_and(|c| c & 0xff == 13)
    }
}

impl From<sqlx::Error> for Error {
    fn from(e: sqlx::Error) -> Self {
        use sqlx::error::ErrorKind;
        match &e {
            sqlx::Error::RowNotFound => Error::NotFound("row".into()),
            sqlx::Error::Database(db) => match db.kind() {
                ErrorKind::UniqueViolation => Error::Conflict(db.message().to_string()),
                ErrorKind::ForeignKeyViolation => Error::NotFound(format!(
                    "a referenced row does not exist ({})",
                    db.message()
                )),
                _ => Error::Database(e),
            },
            _ => Error::Database(e),
        }
    }
}

/// Which database is behind a [`Store`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

/// Pool settings for [`Store::connect_with`].
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Connections to PostgreSQL, or SQLite reader connections.
    pub max_connections: u32,
    /// How long a caller waits for a connection (SQLite writers queue here).
    pub acquire_timeout: Duration,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            max_connections: 10,
            acquire_timeout: Duration::from_secs(60),
        }
    }
}

/// The store: cheap to clone (pools are reference counted).
#[derive(Clone, Debug)]
pub struct Store {
    /// Autocommit reads.
    read: AnyPool,
    /// Write transactions (one connection for SQLite, the same pool for PostgreSQL).
    write: AnyPool,
    dialect: Dialect,
    /// Stamps every row and sets and checks lease deadlines.
    clock: Arc<dyn Clock>,
}

pub(crate) type Tx = Transaction<'static, Any>;

impl Store {
    /// Connects to `sqlite://path?mode=rwc`, `sqlite::memory:` or `postgres://…`.
    pub async fn connect(url: &str) -> Result<Store> {
        Store::connect_with(url, &StoreOptions::default()).await
    }

    pub async fn connect_with(url: &str, opts: &StoreOptions) -> Result<Store> {
        sqlx::any::install_default_drivers();
        let base = AnyPoolOptions::new().acquire_timeout(opts.acquire_timeout);
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let pool = base
                .after_release(|conn, _meta| Box::pin(release_clean(conn)))
                .max_connections(opts.max_connections)
                .connect(url)
                .await?;
            return Ok(Store {
                read: pool.clone(),
                write: pool,
                dialect: Dialect::Postgres,
                clock: Arc::new(SystemClock),
            });
        }
        if !url.starts_with("sqlite:") {
            return Err(Error::Invalid(format!(
                "unsupported database URL (want sqlite: or postgres://): {url}"
            )));
        }
        let sqlite = base.after_release(|conn, _meta| Box::pin(release_clean(conn)));
        let sqlite = sqlite.after_connect(|conn, _meta| {
            Box::pin(async move {
                // busy_timeout first: switching to WAL needs the write lock.
                conn.execute("PRAGMA busy_timeout = 10000").await?;
                conn.execute("PRAGMA journal_mode = WAL").await?;
                // WAL + NORMAL is durable across application crashes; only an OS crash
                // can lose the last transactions.
                conn.execute("PRAGMA synchronous = NORMAL").await?;
                conn.execute("PRAGMA foreign_keys = ON").await?;
                Ok(())
            })
        });
        if url.contains(":memory:") || url.contains("mode=memory") {
            // Every connection to `:memory:` is its own database: keep exactly one alive.
            let pool = sqlite
                .max_connections(1)
                .min_connections(1)
                .idle_timeout(None)
                .max_lifetime(None)
                .connect(url)
                .await?;
            return Ok(Store {
                read: pool.clone(),
                write: pool,
                dialect: Dialect::Sqlite,
                clock: Arc::new(SystemClock),
            });
        }
        let write = sqlite.clone().max_connections(1).connect(url).await?;
        let read = sqlite
            .max_connections(opts.max_connections.max(1))
            .connect(url)
            .await?;
        Ok(Store {
            read,
            write,
            dialect: Dialect::Sqlite,
            clock: Arc::new(SystemClock),
        })
    }

    /// The same store on another clock (tests step a manual one past lease deadlines).
    pub fn with_clock(self, clock: Arc<dyn Clock>) -> Store {
        Store { clock, ..self }
    }

    /// The clock this store stamps rows and checks leases with.
    pub fn clock(&self) -> Arc<dyn Clock> {
        self.clock.clone()
    }

    /// Now on the store's clock, in unix milliseconds.
    pub fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    /// Applies the embedded migrations of this dialect; applying them again is a no-op.
    pub async fn migrate(&self) -> Result<()> {
        let files = match self.dialect {
            Dialect::Sqlite => migrations::SQLITE,
            Dialect::Postgres => migrations::POSTGRES,
        };
        let migrator = migrations::migrator(files).await?;
        if self.dialect == Dialect::Postgres {
            migrator.run(&self.write).await?;
            return Ok(());
        }
        // SQLite changes a table's constraints only by rebuilding it (0011 widens the
        // forge CHECKs), and dropping a parent table with foreign keys on cascades an
        // implicit DELETE into every child row. SQLite's "ALTER TABLE" page has such
        // changes made with foreign keys off and checked afterwards; the pragma is a
        // no-op inside the transaction sqlx wraps each migration in, so it is switched
        // here, around them, on the one connection that runs them.
        let mut conn = self.write.acquire().await?;
        conn.execute("PRAGMA foreign_keys = OFF").await?;
        let ran = migrator.run_direct(&mut *conn).await;
        let dangling = sqlx::query("PRAGMA foreign_key_check")
            .fetch_all(&mut *conn)
            .await;
        conn.execute("PRAGMA foreign_keys = ON").await?;
        ran?;
        let dangling = dangling?;
        if !dangling.is_empty() {
            return Err(Error::Invalid(format!(
                "the migrated database has {} rows whose foreign keys point nowhere",
                dangling.len()
            )));
        }
        Ok(())
    }

    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    /// Closes the pools (waits for connections in use to be returned).
    pub async fn close(&self) {
        self.write.close().await;
        self.read.close().await;
    }

    /// Begins a write transaction (see the module comment for why SQLite uses
    /// `BEGIN IMMEDIATE` on a one-connection pool).
    pub(crate) async fn begin(&self) -> Result<Tx> {
        Ok(match self.dialect {
            Dialect::Sqlite => self.write.begin_with("BEGIN IMMEDIATE").await?,
            Dialect::Postgres => self.write.begin().await?,
        })
    }

    /// ` FOR UPDATE` on PostgreSQL; nothing on SQLite, whose write transactions already
    /// exclude each other.
    pub(crate) fn for_update(&self) -> &'static str {
        match self.dialect {
            Dialect::Sqlite => "",
            Dialect::Postgres => " FOR UPDATE",
        }
    }
}

/// Whether a connection going back to its pool is fit for the next caller: `false`
/// (the pool closes it and opens a fresh one) when a transaction is still open on it.
///
/// Why: SQLite rolls a transaction back by itself on some errors — `SQLITE_FULL`
/// among them ("database or disk is full"; <https://www.sqlite.org/lang_transaction.html>,
/// "Response To Errors Within A Transaction"). sqlx's rollback of the dropped
/// transaction then fails ("no transaction is active") and its depth counter stays at
/// one, so every later `BEGIN` on that connection was refused with "attempted to call
/// begin_with at non-zero transaction depth" until the process restarted. The ping
/// first runs the rollback the dropped transaction queued.
async fn release_clean(conn: &mut sqlx::AnyConnection) -> Result<bool, sqlx::Error> {
    use sqlx::Connection;
    conn.ping().await?;
    let clean = !conn.is_in_transaction();
    if !clean {
        tracing::warn!("closing a database connection left inside a failed transaction");
    }
    Ok(clean)
}

/// The system time as unix milliseconds (a [`Store`] reads its own clock instead:
/// [`Store::now_ms`]).
pub fn now_ms() -> i64 {
    SystemClock.now_ms()
}

pub(crate) fn parse_enum<T: FromStr>(s: &str) -> Result<T> {
    s.parse()
        .map_err(|_| Error::Corrupt(format!("unexpected value {s:?}")))
}

pub(crate) fn affected(r: AnyQueryResult) -> u64 {
    r.rows_affected()
}

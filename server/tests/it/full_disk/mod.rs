//! A full data disk (issue #17, item 1), on real filesystems that fill: a tmpfs of a
//! few MiB mounted for the test (`support::tmpfs`; the tests run as root).
//!
//! - `store`: the store alone — a write that fails for want of space keeps nothing
//!   and poisons nothing.
//! - `server_process`: the real `slipway server` and `slipway runner` with the data dir (and
//!   for PostgreSQL its tablespace) on a tmpfs that fills: clean 507s, `/readyz` 503
//!   with the reason, a step whose log could not be stored ends with that reason, and
//!   everything works again once space is back, with nothing lost or half-written.
//! - `planning`: only the data dir full (PostgreSQL elsewhere): a run made meanwhile
//!   waits `pending` and runs once the space is back.
//! - `pg_kill`: PostgreSQL connections killed mid-transaction under a webhook and
//!   run load: no half-created run.

pub(crate) mod manual_runner;
mod pg_kill;
mod planning;
mod server_process;
mod store;

use std::path::Path;
use std::process::Command;

use server::store::{ForgeKind, NewRepo, Store};

use crate::support::tmpfs::Tmpfs;

pub(crate) fn new_repo(name: &str) -> NewRepo {
    NewRepo {
        api_url: None,
        name: name.to_string(),
        forge: ForgeKind::Github,
        clone_url: format!("https://example.com/{name}.git"),
        default_branch: "main".into(),
        webhook_secret_enc: vec![1, 2, 3],
        forge_token_enc: None,
        trusted: false,
    }
}

/// A tmpfs of `bytes` in a temp dir of its own (unmounted first, then removed).
pub(crate) struct Mounted {
    fs: Tmpfs,
    _dir: tempfile::TempDir,
}

impl Mounted {
    pub(crate) fn new(bytes: u64) -> Mounted {
        let dir = tempfile::tempdir().unwrap();
        // Traversable by other users (the PostgreSQL server's, for a tablespace).
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let fs = Tmpfs::mount(&dir.path().join("disk"), bytes);
        Mounted { fs, _dir: dir }
    }
}

impl std::ops::Deref for Mounted {
    type Target = Tmpfs;
    fn deref(&self) -> &Tmpfs {
        &self.fs
    }
}

/// A tmpfs of `bytes`, and a migrated SQLite store on it.
pub(crate) async fn full_tmpfs_store(bytes: u64) -> (Mounted, Store) {
    let fs = Mounted::new(bytes);
    let url = sqlite_url(fs.path());
    let store = Store::connect(&url).await.unwrap();
    store.migrate().await.unwrap();
    (fs, store)
}

fn sqlite_url(dir: &Path) -> String {
    format!("sqlite://{}?mode=rwc", dir.join("slipway.db").display())
}

/// `psql` as the PostgreSQL superuser on the local cluster (`.ci/postgres.sh`).
fn psql_superuser(sql: &str) {
    let out = Command::new("runuser")
        .args([
            "-u",
            "postgres",
            "--",
            "psql",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
        ])
        .args(["-h", "127.0.0.1", "-d", "postgres", "-c", sql])
        .output()
        .expect("running psql as postgres");
    if !out.status.success() {
        // Peer authentication over the socket, if TCP asks for a password.
        let out = Command::new("runuser")
            .args([
                "-u",
                "postgres",
                "--",
                "psql",
                "-q",
                "-v",
                "ON_ERROR_STOP=1",
            ])
            .args(["-d", "postgres", "-c", sql])
            .output()
            .expect("running psql as postgres");
        assert!(
            out.status.success(),
            "psql {sql:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// A PostgreSQL tablespace on a tmpfs of its own, which test databases may use; dropped
/// (then unmounted) with this guard — after the databases in it are.
pub(crate) struct FullTablespace {
    pub name: String,
    pub fs: Mounted,
}

impl FullTablespace {
    pub(crate) fn create(bytes: u64) -> FullTablespace {
        let fs = Mounted::new(bytes);
        let dir = fs.path().join("pg");
        std::fs::create_dir(&dir).unwrap();
        let chown = Command::new("chown")
            .args(["postgres:postgres"])
            .arg(&dir)
            .status()
            .unwrap();
        assert!(chown.success(), "chown postgres {}", dir.display());
        let name = format!("slipway_full_{:08x}", rand::random::<u32>());
        psql_superuser(&format!(
            "CREATE TABLESPACE {name} LOCATION '{}'",
            dir.display()
        ));
        psql_superuser(&format!("GRANT CREATE ON TABLESPACE {name} TO PUBLIC"));
        FullTablespace { name, fs }
    }
}

impl Drop for FullTablespace {
    fn drop(&mut self) {
        // Not a second panic while a failing test unwinds.
        let sql = format!("DROP TABLESPACE IF EXISTS {}", self.name);
        let dropped = std::panic::catch_unwind(|| psql_superuser(&sql));
        if dropped.is_err() {
            eprintln!("could not drop tablespace {}", self.name);
        }
    }
}

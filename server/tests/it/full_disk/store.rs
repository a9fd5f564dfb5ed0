//! The store on a full disk, without a server: a write that fails for want of space
//! leaves nothing behind and does not poison the connection — once space is back, the
//! next write works. Before the fix, SQLite answered every later write transaction
//! with "attempted to call begin_with at non-zero transaction depth" until a restart.
//! PostgreSQL: the database's tablespace on the tmpfs ("could not extend file",
//! SQLSTATE 53100).

use server::store::{Dialect, Event, NewRun, Repo, Store, Trigger};

use super::{FullTablespace, Mounted, full_tmpfs_store, new_repo};
use crate::support::both_databases;
use crate::support::db::PgDatabase;

both_databases!(a_write_after_a_full_disk_works_once_space_is_back);

/// A run whose message is `kib` KiB that does not compress, so a few of them fill a
/// small filesystem.
fn fat_run(kib: usize) -> NewRun {
    let mut run = NewRun::new(
        Trigger::Webhook,
        Event::Push,
        "refs/heads/main",
        "0123456789abcdef0123456789abcdef01234567",
    );
    run.message = (0..kib * 1024 / 16)
        .map(|_| format!("{:016x}", rand::random::<u64>()))
        .collect();
    run
}

/// Creates fat runs until one fails; that error, and how many were made.
async fn fill_with_runs(store: &Store, repo: &Repo) -> (server::store::Error, usize) {
    for made in 0..10_000 {
        if let Err(e) = store.create_run(repo.id, fat_run(64)).await {
            return (e, made);
        }
    }
    panic!("10000 runs of 64 KiB fit on a filesystem meant to be small");
}

/// Where the database lives: its disk, and on PostgreSQL the database (held only to
/// be dropped, before the tablespace).
enum Place {
    Sqlite(Mounted),
    Postgres(
        #[allow(dead_code, reason = "kept for its Drop")] PgDatabase,
        FullTablespace,
    ),
}

impl Place {
    fn disk(&self) -> &Mounted {
        match self {
            Place::Sqlite(fs) => fs,
            Place::Postgres(_, space) => &space.fs,
        }
    }
}

async fn a_write_after_a_full_disk_works_once_space_is_back(db: Dialect) {
    let (place, store) = match db {
        Dialect::Sqlite => {
            let (fs, store) = full_tmpfs_store(4 * 1024 * 1024).await;
            (Place::Sqlite(fs), store)
        }
        Dialect::Postgres => {
            let space = FullTablespace::create(16 * 1024 * 1024);
            let database = PgDatabase::create_in(Some(&space.name)).await;
            let store = Store::connect(&database.url).await.unwrap();
            store.migrate().await.unwrap();
            (Place::Postgres(database, space), store)
        }
    };
    let repo = store.create_repo(new_repo("team/app")).await.unwrap();
    place.disk().fill();
    let (err, made) = fill_with_runs(&store, &repo).await;
    assert!(
        err.is_disk_full(),
        "the first failure says the disk is full: {err}"
    );
    // Still full: the same clear error again, not a poisoned connection.
    for _ in 0..3 {
        let again = store.create_run(repo.id, fat_run(64)).await.unwrap_err();
        assert!(again.is_disk_full(), "while full: {again}");
    }
    place.disk().empty();
    let run = store
        .create_run(repo.id, fat_run(1))
        .await
        .expect("a write once space is back");
    // Numbers stay dense: every failed transaction was rolled back whole.
    assert_eq!(
        run.number,
        made as i64 + 1,
        "no number was used by a failed run"
    );
    let runs = store.list_runs(repo.id, 10_000, None).await.unwrap();
    assert_eq!(runs.len(), made + 1);
    for r in &runs {
        let stored = store.get_run(r.id).await.unwrap();
        let kib = if stored.number == run.number { 1 } else { 64 };
        assert_eq!(
            stored.message.len(),
            kib * 1024,
            "run {} is whole",
            r.number
        );
    }
    store.close().await;
    drop(place);
}

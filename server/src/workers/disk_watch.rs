//! Disk watch: probes whether the server can write — a small file in the data
//! directory, the write-probe row in the database — and how much space its data disk
//! has left, so `/readyz` turns not ready when a disk fills (or goes read-only) even
//! before a request fails, and ready again by itself once space is back (the rules
//! are `daemon::disk`'s). Every [`HEALTHY_EVERY`], and every [`FAULTED_EVERY`] while
//! something cannot be written, so recovery is seen within a second or so.

use std::path::PathBuf;
use std::time::Duration;

use tokio::task::JoinHandle;

use crate::daemon::disk::Part;
use crate::daemon::state::AppState;
use crate::disk_space;

/// Between probes while everything can be written.
pub const HEALTHY_EVERY: Duration = Duration::from_secs(5);
/// Between probes while a part cannot be written.
pub const FAULTED_EVERY: Duration = Duration::from_secs(1);
/// A database probe slower than this tells nothing (the writer is busy): skipped.
const DB_PROBE_LIMIT: Duration = Duration::from_secs(10);

pub fn spawn(state: AppState) -> JoinHandle<()> {
    tokio::spawn(async move {
        let dirs = watched_dirs(&state);
        loop {
            probe_once(&state, &dirs).await;
            let every = if state.disk.unwritable().is_some() {
                FAULTED_EVERY
            } else {
                HEALTHY_EVERY
            };
            tokio::select! {
                _ = state.shutdown.cancelled() => break,
                _ = tokio::time::sleep(every) => {}
            }
        }
    })
}

/// The data dir, and a SQLite database's directory if that is elsewhere.
fn watched_dirs(state: &AppState) -> Vec<PathBuf> {
    let mut dirs = vec![state.config.data_dir.clone()];
    if let Some(db) = disk_space::sqlite_dir(&state.config.database_url)
        && db != state.config.data_dir
    {
        dirs.push(db);
    }
    dirs
}

/// "its disk is full" for a lack of space, else the error itself (an `io::Error`
/// names no path: `/readyz` shows this).
fn io_reason(e: &std::io::Error) -> String {
    if disk_space::is_disk_full(e) {
        "its disk is full".into()
    } else {
        e.to_string()
    }
}

/// One round: the data dir's probe and free space, then the database's probe.
pub async fn probe_once(state: &AppState, dirs: &[PathBuf]) {
    let (data_dir, all) = (state.config.data_dir.clone(), dirs.to_vec());
    let local = tokio::task::spawn_blocking(move || {
        let written = disk_space::probe_dir(&data_dir);
        let free = all
            .iter()
            .filter_map(|d| disk_space::free_bytes(d).ok())
            .min();
        (written, free)
    })
    .await;
    let Ok((written, free)) = local else {
        return;
    };
    let room = match free {
        Some(free) => {
            state.disk.observe_free(free);
            free >= state.disk.min_free
        }
        None => true,
    };
    state.disk.observe(
        Part::DataDir,
        written.map(|()| room).map_err(|e| io_reason(&e)),
    );
    let db = match tokio::time::timeout(DB_PROBE_LIMIT, state.store.probe_write()).await {
        Ok(result) => result,
        Err(_) => return,
    };
    // A SQLite file lives on the watched disk: the same reserve applies to it.
    let db_room = room || disk_space::sqlite_dir(&state.config.database_url).is_none();
    state.disk.observe(
        Part::Database,
        db.map(|()| db_room).map_err(|e| {
            if e.is_disk_full() {
                "its disk is full".into()
            } else {
                e.to_string()
            }
        }),
    );
}

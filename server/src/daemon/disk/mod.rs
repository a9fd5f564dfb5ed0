//! Whether the server can write what it must keep — its database and its data
//! directory (logs, blobs, mirrors) — and what it does while it cannot.
//!
//! A write refused for want of space (SQLite's `SQLITE_FULL`, PostgreSQL's
//! `disk_full`, `ENOSPC`/`EDQUOT` from a log or blob file) is answered `507
//! Insufficient Storage` with `Retry-After` and a message saying what could not be
//! stored (`api::error`); nothing of it is kept (transactions roll back whole, a log
//! batch is cut back to its last whole line, a blob's temp file is removed). The
//! answer is reported here ([`DiskHealth::report_full`]): a fault for that part, one
//! error line in the log, `slipway_storage_writable{part} 0` and a count in
//! `slipway_disk_full_refusals_total{part}`; `/readyz` answers 503 with the reason
//! while any part has a fault.
//!
//! The fault clears by itself (`workers::disk_watch`): once a probe write to the
//! part succeeds, no write has failed for [`HOLD`], and — for what lives on the local
//! disk — at least `min_free_disk_bytes` are free again. The hold and the reserve keep
//! readiness from flapping on a disk that has room for a probe but not for the next
//! log batch; the probe notices a disk that filled (or went read-only) before a
//! request has to. Each clearing of the database's fault is a recovery
//! ([`DiskHealth::database_recoveries`]), after which lease expiry gives every running
//! lease one more heartbeat timeout: no heartbeat could be recorded meanwhile.
//!
//! Upstream behaviour this follows: SQLite may roll a transaction back by itself on
//! `SQLITE_FULL` (<https://www.sqlite.org/lang_transaction.html>, "Response To Errors
//! Within A Transaction"), hence `store::release_clean`; PostgreSQL reports a data
//! file it cannot extend as SQLSTATE 53100 `disk_full` and aborts only that
//! transaction (<https://www.postgresql.org/docs/current/errcodes-appendix.html>);
//! Elasticsearch's flood-stage watermark is the model for refusing writes below a
//! reserve and releasing by itself once space returns.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

use crate::daemon::metrics::{PartLabels, StorageMetrics};

/// How long after the last failed write a part stays faulted, however its probe goes.
pub const HOLD: Duration = Duration::from_secs(3);

/// What `Retry-After` says on a 507, in seconds.
pub const RETRY_AFTER_SECS: u64 = 10;

/// A part of the server's storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Part {
    /// The database (SQLite in the data dir by default, or PostgreSQL).
    Database,
    /// The data directory: step logs, artifact and cache blobs, git mirrors.
    DataDir,
}

impl Part {
    pub const ALL: [Part; 2] = [Part::Database, Part::DataDir];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Part::Database => "database",
            Part::DataDir => "data_dir",
        }
    }

    /// For messages: "the database", "the data directory".
    pub fn describe(self) -> &'static str {
        match self {
            Part::Database => "the database",
            Part::DataDir => "the data directory",
        }
    }
}

/// Why a part cannot be written, since when.
#[derive(Debug, Clone)]
struct Fault {
    since: Instant,
    last_failure: Instant,
    reason: String,
}

#[derive(Debug, Default)]
struct Faults {
    database: Option<Fault>,
    data_dir: Option<Fault>,
    /// How many times the database's fault cleared.
    database_recoveries: u64,
    /// Whether the last look found the data disk under its reserve (warned once).
    low: bool,
}

impl Faults {
    fn of(&mut self, part: Part) -> &mut Option<Fault> {
        match part {
            Part::Database => &mut self.database,
            Part::DataDir => &mut self.data_dir,
        }
    }
}

/// The server's view of its storage; in `AppState::disk`.
pub struct DiskHealth {
    faults: Mutex<Faults>,
    /// Bytes kept free on the data disk (`min_free_disk_bytes`).
    pub min_free: u64,
    writable: Family<PartLabels, Gauge>,
    refusals: Family<PartLabels, Counter>,
    free: Gauge,
}

impl std::fmt::Debug for DiskHealth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiskHealth")
            .field("min_free", &self.min_free)
            .finish_non_exhaustive()
    }
}

fn label(part: Part) -> PartLabels {
    PartLabels {
        part: part.as_str().to_string(),
    }
}

impl DiskHealth {
    pub fn new(min_free: u64, metrics: StorageMetrics) -> DiskHealth {
        for part in Part::ALL {
            metrics.writable.get_or_create(&label(part)).set(1);
            metrics.refusals.get_or_create(&label(part)).inc_by(0);
        }
        DiskHealth {
            faults: Mutex::new(Faults::default()),
            min_free,
            writable: metrics.writable,
            refusals: metrics.refusals,
            free: metrics.free,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Faults> {
        self.faults.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A write to `part` failed because its disk is full (`detail`: the error). The
    /// caller answers 507; this records the fault.
    pub fn report_full(&self, part: Part, detail: &str) {
        self.refusals.get_or_create(&label(part)).inc();
        // `/readyz` is public: the reason says what, the detail (paths, the driver's
        // words) goes to the log only.
        self.fail(part, "its disk is full".into(), detail);
    }

    /// A write to the data directory was refused before it started: it would have
    /// left less than the reserve free. Counted, not a fault — the server can still
    /// write what it must.
    pub fn count_refusal(&self, part: Part) {
        self.refusals.get_or_create(&label(part)).inc();
    }

    /// `part` cannot be written: a failed write or probe.
    fn fail(&self, part: Part, reason: String, detail: &str) {
        let now = Instant::now();
        let mut faults = self.lock();
        match faults.of(part) {
            Some(f) => {
                f.last_failure = now;
            }
            slot @ None => {
                tracing::error!(
                    part = part.as_str(),
                    %reason,
                    detail,
                    "{} cannot be written: writes are refused with 507 and /readyz \
                     answers 503 until it can",
                    part.describe()
                );
                self.writable.get_or_create(&label(part)).set(0);
                *slot = Some(Fault {
                    since: now,
                    last_failure: now,
                    reason,
                });
            }
        }
    }

    /// A probe of `part`: `Err` with why it cannot be written (shown by `/readyz`: no
    /// paths), or `Ok(room)` — it took
    /// the probe write, and `room` says whether its disk has the reserve free again.
    pub fn observe(&self, part: Part, probe: Result<bool, String>) {
        let room = match probe {
            Err(reason) => return self.fail(part, reason, ""),
            Ok(room) => room,
        };
        let mut faults = self.lock();
        let Some(f) = faults.of(part).as_ref() else {
            return;
        };
        if !room || f.last_failure.elapsed() < HOLD {
            return;
        }
        tracing::info!(
            part = part.as_str(),
            down_for = ?f.since.elapsed(),
            "{} can be written again",
            part.describe()
        );
        *faults.of(part) = None;
        if part == Part::Database {
            faults.database_recoveries += 1;
        }
        self.writable.get_or_create(&label(part)).set(1);
    }

    /// The data disk's free bytes, as last measured (for the metric, and one warning
    /// each time it goes under the reserve).
    pub fn observe_free(&self, free: u64) {
        self.free.set(i64::try_from(free).unwrap_or(i64::MAX));
        let low = free < self.min_free;
        let mut faults = self.lock();
        if low && !faults.low {
            tracing::warn!(
                free,
                min_free_disk_bytes = self.min_free,
                "the data disk is under its reserve: uploads that would take more are \
                 refused with 507"
            );
        }
        faults.low = low;
    }

    /// Why the server cannot write now, if it cannot: what `/readyz` says.
    pub fn unwritable(&self) -> Option<String> {
        let faults = self.lock();
        let reasons: Vec<String> = [
            (Part::Database, &faults.database),
            (Part::DataDir, &faults.data_dir),
        ]
        .into_iter()
        .filter_map(|(part, f)| {
            f.as_ref()
                .map(|f| format!("{} cannot be written: {}", part.describe(), f.reason))
        })
        .collect();
        (!reasons.is_empty()).then(|| reasons.join("; "))
    }

    /// Whether `part` has a fault now.
    pub fn is_faulted(&self, part: Part) -> bool {
        self.lock().of(part).is_some()
    }

    /// How many times the database's fault has cleared since the server started.
    pub fn database_recoveries(&self) -> u64 {
        self.lock().database_recoveries
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn health() -> DiskHealth {
        DiskHealth::new(1000, crate::daemon::metrics::Metrics::new().storage())
    }

    #[test]
    fn a_fault_is_reported_once_and_cleared_only_with_room_and_after_the_hold() {
        let h = health();
        assert_eq!(h.unwritable(), None);
        h.report_full(Part::DataDir, "No space left on device (os error 28)");
        h.report_full(Part::DataDir, "again");
        let why = h.unwritable().unwrap();
        assert_eq!(
            why,
            "the data directory cannot be written: its disk is full"
        );
        // Probes that pass within the hold, or without the reserve free, clear nothing.
        h.observe(Part::DataDir, Ok(true));
        assert!(h.unwritable().is_some());
        h.lock().data_dir.as_mut().unwrap().last_failure -= HOLD;
        h.observe(Part::DataDir, Ok(false));
        assert!(h.is_faulted(Part::DataDir) && !h.is_faulted(Part::Database));
        h.observe(Part::DataDir, Ok(true));
        assert_eq!(h.unwritable(), None);
        // Only the database's recoveries extend leases.
        assert_eq!(h.database_recoveries(), 0);
        // A failing probe is a fault of its own.
        h.observe(
            Part::Database,
            Err("attempt to write a readonly database".into()),
        );
        assert_eq!(
            h.unwritable().as_deref(),
            Some("the database cannot be written: attempt to write a readonly database")
        );
        h.lock().database.as_mut().unwrap().last_failure -= HOLD;
        h.observe(Part::Database, Ok(true));
        assert_eq!(h.database_recoveries(), 1);
    }
}

//! Prometheus metrics: one [`Metrics`] per server, in `state.metrics`, served at
//! `GET /metrics` (see `api::metrics`).
//!
//! Labels are bounded sets only — route *templates* (`/api/repos/{owner}/{name}`),
//! forge kinds, outcomes and statuses — never repository names, branches or ids, so the
//! number of series cannot grow with traffic (and no name a user chose reaches the
//! scrape output).
//!
//! Who records what:
//! - HTTP requests: the middleware [`crate::api::metrics::track_http`], on every matched route.
//! - Webhook deliveries: the webhook handler calls [`Metrics::webhook`].
//! - Finished runs: whoever moves a run to a final state calls [`Metrics::run_finished`]
//!   (the API does for cancellations; the scheduler for the rest).
//! - Leased stages: the runner protocol calls [`Metrics::stage_leased`].
//! - Queue depth: refreshed from the store on every scrape ([`Metrics::set_stage_counts`]).
//! - Connections: the listener ([`crate::daemon::listener`]).
//! - Storage: [`crate::daemon::disk::DiskHealth`] (writable parts, 507 refusals, free
//!   bytes on the data disk).

use std::fmt::Display;
use std::sync::atomic::AtomicI64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct HttpLabels {
    method: String,
    route: String,
    status: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RouteLabels {
    route: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct WebhookLabels {
    forge: String,
    outcome: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ReasonLabels {
    reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct StatusLabels {
    status: String,
}

/// `part`: `database` or `data_dir` (see `daemon::disk`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct PartLabels {
    pub part: String,
}

/// The storage families, handed to `daemon::disk::DiskHealth`, which keeps them.
#[derive(Clone)]
pub struct StorageMetrics {
    /// 1 while the part can be written, 0 while it cannot.
    pub writable: Family<PartLabels, Gauge>,
    /// Writes answered 507 because the disk was full (or would be).
    pub refusals: Family<PartLabels, Counter>,
    /// Free bytes on the data directory's filesystem.
    pub free: Gauge,
}

type DurationFamily = Family<RouteLabels, Histogram, fn() -> Histogram>;

fn duration_histogram() -> Histogram {
    // 1 ms … ~16 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

/// The server's metric families. Cheap to update from any task (atomics inside).
pub struct Metrics {
    registry: Registry,
    http_requests: Family<HttpLabels, Counter>,
    http_duration: DurationFamily,
    webhooks: Family<WebhookLabels, Counter>,
    runs_finished: Family<StatusLabels, Counter>,
    stages_leased: Counter,
    stages_queued: Gauge<i64, AtomicI64>,
    stages_running: Gauge<i64, AtomicI64>,
    http_connections: Gauge<i64, AtomicI64>,
    http_connections_closed: Family<ReasonLabels, Counter>,
    storage: StorageMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("slipway");
        let http_requests = Family::<HttpLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests by method, route template and status",
            http_requests.clone(),
        );
        let http_duration: DurationFamily = Family::new_with_constructor(duration_histogram);
        registry.register(
            "http_request_duration_seconds",
            "Time to the response head, by route template (streams are not timed to their end)",
            http_duration.clone(),
        );
        let webhooks = Family::<WebhookLabels, Counter>::default();
        registry.register(
            "webhook_deliveries",
            "Webhook deliveries by forge and outcome",
            webhooks.clone(),
        );
        let runs_finished = Family::<StatusLabels, Counter>::default();
        // Every final status from the start at 0, so `rate()` and alerts see the series
        // before the first run of that status.
        for status in crate::store::RunStatus::ALL.iter().filter(|s| s.is_final()) {
            runs_finished
                .get_or_create(&StatusLabels {
                    status: status.to_string(),
                })
                .inc_by(0);
        }
        registry.register(
            "runs_finished",
            "Runs that reached a final state, by status",
            runs_finished.clone(),
        );
        let stages_leased = Counter::default();
        registry.register(
            "stages_leased",
            "Stages handed to a runner",
            stages_leased.clone(),
        );
        let stages_queued = Gauge::<i64, AtomicI64>::default();
        registry.register(
            "stages_queued",
            "Stages waiting for a runner (the queue depth)",
            stages_queued.clone(),
        );
        let stages_running = Gauge::<i64, AtomicI64>::default();
        registry.register(
            "stages_running",
            "Stages leased to a runner",
            stages_running.clone(),
        );
        let http_connections = Gauge::<i64, AtomicI64>::default();
        registry.register(
            "http_connections",
            "Client connections open",
            http_connections.clone(),
        );
        let http_connections_closed = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "http_connections_closed",
            "Connections the server closed or refused, by reason (header_timeout, \
             idle_timeout, evicted: to make room at the limit, over_limit: refused, shutdown)",
            http_connections_closed.clone(),
        );
        let storage = StorageMetrics {
            writable: Family::default(),
            refusals: Family::default(),
            free: Gauge::default(),
        };
        registry.register(
            "storage_writable",
            "1 while the part (database, data_dir) can be written, 0 while it cannot \
             (its disk is full or it refuses writes)",
            storage.writable.clone(),
        );
        registry.register(
            "disk_full_refusals",
            "Writes answered 507 Insufficient Storage, by part: the disk was full, or an \
             upload would have taken the data disk under min_free_disk_bytes",
            storage.refusals.clone(),
        );
        registry.register(
            "data_disk_free_bytes",
            "Free bytes on the data directory's filesystem",
            storage.free.clone(),
        );
        Metrics {
            registry,
            http_requests,
            http_duration,
            webhooks,
            runs_finished,
            stages_leased,
            stages_queued,
            stages_running,
            http_connections,
            http_connections_closed,
            storage,
        }
    }

    /// The storage families (for `daemon::disk::DiskHealth`).
    pub fn storage(&self) -> StorageMetrics {
        self.storage.clone()
    }

    /// The number of open client connections.
    pub(crate) fn set_http_connections(&self, open: usize) {
        self.http_connections
            .set(i64::try_from(open).unwrap_or(i64::MAX));
    }

    /// The listener closed or refused a connection; `reason` from a fixed set.
    pub(crate) fn http_connection_closed(&self, reason: &str) {
        self.http_connections_closed
            .get_or_create(&ReasonLabels {
                reason: reason.to_string(),
            })
            .inc();
    }

    /// One webhook delivery. `outcome` should come from a small fixed set, e.g.
    /// `accepted`, `duplicate`, `ignored`, `unauthorized`, `malformed`, `too_large`,
    /// `unknown_repo`, `error`.
    pub fn webhook(&self, forge: impl Display, outcome: &str) {
        self.webhooks
            .get_or_create(&WebhookLabels {
                forge: forge.to_string(),
                outcome: outcome.to_string(),
            })
            .inc();
    }

    /// A run reached a final state.
    pub fn run_finished(&self, status: crate::store::RunStatus) {
        self.runs_finished
            .get_or_create(&StatusLabels {
                status: status.to_string(),
            })
            .inc();
    }

    /// A stage was leased to a runner.
    pub fn stage_leased(&self) {
        self.stages_leased.inc();
    }

    /// The current number of queued and running stages.
    pub fn set_stage_counts(&self, queued: i64, running: i64) {
        self.stages_queued.set(queued);
        self.stages_running.set(running);
    }

    pub(crate) fn http(&self, method: &str, route: &str, status: u16, seconds: f64) {
        self.http_requests
            .get_or_create(&HttpLabels {
                method: method.to_string(),
                route: route.to_string(),
                status,
            })
            .inc();
        self.http_duration
            .get_or_create(&RouteLabels {
                route: route.to_string(),
            })
            .observe(seconds);
    }

    /// The OpenMetrics text exposition (Prometheus scrapes it natively).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// The content type of [`Metrics::encode`].
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

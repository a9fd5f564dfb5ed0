//! What every request handler and background worker shares.

use std::ops::Deref;
use std::sync::Arc;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::crypto::SecretBox;
use crate::daemon::config::Config;
use crate::forge::StatusReporter;
use crate::logs::LogStore;
use crate::store::Store;

/// Cheap to clone: one `Arc` around the shared parts.
#[derive(Clone)]
pub struct AppState(Arc<Inner>);

pub struct Inner {
    pub store: Store,
    pub config: Config,
    /// Seals and opens secrets, webhook secrets and forge tokens at rest.
    pub secret_box: SecretBox,
    pub logs: LogStore,
    /// Artifact and cache content, by sha256.
    pub blobs: crate::store::blobs::BlobStore,
    pub status: StatusReporter,
    pub wake: Wake,
    /// The budget of webhook bytes read before their signature is checked.
    pub webhook_budget: crate::api::webhook_body::BodyBudget,
    /// Prometheus metrics, served at `/metrics`.
    pub metrics: crate::daemon::metrics::Metrics,
    /// Whether the database and the data directory can be written (`/readyz`, 507s).
    pub disk: crate::daemon::disk::DiskHealth,
    /// The lines failed runs' pages show from their logs, read once (`web::failure`).
    pub failures: crate::logs::failure_cache::FailureCache,
    /// The forges people sign in with (`web::oauth`), their client secrets loaded.
    pub oauth: crate::web::oauth::clients::OAuthClients,
    /// Cancelled when the server shuts down; workers stop at their next await.
    pub shutdown: CancellationToken,
}

/// Nudges for the background workers, so work starts at once instead of at the next
/// poll. Polling stays as the fallback: a lost nudge only costs latency.
#[derive(Default)]
pub struct Wake {
    /// New pending runs to plan.
    pub planner: Notify,
    /// Stages became runnable (or runners freed up).
    pub queue: Notify,
    /// A running stage was asked to stop: held heartbeats look again at once
    /// (`api::protocol::report`), so the runner hears it now, not at its next beat.
    pub cancel: Notify,
}

impl AppState {
    pub fn new(inner: Inner) -> Self {
        AppState(Arc::new(inner))
    }
}

impl Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

/// Where things live under the data dir, and the AAD labels that bind sealed values to
/// their row, so a ciphertext copied into another repository's row fails to open.
impl Inner {
    /// The bare mirror of a repository.
    pub fn mirror_dir(&self, repo: crate::store::RepoId) -> std::path::PathBuf {
        self.config
            .data_dir
            .join("mirrors")
            .join(format!("{repo}.git"))
    }
}

/// AAD for a repository's sealed webhook secret. Bound to the name (the id does not exist
/// yet when the secret is sealed at registration); a rename must re-seal.
pub fn webhook_secret_aad(repo_name: &str) -> Vec<u8> {
    format!("webhook-secret:{repo_name}").into_bytes()
}

/// AAD for a repository's sealed forge token (commit status reporting).
pub fn forge_token_aad(repo_name: &str) -> Vec<u8> {
    format!("forge-token:{repo_name}").into_bytes()
}

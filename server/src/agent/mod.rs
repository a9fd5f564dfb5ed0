//! The runner: leases stages from a Slipway server over the runner protocol
//! ([`crate::protocol`]) and runs them on a [`runner::Backend`].
//!
//! The same code serves both deployments: the server's in-process runner
//! ([`spawn_in_process`], the local backend, talking HTTP to its own listener) and
//! `slipway runner` on another host. Speaking the real protocol in-process is
//! deliberate: one path to test, and the quick start exercises what production uses.
//!
//! Rooms: this module is the lifecycle (register, lease slots, adoption, shutdown);
//! `stage` runs one leased stage; `forward` keeps its lease and posts its logs;
//! `files` moves sources, artifacts and caches; `client` is the HTTP client with
//! backoff; `cache` computes cache keys and packs them; `backends` opens a backend and
//! sweeps what a crashed predecessor left; `stage_spec` turns a planned stage into what
//! a backend runs.
//!
//! On shutdown the runner stops leasing, lets running stages go on for
//! `shutdown_grace`, then cancels them and reports them as `error` ("runner shut
//! down"), an infrastructure failure the server retries elsewhere. If the report cannot
//! be delivered (the server is the one shutting down), the lease simply expires.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use reqwest::{StatusCode, Url};
use runner::Backend;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::protocol::{
    self, AdoptionRecord, LeaseRequest, LeaseResponse, RegisterRequest, RegisterResponse,
    ResumeRequest, ResumeResponse,
};
use client::{BACKOFF_MAX, Backoff, CallError, Client, REQUEST_TIMEOUT};

pub mod backends;
pub mod cache;
mod client;
mod files;
mod forward;
mod stage;
pub mod stage_spec;

/// Name prefix of a stage's scratch directory in the work dir.
const SCRATCH_PREFIX: &str = "source-";
/// The same in the system temp dir (no work dir), shared with other programs.
const TEMP_SCRATCH_PREFIX: &str = "slipway-source-";

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("the server refused the runner token: {0}")]
    Unauthorized(String),
    #[error("the server refused to register this runner: {0}")]
    Refused(String),
}

/// A runner process's connection to one server.
pub struct Agent {
    client: Arc<Client>,
    name: String,
    labels: Vec<String>,
    capacity: usize,
    backend: Arc<dyn Backend>,
    /// Where sources are downloaded and unpacked (default: the system temp dir).
    work_dir: Option<PathBuf>,
    shutdown_grace: Duration,
    /// Stages a predecessor left running, with the lease it kept beside each.
    adopted: Vec<(runner::StageHandle, String)>,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("server", &self.client.server().as_str())
            .field("name", &self.name)
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}

/// What registration told us; the id changes if we have to register again.
pub(super) struct Session {
    pub(super) runner_id: AtomicI64,
    pub(super) heartbeat: Duration,
    pub(super) lease: Duration,
}

impl Agent {
    /// An agent with capacity 1, no labels, no shutdown grace, sources in the system
    /// temp dir.
    pub fn new(
        server: Url,
        token: String,
        name: impl Into<String>,
        backend: Arc<dyn Backend>,
    ) -> Agent {
        Agent {
            client: Arc::new(Client::new(server, token)),
            name: name.into(),
            labels: Vec::new(),
            capacity: 1,
            backend,
            work_dir: None,
            shutdown_grace: Duration::ZERO,
            adopted: Vec::new(),
        }
    }

    /// How many stages run at once (at least 1).
    pub fn with_capacity(mut self, capacity: usize) -> Agent {
        self.capacity = capacity.max(1);
        self
    }

    /// Labels stages may ask for in `runs_on`; `backend:<name>` is added for the
    /// backend when registering.
    pub fn with_labels(mut self, labels: Vec<String>) -> Agent {
        self.labels = labels;
        self
    }

    pub fn with_work_dir(mut self, dir: PathBuf) -> Agent {
        self.work_dir = Some(dir);
        self
    }

    /// Stages to take over once registered (from `Opened::recover`): each runs on
    /// with its original lease, as long as the server still holds it for us.
    pub fn with_adopted(mut self, adopted: Vec<(runner::StageHandle, String)>) -> Agent {
        self.adopted = adopted;
        self
    }

    /// On shutdown, how long running stages may go on before they are cancelled.
    pub fn with_shutdown_grace(mut self, grace: Duration) -> Agent {
        self.shutdown_grace = grace;
        self
    }

    /// Where a stage's source, caches and collected files go: `(base, name prefix)`.
    fn scratch(&self) -> (PathBuf, &'static str) {
        match &self.work_dir {
            Some(dir) => (dir.clone(), SCRATCH_PREFIX),
            None => (std::env::temp_dir(), TEMP_SCRATCH_PREFIX),
        }
    }

    /// Removes the scratch directories a killed predecessor left (no live process
    /// holds them; see [`runner::owned_dir`]).
    async fn sweep_scratch(&self) {
        let (base, prefix) = self.scratch();
        let swept =
            tokio::task::spawn_blocking(move || runner::owned_dir::sweep(&base, prefix)).await;
        match swept {
            Ok(Ok(removed)) if !removed.is_empty() => tracing::warn!(
                removed = removed.len(),
                dirs = ?removed,
                "removed the sources a crashed runner left"
            ),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "sweeping the work dir failed"),
            Err(e) => tracing::error!(error = %e, "sweeping the work dir failed"),
        }
    }

    /// Registers, then runs up to `capacity` stages at a time until `shutdown`.
    /// Returns an error only when the server refuses the token or the registration.
    /// First removes what a killed predecessor left in the work dir.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), AgentError> {
        self.sweep_scratch().await;
        let me = Arc::new(self);
        let Some(session) = me.register(&shutdown).await? else {
            return Ok(());
        };
        let session = Arc::new(session);
        tracing::info!(
            runner_id = session.runner_id.load(Ordering::Relaxed),
            name = %me.name,
            capacity = me.capacity,
            server = %me.client.server(),
            "runner registered"
        );
        let mut slots = JoinSet::new();
        for (handle, data) in &me.adopted {
            let (me, session, shutdown) = (me.clone(), session.clone(), shutdown.clone());
            let handle = handle.clone();
            let record = serde_json::from_str::<AdoptionRecord>(data);
            slots.spawn(async move {
                let record = match record {
                    Ok(record) => record,
                    Err(e) => {
                        tracing::warn!(pod = %handle.id, error = %e, "a stage left running has no usable adoption record; removing it");
                        let _ = me.backend.destroy_stage(&handle).await;
                        return;
                    }
                };
                match me.resume(&record, &session, &shutdown).await {
                    Some(Ok(resumed)) => {
                        tracing::info!(stage_id = record.stage_id, pod = %handle.id, "resuming a stage left running");
                        let lease = record.resume(resumed);
                        me.run_leased(lease, &session, &shutdown, Some(handle)).await;
                    }
                    Some(Err(message)) => {
                        tracing::warn!(stage_id = record.stage_id, pod = %handle.id, reason = %message, "the server did not give the stage back; removing its pod");
                        let _ = me.backend.destroy_stage(&handle).await;
                    }
                    // Shut down meanwhile: the pod stays for the next start.
                    None => {}
                }
            });
        }
        for _ in 0..me.capacity {
            slots.spawn(me.clone().slot(session.clone(), shutdown.clone()));
        }
        while let Some(joined) = slots.join_next().await {
            if let Err(e) = joined {
                tracing::error!(error = %e, "runner slot failed");
            }
        }
        tracing::info!(name = %me.name, "runner stopped");
        Ok(())
    }

    /// Registers, retrying transient failures; `None` if shut down meanwhile.
    async fn register(&self, shutdown: &CancellationToken) -> Result<Option<Session>, AgentError> {
        let req = RegisterRequest {
            name: self.name.clone(),
            // The backend label says what isolation this runner gives; only the
            // backend may claim it, so a `backend:` label given by hand is dropped.
            labels: crate::runs::routing::runner_labels(&self.labels, self.backend.name()),
            capacity: u32::try_from(self.capacity).unwrap_or(u32::MAX),
        };
        let mut backoff = Backoff::new();
        loop {
            let attempt = self.client.call::<_, RegisterResponse>(
                reqwest::Method::POST,
                protocol::REGISTER,
                &req,
                REQUEST_TIMEOUT,
            );
            let result = tokio::select! {
                r = attempt => r,
                _ = shutdown.cancelled() => return Ok(None),
            };
            match result {
                Ok(Some(r)) => {
                    return Ok(Some(Session {
                        runner_id: AtomicI64::new(r.runner_id),
                        heartbeat: Duration::from_secs(r.heartbeat_secs.max(1)),
                        lease: Duration::from_secs(r.lease_secs.max(1)),
                    }));
                }
                Ok(None) => tracing::warn!("registration answered without a body; retrying"),
                Err(CallError::Refused {
                    status: StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN,
                    message,
                }) => {
                    return Err(AgentError::Unauthorized(message));
                }
                Err(CallError::Refused { message, .. }) => {
                    return Err(AgentError::Refused(message));
                }
                Err(e) => {
                    tracing::warn!(error = %e, server = %self.client.server(), "cannot reach the server; retrying")
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff.next()) => {}
                _ = shutdown.cancelled() => return Ok(None),
            }
        }
    }

    /// Asks the server for a stage this runner left running ([`AdoptionRecord`]): a new
    /// lease token and the secret values, which the record never holds. Transient
    /// failures are retried; `Some(Err)` when the server refuses (the stage moved on
    /// or is not ours), `None` on shutdown.
    async fn resume(
        &self,
        record: &AdoptionRecord,
        session: &Session,
        shutdown: &CancellationToken,
    ) -> Option<Result<ResumeResponse, String>> {
        let mut backoff = Backoff::new();
        loop {
            let req = ResumeRequest {
                runner_id: session.runner_id.load(Ordering::Relaxed),
                stage_id: record.stage_id,
                attempt: record.attempt,
            };
            let call = self.client.call::<_, ResumeResponse>(
                reqwest::Method::POST,
                protocol::RESUME,
                &req,
                REQUEST_TIMEOUT,
            );
            let result = tokio::select! {
                r = call => r,
                _ = shutdown.cancelled() => return None,
            };
            match result {
                Ok(Some(resumed)) => return Some(Ok(resumed)),
                Ok(None) => tracing::warn!("resume answered without a body; retrying"),
                Err(CallError::Refused { message, .. }) => return Some(Err(message)),
                Err(e) => tracing::warn!(error = %e, "resuming a stage failed; retrying"),
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff.next()) => {}
                _ = shutdown.cancelled() => return None,
            }
        }
    }

    /// One unit of capacity: lease, run, repeat.
    async fn slot(self: Arc<Self>, session: Arc<Session>, shutdown: CancellationToken) {
        let mut backoff = Backoff::new();
        while !shutdown.is_cancelled() {
            let req = LeaseRequest {
                runner_id: session.runner_id.load(Ordering::Relaxed),
            };
            let timeout = Duration::from_secs(protocol::LONG_POLL_SECS) + REQUEST_TIMEOUT;
            let lease = self.client.call::<_, LeaseResponse>(
                reqwest::Method::POST,
                protocol::LEASE,
                &req,
                timeout,
            );
            // Dropping a lease request on shutdown may orphan a stage the server just
            // handed out; its lease then expires and it is queued again.
            let result = tokio::select! {
                r = lease => r,
                _ = shutdown.cancelled() => break,
            };
            let wait = match result {
                Ok(Some(lease)) => {
                    backoff.reset();
                    self.run_leased(lease, &session, &shutdown, None).await;
                    continue;
                }
                Ok(None) => {
                    backoff.reset();
                    continue;
                }
                Err(CallError::Refused {
                    status: StatusCode::NOT_FOUND,
                    ..
                }) => {
                    // The server forgot us (e.g. its database was reset): register again.
                    tracing::warn!("the server does not know this runner; registering again");
                    match self.register(&shutdown).await {
                        Ok(Some(s)) => {
                            session
                                .runner_id
                                .store(s.runner_id.load(Ordering::Relaxed), Ordering::Relaxed);
                            continue;
                        }
                        Ok(None) => break,
                        Err(e) => {
                            tracing::error!(error = %e, "registering again failed");
                            BACKOFF_MAX
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "leasing failed; retrying");
                    backoff.next()
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.cancelled() => break,
            }
        }
    }
}

/// This machine's host name, for default runner names.
pub fn hostname() -> String {
    ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .find_map(|p| std::fs::read_to_string(p).ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

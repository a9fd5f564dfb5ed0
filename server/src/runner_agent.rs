//! The runner: leases stages from a Slipway server over the runner protocol
//! ([`crate::protocol`]) and runs them on a [`runner::Backend`].
//!
//! The same code serves both deployments: the server's in-process runner
//! ([`spawn_in_process`], the local backend, talking HTTP to its own listener) and
//! `slipway runner` on another host. Speaking the real protocol in-process is
//! deliberate: one path to test, and the quick start exercises what production uses.
//!
//! Per leased stage: a heartbeat task renews the lease (and cancels the stage when the
//! server says so, or abandons it when the lease is lost); the source tar is streamed
//! to a temp file and unpacked; [`runner::run_stage`] runs the steps, masking secret
//! values before any line leaves this process; a forwarder posts step starts, log
//! batches (every 100 ms or 500 lines) and step results in order, retrying failed
//! posts with backoff (log batches are idempotent by line number, so a resend is
//! harmless); finally the stage's outcome is reported. Around the steps, `files`
//! places the artifacts of needed stages and the stage's cache in the source
//! directory, and afterwards uploads the stage's artifacts (before the outcome is
//! reported, so a stage is `success` only with its artifacts stored) and saves its
//! cache.
//!
//! On shutdown the runner stops leasing, lets running stages go on for
//! `shutdown_grace`, then cancels them and reports them as `error` ("runner shut
//! down"), an infrastructure failure the server retries elsewhere. If the report cannot
//! be delivered (the server is the one shutting down), the lease simply expires.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::{Duration, UNIX_EPOCH};

use base64::Engine;
use reqwest::{StatusCode, Url};
use runner::{Backend, LogStreamKind, RunOptions, Source, StageEvent, Status};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

use crate::logs::Stream;
use crate::protocol::{
    self, HeartbeatAction, HeartbeatResponse, LeaseRequest, LeaseResponse, LeaseToken, LogAck,
    LogBatch, RegisterRequest, RegisterResponse, StageFinish, StepFinish, WireLine, WireStatus,
};
use crate::stage_spec::{OnMissing, SpecError, stage_spec};
use crate::state::AppState;

mod files;

/// Flush a log batch after this long…
const FLUSH_EVERY: Duration = Duration::from_millis(100);
/// …or at this many lines…
const BATCH_LINES: usize = 500;
/// …or this many bytes (well under the server's default 2 MB JSON body limit once
/// base64-encoded).
const BATCH_BYTES: usize = 512 * 1024;
/// Time limit for one ordinary protocol request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// A source download may be slow, but not silent for longer than this.
const DOWNLOAD_IDLE: Duration = Duration::from_secs(60);
const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// Once shutting down, how long to keep retrying a report before leaving the stage to
/// lease expiry.
const SHUTDOWN_GIVE_UP: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("the server refused the runner token: {0}")]
    Unauthorized(String),
    #[error("the server refused to register this runner: {0}")]
    Refused(String),
}

/// A runner process's connection to one server.
pub struct Agent {
    client: reqwest::Client,
    /// Base URL, always ending in `/`.
    server: Url,
    token: String,
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
            .field("server", &self.server.as_str())
            .field("name", &self.name)
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}

/// Why a protocol request did not succeed.
#[derive(Debug)]
enum CallError {
    /// The stage's lease is gone: stop working on it.
    LeaseLost,
    /// A permanent refusal (a 4xx other than `lease_lost`).
    Refused { status: StatusCode, message: String },
    /// Worth retrying: network trouble, 5xx, 429.
    Transient(String),
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::LeaseLost => f.write_str("lease lost"),
            CallError::Refused { status, message } => write!(f, "{status}: {message}"),
            CallError::Transient(m) => f.write_str(m),
        }
    }
}

/// Exponential backoff between retries, so a dead server is never hammered.
struct Backoff(Duration);

impl Backoff {
    fn new() -> Self {
        Backoff(BACKOFF_MIN)
    }
    fn next(&mut self) -> Duration {
        let d = self.0;
        self.0 = (self.0 * 2).min(BACKOFF_MAX);
        d
    }
    fn reset(&mut self) {
        self.0 = BACKOFF_MIN;
    }
}

/// What registration told us; the id changes if we have to register again.
struct Session {
    runner_id: AtomicI64,
    heartbeat: Duration,
    lease: Duration,
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
        let mut server = server;
        if !server.path().ends_with('/') {
            let path = format!("{}/", server.path());
            server.set_path(&path);
        }
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .user_agent(concat!("slipway-runner/", env!("CARGO_PKG_VERSION")))
            .build()
            .unwrap_or_default();
        Agent {
            client,
            server,
            token,
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

    /// Registers, then runs up to `capacity` stages at a time until `shutdown`.
    /// Returns an error only when the server refuses the token or the registration.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), AgentError> {
        let me = Arc::new(self);
        let Some(session) = me.register(&shutdown).await? else {
            return Ok(());
        };
        let session = Arc::new(session);
        tracing::info!(
            runner_id = session.runner_id.load(Ordering::Relaxed),
            name = %me.name,
            capacity = me.capacity,
            server = %me.server,
            "runner registered"
        );
        let mut slots = JoinSet::new();
        for (handle, data) in &me.adopted {
            let (me, session, shutdown) = (me.clone(), session.clone(), shutdown.clone());
            let handle = handle.clone();
            let lease = serde_json::from_str::<LeaseResponse>(data);
            slots.spawn(async move {
                match lease {
                    Ok(lease) => {
                        tracing::info!(stage_id = lease.stage_id, pod = %handle.id, "resuming a stage left running");
                        me.run_leased(lease, &session, &shutdown, Some(handle)).await;
                    }
                    Err(e) => {
                        tracing::warn!(pod = %handle.id, error = %e, "a stage left running has no usable lease; removing it");
                        let _ = me.backend.destroy_stage(&handle).await;
                    }
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
            labels: crate::routing::runner_labels(&self.labels, self.backend.name()),
            capacity: u32::try_from(self.capacity).unwrap_or(u32::MAX),
        };
        let mut backoff = Backoff::new();
        loop {
            let attempt = self.call::<_, RegisterResponse>(
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
                    tracing::warn!(error = %e, server = %self.server, "cannot reach the server; retrying")
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff.next()) => {}
                _ = shutdown.cancelled() => return Ok(None),
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
            let lease = self.call::<_, LeaseResponse>(
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

    fn url(&self, path: &str) -> Result<Url, CallError> {
        self.server
            .join(path.trim_start_matches('/'))
            .map_err(|e| CallError::Refused {
                status: StatusCode::BAD_REQUEST,
                message: format!("bad URL: {e}"),
            })
    }

    /// One JSON request; `Ok(None)` for an empty (204) answer.
    async fn call<B: Serialize, R: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: &B,
        timeout: Duration,
    ) -> Result<Option<R>, CallError> {
        let resp = self
            .client
            .request(method, self.url(path)?)
            .bearer_auth(&self.token)
            .timeout(timeout)
            .json(body)
            .send()
            .await
            .map_err(|e| CallError::Transient(describe(&e)))?;
        let resp = check(resp).await?;
        if resp.status() == StatusCode::NO_CONTENT {
            return Ok(None);
        }
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| CallError::Transient(describe(&e)))?;
        if bytes.is_empty() {
            return Ok(None);
        }
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| CallError::Transient(format!("unreadable answer: {e}")))
    }

    /// [`Agent::call`], retrying transient failures with backoff for up to `give_up` —
    /// or for [`SHUTDOWN_GIVE_UP`] once `shutdown` is cancelled, so a runner whose
    /// server is gone does not hold up its own shutdown.
    async fn call_retrying<B: Serialize, R: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
        give_up: Duration,
        shutdown: &CancellationToken,
    ) -> Result<Option<R>, CallError> {
        let start = tokio::time::Instant::now();
        let mut deadline = start + give_up;
        let mut backoff = Backoff::new();
        loop {
            match self
                .call(reqwest::Method::POST, path, body, REQUEST_TIMEOUT)
                .await
            {
                Err(CallError::Transient(e)) => {
                    let now = tokio::time::Instant::now();
                    if shutdown.is_cancelled() {
                        deadline = deadline.min(now + SHUTDOWN_GIVE_UP);
                    }
                    let wait = backoff.next();
                    if now + wait > deadline {
                        return Err(CallError::Transient(e));
                    }
                    tracing::debug!(path, error = %e, "request failed; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        // Re-evaluate the deadline at once.
                        _ = shutdown.cancelled(), if !shutdown.is_cancelled() => {}
                    }
                }
                other => return other,
            }
        }
    }

    /// Runs one leased stage to the end and reports it.
    /// Runs a leased stage and reports its end; `adopt`: a stage a predecessor
    /// process set up (and left running), taken over rather than set up again.
    async fn run_leased(
        self: &Arc<Self>,
        lease: LeaseResponse,
        session: &Session,
        shutdown: &CancellationToken,
        adopt: Option<runner::StageHandle>,
    ) {
        tracing::info!(
            stage_id = lease.stage_id,
            run_id = lease.run_id,
            stage = %lease.stage_key,
            attempt = lease.attempt,
            repo = %lease.repo,
            "stage started"
        );
        let ctx = Arc::new(StageCtx {
            agent: self.clone(),
            stage_id: lease.stage_id,
            token: lease.lease_token.clone(),
            offsets: lease.log_offsets.clone(),
            lost: AtomicBool::new(false),
            // Past this, the lease has expired anyway: keep nothing pending longer.
            give_up: session.lease + session.heartbeat,
            shutdown: shutdown.clone(),
        });
        let cancel = CancellationToken::new();
        let done = CancellationToken::new();
        let stopping = Arc::new(AtomicBool::new(false));
        let heartbeat = tokio::spawn(heartbeat_loop(
            ctx.clone(),
            session.heartbeat,
            cancel.clone(),
            done.clone(),
        ));
        let watcher = tokio::spawn({
            let (shutdown, done, cancel, stopping) = (
                shutdown.clone(),
                done.clone(),
                cancel.clone(),
                stopping.clone(),
            );
            let grace = self.shutdown_grace;
            async move {
                tokio::select! {
                    _ = shutdown.cancelled() => {}
                    _ = done.cancelled() => return,
                }
                tokio::select! {
                    _ = tokio::time::sleep(grace) => {}
                    _ = done.cancelled() => return,
                }
                stopping.store(true, Ordering::SeqCst);
                cancel.cancel();
            }
        });

        let Ended {
            mut status,
            mut reason,
            outputs,
            findings,
        } = self.execute(&ctx, &lease, cancel.clone(), adopt).await;

        done.cancel();
        let _ = heartbeat.await;
        let _ = watcher.await;
        if ctx.lost.load(Ordering::SeqCst) {
            tracing::warn!(
                stage_id = lease.stage_id,
                "stage abandoned: its lease is lost or the server stayed unreachable"
            );
            return;
        }
        let shutting_down = stopping.load(Ordering::SeqCst);
        if shutting_down && status == WireStatus::Cancelled {
            status = WireStatus::Error;
            reason = Some("runner shut down before the stage finished".into());
        }
        let finish = StageFinish {
            lease_token: ctx.token.clone(),
            status,
            reason,
            outputs,
            findings,
        };
        match self
            .call_retrying::<_, serde_json::Value>(
                &protocol::finish_path(lease.stage_id),
                &finish,
                ctx.give_up,
                shutdown,
            )
            .await
        {
            Ok(_) => tracing::info!(
                stage_id = lease.stage_id,
                status = ?finish.status,
                "stage finished"
            ),
            Err(e) => tracing::warn!(
                stage_id = lease.stage_id,
                error = %e,
                "could not report the stage's end; its lease will expire"
            ),
        }
    }

    /// Downloads the source and runs the steps; how the stage ended.
    async fn execute(
        &self,
        ctx: &Arc<StageCtx>,
        lease: &LeaseResponse,
        cancel: CancellationToken,
        adopt: Option<runner::StageHandle>,
    ) -> Ended {
        let tmp = match &self.work_dir {
            Some(dir) => {
                let _ = tokio::fs::create_dir_all(dir).await;
                tempfile::Builder::new().prefix("source-").tempdir_in(dir)
            }
            None => tempfile::Builder::new().prefix("slipway-source-").tempdir(),
        };
        let tmp = match tmp {
            Ok(t) => t,
            Err(e) => {
                return Ended::early(
                    WireStatus::Error,
                    Some(format!("creating a temp dir for the source: {e}")),
                );
            }
        };
        let src = tmp.path().join("src");
        let cache = match &adopt {
            // The workspace is in the adopted stage already.
            Some(_) => None,
            None => match self
                .prepare_workspace(ctx, lease, &src, tmp.path(), &cancel)
                .await
            {
                Ok(cache) => cache,
                Err(ended) => return ended,
            },
        };
        let mut spec = match stage_spec(
            &lease.spec,
            &lease.stage_key,
            Source::Directory(src),
            &lease.secrets,
            OnMissing::Omit,
        ) {
            Ok(spec) => spec,
            Err(SpecError::Unsupported(reason)) => {
                return Ended::early(WireStatus::Failure, Some(reason));
            }
            Err(e @ (SpecError::MissingSecret { .. } | SpecError::BadRegistrySecret { .. })) => {
                return Ended::early(WireStatus::Failure, Some(e.to_string()));
            }
        };
        // What the backend tags its objects with (Kubernetes pod labels).
        spec.labels = std::collections::BTreeMap::from([
            ("repo".to_owned(), lease.repo.clone()),
            ("run".to_owned(), lease.run_number.to_string()),
            ("stage".to_owned(), lease.stage_key.clone()),
            ("attempt".to_owned(), lease.attempt.to_string()),
            // What the server's orphan sweep checks a pod against (kube_orphans).
            ("stage-id".to_owned(), lease.stage_id.to_string()),
        ]);
        if self.backend.name() == "kubernetes" {
            // Kept in the stage's Secret: a restarted runner resumes the stage with it.
            spec.adoption = serde_json::to_string(lease).ok();
        }
        let declared = spec.artifacts.clone();
        if let Some(c) = cache.as_ref().filter(|c| c.save) {
            // The backend collects the cache paths with the artifacts: every backend
            // can, whatever its workspace is.
            spec.artifacts.extend(c.paths.iter().cloned());
        }
        let collected = tmp.path().join("collected");
        let opts = RunOptions {
            artifact_dir: (!spec.artifacts.is_empty()).then(|| collected.clone()),
            adopt,
        };
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let forwarder = tokio::spawn(forward(ctx.clone(), rx, cancel.clone()));
        let outcome = runner::run_stage(&*self.backend, &spec, opts, tx, cancel.clone()).await;
        // run_stage dropped its sender: the forwarder drains what is left and ends.
        let _ = forwarder.await;
        if outcome.status.is_success() {
            let stored = tokio::select! {
                r = self.store_outputs(ctx, &outcome.artifacts, &declared, cache.as_ref(), &collected, tmp.path()) => r,
                _ = cancel.cancelled() => return Ended::early(WireStatus::Cancelled, None),
            };
            if let Err(e) = stored {
                return files_failure(ctx, "storing the stage's artifacts", e);
            }
        }
        drop(tmp);
        let status = match &outcome.status {
            // A refused artifact path, a bad Dockerfile: running it again fails the
            // same way, so it is the pipeline's failure, not a retryable error.
            Status::Error(_) if !outcome.retryable => WireStatus::Failure,
            other => WireStatus::from_runner(other),
        };
        let reason = stage_reason(&spec.kind, &outcome);
        Ended {
            status,
            reason,
            outputs: outcome.outputs,
            findings: outcome.findings,
        }
    }

    /// The source, the needed stages' artifacts and the cache, into `src`; the
    /// stage's cache settings. `Err`: how the stage ended instead.
    async fn prepare_workspace(
        &self,
        ctx: &Arc<StageCtx>,
        lease: &LeaseResponse,
        src: &Path,
        scratch: &Path,
        cancel: &CancellationToken,
    ) -> Result<Option<StageCache>, Ended> {
        let download = self.download_source(ctx, src);
        let downloaded = tokio::select! {
            r = download => r,
            _ = cancel.cancelled() => return Err(Ended::early(WireStatus::Cancelled, None)),
        };
        if let Err(e) = downloaded {
            if matches!(e, CallError::LeaseLost) {
                ctx.lost.store(true, Ordering::SeqCst);
            }
            return Err(Ended::early(
                WireStatus::Error,
                Some(format!("downloading the source: {e}")),
            ));
        }
        let placed = tokio::select! {
            r = self.place_artifacts(ctx, &lease.artifacts, src) => r,
            _ = cancel.cancelled() => return Err(Ended::early(WireStatus::Cancelled, None)),
        };
        if let Err(e) = placed {
            return Err(files_failure(
                ctx,
                "placing the needed stages' artifacts",
                e,
            ));
        }
        let cache = tokio::select! {
            r = self.prepare_cache(ctx, lease, src, scratch) => r,
            _ = cancel.cancelled() => return Err(Ended::early(WireStatus::Cancelled, None)),
        };
        cache.map_err(|e| files_failure(ctx, "preparing the cache", e))
    }

    /// The stage's cache, if it declares `cache:` paths: its key, restored into `src`
    /// when saved before; `save` when it missed and this run may write caches.
    async fn prepare_cache(
        &self,
        ctx: &StageCtx,
        lease: &LeaseResponse,
        src: &Path,
        scratch: &Path,
    ) -> Result<Option<StageCache>, files::FilesError> {
        let paths = lease.spec.cache.clone();
        if paths.is_empty() {
            return Ok(None);
        }
        if let Err(e) = runner::artifacts::check_globs(&paths) {
            return Err(files::FilesError::Refused(format!("cache paths: {e}")));
        }
        let (stage_key, dir, key_paths) =
            (lease.stage_key.clone(), src.to_path_buf(), paths.clone());
        let key = match tokio::task::spawn_blocking(move || {
            crate::cache::cache_key(&stage_key, &key_paths, &dir)
        })
        .await
        {
            Ok(Ok(key)) => key,
            Ok(Err(e)) => {
                tracing::warn!(stage_id = ctx.stage_id, error = %e, "cannot compute the cache key; running without a cache");
                return Ok(None);
            }
            Err(e) => return Err(files::FilesError::Failed(e.to_string())),
        };
        let hit = self.restore_cache(ctx, &key, src, scratch).await?;
        Ok(Some(StageCache {
            save: !hit && lease.cache_writable,
            key,
            paths,
        }))
    }

    /// Uploads the declared artifacts among `collected`, then saves the cache.
    async fn store_outputs(
        &self,
        ctx: &StageCtx,
        collected: &[runner::Artifact],
        declared: &[String],
        cache: Option<&StageCache>,
        dir: &Path,
        scratch: &Path,
    ) -> Result<(), files::FilesError> {
        let refused = |e: runner::Error| files::FilesError::Refused(e.to_string());
        let artifacts = runner::artifacts::Matcher::new(declared).map_err(refused)?;
        for a in collected.iter().filter(|a| artifacts.is_match(&a.path)) {
            let stored = self.upload_artifact(ctx, dir, a).await?;
            tracing::info!(stage_id = ctx.stage_id, artifact = %stored.name, size = stored.size, new_blob = stored.new_blob, "artifact uploaded");
        }
        let Some(cache) = cache.filter(|c| c.save) else {
            return Ok(());
        };
        let matcher = runner::artifacts::Matcher::new(&cache.paths).map_err(refused)?;
        let names: Vec<String> = collected
            .iter()
            .filter(|a| matcher.is_match(&a.path))
            .map(|a| a.path.clone())
            .collect();
        if names.is_empty() {
            tracing::info!(
                stage_id = ctx.stage_id,
                "the cache paths hold no files; nothing to save"
            );
            return Ok(());
        }
        match self.save_cache(ctx, &cache.key, dir, names, scratch).await {
            Ok(saved) => {
                tracing::info!(stage_id = ctx.stage_id, key = %cache.key, saved, "cache saved")
            }
            Err(files::FilesError::LeaseLost) => return Err(files::FilesError::LeaseLost),
            Err(files::FilesError::Refused(e) | files::FilesError::Failed(e)) => {
                tracing::warn!(stage_id = ctx.stage_id, error = %e, "saving the cache failed")
            }
        }
        Ok(())
    }

    /// Streams the stage's source tar to a temp file, then unpacks it into `dest`.
    async fn download_source(&self, ctx: &StageCtx, dest: &Path) -> Result<(), CallError> {
        let tar_path = dest.with_extension("tar");
        let mut backoff = Backoff::new();
        let mut attempts = 0;
        loop {
            attempts += 1;
            match self.download_once(ctx, &tar_path).await {
                Ok(()) => break,
                Err(CallError::Transient(e)) if attempts < 4 => {
                    tracing::warn!(stage_id = ctx.stage_id, error = %e, "source download failed; retrying");
                    tokio::time::sleep(backoff.next()).await;
                }
                Err(e) => return Err(e),
            }
        }
        let dest = dest.to_path_buf();
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            std::fs::create_dir_all(&dest)?;
            let file = std::fs::File::open(&tar_path)?;
            let mut archive = tar::Archive::new(std::io::BufReader::new(file));
            // `unpack` refuses entries that would land outside `dest` (`..`, absolute
            // paths, writes through symlinks); modes keep their 0o777 bits only.
            archive.set_preserve_mtime(true);
            archive.unpack(&dest)?;
            std::fs::remove_file(&tar_path)
        })
        .await
        .map_err(|e| CallError::Transient(e.to_string()))?
        .map_err(|e| CallError::Transient(format!("unpacking the source: {e}")))
    }

    async fn download_once(&self, ctx: &StageCtx, tar_path: &Path) -> Result<(), CallError> {
        let mut url = self.url(&protocol::source_path(ctx.stage_id))?;
        url.query_pairs_mut().append_pair("lease_token", &ctx.token);
        let resp = self
            .client
            .get(url)
            .bearer_auth(&self.token)
            .send()
            .await
            .map_err(|e| CallError::Transient(describe(&e)))?;
        let mut resp = check(resp).await?;
        let mut file = tokio::fs::File::create(tar_path)
            .await
            .map_err(|e| CallError::Transient(format!("creating {}: {e}", tar_path.display())))?;
        loop {
            let chunk = tokio::time::timeout(DOWNLOAD_IDLE, resp.chunk())
                .await
                .map_err(|_| CallError::Transient("source download stalled".into()))?
                .map_err(|e| CallError::Transient(describe(&e)))?;
            let Some(chunk) = chunk else { break };
            file.write_all(&chunk)
                .await
                .map_err(|e| CallError::Transient(format!("writing the source: {e}")))?;
        }
        file.flush()
            .await
            .map_err(|e| CallError::Transient(format!("writing the source: {e}")))?;
        Ok(())
    }
}

/// Why a stage that ran ended as it did: the findings that failed a scan stage, the
/// step that failed or timed out, or the runner's error; `None` for success.
fn stage_reason(kind: &runner::StageKind, outcome: &runner::StageOutcome) -> Option<String> {
    // A scan stage that failed because of its findings says which.
    let scan_reason = match (kind, &outcome.status) {
        (runner::StageKind::Scan(scan), Status::Failure) => {
            runner::scan::failure_reason(&outcome.findings, scan.fail_on)
        }
        _ => None,
    };
    let reason = match &outcome.status {
        Status::Error(message) => Some(message.clone()),
        Status::Failure | Status::TimedOut => outcome
            .steps
            .iter()
            .find(|s| s.status == outcome.status)
            .map(|s| match (&s.status, s.exit_code) {
                (Status::TimedOut, _) => format!("step `{}` timed out", s.name),
                (_, Some(code)) if s.oom_killed => {
                    format!(
                        "step `{}` was killed (out of memory, exit code {code})",
                        s.name
                    )
                }
                (_, Some(code)) => format!("step `{}` exited with code {code}", s.name),
                (_, None) => format!("step `{}` failed", s.name),
            })
            .or_else(|| (outcome.status == Status::TimedOut).then(|| "stage timed out".into())),
        _ => None,
    };
    scan_reason.or(reason)
}

/// How a stage ended on this runner: what its finish reports.
struct Ended {
    status: WireStatus,
    reason: Option<String>,
    outputs: std::collections::BTreeMap<String, String>,
    findings: Vec<runner::Finding>,
}

impl Ended {
    /// Ended before the steps ran: no results.
    fn early(status: WireStatus, reason: Option<String>) -> Ended {
        Ended {
            status,
            reason,
            outputs: Default::default(),
            findings: Vec::new(),
        }
    }
}

/// A stage's cache: its key and paths, and whether to save it afterwards.
struct StageCache {
    key: String,
    paths: Vec<String>,
    save: bool,
}

/// The stage's status and reason when moving its files failed.
fn files_failure(ctx: &StageCtx, doing: &str, e: files::FilesError) -> Ended {
    match e {
        files::FilesError::LeaseLost => {
            ctx.lost.store(true, Ordering::SeqCst);
            Ended::early(WireStatus::Error, Some(format!("{doing}: lease lost")))
        }
        files::FilesError::Refused(m) => Ended::early(WireStatus::Failure, Some(m)),
        files::FilesError::Failed(m) => {
            Ended::early(WireStatus::Error, Some(format!("{doing}: {m}")))
        }
    }
}

/// Turns an error answer into a [`CallError`].
async fn check(resp: reqwest::Response) -> Result<reqwest::Response, CallError> {
    let status = resp.status();
    if status.is_success() {
        return Ok(resp);
    }
    let body: serde_json::Value = resp.json().await.unwrap_or_default();
    let code = body["error"]["code"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let message = body["error"]["message"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| status.to_string());
    if status == StatusCode::CONFLICT && code == "lease_lost" {
        return Err(CallError::LeaseLost);
    }
    if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
        return Err(CallError::Transient(format!("{status}: {message}")));
    }
    Err(CallError::Refused { status, message })
}

/// A reqwest error with its causes (reqwest's own message is often just "error sending
/// request").
fn describe(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// What the tasks working on one leased stage share.
struct StageCtx {
    agent: Arc<Agent>,
    stage_id: i64,
    token: String,
    offsets: Vec<u64>,
    /// Set once the lease is gone (or the server stayed unreachable past it): post
    /// nothing more.
    lost: AtomicBool,
    give_up: Duration,
    shutdown: CancellationToken,
}

impl StageCtx {
    fn is_lost(&self) -> bool {
        self.lost.load(Ordering::SeqCst)
    }

    /// Posts with retries; on `lease_lost` (or when the server stays unreachable past
    /// the lease) marks the stage lost and cancels it.
    async fn post<B: Serialize, R: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
        cancel: &CancellationToken,
    ) -> Option<R> {
        if self.is_lost() {
            return None;
        }
        match self
            .agent
            .call_retrying(path, body, self.give_up, &self.shutdown)
            .await
        {
            Ok(r) => r,
            Err(CallError::Refused { status, message }) => {
                // A bug on one side; dropping this one update beats killing the stage.
                tracing::warn!(stage_id = self.stage_id, path, %status, message, "request refused");
                None
            }
            Err(e) => {
                tracing::warn!(stage_id = self.stage_id, path, error = %e, "giving up on the stage");
                self.lost.store(true, Ordering::SeqCst);
                cancel.cancel();
                None
            }
        }
    }
}

async fn heartbeat_loop(
    ctx: Arc<StageCtx>,
    every: Duration,
    cancel: CancellationToken,
    done: CancellationToken,
) {
    let body = LeaseToken {
        lease_token: ctx.token.clone(),
    };
    let path = protocol::heartbeat_path(ctx.stage_id);
    loop {
        tokio::select! {
            _ = done.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        let timeout = every.min(REQUEST_TIMEOUT);
        match ctx
            .agent
            .call::<_, HeartbeatResponse>(reqwest::Method::POST, &path, &body, timeout)
            .await
        {
            Ok(Some(HeartbeatResponse {
                action: HeartbeatAction::Cancel,
            })) => {
                if !cancel.is_cancelled() {
                    tracing::info!(stage_id = ctx.stage_id, "cancel requested by the server");
                    cancel.cancel();
                }
            }
            Ok(_) => {}
            Err(CallError::LeaseLost) => {
                ctx.lost.store(true, Ordering::SeqCst);
                cancel.cancel();
                return;
            }
            // The next beat tries again; the lease outlives two missed beats.
            Err(e) => tracing::warn!(stage_id = ctx.stage_id, error = %e, "heartbeat failed"),
        }
    }
}

/// Lines of one step waiting to be posted.
#[derive(Default)]
struct Batch {
    step: usize,
    first: u64,
    lines: Vec<WireLine>,
    bytes: usize,
}

/// Posts the stage's events in order: step starts, log batches, step results.
async fn forward(
    ctx: Arc<StageCtx>,
    mut events: UnboundedReceiver<StageEvent>,
    cancel: CancellationToken,
) {
    let mut batch = Batch::default();
    let mut tick = tokio::time::interval(FLUSH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let token = || LeaseToken {
        lease_token: ctx.token.clone(),
    };
    let b64 = base64::engine::general_purpose::STANDARD;
    loop {
        let event = tokio::select! {
            e = events.recv() => e,
            _ = tick.tick() => {
                flush(&ctx, &mut batch, &cancel).await;
                continue;
            }
        };
        match event {
            None => {
                flush(&ctx, &mut batch, &cancel).await;
                return;
            }
            Some(StageEvent::StepStarted { index, .. }) => {
                flush(&ctx, &mut batch, &cancel).await;
                ctx.post::<_, serde_json::Value>(
                    &protocol::step_path(ctx.stage_id, index, "start"),
                    &token(),
                    &cancel,
                )
                .await;
            }
            Some(StageEvent::Line(line)) => {
                if !batch.lines.is_empty() && batch.step != line.step {
                    flush(&ctx, &mut batch, &cancel).await;
                }
                if batch.lines.is_empty() {
                    batch.step = line.step;
                    batch.first =
                        ctx.offsets.get(line.step).copied().unwrap_or(0) + line.number.max(1);
                }
                batch.bytes += line.bytes.len();
                batch.lines.push(WireLine {
                    time_ms: line
                        .time
                        .duration_since(UNIX_EPOCH)
                        .map(|d| d.as_millis() as i64)
                        .unwrap_or(0),
                    stream: match line.stream {
                        LogStreamKind::Stdout => Stream::Stdout,
                        LogStreamKind::Stderr => Stream::Stderr,
                    },
                    data_b64: b64.encode(&line.bytes),
                });
                if batch.lines.len() >= BATCH_LINES || batch.bytes >= BATCH_BYTES {
                    flush(&ctx, &mut batch, &cancel).await;
                }
            }
            Some(StageEvent::StepFinished { index, outcome, .. }) => {
                flush(&ctx, &mut batch, &cancel).await;
                let body = StepFinish {
                    lease_token: ctx.token.clone(),
                    status: WireStatus::from_runner(&outcome.status),
                    exit_code: outcome.exit_code,
                    oom_killed: outcome.oom_killed,
                };
                ctx.post::<_, serde_json::Value>(
                    &protocol::step_path(ctx.stage_id, index, "finish"),
                    &body,
                    &cancel,
                )
                .await;
            }
        }
    }
}

async fn flush(ctx: &StageCtx, batch: &mut Batch, cancel: &CancellationToken) {
    if batch.lines.is_empty() {
        return;
    }
    let lines = std::mem::take(&mut batch.lines);
    let body = LogBatch {
        lease_token: ctx.token.clone(),
        first_line: batch.first,
        lines,
    };
    batch.bytes = 0;
    ctx.post::<_, LogAck>(
        &protocol::step_path(ctx.stage_id, batch.step, "logs"),
        &body,
        cancel,
    )
    .await;
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

/// The name of the in-process runner (and of its token) on this host and port; one per
/// server process, so replicas sharing a database keep their own.
pub fn in_process_name(addr: SocketAddr) -> String {
    format!("in-process runner {}:{}", hostname(), addr.port())
}

/// URL a server process uses to reach its own listener at `addr`.
pub fn local_url(addr: SocketAddr) -> Url {
    let ip = match addr.ip() {
        std::net::IpAddr::V4(ip) if ip.is_unspecified() => std::net::Ipv4Addr::LOCALHOST.into(),
        std::net::IpAddr::V6(ip) if ip.is_unspecified() => std::net::Ipv6Addr::LOCALHOST.into(),
        ip => ip,
    };
    Url::parse(&format!("http://{}/", SocketAddr::new(ip, addr.port())))
        .unwrap_or_else(|_| Url::parse("http://127.0.0.1/").expect("static URL"))
}

/// Mints a runner token for the in-process runner, replacing the one a previous start
/// of this server left behind.
async fn mint_token(state: &AppState, name: &str) -> crate::store::Result<String> {
    for stale in state.store.list_tokens().await? {
        if stale.name == name {
            state.store.delete_token(stale.id).await?;
        }
    }
    let token = crate::crypto::generate_token("slp_");
    state
        .store
        .create_token(
            name,
            &crate::crypto::hash_token(&token),
            crate::store::TokenScope::Runner,
        )
        .await?;
    Ok(token)
}

/// The start-up sweep of a local backend (see [`runner::LocalBackend::sweep`]),
/// logged. A failed sweep is logged and the runner starts anyway.
pub async fn sweep_local(backend: &runner::LocalBackend) {
    match backend.sweep().await {
        Ok(report) => {
            if !report.is_empty() {
                tracing::warn!(
                    killed = ?report.killed,
                    removed_stages = report.removed_stages.len(),
                    spared = ?report.spared,
                    in_use = report.in_use,
                    "swept what a crashed runner left behind"
                );
            }
            for error in &report.errors {
                tracing::warn!(error = %error, "sweep problem");
            }
        }
        Err(e) => tracing::error!(error = %e, "sweeping the local backend's work dir failed"),
    }
}

/// The server's in-process runner: the configured backend (`runner_backend`,
/// local by default), workspaces under
/// `<data dir>/work`, speaking the runner protocol to this server's own listener.
/// Stops with the server; stages it was running are left to lease expiry.
pub fn spawn_in_process(state: AppState, addr: SocketAddr) -> JoinHandle<()> {
    tokio::spawn(async move {
        let name = in_process_name(addr);
        let token = match mint_token(&state, &name).await {
            Ok(t) => t,
            Err(e) => {
                tracing::error!(error = %e, "cannot create the in-process runner's token; it will not run");
                return;
            }
        };
        let work = state.config.data_dir.join("work");
        if let Err(e) = std::fs::create_dir_all(&work) {
            tracing::error!(error = %e, dir = %work.display(), "cannot create the runner's work dir");
            return;
        }
        let kind = state.config.runner_backend;
        let opened = match crate::backends::Opened::open(
            kind,
            &name,
            Some(work.clone()),
            &state.config.kube,
        )
        .await
        {
            Ok(o) => o,
            Err(e) => {
                tracing::error!(
                    error = format!("{e:#}"),
                    "cannot open the in-process runner's backend; it will not run"
                );
                return;
            }
        };
        // Before leasing anything: a previous server process killed mid-stage left
        // its steps running; they must be dead before their stage runs again —
        // unless the backend can hand them over (Kubernetes), then they go on.
        let adopted = opened.recover().await;
        if let crate::backends::Opened::Kubernetes(k) = &opened {
            crate::kube_orphans::spawn(state.clone(), k.clone());
        }
        let agent = Agent::new(local_url(addr), token, name, opened.backend())
            .with_capacity(state.config.runner_capacity)
            .with_labels(vec![kind.as_str().into()])
            .with_work_dir(work)
            .with_adopted(adopted);
        if let Err(e) = agent.run(state.shutdown.clone()).await {
            tracing::error!(error = %e, "in-process runner stopped");
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scan_stage_failed_by_its_findings_names_them() {
        let finding = |severity, line| runner::Finding {
            tool: runner::scan::TOOL.into(),
            rule: "github-token".into(),
            severity,
            path: Some("src/config.rs".into()),
            line: Some(line),
            message: "GitHub personal access token (ghp_****)".into(),
        };
        let step = |status: Status, exit_code| runner::StepOutcome {
            name: "scan".into(),
            status,
            exit_code,
            oom_killed: false,
            duration: Duration::ZERO,
        };
        let mut outcome = runner::StageOutcome {
            id: "scan".into(),
            status: Status::Failure,
            steps: vec![step(Status::Success, Some(0)), step(Status::Failure, None)],
            artifacts: Vec::new(),
            outputs: Default::default(),
            findings: vec![
                finding(runner::Severity::Medium, 1),
                finding(runner::Severity::High, 3),
            ],
            retryable: false,
            duration: Duration::ZERO,
        };
        let scan = runner::StageKind::Scan(runner::ScanSpec {
            sarif: Vec::new(),
            fail_on: Some(runner::Severity::High),
        });
        assert_eq!(
            stage_reason(&scan, &outcome).as_deref(),
            Some("scan found 1 finding at or above high: src/config.rs:3 github-token")
        );
        // Not a scan stage, or nothing at `fail_on`: the failing step is named.
        assert_eq!(
            stage_reason(&runner::StageKind::Run, &outcome).as_deref(),
            Some("step `scan` failed")
        );
        outcome.findings.pop();
        assert_eq!(
            stage_reason(&scan, &outcome).as_deref(),
            Some("step `scan` failed")
        );
        outcome.status = Status::Success;
        assert_eq!(stage_reason(&scan, &outcome), None);
    }

    #[test]
    fn local_url_reaches_the_listener() {
        let url = local_url("0.0.0.0:8080".parse().unwrap());
        assert_eq!(url.as_str(), "http://127.0.0.1:8080/");
        let url = local_url("[::]:9000".parse().unwrap());
        assert_eq!(url.as_str(), "http://[::1]:9000/");
        let url = local_url("10.1.2.3:80".parse().unwrap());
        assert_eq!(url.as_str(), "http://10.1.2.3/");
    }

    #[test]
    fn urls_keep_a_path_prefix() {
        let backend: Arc<dyn Backend> = Arc::new(runner::LocalBackend::new(None));
        let agent = Agent::new(
            Url::parse("https://ci.example.com/slipway").unwrap(),
            "t".into(),
            "r",
            backend,
        );
        assert_eq!(
            agent.url(protocol::LEASE).unwrap().as_str(),
            "https://ci.example.com/slipway/api/runner/lease"
        );
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let mut b = Backoff::new();
        let waits: Vec<Duration> = (0..10).map(|_| b.next()).collect();
        assert_eq!(waits[0], BACKOFF_MIN);
        assert!(waits.windows(2).all(|w| w[1] >= w[0]));
        assert_eq!(*waits.last().unwrap(), BACKOFF_MAX);
    }
}

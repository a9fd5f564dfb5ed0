//! The runner protocol, server side (wire types and the route table: [`crate::protocol`]).
//!
//! Runners — the in-process one and `slipway runner` on other hosts alike — register,
//! long-poll for a stage, download its source, stream log batches and step results, and
//! report how the stage ended. Every stage-scoped request must present the stage's
//! current lease token; a stale one (the lease expired and was re-queued, the stage was
//! finished) gets `409 lease_lost`, and the runner drops the work.
//!
//! Secrets are resolved here, when a stage is handed out: only the secrets the stage
//! references are decrypted and sent. For a pull request from a fork (`run.fork`), a
//! secret is withheld unless it is marked `allow_pull_requests` — `fork` is the
//! forge's fact about where the code comes from; `run.trusted` is left for privileged
//! settings: a stage with a `kubernetes.service_account` is refused here if its run is
//! not trusted (the planner already refuses such runs; this is the last check before
//! a pod would be asked for). A referenced secret that is not defined fails the stage
//! at once with a reason saying so, instead of running steps with an empty variable.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::Duration;

use super::leased;
use axum::Json;
use axum::body::Body;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use bytes::Bytes;
use pipelines::PlannedStage;
use tokio::time::Instant;
use utoipa_axum::routes;

use crate::agent::stage_spec::{add_stage_outputs, referenced_secrets};
use crate::api::error::{ApiError, ApiResult};
use crate::api::route_table::{Access, RouteTable};
use crate::daemon::state::AppState;
use crate::git::Mirror;
use crate::logs::{NewLine, StepKey};
use crate::protocol::{
    HeartbeatAction, HeartbeatResponse, LONG_POLL_SECS, LeaseArtifact, LeaseRequest, LeaseResponse,
    LeaseToken, LogAck, LogBatch, RegisterRequest, RegisterResponse, StageFinish, StageFinished,
    StepFinish, WireStatus, routes,
};
use crate::store::{
    Heartbeat, Lease, Limits, RunnerId, Settled, Stage, StageId, StageOutcome, StageResults,
    StageStatus, StepStatus,
};

/// While a lease request waits, how often it looks at the queue even without a nudge.
const LEASE_POLL: Duration = Duration::from_secs(2);
/// Longest reason stored for a stage (runner-supplied text).
const MAX_REASON_CHARS: usize = 2000;

pub(super) fn routes() -> RouteTable {
    RouteTable::new()
        .add(Access::Runner, routes!(register))
        .add(Access::Runner, routes!(lease))
        .add(Access::Runner, routes!(source))
        .add(Access::Runner, routes!(heartbeat))
        .add(Access::Runner, routes!(step_start))
        .add(Access::Runner, routes!(step_logs))
        .add(Access::Runner, routes!(step_finish))
        .add(Access::Runner, routes!(stage_finish))
}

/// How often runners heartbeat: three chances before the lease runs out.
pub fn heartbeat_interval(timeout: Duration) -> Duration {
    (timeout / 3).max(Duration::from_millis(500))
}

fn json<T>(body: Result<Json<T>, JsonRejection>) -> ApiResult<T> {
    body.map(|Json(b)| b)
        .map_err(|e| ApiError::bad_request(e.body_text()))
}

#[utoipa::path(
    post, path = routes::REGISTER, tag = "runner",
    request_body(content = Object, description = "`RegisterRequest`: name, labels, capacity"),
    responses(
        (status = 200, description = "`RegisterResponse`: the runner id and its heartbeat and lease periods", body = Object),
        (status = 401), (status = 403), (status = 422)
    )
)]
async fn register(
    State(state): State<AppState>,
    body: Result<Json<RegisterRequest>, JsonRejection>,
) -> ApiResult<Json<RegisterResponse>> {
    let req = json(body)?;
    let name = req.name.trim();
    if name.is_empty() || name.chars().count() > 200 {
        return Err(ApiError::unprocessable(
            "runner name must be 1 to 200 characters",
        ));
    }
    if req.labels.len() > 100 {
        return Err(ApiError::unprocessable(
            "a runner may have at most 100 labels",
        ));
    }
    for label in &req.labels {
        if let Err(e) = pipelines::check_label(label) {
            return Err(ApiError::unprocessable(e));
        }
    }
    if !(1..=10_000).contains(&req.capacity) {
        return Err(ApiError::unprocessable(
            "capacity must be between 1 and 10000",
        ));
    }
    let runner = state
        .store
        .register_runner(name, &req.labels, req.capacity)
        .await?;
    let timeout = state.config.heartbeat_timeout;
    tracing::info!(
        runner_id = runner.id,
        name = %runner.name,
        capacity = req.capacity,
        labels = %runner.labels.join(","),
        "runner registered"
    );
    Ok(Json(RegisterResponse {
        runner_id: runner.id,
        heartbeat_secs: heartbeat_interval(timeout).as_secs().max(1),
        lease_secs: timeout.as_secs().max(1),
    }))
}

/// Hands out the oldest runnable stage, waiting up to [`LONG_POLL_SECS`] for one.
#[utoipa::path(
    post, path = routes::LEASE, tag = "runner",
    request_body(content = Object, description = "`LeaseRequest`: the runner id"),
    responses(
        (status = 200, description = "`LeaseResponse`: the stage, its lease token and resolved secrets", body = Object),
        (status = 204, description = "Nothing to run within the long poll"),
        (status = 401), (status = 403), (status = 404, description = "Unknown runner: register again")
    )
)]
async fn lease(
    State(state): State<AppState>,
    body: Result<Json<LeaseRequest>, JsonRejection>,
) -> ApiResult<Response> {
    let req = json(body)?;
    // Unknown runner id → 404: the runner registers again.
    state.store.touch_runner(req.runner_id).await?;
    let limits = Limits {
        global: state.config.max_running,
        per_repo: state.config.max_running_per_repo,
    };
    let deadline = Instant::now() + Duration::from_secs(LONG_POLL_SECS);
    loop {
        // Register interest before looking, so a nudge between the look and the wait is
        // not lost.
        let notified = state.wake.queue.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if state.shutdown.is_cancelled() {
            return Ok(StatusCode::NO_CONTENT.into_response());
        }
        let lease_for = state.config.heartbeat_timeout;
        if let Some(lease) = state
            .store
            .lease_stage(req.runner_id, lease_for, &limits)
            .await?
        {
            state.metrics.stage_leased();
            match prepare(&state, req.runner_id, lease).await? {
                Some(resp) => return Ok(Json(resp).into_response()),
                // The stage was refused (e.g. an undefined secret); look again.
                None => continue,
            }
        }
        let now = Instant::now();
        if now >= deadline {
            return Ok(StatusCode::NO_CONTENT.into_response());
        }
        tokio::select! {
            _ = &mut notified => {}
            _ = tokio::time::sleep_until((now + LEASE_POLL).min(deadline)) => {}
            _ = state.shutdown.cancelled() => return Ok(StatusCode::NO_CONTENT.into_response()),
        }
    }
}

/// Turns a fresh lease into what the runner needs, or finishes the stage at once when
/// it cannot run (`None`).
async fn prepare(
    state: &AppState,
    runner_id: RunnerId,
    lease: Lease,
) -> ApiResult<Option<LeaseResponse>> {
    let stage = &lease.stage;
    let run = &lease.run;
    let token = lease.token.as_str();
    let refuse = |status: StageStatus, reason: String| async move {
        tracing::warn!(stage_id = stage.id, run_id = run.id, reason = %reason, "stage refused before it ran");
        state
            .store
            .finish_stage(
                stage.id,
                token,
                StageOutcome {
                    status,
                    reason: Some(reason),
                },
            )
            .await?;
        state.wake.queue.notify_waiters();
        ApiResult::Ok(None)
    };
    let mut planned: PlannedStage = match serde_json::from_value(stage.spec.clone()) {
        Ok(p) => p,
        Err(e) => {
            return refuse(
                StageStatus::Error,
                format!("the stage's plan cannot be read: {e}"),
            )
            .await;
        }
    };
    // The planner and reruns never plan such a stage for an untrusted run
    // (`runs::from_plan::check_trust`); this is the last line, where the pod would be asked for.
    if let Some(sa) = &planned.kubernetes.service_account
        && !run.trusted
    {
        return refuse(
            StageStatus::Failure,
            format!(
                "the stage asks for service account `{}`, but the run is not trusted",
                sa.name
            ),
        )
        .await;
    }
    add_needed_outputs(state, stage, &mut planned).await?;
    let referenced = referenced_secrets(&planned);
    let mut secrets = BTreeMap::new();
    let mut withheld = 0usize;
    if !referenced.is_empty() {
        let stored = state.store.get_secret_values_enc(run.repo_id).await?;
        for name in &referenced {
            let Some(secret) = stored.iter().find(|s| &s.name == name) else {
                return refuse(
                    StageStatus::Failure,
                    format!("secret `{name}` is not defined for this repository"),
                )
                .await;
            };
            if run.fork && !secret.allow_pull_requests {
                withheld += 1;
                continue;
            }
            let aad = crate::crypto::secret_aad(run.repo_id, name);
            let value = match state.secret_box.open(&secret.value_enc, &aad) {
                Ok(plain) => match std::str::from_utf8(&plain) {
                    Ok(text) => text.to_string(),
                    Err(_) => {
                        return refuse(
                            StageStatus::Failure,
                            format!("secret `{name}` is not valid UTF-8"),
                        )
                        .await;
                    }
                },
                Err(_) => {
                    return refuse(
                        StageStatus::Error,
                        format!(
                            "secret `{name}` cannot be decrypted with the server's key (was the key changed?)"
                        ),
                    )
                    .await;
                }
            };
            secrets.insert(name.clone(), value);
        }
    }
    let repo = state.store.get_repo(run.repo_id).await?;
    let keys: Vec<StepKey> = lease.steps.iter().map(|s| step_key(stage, s.idx)).collect();
    let logs = state.clone();
    let log_offsets = tokio::task::spawn_blocking(move || {
        keys.into_iter()
            .map(|k| logs.logs.count(k))
            .collect::<Result<Vec<u64>, _>>()
    })
    .await
    .map_err(ApiError::internal)?
    .map_err(ApiError::internal)?;
    // A new attempt starts without what an earlier one uploaded, and gets the
    // artifacts of the stages it needs.
    state.store.clear_stage_artifacts(stage.id).await?;
    let artifacts: Vec<LeaseArtifact> = super::files::needed_artifacts(state, run, stage)
        .await?
        .into_iter()
        .map(|a| LeaseArtifact {
            path: crate::protocol::artifact_path(stage.id, a.id),
            id: a.id,
            stage_key: a.stage_key,
            name: a.name,
            sha256: a.sha256,
            size: u64::try_from(a.size).unwrap_or(0),
            mode: u32::try_from(a.mode).unwrap_or(0o644) & 0o777,
        })
        .collect();
    tracing::info!(
        stage_id = stage.id,
        run_id = run.id,
        runner_id,
        attempt = stage.attempt,
        secrets = secrets.len(),
        withheld,
        artifacts = artifacts.len(),
        "stage leased"
    );
    Ok(Some(LeaseResponse {
        stage_id: stage.id,
        run_id: run.id,
        lease_token: lease.token.clone(),
        attempt: stage.attempt,
        stage_key: stage.key.clone(),
        spec: planned,
        steps: lease.steps.iter().map(|s| s.name.clone()).collect(),
        log_offsets,
        secrets,
        run_url: format!(
            "{}/repos/{}/runs/{}",
            state.config.public_url, repo.name, run.number
        ),
        repo: repo.name,
        sha: run.sha.clone(),
        git_ref: run.git_ref.clone(),
        run_number: run.number,
        artifacts,
        // A fork's pull request may read caches but not write them: its content would
        // otherwise be restored into trusted runs.
        cache_writable: !run.fork,
    }))
}

/// Puts the outputs of the stages `stage` needs into its environment
/// ([`add_stage_outputs`]; outputs come by stage id, which is plan order).
async fn add_needed_outputs(
    state: &AppState,
    stage: &Stage,
    planned: &mut PlannedStage,
) -> ApiResult<()> {
    if stage.needs.is_empty() {
        return Ok(());
    }
    let outputs = state.store.run_outputs(stage.run_id).await?;
    add_stage_outputs(
        &mut planned.env,
        outputs
            .iter()
            .filter(|o| stage.needs.contains(&o.stage_key))
            .filter_map(|o| Some((o.stage_name.as_deref()?, o.name.as_str(), o.value.as_str()))),
    );
    Ok(())
}

fn step_key(stage: &Stage, idx: i64) -> StepKey {
    StepKey {
        run: stage.run_id,
        stage: stage.id,
        step: u32::try_from(idx).unwrap_or(u32::MAX),
    }
}

/// Streams a tar of the run's commit, straight from the mirror: a blocking task writes
/// the archive into a small bounded channel that the response body drains, so memory
/// stays flat whatever the repository's size.
#[utoipa::path(
    get, path = routes::SOURCE, tag = "runner",
    summary = "The source of the stage's commit", description = "A tar, streamed from the mirror.",
    params(("id" = i64, Path, description = "The stage's id")),
    responses(
        (status = 200, description = "A tar of the run's commit, streamed", content_type = "application/x-tar", body = Vec<u8>),
        (status = 401), (status = 403), (status = 409, description = "`lease_lost`")
    )
)]
async fn source(
    State(state): State<AppState>,
    Path(id): Path<StageId>,
    Query(q): Query<LeaseToken>,
) -> ApiResult<Response> {
    let stage = leased(&state, id, &q.lease_token).await?;
    let run = state.store.get_run(stage.run_id).await?;
    let repo = state.store.get_repo(run.repo_id).await?;
    let dir = state.mirror_dir(repo.id);
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let sha = run.sha.clone();
    tokio::task::spawn_blocking(move || {
        let opened = match Mirror::open(&dir) {
            Ok(m) if m.has_commit(&sha).unwrap_or(false) => Ok(m),
            // Normally the planner fetched the commit; if the mirror lost it (or was
            // wiped), fetch it again rather than fail the stage.
            _ => Mirror::open_or_init(&dir, &repo.clone_url).and_then(|m| {
                m.ensure_commit(&sha, std::slice::from_ref(&run.git_ref))
                    .map(|()| m)
            }),
        };
        let mirror = match opened {
            Ok(m) => {
                let _ = ready_tx.send(Ok(()));
                m
            }
            Err(e) => {
                let _ = ready_tx.send(Err(e));
                return;
            }
        };
        let writer = ChannelWriter {
            tx: tx.clone(),
            buf: Vec::with_capacity(CHUNK),
        };
        if let Err(e) = mirror.archive(&sha, writer) {
            tracing::warn!(stage_id = id, error = %e, "streaming the source archive failed");
            let _ = tx.blocking_send(Err(std::io::Error::other("archive failed")));
        }
    });
    match ready_rx.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) if e.is_retryable() => return Err(ApiError::unavailable(e)),
        Ok(Err(e)) => return Err(ApiError::internal(e)),
        Err(e) => return Err(ApiError::internal(e)),
    }
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/x-tar")],
        Body::from_stream(stream),
    )
        .into_response())
}

const CHUNK: usize = 64 * 1024;

/// A `Write` that sends 64 KiB chunks into a bounded channel (blocking when the
/// reader is slow), for use on a blocking thread.
struct ChannelWriter {
    tx: tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>,
    buf: Vec<u8>,
}

impl ChannelWriter {
    fn send(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK)));
        self.tx
            .blocking_send(Ok(chunk))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "client went away"))
    }
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let n = data.len().min(CHUNK - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() >= CHUNK {
            self.send()?;
        }
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.send()
    }
}

impl Drop for ChannelWriter {
    fn drop(&mut self) {
        let _ = self.send();
    }
}

#[utoipa::path(
    post, path = routes::HEARTBEAT, tag = "runner",
    params(("id" = i64, Path, description = "The stage's id")),
    request_body(content = Object, description = "`LeaseToken`"),
    responses(
        (status = 200, description = "`HeartbeatResponse`: continue or cancel", body = Object),
        (status = 401), (status = 403), (status = 409, description = "`lease_lost`")
    )
)]
async fn heartbeat(
    State(state): State<AppState>,
    Path(id): Path<StageId>,
    body: Result<Json<LeaseToken>, JsonRejection>,
) -> ApiResult<Json<HeartbeatResponse>> {
    let req = json(body)?;
    let action = match state
        .store
        .heartbeat(id, &req.lease_token, state.config.heartbeat_timeout)
        .await?
    {
        Heartbeat::Ok => HeartbeatAction::Continue,
        Heartbeat::Cancel => HeartbeatAction::Cancel,
        Heartbeat::Lost => return Err(crate::store::Error::LeaseLost.into()),
    };
    Ok(Json(HeartbeatResponse { action }))
}

#[utoipa::path(
    post, path = routes::STEP_START, tag = "runner",
    params(
        ("id" = i64, Path, description = "The stage's id"),
        ("idx" = u32, Path, description = "The step's index in the stage"),
    ),
    request_body(content = Object, description = "`LeaseToken`"),
    responses(
        (status = 204), (status = 401), (status = 403),
        (status = 409, description = "`lease_lost`"),
    )
)]
async fn step_start(
    State(state): State<AppState>,
    Path((id, idx)): Path<(StageId, u32)>,
    body: Result<Json<LeaseToken>, JsonRejection>,
) -> ApiResult<StatusCode> {
    let req = json(body)?;
    match state
        .store
        .start_step(id, &req.lease_token, i64::from(idx))
        .await
    {
        Ok(_) => Ok(StatusCode::NO_CONTENT),
        // Already started: a resent request whose first answer was lost.
        Err(crate::store::Error::Conflict(_)) => Ok(StatusCode::NO_CONTENT),
        Err(e) => Err(e.into()),
    }
}

/// Serialises "count, append, count" per step, so the log counters in the database
/// only grow by lines that were really new even when a resent batch races the
/// original. Striped: bounded memory, and two steps rarely share a stripe.
static LOG_LOCKS: [std::sync::Mutex<()>; 32] = [const { std::sync::Mutex::new(()) }; 32];

fn log_lock(key: StepKey) -> &'static std::sync::Mutex<()> {
    let h = (key.run as u64)
        .wrapping_mul(31)
        .wrapping_add(key.stage as u64)
        .wrapping_mul(31)
        .wrapping_add(u64::from(key.step));
    &LOG_LOCKS[(h % LOG_LOCKS.len() as u64) as usize]
}

#[utoipa::path(
    post, path = routes::STEP_LOGS, tag = "runner",
    params(
        ("id" = i64, Path, description = "The stage's id"),
        ("idx" = u32, Path, description = "The step's index in the stage"),
    ),
    request_body(content = Object, description = "`LogBatch`: masked lines from `first_line` on"),
    responses(
        (status = 200, description = "`LogAck`: the lines stored so far", body = Object),
        (status = 400), (status = 401), (status = 403), (status = 409, description = "`lease_lost`, or a gap in the lines")
    )
)]
async fn step_logs(
    State(state): State<AppState>,
    Path((id, idx)): Path<(StageId, u32)>,
    body: Result<Json<LogBatch>, JsonRejection>,
) -> ApiResult<Json<LogAck>> {
    let req = json(body)?;
    let stage = leased(&state, id, &req.lease_token).await?;
    let step = state
        .store
        .list_steps(id)
        .await?
        .into_iter()
        .find(|s| s.idx == i64::from(idx))
        .ok_or_else(|| ApiError::not_found(format!("step {idx} of stage {id}")))?;
    if req.first_line == 0 {
        return Err(ApiError::bad_request("first_line is 1-based"));
    }
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut lines = Vec::with_capacity(req.lines.len());
    for l in &req.lines {
        let bytes = b64
            .decode(&l.data_b64)
            .map_err(|_| ApiError::bad_request("data_b64 is not valid base64"))?;
        if bytes.contains(&b'\n') {
            return Err(ApiError::bad_request(
                "a log line may not contain a newline",
            ));
        }
        lines.push(NewLine {
            time_ms: l.time_ms,
            stream: l.stream,
            bytes,
        });
    }
    let key = step_key(&stage, i64::from(idx));
    let first = req.first_line;
    let st = state.clone();
    let appended = tokio::task::spawn_blocking(move || {
        let _guard = log_lock(key).lock().unwrap_or_else(|e| e.into_inner());
        let before = st.logs.count(key)?;
        let after = st.logs.append(key, first, &lines)?;
        // Lines `first..` of the batch beyond what was stored before are new.
        let skip = (before + 1).saturating_sub(first) as usize;
        let fresh = lines.get(skip..).unwrap_or_default();
        let bytes: u64 = fresh.iter().map(|l| l.bytes.len() as u64 + 1).sum();
        Ok::<_, crate::logs::Error>((after, (after - before), bytes))
    })
    .await
    .map_err(ApiError::internal)?;
    let (total, fresh_lines, fresh_bytes) = match appended {
        Ok(v) => v,
        Err(crate::logs::Error::Gap { first, have }) => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "log_gap",
                format!("batch starts at line {first} but the step has {have} lines"),
            ));
        }
        Err(e) => return Err(ApiError::internal(e)),
    };
    if fresh_lines > 0 {
        state
            .store
            .add_step_log_stats(step.id, fresh_lines as i64, fresh_bytes as i64)
            .await?;
    }
    Ok(Json(LogAck { lines: total }))
}

#[utoipa::path(
    post, path = routes::STEP_FINISH, tag = "runner",
    params(
        ("id" = i64, Path, description = "The stage's id"),
        ("idx" = u32, Path, description = "The step's index in the stage"),
    ),
    request_body(content = Object, description = "`StepFinish`: status and exit code"),
    responses(
        (status = 204), (status = 401), (status = 403),
        (status = 409, description = "`lease_lost`"),
    )
)]
async fn step_finish(
    State(state): State<AppState>,
    Path((id, idx)): Path<(StageId, u32)>,
    body: Result<Json<StepFinish>, JsonRejection>,
) -> ApiResult<StatusCode> {
    let req = json(body)?;
    let step = match state
        .store
        .finish_step(
            id,
            &req.lease_token,
            i64::from(idx),
            step_status(req.status),
            req.exit_code,
            req.oom_killed,
        )
        .await
    {
        Ok(step) => step,
        // Already finished: a resent request whose first answer was lost.
        Err(crate::store::Error::Conflict(_)) => return Ok(StatusCode::NO_CONTENT),
        Err(e) => return Err(e.into()),
    };
    let stage = state.store.get_stage(id).await?;
    let key = step_key(&stage, step.idx);
    let st = state.clone();
    tokio::task::spawn_blocking(move || st.logs.finish(key))
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::internal)?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(
    post, path = routes::STAGE_FINISH, tag = "runner",
    params(("id" = i64, Path, description = "The stage's id")),
    request_body(content = Object, description = "`StageFinish`: status, reason, outputs, findings"),
    responses(
        (status = 200, description = "`StageFinished`", body = Object),
        (status = 401), (status = 403), (status = 409, description = "`lease_lost`")
    )
)]
async fn stage_finish(
    State(state): State<AppState>,
    Path(id): Path<StageId>,
    body: Result<Json<StageFinish>, JsonRejection>,
) -> ApiResult<Json<StageFinished>> {
    let req = json(body)?;
    let status = stage_status(req.status)
        .ok_or_else(|| ApiError::bad_request("a stage cannot finish as skipped"))?;
    let mut reason = req
        .reason
        .map(|r| r.chars().take(MAX_REASON_CHARS).collect::<String>());
    let results = StageResults {
        outputs: req.outputs,
        findings: req.findings,
    };
    let (status, results) = match results.sanitized() {
        Ok(results) => (status, results),
        Err(why) => {
            // The stage cannot be trusted to have done its work: end it as an
            // infrastructure error (retried) rather than leave it running.
            tracing::warn!(stage_id = id, reason = %why, "runner reported unusable results");
            reason = Some(format!("the runner reported unusable results: {why}"));
            (StageStatus::Error, StageResults::default())
        }
    };
    let report = state
        .store
        .finish_stage_with(
            id,
            &req.lease_token,
            StageOutcome { status, reason },
            &results,
        )
        .await?;
    if let Some(run_status) = report.run_finished {
        state.metrics.run_finished(run_status);
    }
    let settled = report.settled;
    // Stages that needed this one may be runnable now, and a slot is free.
    state.wake.queue.notify_waiters();
    let (settled, status) = match settled {
        Settled::Finished(status) => {
            // Nothing more will be written to these logs: let followers stop.
            let stage = state.store.get_stage(id).await?;
            let keys: Vec<StepKey> = state
                .store
                .list_steps(id)
                .await?
                .iter()
                .map(|s| step_key(&stage, s.idx))
                .collect();
            let st = state.clone();
            tokio::task::spawn_blocking(move || {
                for k in keys {
                    let _ = st.logs.finish(k);
                }
            })
            .await
            .map_err(ApiError::internal)?;
            ("finished", status)
        }
        Settled::Retrying { .. } => ("retrying", StageStatus::Queued),
    };
    tracing::info!(stage_id = id, settled, status = %status, "stage reported");
    Ok(Json(StageFinished {
        settled: settled.to_string(),
        status: status.as_str().to_string(),
    }))
}

/// A step's row status for what a runner reported.
fn step_status(status: WireStatus) -> StepStatus {
    match status {
        WireStatus::Success => StepStatus::Success,
        WireStatus::Failure => StepStatus::Failure,
        WireStatus::TimedOut => StepStatus::TimedOut,
        WireStatus::Cancelled => StepStatus::Cancelled,
        WireStatus::Error => StepStatus::Error,
        WireStatus::Skipped => StepStatus::Skipped,
    }
}

/// A stage's row status for what a runner reported; `None` for `skipped`, which a
/// stage run by a runner cannot end as.
fn stage_status(status: WireStatus) -> Option<StageStatus> {
    Some(match status {
        WireStatus::Success => StageStatus::Success,
        WireStatus::Failure => StageStatus::Failure,
        WireStatus::TimedOut => StageStatus::TimedOut,
        WireStatus::Cancelled => StageStatus::Cancelled,
        WireStatus::Error => StageStatus::Error,
        WireStatus::Skipped => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_one_to_one() {
        use runner::Status as R;
        let cases = [
            (R::Success, "success"),
            (R::Failure, "failure"),
            (R::TimedOut, "timed_out"),
            (R::Cancelled, "cancelled"),
            (R::Error("disk full".into()), "error"),
        ];
        for (status, name) in cases {
            let wire = WireStatus::from_runner(&status);
            assert_eq!(stage_status(wire).unwrap().as_str(), name);
            assert_eq!(step_status(wire).as_str(), name);
            assert_eq!(serde_json::to_value(wire).unwrap(), name);
        }
        let skipped = WireStatus::from_runner(&R::Skipped);
        assert_eq!(step_status(skipped), StepStatus::Skipped);
        assert_eq!(stage_status(skipped), None);
    }
}

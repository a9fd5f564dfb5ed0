//! The runner protocol, server side: registering and leasing.
//!
//! Runners — the in-process one and `slipway runner` on other hosts alike — register,
//! long-poll for a stage, download its source, stream log batches and step results, and
//! report how the stage ended. Every stage-scoped request must present the stage's
//! current lease token; a stale one (the lease expired and was re-queued, the stage was
//! finished) gets `409 lease_lost`, and the runner drops the work.
//!
//! A runner registers with its token's repository scope ([`crate::store::RepoScope`])
//! and only ever leases stages of repositories in it, so a stage's secrets only go to
//! runners allowed for its repository.
//!
//! Secrets are resolved here, when a stage is handed out: only the secrets the stage
//! references are decrypted and sent. For a pull request from a fork (`run.fork`), a
//! secret is withheld unless it is marked `allow_pull_requests` — `fork` is the
//! forge's fact about where the code comes from; `run.trusted` is left for privileged
//! settings: a stage with a `kubernetes.service_account` is refused here if its run is
//! not trusted (the planner already refuses such runs; this is the last check before
//! a pod would be asked for). A referenced secret that is not defined fails the stage
//! at once with a reason saying so, instead of running steps with an empty variable;
//! withheld ones are named (never their values) in a first line of the stage's first
//! step log.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use pipelines::PlannedStage;
use tokio::time::Instant;
use utoipa_axum::routes;

use crate::agent::stage_spec::{add_stage_outputs, referenced_secrets};
use crate::api::auth::Caller;
use crate::api::error::{ApiError, ApiResult};
use crate::api::route_table::{Access, RouteTable};
use crate::daemon::state::AppState;
use crate::logs::StepKey;
use crate::protocol::{
    LONG_POLL_SECS, LeaseArtifact, LeaseRequest, LeaseResponse, RegisterRequest, RegisterResponse,
    ResumeRequest, ResumeResponse, routes,
};
use crate::store::{
    Lease, Limits, RepoScope, Run, Runner, RunnerId, Stage, StageOutcome, StageStatus, TokenScope,
};

use super::{json, step_key};
/// While a lease request waits, how often it looks at the queue even without a nudge.
const LEASE_POLL: Duration = Duration::from_secs(2);

pub(super) fn routes() -> RouteTable {
    RouteTable::new()
        .add(Access::Runner, routes!(register))
        .add(Access::Runner, routes!(lease))
        .add(Access::Runner, routes!(resume))
}

/// How often runners heartbeat: three chances before the lease runs out.
pub fn heartbeat_interval(timeout: Duration) -> Duration {
    (timeout / 3).max(Duration::from_millis(500))
}

/// Runner: register (name, labels, capacity); answers its id and periods.
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
    caller: Caller,
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
        .register_runner(name, &req.labels, req.capacity, &token_repos(&caller))
        .await?;
    let timeout = state.config.heartbeat_timeout;
    tracing::info!(
        runner_id = runner.id,
        name = %runner.name,
        capacity = req.capacity,
        labels = %runner.labels.join(","),
        repos = %runner.repos,
        "runner registered"
    );
    Ok(Json(RegisterResponse {
        runner_id: runner.id,
        heartbeat_secs: heartbeat_interval(timeout).as_secs().max(1),
        lease_secs: timeout.as_secs().max(1),
    }))
}

/// The repositories the calling token may run stages of (an admin token: all).
fn token_repos(caller: &Caller) -> RepoScope {
    match caller {
        Caller::Machine(t) if t.scope == TokenScope::Runner => t.repos.clone(),
        _ => RepoScope::All,
    }
}

/// The runner `id`, seen now, if `caller`'s token is the kind it registered with.
/// Unknown id → 404: the runner registers again. The queue applies the scope the runner
/// registered with; a token of another scope must not borrow it by naming that
/// runner's id.
async fn runner_of(state: &AppState, caller: &Caller, id: RunnerId) -> ApiResult<Runner> {
    let runner = state.store.touch_runner(id).await?;
    if runner.repos != token_repos(caller) {
        return Err(ApiError::forbidden(format!(
            "runner `{}` was registered with a token for {}; this token is for {}: register again",
            runner.name,
            runner.repos,
            token_repos(caller)
        )));
    }
    Ok(runner)
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
    caller: Caller,
    body: Result<Json<LeaseRequest>, JsonRejection>,
) -> ApiResult<Response> {
    let req = json(body)?;
    runner_of(&state, &caller, req.runner_id).await?;
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

/// A restarted runner takes back a stage it left running (a Kubernetes pod it found
/// again): the stage and attempt of the pod's adoption record, which holds neither the
/// lease token nor any secret value. The runner must have the name of the one that
/// held the stage.
#[utoipa::path(
    post, path = routes::RESUME, tag = "runner",
    request_body(content = Object, description = "`ResumeRequest`: the runner id, the stage id and its attempt"),
    responses(
        (status = 200, description = "`ResumeResponse`: a new lease token and the secret values the stage may see", body = Object),
        (status = 401), (status = 403),
        (status = 404, description = "Unknown runner: register again"),
        (status = 409, description = "The stage moved on (finished, re-queued, another attempt) or is another runner's"),
    )
)]
async fn resume(
    State(state): State<AppState>,
    caller: Caller,
    body: Result<Json<ResumeRequest>, JsonRejection>,
) -> ApiResult<Json<ResumeResponse>> {
    let req = json(body)?;
    let runner = runner_of(&state, &caller, req.runner_id).await?;
    let lease = state
        .store
        .resume_stage(
            runner.id,
            req.stage_id,
            req.attempt,
            state.config.heartbeat_timeout,
        )
        .await?;
    let (stage, run) = (&lease.stage, &lease.run);
    match resolve(&state, stage, run).await? {
        Ok(resolved) => {
            tracing::info!(
                stage_id = stage.id,
                run_id = run.id,
                runner_id = runner.id,
                attempt = stage.attempt,
                "stage resumed by a restarted runner"
            );
            Ok(Json(ResumeResponse {
                lease_token: lease.token,
                secrets: resolved.secrets,
            }))
        }
        // A secret was deleted while the runner was away, say: the stage ends as a
        // fresh lease of it would.
        Err((status, reason)) => {
            state
                .store
                .finish_stage(
                    stage.id,
                    &lease.token,
                    StageOutcome {
                        status,
                        reason: Some(reason.clone()),
                    },
                )
                .await?;
            state.wake.queue.notify_waiters();
            Err(ApiError::conflict(reason))
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
    let Resolved {
        planned,
        secrets,
        withheld,
        run_url,
    } = match resolve(state, stage, run).await? {
        Ok(resolved) => resolved,
        Err((status, reason)) => return refuse(status, reason).await,
    };
    let repo = state.store.get_repo(run.repo_id).await?;
    if !withheld.is_empty() {
        note_withheld(state, stage, &lease.steps, &withheld).await?;
    }
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
        withheld = withheld.len(),
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
        run_url,
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

/// What a leased stage needs that is known only when it is handed out: its plan with
/// the outputs of the stages it needs, the run's URL and its environment, and the
/// values of the secrets it references and may see (`withheld`: the names it may not).
struct Resolved {
    planned: PlannedStage,
    secrets: BTreeMap<String, String>,
    withheld: Vec<String>,
    run_url: String,
}

/// Why a stage cannot run: how it ends, and the reason.
type Refusal = (StageStatus, String);

/// Resolves `stage` of `run` for a runner ([`Resolved`]), or says why it cannot run.
async fn resolve(
    state: &AppState,
    stage: &Stage,
    run: &Run,
) -> ApiResult<Result<Resolved, Refusal>> {
    let mut planned: PlannedStage = match serde_json::from_value(stage.spec.clone()) {
        Ok(p) => p,
        Err(e) => {
            return Ok(Err((
                StageStatus::Error,
                format!("the stage's plan cannot be read: {e}"),
            )));
        }
    };
    // The planner and reruns never plan such a stage for an untrusted run
    // (`runs::from_plan::check_trust`); this is the last line, where the pod would be asked for.
    if let Some(sa) = &planned.kubernetes.service_account
        && !run.trusted
    {
        return Ok(Err((
            StageStatus::Failure,
            format!(
                "the stage asks for service account `{}`, but the run is not trusted",
                sa.name
            ),
        )));
    }
    add_needed_outputs(state, stage, &mut planned).await?;
    let referenced = referenced_secrets(&planned);
    let mut secrets = BTreeMap::new();
    // Names only: what the step log says was kept from this run.
    let mut withheld: Vec<String> = Vec::new();
    if !referenced.is_empty() {
        let stored = state.store.get_secret_values_enc(run.repo_id).await?;
        for name in &referenced {
            let Some(secret) = stored.iter().find(|s| &s.name == name) else {
                return Ok(Err((
                    StageStatus::Failure,
                    format!("secret `{name}` is not defined for this repository"),
                )));
            };
            if run.fork && !secret.allow_pull_requests {
                withheld.push(name.clone());
                continue;
            }
            let aad = crate::crypto::secret_aad(run.repo_id, name);
            let value = match state.secret_box.open(&secret.value_enc, &aad) {
                Ok(plain) => match std::str::from_utf8(&plain) {
                    Ok(text) => text.to_string(),
                    Err(_) => {
                        return Ok(Err((
                            StageStatus::Failure,
                            format!("secret `{name}` is not valid UTF-8"),
                        )));
                    }
                },
                Err(_) => {
                    return Ok(Err((
                        StageStatus::Error,
                        format!(
                            "secret `{name}` cannot be decrypted with the server's key (was the key changed?)"
                        ),
                    )));
                }
            };
            secrets.insert(name.clone(), value);
        }
    }
    // Known only now: a stored plan is the same for every run that reuses it.
    let run_url = format!(
        "{}/repos/{}/runs/{}",
        state.config.public_url,
        crate::admin::repos::url_path(&state.store.get_repo(run.repo_id).await?.name),
        run.number
    );
    crate::agent::stage_spec::add_run_info(
        &mut planned.env,
        &crate::agent::stage_spec::RunInfo {
            number: run.number,
            id: run.id,
            url: run_url.clone(),
        },
    );
    if let Some((env, _)) = crate::store::deployments::deploy_target(&stage.spec)
        && let Err(reason) =
            add_environment(state, run, &env, &mut planned, &mut secrets, &mut withheld).await?
    {
        return Ok(Err((StageStatus::Error, reason)));
    }
    Ok(Ok(Resolved {
        planned,
        secrets,
        withheld,
        run_url,
    }))
}

/// The name under which a deploy stage gets its environment's kubeconfig, as a secret
/// (masked in logs like any other) in the variable of the same name.
pub const KUBECONFIG_SECRET: &str = "SLIPWAY_KUBECONFIG";

/// Gives a deploy stage its environment: `SLIPWAY_ENVIRONMENT`, `SLIPWAY_NAMESPACE`, and
/// the environment's kubeconfig (sealed at rest) as the secret `SLIPWAY_KUBECONFIG` —
/// never to a fork's pull request (then it is `withheld`). `Ok(Err(why))` when the
/// kubeconfig cannot be opened.
async fn add_environment(
    state: &AppState,
    run: &crate::store::Run,
    env: &str,
    planned: &mut PlannedStage,
    secrets: &mut BTreeMap<String, String>,
    withheld: &mut Vec<String>,
) -> ApiResult<Result<(), String>> {
    planned
        .env
        .insert("SLIPWAY_ENVIRONMENT".to_string(), env.to_string());
    let Some(found) = state.store.find_environment(run.repo_id, env).await? else {
        return Ok(Ok(()));
    };
    if let Some(ns) = &found.namespace {
        planned
            .env
            .insert("SLIPWAY_NAMESPACE".to_string(), ns.clone());
    }
    if found.kubeconfig_enc.is_none() {
        return Ok(Ok(()));
    }
    if run.fork {
        withheld.push(KUBECONFIG_SECRET.to_string());
        return Ok(Ok(()));
    }
    let text = match crate::rollout::kubeconfig(&state.secret_box, &found) {
        Ok(Some(text)) => text,
        Ok(None) => return Ok(Ok(())),
        Err(why) => return Ok(Err(why)),
    };
    secrets.insert(KUBECONFIG_SECRET.to_string(), text);
    planned
        .secrets
        .insert(KUBECONFIG_SECRET.to_string(), KUBECONFIG_SECRET.to_string());
    Ok(Ok(()))
}

/// The first line of the stage's first step log for a fork's pull request that was
/// denied secrets: which ones (names, never values) and why, so that an empty variable
/// is not a mystery. Written before the runner's lines (the lease's log offsets count
/// it); a retried attempt gets its own.
async fn note_withheld(
    state: &AppState,
    stage: &Stage,
    steps: &[crate::store::Step],
    withheld: &[String],
) -> ApiResult<()> {
    let Some(first) = steps.iter().min_by_key(|s| s.idx) else {
        return Ok(());
    };
    let text = format!(
        "slipway: secrets withheld from this pull request from a fork: {} (a fork's pull \
         request gets only secrets marked to allow pull requests; these variables are unset)",
        withheld.join(", ")
    );
    let line = crate::logs::NewLine {
        time_ms: state.store.now_ms(),
        stream: crate::logs::Stream::Stderr,
        bytes: text.into_bytes(),
    };
    let bytes = line.bytes.len() as i64 + 1;
    let key = step_key(stage, first.idx);
    let logs = state.clone();
    tokio::task::spawn_blocking(move || {
        let _guard = super::log_lock(key)
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let have = logs.logs.count(key)?;
        logs.logs.append(key, have + 1, std::slice::from_ref(&line))
    })
    .await
    .map_err(ApiError::internal)?
    .map_err(|e| match e.is_disk_full() {
        true => ApiError::disk_full(
            crate::daemon::disk::Part::DataDir,
            "the stage's first log line",
            e,
        ),
        false => ApiError::internal(e),
    })?;
    state.store.add_step_log_stats(first.id, 1, bytes).await?;
    Ok(())
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

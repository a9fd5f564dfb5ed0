//! The runner protocol's reports on a leased stage: heartbeats (which carry the
//! server's cancel; held open until a cancel or the runner's wait, so a cancel is heard
//! at once), step starts, log batches (idempotent by line number), step results
//! and the stage's finish with its outputs and findings. Log lines, outputs and the
//! reason are masked with the repository's secrets on arrival ([`super::stored_mask`]).

use super::leased;
use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use base64::Engine;
use std::time::Duration;

use utoipa_axum::routes;

use crate::api::error::{ApiError, ApiResult};
use crate::api::route_table::{Access, RouteTable};
use crate::daemon::disk::Part;
use crate::daemon::state::AppState;
use crate::logs::{NewLine, StepKey};
use crate::protocol::{
    HeartbeatAction, HeartbeatRequest, HeartbeatResponse, LeaseToken, LogAck, LogBatch,
    StageFinish, StageFinished, StepFinish, WireStatus, routes,
};
use crate::store::{
    Heartbeat, Settled, StageId, StageOutcome, StageResults, StageStatus, StepStatus,
};

use super::lease::heartbeat_interval;
use super::stored_mask::{mask_multiline, mask_outputs, repo_masker};
use super::{json, log_lock, step_key};

/// Longest reason stored for a stage (runner-supplied text).
const MAX_REASON_CHARS: usize = 2000;
/// How often a held heartbeat reads its stage's cancel flag: bounds how late a cancel
/// made through another replica (which cannot wake this one) is heard.
const CANCEL_LOOK: Duration = Duration::from_millis(500);

pub(super) fn routes() -> RouteTable {
    RouteTable::new()
        .add(Access::Runner, routes!(heartbeat))
        .add(Access::Runner, routes!(step_start))
        .add(Access::Runner, routes!(step_logs))
        .add(Access::Runner, routes!(step_finish))
        .add(Access::Runner, routes!(stage_finish))
}

/// Runner: renew a stage's lease and hear whether it is cancelled.
#[utoipa::path(
    post, path = routes::HEARTBEAT, tag = "runner",
    params(("id" = i64, Path, description = "The stage's id")),
    request_body(content = Object, description = "`HeartbeatRequest`: the lease token, and how long to hold the answer waiting for a cancel"),
    responses(
        (status = 200, description = "`HeartbeatResponse`: continue or cancel (at once when the stage is cancelled while the answer is held)", body = Object),
        (status = 401), (status = 403), (status = 409, description = "`lease_lost`")
    )
)]
async fn heartbeat(
    State(state): State<AppState>,
    Path(id): Path<StageId>,
    body: Result<Json<HeartbeatRequest>, JsonRejection>,
) -> ApiResult<Json<HeartbeatResponse>> {
    let req = json(body)?;
    let timeout = state.config.heartbeat_timeout;
    let mut beat = state.store.heartbeat(id, &req.lease_token, timeout).await?;
    if beat == Heartbeat::Ok && req.wait_ms > 0 {
        // Held: the lease is extended for a whole timeout, so waiting one interval
        // (at most) leaves two more before it could run out.
        let hold = Duration::from_millis(req.wait_ms).min(heartbeat_interval(timeout));
        beat = hold_until_cancel(&state, id, &req.lease_token, hold).await?;
    }
    let action = match beat {
        Heartbeat::Ok => HeartbeatAction::Continue,
        Heartbeat::Cancel => HeartbeatAction::Cancel,
        Heartbeat::Lost => return Err(crate::store::Error::LeaseLost.into()),
    };
    Ok(Json(HeartbeatResponse { action }))
}

/// While a cancel is not requested nor the lease lost, for up to `hold`: looks again
/// whenever this server cancels something (`wake.cancel`), and every
/// [`CANCEL_LOOK`] for a cancel made through another replica.
async fn hold_until_cancel(
    state: &AppState,
    id: StageId,
    token: &str,
    hold: Duration,
) -> ApiResult<Heartbeat> {
    let deadline = tokio::time::Instant::now() + hold;
    loop {
        let notified = state.wake.cancel.notified();
        tokio::pin!(notified);
        // Register before looking, so a cancel between the look and the wait is not lost.
        notified.as_mut().enable();
        let now_state = state.store.lease_state(id, token).await?;
        let now = tokio::time::Instant::now();
        if now_state != Heartbeat::Ok || now >= deadline || state.shutdown.is_cancelled() {
            return Ok(now_state);
        }
        tokio::select! {
            _ = &mut notified => {}
            _ = tokio::time::sleep_until((now + CANCEL_LOOK).min(deadline)) => {}
            _ = state.shutdown.cancelled() => {}
        }
    }
}

/// Runner: a step of the leased stage started.
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

/// Runner: append a batch of a step's masked log lines.
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
    // Masked again here: a modified runner must not get a secret stored in the clear.
    let masker = repo_masker(&state, stage.repo_id).await?;
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
        let bytes = match masker.mask(&bytes) {
            std::borrow::Cow::Borrowed(_) => bytes,
            std::borrow::Cow::Owned(masked) => masked,
        };
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
        Err(e) if e.is_disk_full() => {
            return Err(ApiError::disk_full(Part::DataDir, "the log batch", e));
        }
        Err(e) => return Err(ApiError::internal(e)),
    };
    if fresh_lines > 0
        && let Err(e) = state
            .store
            .add_step_log_stats(step.id, fresh_lines as i64, fresh_bytes as i64)
            .await
    {
        // Keep the log and its counters in step: the runner resends the batch whole.
        let st = state.clone();
        let kept = total - fresh_lines;
        let _ = tokio::task::spawn_blocking(move || {
            let _guard = log_lock(key).lock().unwrap_or_else(|e| e.into_inner());
            st.logs.take_back(key, total, kept)
        })
        .await;
        return Err(match e.is_disk_full() {
            true => ApiError::disk_full(Part::Database, "the log batch", e),
            false => e.into(),
        });
    }
    Ok(Json(LogAck { lines: total }))
}

/// Runner: how a step of the leased stage ended.
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

/// Runner: how the leased stage ended, with its outputs and findings.
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
    let mut req = json(body)?;
    let status = stage_status(req.status)
        .ok_or_else(|| ApiError::bad_request("a stage cannot finish as skipped"))?;
    // Only the lease holder's report is stored; checked before the secrets are opened.
    let stage = leased(&state, id, &req.lease_token).await?;
    let masker = repo_masker(&state, stage.repo_id).await?;
    mask_outputs(&masker, &mut req.outputs);
    let mut reason = req.reason.map(|r| {
        mask_multiline(&masker, &r)
            .chars()
            .take(MAX_REASON_CHARS)
            .collect::<String>()
    });
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

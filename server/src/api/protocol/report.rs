//! The runner protocol's reports on a leased stage: heartbeats (which carry the
//! server's cancel; held open until a cancel or the runner's wait, so a cancel is heard
//! at once), step starts, log batches (idempotent by line number), step results
//! and the stage's finish with its outputs and findings. Log lines, outputs and the
//! reason are masked with the repository's secrets on arrival ([`super::stored_mask`]).

use super::leased;
use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use base64::Engine;
use bytes::Bytes;
use std::time::Duration;

use utoipa_axum::routes;

use crate::api::error::{ApiError, ApiResult};
use crate::api::route_table::{Access, RouteTable};
use crate::daemon::disk::Part;
use crate::daemon::state::AppState;
use crate::logs::{Joined, StepKey};
use crate::protocol::{
    HeartbeatAction, HeartbeatRequest, HeartbeatResponse, LEASE_HEADER, LOG_FRAMES, LeaseToken,
    LogAck, LogBatch, StageFinish, StageFinished, StepFinish, WireStatus, read_frames, routes,
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

/// Where a [`LOG_FRAMES`](crate::protocol::LOG_FRAMES) batch's first line goes.
#[derive(Debug, serde::Deserialize)]
struct FramesQuery {
    first_line: u64,
}

/// Runner: append a batch of a step's masked log lines.
#[utoipa::path(
    post, path = routes::STEP_LOGS, tag = "runner",
    params(
        ("id" = i64, Path, description = "The stage's id"),
        ("idx" = u32, Path, description = "The step's index in the stage"),
        ("first_line" = Option<u64>, Query, description = "Binary frames: the 1-based number of the batch's first line"),
    ),
    request_body(content = Vec<u8>, content_type = "application/vnd.slipway.log-frames",
        description = "Masked lines in binary frames (`protocol::LOG_FRAMES`; the lease token in `X-Slipway-Lease`), or a JSON `LogBatch` (`application/json`)"),
    responses(
        (status = 200, description = "`LogAck`: the lines stored so far", body = Object),
        (status = 400), (status = 401), (status = 403), (status = 409, description = "`lease_lost`, or a gap in the lines")
    )
)]
async fn step_logs(
    State(state): State<AppState>,
    Path((id, idx)): Path<(StageId, u32)>,
    headers: HeaderMap,
    query: Result<Query<FramesQuery>, QueryRejection>,
    body: Bytes,
) -> ApiResult<Json<LogAck>> {
    let (token, first, mut lines) = read_batch(&headers, query, &body)?;
    drop(body);
    let stage = leased(&state, id, &token).await?;
    let step = state
        .store
        .list_steps(id)
        .await?
        .into_iter()
        .find(|s| s.idx == i64::from(idx))
        .ok_or_else(|| ApiError::not_found(format!("step {idx} of stage {id}")))?;
    if first == 0 {
        return Err(ApiError::bad_request("first_line is 1-based"));
    }
    // Masked again here: a modified runner must not get a secret stored in the clear.
    let masker = repo_masker(&state, stage.repo_id).await?;
    lines
        .mask_with(|text| masker.mask(text))
        .map_err(ApiError::internal)?;
    let key = step_key(&stage, i64::from(idx));
    let st = state.clone();
    let appended = tokio::task::spawn_blocking(move || {
        let _guard = log_lock(key).lock().unwrap_or_else(|e| e.into_inner());
        st.logs.append_joined(key, first, &lines)
    })
    .await
    .map_err(ApiError::internal)?;
    let appended = match appended {
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
    let total = appended.lines;
    if appended.fresh_lines > 0
        && let Err(e) = state
            .store
            .add_step_log_stats(
                step.id,
                appended.fresh_lines as i64,
                appended.fresh_bytes as i64,
            )
            .await
    {
        // Keep the log and its counters in step: the runner resends the batch whole.
        let st = state.clone();
        let kept = total - appended.fresh_lines;
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

/// A log batch's lease token, first line and lines, from binary frames or JSON.
fn read_batch(
    headers: &HeaderMap,
    query: Result<Query<FramesQuery>, QueryRejection>,
    body: &[u8],
) -> ApiResult<(String, u64, Joined)> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let essence = content_type.split(';').next().unwrap_or_default().trim();
    if essence.eq_ignore_ascii_case(LOG_FRAMES) {
        let token = headers
            .get(LEASE_HEADER)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| {
                ApiError::bad_request(format!("the {LEASE_HEADER} header is missing"))
            })?;
        let Query(FramesQuery { first_line }) =
            query.map_err(|e| ApiError::bad_request(e.body_text()))?;
        let lines = read_frames(body).map_err(ApiError::bad_request)?;
        return Ok((token.to_string(), first_line, lines));
    }
    if !essence.eq_ignore_ascii_case("application/json") {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!("a log batch is `{LOG_FRAMES}` or `application/json`, not `{content_type}`"),
        ));
    }
    let batch: LogBatch = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("the log batch is not valid JSON: {e}")))?;
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut lines = Joined::default();
    for (i, l) in batch.lines.iter().enumerate() {
        let bytes = b64.decode(&l.data_b64).map_err(|_| {
            ApiError::bad_request(format!("line {}: data_b64 is not valid base64", i + 1))
        })?;
        lines.push(l.stream, l.time_ms, &bytes).map_err(|_| {
            ApiError::bad_request(format!(
                "line {}: a log line may not contain a newline",
                i + 1
            ))
        })?;
    }
    Ok((batch.lease_token, batch.first_line, lines))
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

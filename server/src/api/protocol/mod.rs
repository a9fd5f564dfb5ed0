//! The runner protocol, server side (wire types and route templates:
//! [`crate::protocol`]): `lease` (register, lease: secrets resolved here), `source`
//! (the commit's tar), `report` (heartbeat, steps, logs, the stage's finish), `waiting`
//! (why a set-up waits, shown on the stage) and `files` (artifacts and caches). What runners report is masked again on arrival
//! (`stored_mask`). Every stage-scoped request presents the stage's current
//! lease token ([`leased`]); a stale one gets `409 lease_lost`.

pub mod files;
pub mod lease;
pub mod report;
pub mod source;
mod stored_mask;
mod waiting;

use axum::Json;
use axum::extract::rejection::JsonRejection;
use subtle::ConstantTimeEq;

use crate::api::error::{ApiError, ApiResult};
use crate::api::route_table::RouteTable;
use crate::daemon::state::AppState;
use crate::logs::StepKey;
use crate::store::{Stage, StageId, StageStatus};

pub fn routes() -> RouteTable {
    lease::routes()
        .merge(source::routes())
        .merge(report::routes())
        .merge(waiting::routes())
        .merge(files::routes())
}

/// The stage, if `token` is its current lease (else `409 lease_lost`).
pub(crate) async fn leased(state: &AppState, id: StageId, token: &str) -> ApiResult<Stage> {
    let stage = state.store.get_stage(id).await?;
    let holds = stage.status == StageStatus::Running
        && stage
            .lease_token
            .as_deref()
            .is_some_and(|t| bool::from(t.as_bytes().ct_eq(token.as_bytes())));
    if holds {
        Ok(stage)
    } else {
        Err(crate::store::Error::LeaseLost.into())
    }
}

/// A JSON body, or `400` with what was wrong with it.
fn json<T>(body: Result<Json<T>, JsonRejection>) -> ApiResult<T> {
    body.map(|Json(b)| b)
        .map_err(|e| ApiError::bad_request(e.body_text()))
}

pub(super) use crate::logs::append_lock as log_lock;

/// The log key of step `idx` of `stage`.
pub(super) fn step_key(stage: &Stage, idx: i64) -> StepKey {
    StepKey {
        run: stage.run_id,
        stage: stage.id,
        step: u32::try_from(idx).unwrap_or(u32::MAX),
    }
}

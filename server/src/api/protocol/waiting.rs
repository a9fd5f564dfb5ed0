//! The runner protocol's report of a leased stage that waits before its first step
//! (its backend waits for a Kubernetes ResourceQuota): the reason is stored on the
//! stage, masked with the repository's secrets, and the run's followers are told, so
//! the run page and `slipway runs show` say why the stage has not started.

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use utoipa_axum::routes;

use super::stored_mask::{mask_multiline, repo_masker};
use super::{json, leased};
use crate::api::error::ApiResult;
use crate::api::route_table::{Access, RouteTable};
use crate::daemon::state::AppState;
use crate::protocol::{StageWaiting, routes};
use crate::store::StageId;

/// Longest waiting reason stored (runner-supplied text).
const MAX_WAITING_CHARS: usize = 1000;

pub(super) fn routes() -> RouteTable {
    RouteTable::new().add(Access::Runner, routes!(stage_waiting))
}

/// Runner: the leased stage waits before its first step, and why (`null`: no longer).
#[utoipa::path(
    post, path = routes::STAGE_WAITING, tag = "runner",
    params(("id" = i64, Path, description = "The stage's id")),
    request_body(content = Object, description = "`StageWaiting`: the lease token and the reason, or null"),
    responses(
        (status = 204), (status = 400), (status = 401), (status = 403),
        (status = 409, description = "`lease_lost`")
    )
)]
async fn stage_waiting(
    State(state): State<AppState>,
    Path(id): Path<StageId>,
    body: Result<Json<StageWaiting>, JsonRejection>,
) -> ApiResult<StatusCode> {
    let req = json(body)?;
    let stage = leased(&state, id, &req.lease_token).await?;
    let reason = match req.reason {
        Some(r) => {
            let masker = repo_masker(&state, stage.repo_id).await?;
            Some(
                mask_multiline(&masker, &r)
                    .chars()
                    .take(MAX_WAITING_CHARS)
                    .collect::<String>(),
            )
        }
        None => None,
    };
    state
        .store
        .set_stage_waiting(id, &req.lease_token, reason.as_deref())
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

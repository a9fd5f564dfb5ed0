//! Registered runners, for operators: their labels (including `backend:<name>`),
//! capacity, how many stages each runs now and when it was last seen (viewer). With
//! a run's `unroutable` stages this answers "why is my stage not starting?".

use axum::Json;
use axum::extract::State;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::routes;

use super::error::ApiResult;
use super::route_table::{Access, RouteTable};
use crate::daemon::state::AppState;
use crate::store::{Role, Runner};

pub fn routes() -> RouteTable {
    RouteTable::new().add(Access::Role(Role::Viewer), routes!(list))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RunnerInfo {
    #[serde(flatten)]
    pub runner: Runner,
    /// Stages it is running now (at most `capacity`).
    pub running: i64,
}

/// Registered runners: labels, capacity and running stages.
#[utoipa::path(
    get, path = "/api/runners", tag = "runners",
    responses((status = 200, body = [RunnerInfo]), (status = 401), (status = 403))
)]
pub async fn list(State(state): State<AppState>) -> ApiResult<Json<Vec<RunnerInfo>>> {
    let running = state.store.running_per_runner().await?;
    let runners = state.store.list_runners().await?;
    Ok(Json(
        runners
            .into_iter()
            .map(|runner| RunnerInfo {
                running: running.get(&runner.id).copied().unwrap_or(0),
                runner,
            })
            .collect(),
    ))
}

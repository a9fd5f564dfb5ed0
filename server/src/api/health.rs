//! Liveness and readiness probes.

use axum::extract::State;
use axum::http::StatusCode;
use utoipa_axum::routes;

use super::route_table::{Access, RouteTable};
use crate::daemon::state::AppState;

pub fn routes() -> RouteTable {
    // Public: probes (kubelet, load balancers) carry no token, and the answers say only
    // whether the server is up.
    RouteTable::new()
        .add(Access::Public, routes!(live))
        .add(Access::Public, routes!(ready))
}

/// Alive as long as the process answers.
#[utoipa::path(
    get, path = "/healthz", tag = "ops",
    responses((status = 200, description = "`ok`", content_type = "text/plain", body = String))
)]
async fn live() -> &'static str {
    "ok"
}

/// Ready when the database answers, the database and the data directory can be
/// written, and the server is not shutting down, so a load balancer stops sending
/// traffic before in-flight work drains. Not ready says why, in one line.
#[utoipa::path(
    get, path = "/readyz", tag = "ops",
    responses(
        (status = 200, description = "`ready`", content_type = "text/plain", body = String),
        (status = 503, description = "Shutting down, the database does not answer, or the database or the data directory cannot be written (its disk is full): the reason", content_type = "text/plain", body = String),
    )
)]
async fn ready(State(state): State<AppState>) -> (StatusCode, String) {
    let not_ready = |why: String| {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        )
    };
    if state.shutdown.is_cancelled() {
        return not_ready("shutting down".into());
    }
    // Kept up to date by failed writes and `workers::disk_watch`'s probes.
    if let Some(why) = state.disk.unwritable() {
        return not_ready(why);
    }
    // One indexed aggregate: cheap however many repositories and runs there are.
    match state.store.latest_event_id().await {
        Ok(_) => (StatusCode::OK, "ready".into()),
        Err(_) => not_ready("the database does not answer".into()),
    }
}

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

/// Ready when the database answers and the server is not shutting down, so a load
/// balancer stops sending traffic before in-flight work drains.
#[utoipa::path(
    get, path = "/readyz", tag = "ops",
    responses(
        (status = 200, description = "`ready`", content_type = "text/plain", body = String),
        (status = 503, description = "Shutting down, or the database does not answer", content_type = "text/plain", body = String),
    )
)]
async fn ready(State(state): State<AppState>) -> (StatusCode, &'static str) {
    if state.shutdown.is_cancelled() {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down");
    }
    // One indexed aggregate: cheap however many repositories and runs there are.
    match state.store.latest_event_id().await {
        Ok(_) => (StatusCode::OK, "ready"),
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "database unavailable"),
    }
}

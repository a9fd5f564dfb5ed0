//! `GET /metrics` for Prometheus, and the middleware that counts every request.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use utoipa_axum::routes;

use super::route_table::{Access, RouteTable};
use crate::daemon::state::AppState;

pub fn routes() -> RouteTable {
    // Public: Prometheus scrapes without a token, and the output holds only counts
    // labelled with route templates, forge kinds, outcomes and statuses (see
    // `crate::daemon::metrics`).
    RouteTable::new().add(Access::Public, routes!(scrape))
}

/// Prometheus metrics.
#[utoipa::path(
    get, path = "/metrics", tag = "ops",
    responses(
        (status = 200, description = "Prometheus metrics (OpenMetrics text)", content_type = "application/openmetrics-text", body = String),
    )
)]
async fn scrape(State(state): State<AppState>) -> impl IntoResponse {
    // The queue depth is read at scrape time: one indexed count, and always current.
    match state.store.stage_counts().await {
        Ok((queued, running)) => state.metrics.set_stage_counts(queued, running),
        Err(e) => tracing::warn!(error = %e, "metrics: counting stages failed"),
    }
    (
        [(header::CONTENT_TYPE, crate::daemon::metrics::CONTENT_TYPE)],
        state.metrics.encode(),
    )
}

/// Middleware (installed with `route_layer`, so the route template is known) counting
/// every request by method, route template and status.
pub async fn track_http(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = req.method().as_str().to_string();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let response = next.run(req).await;
    state.metrics.http(
        &method,
        &route,
        response.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    response
}

//! `GET /metrics` for Prometheus. No token: the output holds only counts labelled with
//! route templates, forge kinds, outcomes and statuses (see `crate::metrics`).

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;

use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new().route("/metrics", get(scrape))
}

async fn scrape(State(state): State<AppState>) -> impl IntoResponse {
    // The queue depth is read at scrape time: one indexed count, and always current.
    match state.store.stage_counts().await {
        Ok((queued, running)) => state.metrics.set_stage_counts(queued, running),
        Err(e) => tracing::warn!(error = %e, "metrics: counting stages failed"),
    }
    (
        [(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
        state.metrics.encode(),
    )
}

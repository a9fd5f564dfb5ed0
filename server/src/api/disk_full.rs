//! The route layer that tells `daemon::disk` about every response saying a disk is
//! full ([`DiskFull`], set by `ApiError::disk_full`), so `/readyz` and the metrics
//! know at once, whichever handler's write failed.

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;

use super::error::DiskFull;
use crate::daemon::state::AppState;

/// Middleware (a route layer, like the metrics): reports a [`DiskFull`] response.
pub async fn report(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let response = next.run(req).await;
    if let Some(full) = response.extensions().get::<DiskFull>() {
        state.disk.report_full(full.part, &full.detail);
    }
    response
}

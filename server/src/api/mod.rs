//! The HTTP surface: one module per resource, each with its own `router()`.

pub mod artifacts;
pub mod auth;
pub mod error;
pub mod extract;
pub mod health;
pub mod hooks;
pub mod logs;
pub mod metrics;
pub mod openapi;
pub mod protocol;
pub mod repos;
pub mod runners;
pub mod runs;
pub mod secrets;
pub mod tokens;

use axum::Router;

use crate::daemon::state::AppState;

/// The whole HTTP application. Tests drive it with `tower::ServiceExt::oneshot`; the
/// server binds it to a socket.
pub fn app(state: AppState) -> Router {
    Router::new()
        .merge(health::router())
        .merge(hooks::router())
        .merge(repos::router())
        .merge(runs::router())
        .merge(logs::router())
        .merge(secrets::router())
        .merge(tokens::router())
        .merge(openapi::router())
        .merge(metrics::router())
        .merge(protocol::router())
        .merge(artifacts::router())
        .merge(runners::router())
        // Keep this last: `route_layer` wraps only the routes added above it. It counts
        // requests by route template (known only to matched routes).
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            metrics::track_http,
        ))
        .with_state(state)
}

//! The HTTP surface: one module per resource, each with its own `router()`.

pub mod auth;
pub mod error;
pub mod health;
pub mod runner;

use axum::Router;

use crate::state::AppState;

/// The whole HTTP application. Tests drive it with `tower::ServiceExt::oneshot`; the
/// server binds it to a socket.
pub fn app(state: AppState) -> Router {
    Router::new()
        .merge(health::router())
        .merge(runner::router())
        .with_state(state)
}

//! The HTTP surface: one module per resource, each with its own `routes()`, registered
//! in the route table ([`route_table`]) with the access each route needs.

pub(crate) mod approvals;
pub(crate) mod artifacts;
pub(crate) mod audit;
pub mod auth;
pub(crate) mod disk_full;
pub(crate) mod environments;
pub mod error;
pub mod extract;
pub(crate) mod health;
pub(crate) mod hooks;
pub(crate) mod logs;
pub(crate) mod me;
pub(crate) mod metrics;
pub(crate) mod openapi;
pub(crate) mod promotions;
pub(crate) mod protocol;
pub mod repos;
pub(crate) mod rollouts;
pub(crate) mod route_table;
pub(crate) mod runners;
pub mod runs;
pub(crate) mod secrets;
pub mod tokens;
pub mod trigger;
pub mod user_tokens;
pub mod users;
pub(crate) mod webhook_body;

#[cfg(test)]
mod tests;

use axum::{Extension, Router};

use crate::daemon::state::AppState;
use route_table::RouteTable;

/// Every route the server serves, with the access each needs.
pub fn routes() -> RouteTable {
    health::routes()
        .merge(hooks::routes())
        .merge(repos::routes())
        .merge(runs::routes())
        .merge(trigger::routes())
        .merge(logs::routes())
        .merge(secrets::routes())
        .merge(tokens::routes())
        .merge(openapi::routes())
        .merge(metrics::routes())
        .merge(protocol::routes())
        .merge(artifacts::routes())
        .merge(runners::routes())
        .merge(users::routes())
        .merge(user_tokens::routes())
        .merge(me::routes())
        .merge(audit::routes())
        .merge(environments::routes())
        .merge(approvals::routes())
        .merge(promotions::routes())
        .merge(rollouts::routes())
}

/// The whole HTTP application. Tests drive it with `tower::ServiceExt::oneshot`; the
/// server binds it to a socket.
pub fn app(state: AppState) -> Router {
    let (router, paths) = routes().into_parts(&state);
    router
        .merge(crate::web::routes())
        // A route layer, not a layer: it counts requests by route template, which only
        // matched routes know.
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            metrics::track_http,
        ))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            disk_full::report,
        ))
        .fallback(error::no_route)
        .method_not_allowed_fallback(error::wrong_method)
        .layer(Extension(openapi::Document::new(paths)))
        .layer(axum::middleware::from_fn(crate::web::security_headers))
        .with_state(state)
}

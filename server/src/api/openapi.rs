//! The OpenAPI document, served at `GET /api/openapi.json` (no token needed: it
//! describes the API, it holds no data).
//!
//! To document a route: annotate its handler with `#[utoipa::path(...)]` (see the
//! handlers in `api::repos`) and add the handler to `paths(...)` below; request and
//! response types derive `utoipa::ToSchema` and are collected from the paths.

use std::sync::OnceLock;

use axum::Json;
use axum::Router;
use axum::routing::get;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::{artifacts, logs, repos, runners, runs, secrets, tokens};
use crate::daemon::state::AppState;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Slipway",
        description = "Self-hosted CI/CD. Every `/api` route needs `Authorization: Bearer <token>`; \
                       errors are `{\"error\": {\"code\", \"message\"}}` with a stable code."
    ),
    paths(
        repos::create, repos::list, repos::show, repos::update, repos::remove,
        runs::list, runs::show, runs::findings, runs::cancel, runs::rerun, runs::trigger,
        logs::lines, logs::download, logs::follow, logs::events,
        artifacts::list, artifacts::download,
        secrets::set, secrets::list, secrets::remove,
        tokens::create, tokens::list, tokens::remove,
        runners::list,
        metrics_doc,
    ),
    modifiers(&BearerAuth),
    tags(
        (name = "repos", description = "Repositories"),
        (name = "runs", description = "Runs, reruns, cancellation and manual triggers"),
        (name = "logs", description = "Step logs"),
        (name = "artifacts", description = "Files stages produced (content-addressed, sha256)"),
        (name = "secrets", description = "Per-repository secrets (names only, never values)"),
        (name = "tokens", description = "API tokens"),
        (name = "runners", description = "Registered runners: labels, capacity, load"),
        (name = "ops", description = "Operations"),
    )
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// Documents `GET /metrics` (served by `api::metrics`).
#[utoipa::path(
    get, path = "/metrics", tag = "ops",
    responses((status = 200, description = "Prometheus metrics (OpenMetrics text)", content_type = "application/openmetrics-text", body = String))
)]
#[allow(dead_code)]
fn metrics_doc() {}

/// The document, built once.
pub fn document() -> &'static utoipa::openapi::OpenApi {
    static DOC: OnceLock<utoipa::openapi::OpenApi> = OnceLock::new();
    DOC.get_or_init(ApiDoc::openapi)
}

pub fn router() -> Router<AppState> {
    Router::new().route("/api/openapi.json", get(|| async { Json(document()) }))
}

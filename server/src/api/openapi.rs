//! The OpenAPI document, served at `GET /api/openapi.json`.
//!
//! Its paths come from the route table ([`super::route_table`]): a route registered
//! with `routes!(handler)` is documented by the handler's `#[utoipa::path(...)]`, and
//! its security by the access it is registered with. Request and response types derive
//! `utoipa::ToSchema` and are collected from the paths. This module adds the rest:
//! title, tags and the bearer scheme.

use std::sync::Arc;

use axum::Extension;
use axum::Json;
use axum::response::{IntoResponse, Response};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_axum::routes;

use super::route_table::{Access, RouteTable};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Slipway",
        description = "Self-hosted CI/CD. Routes with `bearer` security need `Authorization: Bearer <token>`; \
                       errors are `{\"error\": {\"code\", \"message\"}}` with a stable code."
    ),
    modifiers(&BearerAuth),
    tags(
        (name = "repos", description = "Repositories"),
        (name = "runs", description = "Runs, reruns, cancellation and manual triggers"),
        (name = "logs", description = "Step logs"),
        (name = "artifacts", description = "Files stages produced (content-addressed, sha256)"),
        (name = "secrets", description = "Per-repository secrets (names only, never values)"),
        (name = "tokens", description = "Machine API tokens (admin, runner, hook)"),
        (name = "users", description = "People: roles, linked forge identities, personal tokens"),
        (name = "audit", description = "The hash-chained audit log"),
        (name = "environments", description = "Environments, approval gates, deployments, promotion and rollback"),
        (name = "rollouts", description = "Progressive delivery: a deploy stage's rollout, its measurements; promote, abort, retry"),
        (name = "runners", description = "Registered runners: labels, capacity, load"),
        (name = "hooks", description = "Webhooks from forges and plain git servers"),
        (name = "runner", description = "The runner protocol (runner tokens; stage routes need the stage's lease token)"),
        (name = "ops", description = "Operations"),
    )
)]
struct ApiDoc;

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

/// The served document: the route table's paths and schemas with the parts above.
#[derive(Clone)]
pub struct Document(Arc<utoipa::openapi::OpenApi>);

impl Document {
    pub fn new(paths: utoipa::openapi::OpenApi) -> Self {
        let mut doc = ApiDoc::openapi();
        doc.merge(paths);
        Document(Arc::new(doc))
    }
}

pub fn routes() -> RouteTable {
    // Public: it describes the API and holds no data.
    RouteTable::new().add(Access::Public, routes!(serve))
}

// `api::app` provides the document as an extension: it is built from the whole route
// table, this route included.
/// This OpenAPI document.
#[utoipa::path(
    get, path = "/api/openapi.json", tag = "ops",
    responses((status = 200, description = "This document (OpenAPI 3.1)", body = Object))
)]
async fn serve(Extension(Document(doc)): Extension<Document>) -> Response {
    Json(&*doc).into_response()
}

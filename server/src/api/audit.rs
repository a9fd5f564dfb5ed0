//! `/api/audit`: the hash-chained audit log, filtered, and its verification. Admin
//! only. Entries never hold a secret.

use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::routes;

use super::error::ApiResult;
use super::extract::ApiQuery;
use super::route_table::{Access, RouteTable};
use crate::daemon::state::AppState;
use crate::store::audit::{AuditBreak, AuditFilter};
use crate::store::{AuditEntry, Role};

pub fn routes() -> RouteTable {
    RouteTable::new()
        .add(Access::Role(Role::Admin), routes!(list))
        .add(Access::Role(Role::Admin), routes!(verify))
}

/// Most entries one request returns.
const MAX_LIMIT: i64 = 1000;
const DEFAULT_LIMIT: i64 = 100;

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// Only this action (`user.create`, `role.set`, `token.create` …).
    pub action: Option<String>,
    /// Only this actor (`user:alice`, `token:root`, `cli`, `system`).
    pub actor: Option<String>,
    /// Only entries about this repository (`owner/name`).
    pub repo: Option<String>,
    /// Only entries with a larger id (pass the last id of the previous page).
    pub after: Option<i64>,
    /// Page size (default 100, at most 1000).
    pub limit: Option<i64>,
}

/// Read the audit log, newest first, filtered by action, actor or repository.
#[utoipa::path(
    get, path = "/api/audit", tag = "audit", params(AuditQuery),
    responses(
        (status = 200, description = "Oldest first", body = Vec<AuditEntry>),
        (status = 401), (status = 403),
        (status = 404, description = "No such repository"),
    )
)]
pub async fn list(
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<AuditQuery>,
) -> ApiResult<Json<Vec<AuditEntry>>> {
    let repo_id = match &q.repo {
        Some(name) => Some(state.store.get_repo_by_name(name).await?.id),
        None => None,
    };
    let filter = AuditFilter {
        action: q.action,
        actor: q.actor,
        repo_id,
        after: q.after,
        limit: Some(q.limit.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_LIMIT)),
    };
    Ok(Json(state.store.list_audit(&filter).await?))
}

/// The outcome of walking the whole chain.
#[derive(Debug, Serialize, ToSchema)]
pub struct Verification {
    /// True when every entry's hash and link check out.
    pub ok: bool,
    /// Entries checked (up to the break, if any).
    pub entries: u64,
    /// The newest entry's hash: keep it elsewhere to detect the newest entries being
    /// deleted, which the chain alone cannot show.
    pub head: Option<String>,
    /// The first entry that does not check out, and why.
    pub broken: Option<AuditBreak>,
}

/// Check the audit log's hash chain; names the first edited or missing entry.
#[utoipa::path(
    get, path = "/api/audit/verify", tag = "audit",
    responses(
        (status = 200, description = "Whether the chain is intact; if not, the first entry that breaks it", body = Verification),
        (status = 401), (status = 403)
    )
)]
pub async fn verify(State(state): State<AppState>) -> ApiResult<Json<Verification>> {
    Ok(Json(match state.store.verify_audit().await? {
        Ok(report) => Verification {
            ok: true,
            entries: report.entries,
            head: Some(report.head),
            broken: None,
        },
        Err(broken) => Verification {
            ok: false,
            entries: broken.checked,
            head: None,
            broken: Some(broken),
        },
    }))
}

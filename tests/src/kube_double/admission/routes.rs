//! core/v1 ResourceQuotas: `/api/v1/namespaces/{ns}/resourcequotas[/{name}]` create
//! (201), get (404), list, delete (200 with the deleted object, as upstream's
//! registry returns it: `ReturnDeletedObject`), and `/api/v1/resourcequotas`.
//! Validated as upstream (`ValidateResourceQuota`): a name, standard quota resource
//! names (or `count/…`, `hugepages-…`, `requests.<extended>`, qualified names),
//! non-negative quantities (an unparseable one is a 400 decoding error); `scopes`
//! and `scopeSelector` are refused (422: not implemented by the double).
//!
//! `status` is always current: `hard` from the spec, `used` summed over the
//! namespace's pods when read ([`super::quota::used`]). Watching quotas is not
//! implemented (405), nor are PUT and PATCH (405).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use k8s_openapi::api::core::v1::{Pod, ResourceQuota, ResourceQuotaStatus};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use super::quota;
use crate::kube_double::pod_runtime::Ctx;
use crate::kube_double::quantity::Amount;
use crate::kube_double::routes::{Q, created, decode, delete_opts, list_response};
use crate::kube_double::scheduling::ResourceList;
use crate::kube_double::status::ApiError;
use crate::kube_double::validate;

pub fn routes() -> Router<Arc<Ctx>> {
    let quotas = "/api/v1/namespaces/{ns}/resourcequotas";
    Router::new()
        .route(quotas, get(list_ns).post(create))
        .route(&format!("{quotas}/{{name}}"), get(get_one).delete(delete))
        .route("/api/v1/resourcequotas", get(list_all))
}

/// Resource names a quota may limit without a domain (`standardQuotaResources`).
const STANDARD: &[&str] = &[
    "cpu",
    "memory",
    "ephemeral-storage",
    "requests.cpu",
    "requests.memory",
    "requests.storage",
    "requests.ephemeral-storage",
    "limits.cpu",
    "limits.memory",
    "limits.ephemeral-storage",
    "pods",
    "services",
    "replicationcontrollers",
    "resourcequotas",
    "secrets",
    "configmaps",
    "persistentvolumeclaims",
    "services.nodeports",
    "services.loadbalancers",
];

fn standard_name(name: &str) -> bool {
    STANDARD.contains(&name)
        || name.contains('/')
        || name.starts_with("hugepages-")
        || name.starts_with("requests.hugepages-")
}

fn problems(q: &ResourceQuota) -> Result<Vec<String>, ApiError> {
    let mut p = Vec::new();
    validate::check_name(
        q.metadata.name.as_deref(),
        q.metadata.generate_name.as_deref(),
        &mut p,
    );
    let spec = q.spec.as_ref();
    for (name, value) in spec.and_then(|s| s.hard.as_ref()).into_iter().flatten() {
        if !standard_name(name) {
            p.push(format!(
                "spec.hard[{name}]: Invalid value: {name:?}: must be a standard resource for quota"
            ));
        }
        if value.0.trim_start().starts_with('-') {
            p.push(format!(
                "spec.hard[{name}]: Invalid value: {:?}: must be greater than or equal to 0",
                value.0
            ));
        } else if Amount::parse(&value.0).is_none() {
            return Err(ApiError::bad_request(format!(
                "ResourceQuota in version \"v1\" cannot be handled as a ResourceQuota: quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$' (spec.hard[{name}]: {:?})",
                value.0
            )));
        }
    }
    if spec.is_some_and(|s| {
        s.scopes.as_ref().is_some_and(|v| !v.is_empty()) || s.scope_selector.is_some()
    }) {
        p.push("spec.scopes: Unsupported value: quota scopes are not implemented by the Kubernetes test double".into());
    }
    Ok(p)
}

fn quantities(list: &ResourceList) -> BTreeMap<String, Quantity> {
    list.iter()
        .map(|(k, v)| (k.clone(), Quantity(v.to_string())))
        .collect()
}

/// The quota with the status the quota controller would have written by now.
fn with_status(ctx: &Ctx, mut q: ResourceQuota) -> ResourceQuota {
    let ns = q.metadata.namespace.clone().unwrap_or_default();
    let hard = quota::hard(&q);
    let (pods, _) = ctx.store.list::<Pod>(Some(&ns));
    q.status = Some(ResourceQuotaStatus {
        used: Some(quantities(&quota::used(&hard, &pods))),
        hard: Some(quantities(&hard)),
    });
    q
}

async fn create(
    State(ctx): State<Arc<Ctx>>,
    Path(ns): Path<String>,
    Query(q): Q,
    body: Bytes,
) -> Result<Response, ApiError> {
    let (mut quota, unknown): (ResourceQuota, _) = decode(&body, &ns, &q)?;
    let problems = problems(&quota)?;
    if !problems.is_empty() {
        let name = quota.metadata.name.clone().unwrap_or_default();
        return Err(ApiError::invalid("ResourceQuota", &name, &problems));
    }
    quota.status = None;
    let stored = ctx.store.create(&ns, quota)?;
    Ok(created(&with_status(&ctx, stored), &unknown))
}

async fn get_one(
    State(ctx): State<Arc<Ctx>>,
    Path((ns, name)): Path<(String, String)>,
) -> Result<axum::Json<ResourceQuota>, ApiError> {
    let q = ctx
        .store
        .get::<ResourceQuota>(&ns, &name)
        .ok_or_else(|| ApiError::not_found("resourcequotas", &name))?;
    Ok(axum::Json(with_status(&ctx, q)))
}

fn list(
    ctx: &Ctx,
    ns: Option<&str>,
    q: &std::collections::HashMap<String, String>,
) -> Result<Response, ApiError> {
    if q.get("watch").is_some_and(|w| w == "true" || w == "1") {
        return Err(ApiError::method_not_allowed("watching resourcequotas"));
    }
    let (items, _) = ctx.store.list::<ResourceQuota>(ns);
    let items = items.into_iter().map(|i| with_status(ctx, i)).collect();
    Ok(list_response(ctx, items))
}

async fn list_ns(
    State(ctx): State<Arc<Ctx>>,
    Path(ns): Path<String>,
    Query(q): Q,
) -> Result<Response, ApiError> {
    list(&ctx, Some(&ns), &q)
}

async fn list_all(State(ctx): State<Arc<Ctx>>, Query(q): Q) -> Result<Response, ApiError> {
    list(&ctx, None, &q)
}

async fn delete(
    State(ctx): State<Arc<Ctx>>,
    Path((ns, name)): Path<(String, String)>,
    Query(q): Q,
    body: Bytes,
) -> Result<Response, ApiError> {
    delete_opts(&body, &q)?;
    let removed = ctx
        .store
        .remove::<ResourceQuota>(&ns, &name)
        .ok_or_else(|| ApiError::not_found("resourcequotas", &name))?;
    Ok(axum::Json(with_status(&ctx, removed)).into_response())
}

//! The apps/v1 HTTP surface for Deployments and ReplicaSets: create, get, list and
//! watch (namespaced and across namespaces), replace (PUT), patch, delete and
//! delete-collection, the `status` subresource (the `scale` one is `scale`).
//! Writes go through `write::update`, as the generic registry's update.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, Method, Uri};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};

use super::patch;
use super::workload::Workload;
use super::write::{Part, problems, read_patch, update};
use super::{deletion, errors, scale};
use crate::kube_double::pod_runtime::Ctx;
use crate::kube_double::routes::{self, Q, RequestCounts};
use crate::kube_double::status::ApiError;

/// The apps/v1 routes, counted in [`RequestCounts`] like the core ones.
pub fn router(ctx: Arc<Ctx>, counts: Arc<RequestCounts>) -> Router {
    let r = Router::new();
    let r = routes_for::<k8s_openapi::api::apps::v1::Deployment>(r);
    let r = routes_for::<k8s_openapi::api::apps::v1::ReplicaSet>(r);
    r.route_layer(middleware::from_fn_with_state(counts, routes::count))
        .method_not_allowed_fallback(|method: Method, uri: Uri| async move {
            ApiError::method_not_allowed(&format!("{method} {}", uri.path()))
        })
        .with_state(ctx)
}

fn routes_for<K: Workload>(r: Router<Arc<Ctx>>) -> Router<Arc<Ctx>> {
    let base = format!("/apis/apps/v1/namespaces/{{ns}}/{}", K::URL_PATH_SEGMENT);
    r.route(
        &base,
        get(list_ns::<K>)
            .post(create::<K>)
            .delete(deletion::delete_collection::<K>),
    )
    .route(
        &format!("{base}/{{name}}"),
        get(get_one::<K>)
            .put(replace::<K>)
            .patch(patch_main::<K>)
            .delete(deletion::delete_one::<K>),
    )
    .route(
        &format!("{base}/{{name}}/status"),
        get(get_one::<K>)
            .put(replace_status::<K>)
            .patch(patch_status::<K>),
    )
    .route(
        &format!("{base}/{{name}}/scale"),
        get(scale::get::<K>)
            .put(scale::replace::<K>)
            .patch(scale::patch::<K>),
    )
    .route(
        &format!("/apis/apps/v1/{}", K::URL_PATH_SEGMENT),
        get(list_all::<K>),
    )
}

async fn list_ns<K: Workload>(
    State(ctx): State<Arc<Ctx>>,
    Path(ns): Path<String>,
    Query(q): Q,
) -> Result<Response, ApiError> {
    routes::list::<K>(&ctx, Some(ns), &q)
}

async fn list_all<K: Workload>(
    State(ctx): State<Arc<Ctx>>,
    Query(q): Q,
) -> Result<Response, ApiError> {
    routes::list::<K>(&ctx, None, &q)
}

async fn get_one<K: Workload>(
    State(ctx): State<Arc<Ctx>>,
    Path((ns, name)): Path<(String, String)>,
) -> Result<axum::Json<K>, ApiError> {
    ctx.store
        .get::<K>(&ns, &name)
        .map(axum::Json)
        .ok_or_else(|| errors::not_found::<K>(&name))
}

/// Decodes a create or replace body. Fields the typed object cannot be without
/// (`spec.selector`, a Deployment's `spec.template`) are 422 Required, as on the
/// API server, rather than a decoding error.
fn decode<K: Workload>(
    body: &Bytes,
    ns: &str,
    q: &HashMap<String, String>,
) -> Result<(K, Vec<String>, Vec<String>), ApiError> {
    let mut sent: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("the request body is not valid JSON: {e}")))?;
    let mut missing = Vec::new();
    if let Some(obj) = sent.as_object_mut() {
        let spec = obj.entry("spec").or_insert_with(|| json!({}));
        if let Some(spec) = spec.as_object_mut() {
            if spec.get("selector").is_none_or(Value::is_null) {
                spec.insert("selector".into(), json!({}));
                missing.push("spec.selector: Required value".to_owned());
            }
            if K::KIND == "Deployment" && spec.get("template").is_none_or(Value::is_null) {
                spec.insert("template".into(), json!({}));
            }
        }
    }
    let body = Bytes::from(serde_json::to_vec(&sent).expect("JSON values serialize"));
    let (obj, unknown) = routes::decode::<K>(&body, ns, q)?;
    Ok((obj, unknown, missing))
}

fn with_warnings(mut resp: Response, unknown: &[String]) -> Response {
    for u in unknown {
        if let Ok(v) = HeaderValue::from_str(&format!("299 - \"unknown field \\\"{u}\\\"\"")) {
            resp.headers_mut().append("warning", v);
        }
    }
    resp
}

async fn create<K: Workload>(
    State(ctx): State<Arc<Ctx>>,
    Path(ns): Path<String>,
    Query(q): Q,
    body: Bytes,
) -> Result<Response, ApiError> {
    let (mut obj, unknown, missing) = decode::<K>(&body, &ns, &q)?;
    if obj
        .metadata()
        .resource_version
        .as_deref()
        .is_some_and(|v| !v.is_empty())
    {
        return Err(ApiError::bad_request(
            "resourceVersion should not be set on objects to be created",
        ));
    }
    obj.apply_defaults();
    obj.clear_status();
    let problems = problems(missing, obj.validate(None));
    if !problems.is_empty() {
        let name = obj.metadata().name.clone().unwrap_or_default();
        return Err(errors::invalid::<K>(&name, &problems));
    }
    let obj = ctx
        .store
        .create(&ns, obj)
        .map_err(errors::with_group::<K>)?;
    Ok(routes::created(&obj, &unknown))
}

async fn replace_part<K: Workload>(
    ctx: &Ctx,
    ns: &str,
    name: &str,
    q: &HashMap<String, String>,
    body: &Bytes,
    part: Part,
) -> Result<Response, ApiError> {
    let (sent, unknown, missing) = decode::<K>(body, ns, q)?;
    let sent_name = sent.metadata().name.clone().unwrap_or_default();
    if sent_name != name {
        return Err(ApiError::bad_request(format!(
            "the name of the object ({sent_name}) does not match the name on the URL ({name})"
        )));
    }
    let stored = update::<K>(ctx, ns, name, part, |_| Ok(sent), missing)?;
    Ok(with_warnings(axum::Json(stored).into_response(), &unknown))
}

async fn replace<K: Workload>(
    State(ctx): State<Arc<Ctx>>,
    Path((ns, name)): Path<(String, String)>,
    Query(q): Q,
    body: Bytes,
) -> Result<Response, ApiError> {
    replace_part::<K>(&ctx, &ns, &name, &q, &body, Part::Main).await
}

async fn replace_status<K: Workload>(
    State(ctx): State<Arc<Ctx>>,
    Path((ns, name)): Path<(String, String)>,
    Query(q): Q,
    body: Bytes,
) -> Result<Response, ApiError> {
    replace_part::<K>(&ctx, &ns, &name, &q, &body, Part::Status).await
}

async fn patch_part<K: Workload>(
    ctx: &Ctx,
    ns: &str,
    name: &str,
    q: &HashMap<String, String>,
    headers: &HeaderMap,
    body: &Bytes,
    part: Part,
) -> Result<Response, ApiError> {
    let (kind, patch_body) = read_patch(headers, q, body)?;
    let strict = q.get("fieldValidation").map(String::as_str) == Some("Strict");
    let mut unknown = Vec::new();
    let stored = update::<K>(
        ctx,
        ns,
        name,
        part,
        |current| {
            let json = serde_json::to_value(current).expect("objects serialize");
            let patched = patch::apply(kind, json, &patch_body)?;
            let obj: K = serde_json::from_value(patched.clone()).map_err(|e| {
                errors::invalid::<K>(name, &[format!("the patched object does not decode: {e}")])
            })?;
            let typed = serde_json::to_value(&obj).expect("objects serialize");
            routes::unknown_fields(&patched, &typed, "", &mut unknown);
            if strict && !unknown.is_empty() {
                let list: Vec<String> = unknown
                    .iter()
                    .map(|u| format!("unknown field \"{u}\""))
                    .collect();
                return Err(ApiError::bad_request(format!(
                    "strict decoding error: {}",
                    list.join(", ")
                )));
            }
            Ok(obj)
        },
        Vec::new(),
    )?;
    Ok(with_warnings(axum::Json(stored).into_response(), &unknown))
}

async fn patch_main<K: Workload>(
    State(ctx): State<Arc<Ctx>>,
    Path((ns, name)): Path<(String, String)>,
    Query(q): Q,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    patch_part::<K>(&ctx, &ns, &name, &q, &headers, &body, Part::Main).await
}

async fn patch_status<K: Workload>(
    State(ctx): State<Arc<Ctx>>,
    Path((ns, name)): Path<(String, String)>,
    Query(q): Q,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    patch_part::<K>(&ctx, &ns, &name, &q, &headers, &body, Part::Status).await
}

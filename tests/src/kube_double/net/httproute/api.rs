//! The gateway.networking.k8s.io/v1 HTTPRoute API, as the API server serves a
//! custom resource (k8s.io/apiextensions-apiserver: schema defaulting, then
//! OpenAPI and CEL validation → 422 Invalid naming the fields, pruning of unknown
//! fields — a `Warning` header, or 400 with `fieldValidation=Strict` —,
//! `metadata.generation` bumped by spec changes, and no unconditional update: a
//! PUT must carry `metadata.resourceVersion`). Each admitted route goes through the
//! `gateway-api` crate's `HttpRouteSpec`. The status is the double's gateway's,
//! written with the route (see `object::status`).

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use gateway_api::httproutes::HttpRouteSpec;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::Value;

use super::object::{self, API_VERSION, HttpRouteObject};
use super::{defaults, schema};
use crate::kube_double::net::crud::{self, Updatable};
use crate::kube_double::net::names;
use crate::kube_double::pod_runtime::Ctx;
use crate::kube_double::routes::{created, unknown_fields};
use crate::kube_double::status::ApiError;

type Q = Query<HashMap<String, String>>;

impl Updatable for HttpRouteObject {
    const QUALIFIED_KIND: &'static str = "HTTPRoute.gateway.networking.k8s.io";
    const UNCONDITIONAL_UPDATE: bool = false;
    const TRACKS_GENERATION: bool = true;

    fn update_from(old: &Self, next: &mut Self) -> Vec<String> {
        let generation = next.metadata.generation.unwrap_or(1);
        if let Some(status) = &mut next.status {
            set_observed_generation(status, generation);
            object::keep_transition_times(old.status.as_ref(), status);
        }
        Vec::new()
    }

    fn spec_json(&self) -> Value {
        self.spec.clone()
    }

    /// The status is recomputed from the new spec by [`admit`].
    fn keep_status(_old: &Self, _next: &mut Self) {}
}

fn set_observed_generation(status: &mut Value, generation: i64) {
    for parent in status
        .get_mut("parents")
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
    {
        for c in parent
            .get_mut("conditions")
            .and_then(Value::as_array_mut)
            .into_iter()
            .flatten()
        {
            c["observedGeneration"] = generation.into();
        }
    }
}

/// The Services a route names (backends and mirrors) that do not exist.
fn unresolved(ctx: &Ctx, ns: &str, spec: &HttpRouteSpec) -> Vec<String> {
    let mut names = Vec::new();
    for rule in spec.rules.iter().flatten() {
        let mirrors = |filters: Option<&Vec<_>>| -> Vec<(Option<String>, String)> {
            filters
                .into_iter()
                .flatten()
                .filter_map(|f: &gateway_api::httproutes::HttpRouteRulesFilters| {
                    let m = f.request_mirror.as_ref()?;
                    Some((m.backend_ref.namespace.clone(), m.backend_ref.name.clone()))
                })
                .collect()
        };
        names.extend(mirrors(rule.filters.as_ref()));
        for b in rule.backend_refs.iter().flatten() {
            names.push((b.namespace.clone(), b.name.clone()));
            for f in b.filters.iter().flatten() {
                if let Some(m) = &f.request_mirror {
                    names.push((m.backend_ref.namespace.clone(), m.backend_ref.name.clone()));
                }
            }
        }
    }
    let mut missing: Vec<String> = names
        .into_iter()
        .filter(|(in_ns, name)| {
            let in_ns = in_ns.as_deref().unwrap_or(ns);
            ctx.store.get::<Service>(in_ns, name).is_none()
        })
        .map(|(in_ns, name)| format!("{}/{name}", in_ns.as_deref().unwrap_or(ns)))
        .collect();
    missing.sort();
    missing.dedup();
    missing
}

/// Decodes, defaults, validates and prunes an HTTPRoute sent for `ns`; the
/// unknown fields it had come back for the `Warning` header.
pub fn admit(
    ctx: &Ctx,
    ns: &str,
    mut sent: Value,
    q: &HashMap<String, String>,
) -> Result<(HttpRouteObject, Vec<String>), ApiError> {
    if q.get("dryRun").is_some_and(|d| !d.is_empty()) {
        return Err(ApiError::bad_request(
            "dryRun is not supported by the Kubernetes test double",
        ));
    }
    for (field, want) in [("kind", "HTTPRoute"), ("apiVersion", API_VERSION)] {
        if let Some(got) = sent.get(field).and_then(Value::as_str)
            && got != want
        {
            return Err(ApiError::bad_request(format!(
                "the API version/kind of the body ({got}) does not match the path ({want})"
            )));
        }
    }
    let cannot = |e: serde_json::Error| {
        ApiError::bad_request(format!(
            "HTTPRoute in version \"v1\" cannot be handled as a HTTPRoute: {e}"
        ))
    };
    let sent_meta = sent.get("metadata").cloned().unwrap_or(Value::Null);
    let metadata: ObjectMeta = if sent_meta.is_null() {
        ObjectMeta::default()
    } else {
        serde_json::from_value(sent_meta.clone()).map_err(cannot)?
    };
    if metadata.namespace.as_deref().is_some_and(|n| n != ns) {
        return Err(ApiError::bad_request(
            "the namespace of the provided object does not match the namespace sent on the request",
        ));
    }
    defaults::apply(&mut sent);
    let mut problems = Vec::new();
    names::object_name(
        metadata.name.as_deref(),
        metadata.generate_name.as_deref(),
        false,
        &mut problems,
    );
    problems.extend(schema::validate(&sent));
    if !problems.is_empty() {
        let name = metadata.name.clone().unwrap_or_default();
        return Err(crud::invalid::<HttpRouteObject>(&name, &problems));
    }
    let spec_json = sent.get("spec").cloned().unwrap_or(Value::Null);
    let spec: HttpRouteSpec = serde_json::from_value(spec_json.clone()).map_err(cannot)?;
    let pruned = serde_json::to_value(&spec).expect("specs serialize");
    let mut unknown = Vec::new();
    unknown_fields(&spec_json, &pruned, "spec", &mut unknown);
    let typed_meta = serde_json::to_value(&metadata).expect("metadata serializes");
    unknown_fields(&sent_meta, &typed_meta, "metadata", &mut unknown);
    for key in sent.as_object().into_iter().flatten().map(|(k, _)| k) {
        if !["apiVersion", "kind", "metadata", "spec", "status"].contains(&key.as_str()) {
            unknown.push(key.clone());
        }
    }
    let unknown = match q.get("fieldValidation").map(String::as_str) {
        Some("Strict") if !unknown.is_empty() => {
            let list: Vec<String> = unknown
                .iter()
                .map(|u| format!("unknown field \"{u}\""))
                .collect();
            return Err(ApiError::bad_request(format!(
                "strict decoding error: {}",
                list.join(", ")
            )));
        }
        Some("Ignore") => Vec::new(),
        _ => unknown,
    };
    let missing = unresolved(ctx, ns, &spec);
    Ok((
        HttpRouteObject {
            api_version: API_VERSION.into(),
            kind: "HTTPRoute".into(),
            metadata,
            status: Some(object::status(&pruned, 1, &missing)),
            spec: pruned,
        },
        unknown,
    ))
}

fn body_json(body: &Bytes) -> Result<Value, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("the request body is not valid JSON: {e}")))
}

pub async fn create(
    State(ctx): State<Arc<Ctx>>,
    Path(ns): Path<String>,
    Query(q): Q,
    body: Bytes,
) -> Result<Response, ApiError> {
    let (route, unknown) = admit(&ctx, &ns, body_json(&body)?, &q)?;
    let route = ctx.store.create(&ns, route)?;
    Ok(created(&route, &unknown))
}

pub async fn replace(
    State(ctx): State<Arc<Ctx>>,
    Path((ns, name)): Path<(String, String)>,
    Query(q): Q,
    body: Bytes,
) -> Result<Response, ApiError> {
    let (route, _) = admit(&ctx, &ns, body_json(&body)?, &q)?;
    Ok(axum::Json(crud::replace(&ctx, &ns, &name, route, false)?).into_response())
}

pub async fn patch(
    State(ctx): State<Arc<Ctx>>,
    Path((ns, name)): Path<(String, String)>,
    Query(q): Q,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let route = crud::patch(&ctx, &ns, &name, &headers, &body, |json| {
        admit(&ctx, &ns, json, &q).map(|(r, _)| r)
    })?;
    Ok(axum::Json(route).into_response())
}

pub async fn delete(
    State(ctx): State<Arc<Ctx>>,
    Path((ns, name)): Path<(String, String)>,
    Query(q): Q,
    body: Bytes,
) -> Result<Response, ApiError> {
    crud::delete::<HttpRouteObject>(&ctx, &ns, &name, &q, &body)
}

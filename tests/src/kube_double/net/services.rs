//! The core/v1 Service API: create (defaults, validation and the cluster IP from
//! `service_spec`), PUT, merge PATCH and DELETE (`crud`), each followed by the
//! Service's listeners (`service_proxy::reconcile`) before it answers, so a
//! Service is reachable (or closed) when its write returns.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use k8s_openapi::api::core::v1::Service;
use serde_json::Value;

use super::crud::{self, Updatable};
use super::{service_proxy, service_spec};
use crate::kube_double::pod_runtime::Ctx;
use crate::kube_double::routes::{created, decode};
use crate::kube_double::status::ApiError;

type Q = Query<HashMap<String, String>>;

impl Updatable for Service {
    const QUALIFIED_KIND: &'static str = "Service";
    const UNCONDITIONAL_UPDATE: bool = true;
    const TRACKS_GENERATION: bool = false;

    fn update_from(old: &Self, next: &mut Self) -> Vec<String> {
        let mut problems = service_spec::keep_cluster_ips(old, next);
        service_spec::defaults(next);
        problems.extend(service_spec::validate(next));
        problems
    }

    fn spec_json(&self) -> Value {
        serde_json::to_value(&self.spec).expect("specs serialize")
    }

    fn keep_status(old: &Self, next: &mut Self) {
        next.status = old.status.clone();
    }
}

pub async fn create(
    State(ctx): State<Arc<Ctx>>,
    Path(ns): Path<String>,
    Query(q): Q,
    body: Bytes,
) -> Result<Response, ApiError> {
    let (mut svc, unknown): (Service, _) = decode(&body, &ns, &q)?;
    service_spec::defaults(&mut svc);
    let mut problems = service_spec::validate(&svc);
    if problems.is_empty() {
        problems = service_spec::allocate(&ctx, &mut svc);
    }
    if !problems.is_empty() {
        let name = svc.metadata.name.clone().unwrap_or_default();
        return Err(crud::invalid::<Service>(&name, &problems));
    }
    svc.status = Some(k8s_openapi::api::core::v1::ServiceStatus {
        load_balancer: Some(Default::default()),
        ..Default::default()
    });
    let svc = ctx.store.create(&ns, svc)?;
    let name = svc.metadata.name.clone().unwrap_or_default();
    service_proxy::reconcile(&ctx, &ns, &name);
    Ok(created(&svc, &unknown))
}

pub async fn replace(
    State(ctx): State<Arc<Ctx>>,
    Path((ns, name)): Path<(String, String)>,
    Query(q): Q,
    body: Bytes,
) -> Result<Response, ApiError> {
    let (svc, _): (Service, _) = decode(&body, &ns, &q)?;
    let svc = crud::replace(&ctx, &ns, &name, svc, false)?;
    service_proxy::reconcile(&ctx, &ns, &name);
    Ok(axum::Json(svc).into_response())
}

pub async fn patch(
    State(ctx): State<Arc<Ctx>>,
    Path((ns, name)): Path<(String, String)>,
    Query(q): Q,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let svc = crud::patch(&ctx, &ns, &name, &headers, &body, |json| {
        let bytes = serde_json::to_vec(&json).expect("JSON values serialize");
        decode::<Service>(&Bytes::from(bytes), &ns, &q).map(|(s, _)| s)
    })?;
    service_proxy::reconcile(&ctx, &ns, &name);
    Ok(axum::Json(svc).into_response())
}

pub async fn delete(
    State(ctx): State<Arc<Ctx>>,
    Path((ns, name)): Path<(String, String)>,
    Query(q): Q,
    body: Bytes,
) -> Result<Response, ApiError> {
    let answer = crud::delete::<Service>(&ctx, &ns, &name, &q, &body)?;
    service_proxy::reconcile(&ctx, &ns, &name);
    Ok(answer)
}
